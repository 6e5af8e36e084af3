"""The patched model against the float64 explicit-attention reading of SPEC.md (tests/reference.py)."""

import copy

import pytest
import timm
import torch
from conftest import CPU_AUTOCAST_DTYPES, MODEL_FACTORIES, tiny_vit
from reference import reference_forward
from timm.models.vision_transformer import VisionTransformer

import tomecis

R_SPECS = [1, 8, 13, 16, (8, -1), [20, 0, 4, 12, 9]]


def images_for(model, batch=2, seed=0):
    h, w = model.patch_embed.img_size
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=list(MODEL_FACTORIES))
def model_pair(request):
    """(unpatched, patched-with-source-tracing) copies of the same random-weight model."""
    base = MODEL_FACTORIES[request.param]()
    return base, tomecis.patch(copy.deepcopy(base), r=0, trace_source=True)


@pytest.mark.parametrize("r", R_SPECS, ids=str)
@pytest.mark.parametrize("mode", ["tomecis", "tome"])
def test_matches_float64_reference(model_pair, r, mode):
    base, patched = model_pair
    patched.merge_state.mode = mode
    patched.r = r
    x = images_for(base)
    with torch.no_grad():
        logits = patched(x)
    state = patched.merge_state
    ref = reference_forward(base, x, state.schedule, mode=mode)
    rel = (logits.double() - ref.logits).abs().max() / ref.logits.abs().max()
    assert rel < 1e-4, f"logits differ by {rel:.2e} relative"
    assert state.tokens == ref.tokens
    if state.source is None:  # nothing merged
        assert ref.tokens[-1] == ref.source.shape[1] == ref.source.shape[2]
    else:
        assert torch.equal(state.source.double(), ref.source), "different merge decisions"
        assert torch.equal(state.size[..., 0].double(), ref.size)


def test_tomecis_and_tome_differ():
    model = MODEL_FACTORIES["deit_tiny"]()
    x = images_for(model)
    with torch.no_grad():
        cis = tomecis.patch(copy.deepcopy(model), r=13, mode="tomecis")(x)
        tome = tomecis.patch(copy.deepcopy(model), r=13, mode="tome")(x)
    assert (cis - tome).abs().max() > 1e-3 * cis.abs().max()


@pytest.mark.parametrize("name", list(MODEL_FACTORIES))
def test_r0_equals_unpatched_timm(name):
    model = MODEL_FACTORIES[name]()
    x = images_for(model)
    with torch.no_grad():
        expected = model(x)
        patched = tomecis.patch(model, r=0)
        assert torch.equal(patched(x), expected)
        patched.r = 8
        patched(x)
        patched.r = 0  # back to 0 without re-patching
        assert torch.equal(patched(x), expected)


