"""MCTF (issue #29) against the clean-room reading of METHODS.md in ``reference_mctf.py``, on random-weight
ViTs: METHODS.md's token-count traces, the reference's own checks, the patched model against it (logits,
token counts, source maps: decisions and output order), the class token, the unreduced setting, refusals,
and the separate q/k and v products the block computes for it."""

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import MODEL_FACTORIES, tiny_vit
from reference_mctf import mctf_count, mctf_forward

import tomecis
from tomecis import names
from tomecis.methods import mctf

TRACES = {
    16: [197, 197, 181, 165, 149, 133, 117, 101, 85, 69, 53, 37, 21],
    8: [197, 197, 189, 181, 173, 165, 157, 149, 141, 133, 125, 117, 109],
    100: [197, 197, 99, 50, 26, 14, 10, 10, 10, 10, 10, 10, 10],
}


def images_for(model, batch=2, seed=0):
    h, w = model.patch_embed.img_size
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def deit_tiny():
    return MODEL_FACTORIES["deit_tiny"]()


# --------------------------------------------------------------------------- counts


@pytest.mark.parametrize("r", sorted(TRACES))
def test_count_gives_the_traces_of_methods_md(r):
    tokens = [197]
    for index in range(12):
        tokens.append(tokens[-1] - mctf.count(tokens[-1], index, 12, r, None))
    assert tokens == TRACES[r]
    ref = [197]
    for index in range(12):
        ref.append(ref[-1] - mctf_count(ref[-1], index, r))
    assert ref == TRACES[r]


def test_count_rule_order_and_small_counts():
    assert mctf.count(197, 0, 12, 16, None) == 0  # block 0 never reduces
    assert mctf.count(11, 5, 12, 16, None) == 1  # r' = 11 - 10 = 1, not < 1
    assert mctf.count(10, 5, 12, 16, None) == 0  # r' = 0: int(9 * 0) = 0
    assert mctf.count(9, 5, 12, 16, None) == 0  # r' = -1: the code would fail; a plain block here
    assert mctf.count(30, 5, 12, 25, None) == 14  # min(20, 29 // 2): the half cap after the 10-token cap
    assert mctf.count(197, 3, 12, 0, None) == 0
    assert mctf.count(197, 3, 12, 0, 0.9) == 0  # no keep ratio
    assert all(
        mctf.count(n, 1, 12, r, None) == max(0, min(r, n - 10, (n - 1) // 2))
        for n in range(10, 200)
        for r in range(1, 120)
    )


@pytest.mark.parametrize("r", sorted(TRACES))
def test_product_traces_on_deit_tiny(r):
    model = tomecis.patch(timm.create_model("deit_tiny_patch16_224").eval(), method="mctf", r=r)
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    assert [197] + model.merge_state.tokens == TRACES[r]


# --------------------------------------------------------------------------- the reference itself


def test_reference_unreduced_equals_timm(deit_tiny):
    x = images_for(deit_tiny)
    with torch.no_grad():
        expected = copy.deepcopy(deit_tiny).double()(x.double())
    out = mctf_forward(deit_tiny, x, 0)
    torch.testing.assert_close(out.logits, expected, rtol=1e-12, atol=1e-12)
    assert out.tokens == [197] * 12


def test_reference_keeps_class_token_and_every_input_token():
    model = MODEL_FACTORIES["vit_layerscale_qknorm"]()
    out = mctf_forward(model, images_for(model, batch=3), 8)
    assert out.tokens == [65, 57, 49, 41, 33, 25]
    assert torch.equal(out.source[:, 0], F.one_hot(torch.zeros(3, dtype=torch.long), 65).double())
    assert torch.equal(out.source.sum(dim=1), torch.ones(3, 65, dtype=torch.float64))
    assert torch.equal(out.size, out.source.sum(dim=-1))


# --------------------------------------------------------------------------- the product against it

PRODUCT_MODELS = ["deit_tiny", "vit_layerscale_qknorm"]


@pytest.fixture(scope="module", params=PRODUCT_MODELS)
def models(request):
    base = MODEL_FACTORIES[request.param]()
    fp32 = tomecis.patch(copy.deepcopy(base), method="none", trace_source=True)
    fp64 = tomecis.patch(copy.deepcopy(base).double(), method="none", trace_source=True)
    return base, fp32, fp64


@pytest.mark.parametrize("r", [1, 2, 8, 16, 40])
def test_product_matches_reference(models, r):
    """The product against the reference run in the same precision: token counts and source maps
    (decisions and output order) exactly; logits to 1e-6 in float64 (the product takes log s of float32
    sizes) and 1e-4 relative in fp32. Each precision against its own: with these peaked random weights a
    near-tie can fall either way between fp32 and float64 (deit_tiny, r 16, image 0: the fp32 product and
    the fp32 reference merge alike, the float64 ones alike, the two precisions differently)."""
    base, fp32, fp64 = models
    x = images_for(base)
    for patched, dtype in ((fp64, torch.float64), (fp32, torch.float32)):
        ref = mctf_forward(base, x, r, dtype=dtype)
        tomecis.set_reduction(patched, "mctf", r=r)
        with torch.no_grad():
            logits = patched(x.to(dtype))
        state = patched.merge_state
        assert state.tokens == ref.tokens
        assert torch.equal(state.source.to(dtype), ref.source), (
            f"{dtype}: different decisions or output order"
        )
        assert torch.equal(state.size.to(dtype).squeeze(-1), ref.size)
        if dtype == torch.float64:
            torch.testing.assert_close(logits, ref.logits, rtol=1e-6, atol=1e-6)
        else:
            rel = (logits.double() - ref.logits.double()).abs().max() / ref.logits.abs().max()
            assert rel < 1e-4, f"logits differ by {rel:.2e} relative"


def test_product_never_touches_the_class_token_and_conserves_tokens(deit_tiny):
    model = tomecis.patch(copy.deepcopy(deit_tiny), method="mctf", r=16, trace_source=True)
    with torch.no_grad():
        model(images_for(deit_tiny, batch=3))
    source, size = model.merge_state.source, model.merge_state.size
    assert torch.equal(source[:, 0], F.one_hot(torch.zeros(3, dtype=torch.long), 197).float())
    assert (source[:, 1:, 0] == 0).all()
    assert torch.equal(source.sum(dim=1), torch.ones(3, 197))  # every input token in exactly one output
    assert torch.equal(size.squeeze(-1), source.sum(dim=-1))


def test_one_block_output_order_and_one_step_ahead_attention():
    """Depth 2: block 1 reduces. Its output is [A_keep by position (class first), kept B]; A' rows sum to 1."""
    model = tomecis.patch(tiny_vit(depth=2), method="mctf", r=9, trace_source=True)
    seen = {}
    original = model.blocks[1].attn.apply_probs

    def spy(x, attn):
        seen["attn"] = attn
        return original(x, attn)

    model.blocks[1].attn.apply_probs = spy
    with torch.no_grad():
        model(images_for(model, batch=3, seed=2))
    assert model.merge_state.tokens == [65, 56]
    attn = seen["attn"]
    assert attn.shape == (3, 3, 56, 56)
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, 3, 56), rtol=1e-5, atol=1e-5)
    r2 = 9 - 9 // 2
    for rows in model.merge_state.source:
        groups = [row.nonzero().flatten().tolist() for row in rows]
        kept_b = groups[len(groups) - (32 - r2) :]
        assert groups[0] == [0], "the class token moved or merged"
        assert all(sum(p % 2 for p in g) == 1 for g in kept_b), "a kept B token is not last with its own B"
        assert sorted(p for g in groups for p in g) == list(range(65))


