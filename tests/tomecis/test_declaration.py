"""The method declaration (``tomecis.names.Method``): what it refuses, and that the patched block runs a
method at each declared stage exactly as a hand-written forward does (issues #29, #30).

The methods here are declared in this file, as a researcher would declare one: they drop the last ``r``
tokens (before the attention, reusing the attention map; or after the MLP), or give tokens sizes once, to
check where proportional attention applies."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_vit

import tomecis
from tomecis import names
from tomecis.methods import BlockView


def drop_count(tokens, index, depth, r, keep):
    return r


def drop_last(method, view: BlockView, state):
    """``[B, N, C] -> [B, N - r, C]``: the last ``r`` tokens dropped; before the attention, the
    attention map is cut and renormalised for the block to reuse."""
    kept = view.x.shape[1] - view.count
    if view.attn is not None:
        attn = view.attn[:, :, :kept, :kept]
        view.attn_next = attn / attn.sum(dim=-1, keepdim=True)
    return view.x[:, :kept]


def declared(monkeypatch, **fields) -> str:
    method = names.Method(**{"amounts": ("r",), "summary": "test", **fields})
    monkeypatch.setitem(names.METHODS, method.name, method)
    return method.name


def attention(block, y, bias=None, attn=None):
    """timm's attention written out, ``y [B, N, C]``: ``softmax(q kᵀ scale + bias) v`` then ``proj``;
    ``attn`` given: those probabilities instead."""
    a = block.attn
    B, N, C = y.shape
    q, k, v = a.qkv(y).reshape(B, N, 3, a.num_heads, C // a.num_heads).permute(2, 0, 3, 1, 4)
    if attn is None:
        logits = (q @ k.transpose(-2, -1)) * a.scale
        attn = (logits if bias is None else logits + bias).softmax(-1)
    return a.proj((attn @ v).transpose(1, 2).reshape(B, N, C)), attn


def run_blocks(model, x, block_fn):
    x = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    for i, block in enumerate(model.blocks):
        x = block_fn(i, block, x)
    return model.forward_head(model.norm(x))


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(stage="during_mlp"), "stage 'during_mlp' must be one of"),
        (dict(needs={"values"}), "needs \\['values'\\] must be of"),
        (dict(prop_attn=True), "prop_attn True must be one of"),
        (dict(amounts=("tokens",)), "amounts \\('tokens',\\) must be of"),
        (dict(count=None), "needs count and reduce"),
    ],
)
def test_a_malformed_declaration_is_refused_naming_the_method_and_the_field(fields, message):
    base = dict(name="mine", amounts=("r",), summary="test", count=drop_count, reduce=drop_last)
    with pytest.raises(ValueError, match=f"method declaration 'mine': .*{message}"):
        names.Method(**{**base, **fields})


def test_function_references_are_imported_on_use_and_bad_ones_name_the_method():
    method = names.Method("mine", ("r",), "test", count="math:floor", reduce="tomecis.methods.tome:reduce")
    count, reduce, check = method.functions()
    assert count(2.5) == 2 and reduce.__module__ == "tomecis.methods.tome" and check is None
    for ref, message in [
        ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz:f'"),
        ("math:no_such_function", "cannot import 'math:no_such_function'"),
        ("math", "not a function or a 'package.module:function' reference"),
        ("math:pi", "is float, not a function"),
    ]:
        bad = names.Method("mine", ("r",), "test", count=ref, reduce=drop_last)
        with pytest.raises(ValueError, match=f"method 'mine' count: .*{message}"):
            bad.functions()


def test_a_before_attention_method_reduces_the_input_and_the_block_reuses_its_attention_map(monkeypatch):
    name = declared(
        monkeypatch,
        name="drop_before",
        count=drop_count,
        reduce=drop_last,
        stage="before_attn",
        needs={"attn"},
    )
    model = tiny_vit(depth=3).eval()
    x = torch.randn(2, 3, 64, 64)
    r = 4

    def block_fn(i, block, x):
        _, attn = attention(block, block.norm1(x))
        kept = x.shape[1] - r
        attn = attn[:, :, :kept, :kept]
        attn = attn / attn.sum(-1, keepdim=True)
        x = x[:, :kept]
        x = x + attention(block, block.norm1(x), attn=attn)[0]
        return x + block.mlp(block.norm2(x))

    with torch.no_grad():
        expected = run_blocks(model, x, block_fn)
        patched = tomecis.patch(model, r=r, method=name)
        got = patched(x)
    assert patched.merge_state.tokens == [61, 57, 53]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_a_before_attention_method_without_a_map_gets_a_fresh_attention(monkeypatch):
    name = declared(monkeypatch, name="drop_fresh", count=drop_count, reduce=drop_last, stage="before_attn")
    model = tiny_vit(depth=2).eval()
    x = torch.randn(2, 3, 64, 64)

    def block_fn(i, block, x):
        x = x[:, :-3]
        return block(x)  # timm's block on the reduced tokens

    with torch.no_grad():
        expected = run_blocks(model, x, block_fn)
        got = tomecis.patch(model, r=3, method=name)(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_an_after_mlp_method_reduces_at_the_end_of_the_block(monkeypatch):
    name = declared(monkeypatch, name="drop_after", count=drop_count, reduce=drop_last, stage="after_mlp")
    model = tiny_vit(depth=3).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = run_blocks(model, x, lambda i, block, x: block(x)[:, :-5])
        patched = tomecis.patch(model, r=5, method=name)
        got = patched(x)
    assert patched.merge_state.tokens == [60, 55, 50]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def sized_once(method, view: BlockView, state):
    """Block 0 drops ``count`` tokens and gives the others sizes 1, 2, 3, 1, 2, 3, ..."""
    x = view.x[:, : view.x.shape[1] - view.count]
    state.size = (1.0 + torch.arange(x.shape[1]) % 3).to(x.dtype).expand(x.shape[0], -1).unsqueeze(-1)
    return x


def first_block_only(tokens, index, depth, r, keep):
    return r if index == 0 else 0


@pytest.mark.parametrize("rule", ["always", "reducing", "no"])
def test_proportional_attention_applies_in_every_block_or_only_where_the_method_reduces(monkeypatch, rule):
    name = declared(
        monkeypatch, name=f"sized_{rule}", count=first_block_only, reduce=sized_once, prop_attn=rule
    )
    model = tiny_vit(depth=3).eval()
    x = torch.randn(2, 3, 64, 64)
    r = 5

    def block_fn(i, block, x):
        if i == 0:
            y = x + attention(block, block.norm1(x))[0]
            x = y[:, :-r]
            return x + block.mlp(block.norm2(x))
        bias = None
        if rule == "always":
            size = 1.0 + torch.arange(x.shape[1]) % 3
            bias = size.log().reshape(1, 1, 1, -1)
        x = x + attention(block, block.norm1(x), bias=bias)[0]
        return x + block.mlp(block.norm2(x))

    with torch.no_grad():
        expected = run_blocks(model, x, block_fn)
        got = tomecis.patch(model, r=r, method=name)(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_reduce_at_zero_calls_the_reduction_in_blocks_that_remove_nothing(monkeypatch):
    calls = []

    def record(method, view, state):
        calls.append((view.index, view.count))
        return view.x

    name = declared(
        monkeypatch,
        name="identity",
        amounts=("keep",),
        count=lambda tokens, index, depth, r, keep: 0,
        reduce=record,
        reduce_at_zero=True,
    )
    model = tomecis.patch(tiny_vit(depth=3), method=name, keep=0.9)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reduced = model(x)
        assert calls == [(0, 0), (1, 0), (2, 0)]
        tomecis.set_reduction(model, "none")
        torch.testing.assert_close(reduced, model(x))
    assert len(calls) == 3  # the unreduced model calls nothing