@pytest.mark.parametrize("name", list(MODEL_FACTORIES))
@pytest.mark.parametrize("r", [4, 16, (12, 0.5), [30, 30, 30]], ids=str)
def test_token_counts_sizes_and_prefix_tokens(name, r):
    model = tomecis.patch(MODEL_FACTORIES[name](), r=r, trace_source=True)
    protected = model.num_prefix_tokens
    x = images_for(model, batch=3)
    with torch.no_grad():
        model(x)
    state = model.merge_state
    n = model.patch_embed.num_patches + protected
    for r_l, after in zip(state.schedule, state.tokens):
        assert after == n - min(r_l, (n - protected) // 2)
        n = after
    assert state.size.sum(dim=1).flatten().tolist() == [model.patch_embed.num_patches + protected] * 3
    for p in range(protected):  # class (and distillation) token: first, alone, itself
        assert state.source[:, p].argmax(-1).tolist() == [p] * 3
        assert state.size[:, p, 0].tolist() == [1.0] * 3


def test_sizes_reset_at_every_forward():
    model = tomecis.patch(MODEL_FACTORIES["vit_layerscale_qknorm"](), r=4)
    x = images_for(model)
    with torch.no_grad():
        first = model(x)
        second = model(x)
    assert torch.equal(first, second)


def test_intermediates_reset_sizes_and_need_nlc_when_merging():
    plain = tiny_vit()
    model = tomecis.patch(copy.deepcopy(plain), r=4)
    x = images_for(model)
    final = model.forward_features(x)
    layers = model.forward_intermediates(x, indices=[0, 1], output_fmt="NLC", intermediates_only=True)
    assert [y.shape[1] for y in layers] == [
        n - 1 for n in model.merge_state.tokens[:2]
    ]  # class token split off
    torch.testing.assert_close(
        model.forward_intermediates(x, output_fmt="NLC")[0], final
    )  # sizes reset each call
    with pytest.raises(ValueError, match="output_fmt='NLC'"):
        model.get_intermediate_layers(x, reshape=True)
    model.r = 0
    for mine, timms in zip(
        model.get_intermediate_layers(x, n=2, reshape=True),
        plain.get_intermediate_layers(x, n=2, reshape=True),
    ):
        torch.testing.assert_close(mine, timms)


@pytest.mark.parametrize("dtype", CPU_AUTOCAST_DTYPES)
def test_autocast_gives_finite_logits(dtype):
    model = tomecis.patch(MODEL_FACTORIES["deit_small"](), r=16)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        logits = model(images_for(model))
    assert torch.isfinite(logits).all()
    assert model.merge_state.tokens[-1] == 197 - 16 * 11 - 10  # the last block is clamped to (21 - 1) // 2


@pytest.mark.parametrize("dtype", CPU_AUTOCAST_DTYPES)
def test_tiny_value_norms_give_no_nan(dtype):
    """Values ~1e-30 underflow to 0 in half precision: every score is 0, the merge must not divide by 0."""
    model = tomecis.patch(tiny_vit(), r=8)
    with torch.no_grad():
        for block in model.blocks:
            c = block.attn.qkv.out_features // 3
            block.attn.qkv.weight[2 * c :] *= 1e-30
            block.attn.qkv.bias[2 * c :] *= 1e-30
        x = images_for(model)
        assert torch.isfinite(model(x)).all()
        with torch.autocast("cpu", dtype=dtype):
            assert torch.isfinite(model(x)).all()


# --------------------------------------------------------------------------- schedules and errors


def test_schedule_forms():
    assert tomecis.resolve_schedule(3, 4) == [3, 3, 3, 3]
    assert tomecis.resolve_schedule((8, -1), 12) == [16, 14, 13, 11, 10, 8, 7, 5, 4, 2, 1, 0]
    assert tomecis.resolve_schedule((8, 1), 3) == [0, 8, 16]
    assert tomecis.resolve_schedule((8, 0.0), 5) == [8] * 5
    assert tomecis.resolve_schedule([1, 2], 4) == [1, 2, 0, 0]


@pytest.mark.parametrize(
    "r, message",
    [
        (-1, ">= 0"),
        ((8, 2.0), "inflection"),
        ((1, 2, 3), "tuple"),
        ([1] * 13, "12 blocks"),
        ([1, -2], "r\\[1\\]"),
        ("8", "not"),
    ],
)
def test_bad_r_is_rejected_with_the_culprit_named(r, message):
    model = tomecis.patch(timm.create_model("deit_tiny_patch16_224"), r=0)
    with pytest.raises((ValueError, TypeError), match=message):
        model.r = r


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown method 'dtc'"):
        tomecis.patch(tiny_vit(), method="dtc")
    with pytest.raises(ValueError, match="unknown method 'dtc'"):
        tomecis.patch(tiny_vit(), mode="dtc")  # the old keyword


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: timm.create_model("resnet18"), "VisionTransformer"),
        (lambda: tiny_vit(class_token=False, global_pool="avg"), "class token"),
        (lambda: tiny_vit(reg_tokens=4), "register tokens"),
        (lambda: tiny_vit(global_pool="avg"), "global_pool"),
        (
            lambda: VisionTransformer(
                img_size=32,
                patch_size=8,
                embed_dim=32,
                depth=2,
                num_heads=2,
                block_fn=timm.models.vision_transformer.ResPostBlock,
            ),
            "ResPostBlock",
        ),
    ],
    ids=["resnet", "no-cls", "registers", "avg-pool", "respost"],
)
def test_unsupported_models_name_what_is_missing(make, message):
    with pytest.raises((TypeError, ValueError), match=message):
        tomecis.patch(make())


def test_patching_twice_updates_settings():
    model = tomecis.patch(tiny_vit(), r=2)
    tomecis.patch(model, r=5, mode="tome")
    assert model.r == 5 and model.merge_state.mode == "tome"
    assert all(b._merge_state is model.merge_state for b in model.blocks)


@pytest.mark.parametrize("mode", ["tomecis", "tome"])
def test_explicit_attention_formulation_agrees_with_fused(mode):
    base = MODEL_FACTORIES["deit_tiny_distilled"]()
    x = images_for(base)
    with torch.no_grad():
        fused = tomecis.patch(copy.deepcopy(base), r=13, mode=mode, trace_source=True)
        explicit = tomecis.patch(
            copy.deepcopy(base), r=13, mode=mode, trace_source=True, attention="explicit"
        )
        torch.testing.assert_close(fused(x), explicit(x), rtol=1e-4, atol=1e-5)
    assert torch.equal(fused.merge_state.source, explicit.merge_state.source)


@pytest.mark.parametrize(
    "method, amount", [("evit", {"keep": 0.7}), ("pitome", {"keep": 0.9}), ("tofu", {"r": 13})]
)
def test_explicit_attention_agrees_with_fused_for_the_other_methods(method, amount):
    """EViT reads the class row from the full matrix under ``attention="explicit"`` and from the class
    query alone when fused; PiToMe and ToFu run plain attention either way."""
    base = MODEL_FACTORIES["deit_tiny"]()
    x = images_for(base)
    with torch.no_grad():
        fused = tomecis.set_reduction(tomecis.patch(copy.deepcopy(base), trace_source=True), method, **amount)
        explicit = tomecis.patch(copy.deepcopy(base), trace_source=True, attention="explicit")
        tomecis.set_reduction(explicit, method, **amount)
        torch.testing.assert_close(fused(x), explicit(x), rtol=1e-4, atol=1e-5)
    assert torch.equal(fused.merge_state.source, explicit.merge_state.source)
    assert fused.merge_state.tokens == explicit.merge_state.tokens


def test_distilled_models_refuse_the_methods_without_a_distillation_token():
    model = tomecis.patch(MODEL_FACTORIES["deit_tiny_distilled"]())
    for method in ("pitome", "tofu", "evit"):
        with pytest.raises(ValueError, match=f"method '{method}' supports models with a class token only"):
            tomecis.set_reduction(model, method, keep=0.9)
