"""EViT, PiToMe, ToFu (and ToMe/ToMeCIS with a keep ratio) against the clean-room readings of issue #25's
semantics in ``reference_methods.py``, on random-weight ViTs: the references' own token counts, class
token and unreduced settings first, then the patched model against them (logits, token counts and
source maps, which fix the output order), then output orders checked on the patched model directly."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import MODEL_FACTORIES, tiny_vit
from reference_methods import evit_blocks, keep_to_r, method_forward

import tomecis

NEW = ("pitome", "tofu", "evit")


def images_for(model, batch=2, seed=0):
    h, w = model.patch_embed.img_size
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def amounts(method):
    """The amounts tested per method: keep 0.7, 0.9, 0.95, and r 4, 8 where the method takes r."""
    keeps = [dict(keep=k) for k in (0.7, 0.9, 0.95)]
    return keeps if method == "evit" else keeps + [dict(r=4), dict(r=8)]


def label(kw):
    return ",".join(f"{k}={v}" for k, v in kw.items())


@pytest.fixture(scope="module")
def deit_tiny():
    return MODEL_FACTORIES["deit_tiny"]()  # random weights, 197 tokens, 12 blocks, 100 classes


def timm_float64(model, x):
    with torch.no_grad():
        return copy.deepcopy(model).double()(x.double())


# --------------------------------------------------------------------------- the references themselves


def test_keep_amount_is_floor_of_t_minus_t_keep():
    assert keep_to_r(80, 0.9) == 8
    assert math.floor(80 * (1 - 0.9)) == 7  # the reading the issue rules out
    assert keep_to_r(197, 0.9) == 19 and keep_to_r(196, 0.9) == 19 and keep_to_r(196, 0.7) == 58


@pytest.mark.parametrize(
    "method, kw, expected",
    [
        # EViT at its three blocks: ceil(0.7 * 196) = 138 (+ class + fused), ceil(0.7 * 139) = 98, ...
        ("evit", dict(keep=0.7), [197] * 3 + [140] * 3 + [100] * 3 + [72] * 3),
        # T with the class token: ... 88 -> 80 -> 72 (floor(80 - 72.0) = 8, not 7) -> 65 -> 59
        ("tofu", dict(keep=0.9), [178, 161, 145, 131, 118, 107, 97, 88, 80, 72, 65, 59]),
        # T without it: 196 -> 177 -> 160 -> ... -> 79 -> 72 -> 65 -> 59 non-class tokens
        ("pitome", dict(keep=0.9), [178, 161, 145, 131, 118, 107, 97, 88, 80, 73, 66, 60]),
        ("tofu", dict(r=13), [197 - 13 * (i + 1) for i in range(12)]),
        ("pitome", dict(r=13), [197 - 13 * (i + 1) for i in range(12)]),
        ("tome", dict(keep=0.9), [178, 161, 145, 131, 118, 107, 97, 88, 80, 72, 65, 59]),
    ],
    ids=lambda v: label(v) if isinstance(v, dict) else (v if isinstance(v, str) else ""),
)
def test_reference_token_counts_on_deit_tiny(deit_tiny, method, kw, expected):
    out = method_forward(deit_tiny, images_for(deit_tiny), method, **kw)
    assert out.tokens == expected
    assert out.logits.shape == (2, 100) and torch.isfinite(out.logits).all()


@pytest.mark.parametrize(
    "method, expected",
    [
        # r = 20 on 65 tokens, clamped: ToFu by (T-1)//2 with T = 65, 45, 25, 13, 7, 4 ...
        ("tofu", [45, 25, 13, 7, 4, 3]),
        # ... PiToMe by T//2 with T = 64, 44, 24, 12, 6, 3 non-class tokens: the same counts here
        ("pitome", [45, 25, 13, 7, 4, 3]),
    ],
)
def test_reference_clamps_large_r(method, expected):
    model = tiny_vit()
    assert method_forward(model, images_for(model), method, r=20).tokens == expected


def test_reference_pitome_at_80_non_class_tokens():
    """80 patches (10 x 8): keep 0.9 removes floor(80 - 72.0) = 8 of them in the first block."""
    model = tiny_vit(img_size=(80, 64), depth=2)
    out = method_forward(model, images_for(model), "pitome", keep=0.9)
    assert out.tokens == [1 + 72, 1 + 72 - keep_to_r(72, 0.9)] == [73, 66]


def test_reference_evit_blocks_for_other_depths():
    assert evit_blocks(12) == [3, 6, 9] and evit_blocks(6) == [1, 3, 4]
    model = tiny_vit()  # 65 tokens, 6 blocks: reduces after blocks 1, 3 and 4
    out = method_forward(model, images_for(model), "evit", keep=0.5)
    assert out.tokens == [65, 34, 34, 19, 11, 11]  # 1 + ceil(32) + 1, 1 + ceil(16.5) + 1, 1 + ceil(9) + 1


@pytest.mark.parametrize("method", ["none", "pitome", "tofu", "evit", "tome", "tomecis"])
def test_reference_unreduced_equals_timm(deit_tiny, method):
    x = images_for(deit_tiny)
    expected = timm_float64(deit_tiny, x)
    for kw in [dict(keep=1.0)] + ([] if method == "evit" else [dict(r=0)]):
        out = method_forward(deit_tiny, x, method, **({} if method == "none" else kw))
        assert torch.equal(out.logits, expected), f"{method} {kw}"
        assert out.tokens == [197] * 12


@pytest.mark.parametrize("method, kw", [(m, kw) for m in NEW for kw in amounts(m)], ids=str)
def test_reference_keeps_class_token_and_conserves_sources(method, kw):
    model = MODEL_FACTORIES["vit_layerscale_qknorm"]()
    out = method_forward(model, images_for(model, batch=3), method, **kw)
    n0 = out.source.shape[2]
    assert out.tokens[-1] < n0, "nothing was reduced"
    assert torch.equal(out.source[:, 0], F.one_hot(torch.zeros(3, dtype=torch.long), n0).double())
    assert (out.source.sum(dim=1) <= 1).all(), "an input token ended in two output tokens"
    held = out.source.sum(dim=(1, 2))
    if method == "tofu":  # its first half prunes: tokens vanish
        assert (held < n0).all()
    else:  # merged (PiToMe) or fused (EViT): every input token lives on somewhere
        assert (held == n0).all()
    if method == "pitome":
        assert torch.equal(out.size, out.source.sum(dim=-1))


def test_reference_evit_fused_token_is_the_attention_weighted_sum():
    """One EViT block (depth 1 reduces at block 0): rebuild its fused token by hand before the MLP."""
    model = tiny_vit(depth=1)
    x = images_for(model, batch=1)
    out = method_forward(model, x, "evit", keep=0.5)
    m = copy.deepcopy(model).double()
    with torch.no_grad():
        h = m._pos_embed(m.patch_embed(x.double()))
        blk = m.blocks[0]
        y = blk.norm1(h)
        B, N, C = y.shape
        H = blk.attn.num_heads
        q, k, v = blk.attn.qkv(y).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
        P = (q @ k.transpose(-1, -2) * (C // H) ** -0.5).softmax(-1)
        h = h + blk.attn.proj((P @ v).transpose(1, 2).reshape(B, N, C))
        a = P[0, :, 0, 1:].mean(0)
        ranked = a.argsort(descending=True, stable=True)
        K = math.ceil(0.5 * 64)
        dropped = ranked[K:] + 1
        fused = (a[ranked[K:], None] * h[0, dropped]).sum(0)
        rows = torch.cat([h[0, :1], h[0, ranked[:K] + 1], fused[None]])
        logits = m.forward_head(m.norm((rows + blk.mlp(blk.norm2(rows)))[None]))
    torch.testing.assert_close(out.logits, logits, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- the product against them

PRODUCT_MODELS = ["deit_tiny", "vit_layerscale_qknorm"]
CASES = [(m, kw) for m in NEW for kw in amounts(m)] + [
    (m, dict(keep=k)) for m in ("tome", "tomecis") for k in (0.7, 0.9, 0.95)
]


@pytest.fixture(scope="module", params=PRODUCT_MODELS)
def models(request):
    """(unpatched, patched fp32, patched float64) copies of one random-weight model, with source tracing;
    the patched ones are switched between methods and amounts with ``set_reduction``, as a sweep does."""
    base = MODEL_FACTORIES[request.param]()
    fp32 = tomecis.patch(copy.deepcopy(base), method="none", trace_source=True)
    fp64 = tomecis.patch(copy.deepcopy(base).double(), method="none", trace_source=True)
    return base, fp32, fp64


def rows_as_set(source):
    """The groups a source map holds, order aside: {(sample, input positions)}."""
    return {(b, tuple(row.nonzero().flatten().tolist())) for b, rows in enumerate(source) for row in rows}


@pytest.mark.parametrize("method, kw", CASES, ids=str)
def test_product_matches_reference(models, method, kw):
    """float64 product = float64 reference: same token counts, same source map (decisions and output
    order, exactly), logits to 1e-10. fp32 product: same counts and groups, logits to 1e-4 relative; its
    output order may swap two kept EViT tokens whose class attentions differ by less than fp32 resolves
    after nine blocks (deit_tiny, keep 0.9, sample 1, block 9: 0.0077947814 vs 0.0077947751, 8e-7
    relative; the fp32 reference swaps them too), so order is held to the float64 comparison."""
    base, fp32, fp64 = models
    x = images_for(base)
    ref = method_forward(base, x, method, **kw)
    for patched in (fp64, fp32):
        tomecis.set_reduction(patched, method, **kw)
        with torch.no_grad():
            logits = patched(x.to(next(patched.parameters()).dtype))
        state = patched.merge_state
        assert state.tokens == ref.tokens
        assert state.source is not None, "trace_source gave no source map"
        if patched is fp64:
            tol = 1e-6 if method in ("tome", "tomecis") else 1e-10  # log(size) is taken in fp32 there
            torch.testing.assert_close(logits, ref.logits, rtol=tol, atol=tol)
            assert torch.equal(state.source.double(), ref.source), "different decisions or output order"
        else:
            rel = (logits.double() - ref.logits).abs().max() / ref.logits.abs().max()
            assert rel < 1e-4, f"logits differ by {rel:.2e} relative"
            assert rows_as_set(state.source) == rows_as_set(ref.source), "different decisions"


@pytest.mark.parametrize("name", PRODUCT_MODELS)
def test_product_unreduced_settings_equal_timm(name):
    model = MODEL_FACTORIES[name]()
    x = images_for(model)
    with torch.no_grad():
        expected = model(x)
        patched = tomecis.patch(model, method="none")
        assert torch.equal(patched(x), expected)
        for method in ("pitome", "tofu", "evit", "tome", "tomecis"):
            tomecis.set_reduction(patched, method, keep=0.9)
            patched(x)  # reduce once, then back to nothing reduced
            for kw in [dict(keep=1.0)] + ([] if method == "evit" else [dict(r=0)]):
                tomecis.set_reduction(patched, method, **kw)
                assert torch.equal(patched(x), expected), f"{method} {kw}"
                n0 = model.patch_embed.num_patches + 1
                assert patched.merge_state.tokens == [n0] * len(model.blocks)


# --------------------------------------------------------------------------- output order, on the product
# One-block models: block 0 prunes (ToFu: 0 <= 1 // 2), runs PiToMe's first-half matching
# (0 < ceil(1 / 2)) and is EViT's only reducing block (1 // 4 = 1 // 2 = 3 // 4 = 0). The traced source map
# [B, N_out, N0] says which input positions each output token holds, in output order.


def one_block(method, **kw):
    model = tiny_vit(depth=1)
    x = images_for(model, batch=3, seed=1)
    patched = tomecis.patch(copy.deepcopy(model), method=method, trace_source=True, **kw)
    with torch.no_grad():
        patched(x)
    members = [[row.nonzero().flatten().tolist() for row in sample] for sample in patched.merge_state.source]
    return model, x, members


def first_block_keys_and_attention(model, x):
    """Float64 keys (averaged over heads) and class attention (averaged over heads) of block 0."""
    m = copy.deepcopy(model).double()
    with torch.no_grad():
        y = m.blocks[0].norm1(m._pos_embed(m.patch_embed(x.double())))
        B, N, C = y.shape
        H = m.blocks[0].attn.num_heads
        q, k, _ = m.blocks[0].attn.qkv(y).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
        P = (q @ k.transpose(-1, -2) * (C // H) ** -0.5).softmax(-1)
    return k.mean(1), P[:, :, 0].mean(1)


def test_product_tofu_prune_order():
    """[unmerged A (even positions) in increasing position, then every B (odd) in position order]."""
    _, _, members = one_block("tofu", r=8)
    for rows in members:
        assert all(len(m) == 1 for m in rows), "a prune block merged"
        pos = [m[0] for m in rows]
        kept_a, b = pos[:-32], pos[-32:]
        assert b == list(range(1, 65, 2))
        assert len(kept_a) == 33 - 8 and kept_a[0] == 0
        assert kept_a == sorted(kept_a) and all(p % 2 == 0 for p in kept_a)


def test_product_evit_order():
    """[class, the kept tokens by descending class attention, the fused token of all dropped]."""
    model, x, members = one_block("evit", keep=0.5)
    _, a = first_block_keys_and_attention(model, x)
    for rows, att in zip(members, a):
        assert rows[0] == [0] and len(rows) == 1 + 32 + 1
        kept = [m[0] for m in rows[1:-1]]
        assert all(len(m) == 1 for m in rows[1:-1])
        values = att[kept]
        assert (values[1:] <= values[:-1] + 1e-7).all(), "kept tokens not in descending attention"
        dropped = sorted(set(range(1, 65)) - set(kept))
        assert rows[-1] == dropped
        assert att[dropped].max() <= values.min() + 1e-7


def test_product_pitome_first_half_order():
    """[class, unmerged A by their best similarity descending, B in energy order (order[1::2])]."""
    r = 8
    model, x, members = one_block("pitome", r=r)
    keys, _ = first_block_keys_and_attention(model, x)
    for rows, kb in zip(members, keys):
        k = F.normalize(kb[1:], dim=-1)
        sim = k @ k.T
        energy = F.elu(sim - 0.75).mean(-1)  # margin 0.75 - 0.75 * 0 / 1
        order = (energy.argsort(descending=True, stable=True) + 1).tolist()
        A, B = order[0::2], order[1::2]
        assert rows[0] == [0] and len(rows) == 1 + (len(A) - r) + len(B)
        unmerged = [m[0] for m in rows[1 : 1 + len(A) - r]]
        assert set(unmerged) <= set(A) and all(len(m) == 1 for m in rows[1 : 1 + len(A) - r])
        dst = [[p for p in m if p in B] for m in rows[1 + len(A) - r :]]
        assert all(len(d) == 1 for d in dst) and [d[0] for d in dst] == B
        best = sim[[p - 1 for p in unmerged]][:, [p - 1 for p in B]].max(-1).values
        assert (best[1:] <= best[:-1] + 1e-7).all(), "unmerged A not by descending best similarity"
        merged = set(A) - set(unmerged)
        assert len(merged) == r
        all_best = sim[[p - 1 for p in A]][:, [p - 1 for p in B]].max(-1).values
        assert min(all_best[A.index(p)] for p in merged) >= best.max() - 1e-7


@pytest.mark.parametrize(
    "method, kw", [("pitome", dict(keep=0.9)), ("tofu", dict(r=8)), ("evit", dict(keep=0.7))]
)
def test_product_never_touches_the_class_token(deit_tiny, method, kw):
    model = tomecis.patch(copy.deepcopy(deit_tiny), method=method, trace_source=True, **kw)
    with torch.no_grad():
        model(images_for(deit_tiny, batch=3))
    source = model.merge_state.source
    assert torch.equal(source[:, 0], F.one_hot(torch.zeros(3, dtype=torch.long), 197).to(source.dtype))
    assert (source[:, 1:, 0] == 0).all()