def test_unreduced_settings_equal_timm(deit_tiny):
    x = images_for(deit_tiny)
    with torch.no_grad():
        expected = deit_tiny(x)
        patched = tomecis.patch(copy.deepcopy(deit_tiny), method="mctf", r=16)
        patched(x)
        tomecis.set_reduction(patched, "mctf", r=0)
        assert torch.equal(patched(x), expected)
        assert patched.merge_state.tokens == [197] * 12


def test_blocks_that_remove_nothing_keep_proportional_attention():
    """r = 100 leaves 10 tokens from block 6 on; those blocks still add log s (prop_attn "always"): the
    result differs from the same model with proportional attention off."""
    model = tomecis.patch(timm.create_model("deit_tiny_patch16_224").eval(), method="mctf", r=100)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        on = model(x)
        model.merge_state.prop_attn = False
        off = model(x)
    assert not torch.allclose(on, off)
    assert names.METHODS["mctf"].prop_attn == "always" and names.METHODS["mctf"].stage == "before_attn"


def test_refusals():
    with pytest.raises(ValueError, match="method 'mctf' supports models with a class token only"):
        tomecis.patch(timm.create_model("deit_tiny_distilled_patch16_224"), method="mctf", r=8)
    with pytest.raises(ValueError, match="method 'mctf' takes --r, not --keep"):
        names.check_amount("mctf", None, 0.9)
    model = tomecis.patch(timm.create_model("deit_tiny_patch16_224"), r=0)
    with pytest.raises(ValueError, match="method 'mctf' takes --r, not --keep"):
        tomecis.set_reduction(model, "mctf", keep=0.9)


def test_separate_qk_and_v_products_equal_the_sliced_projection():
    """The block computes q, k (first 2C rows of qkv) and v' (last C rows) as their own products, as MCTF's
    code does; on CPU fp32 they equal the slices of the full projection bit for bit (measured on the real
    DeiT-Tiny photos too), and they need 2/3 and 1/3 of its work."""
    attn = tomecis.patch(timm.create_model("deit_tiny_patch16_224").eval(), r=0).blocks[2].attn
    y = torch.randn(4, 181, 192)
    with torch.no_grad():
        full = attn.qkv(y)
        assert torch.equal(attn._qkv_rows(y, 0, 2), full[..., :384])
        assert torch.equal(attn._qkv_rows(y, 2, 1), full[..., 384:])
