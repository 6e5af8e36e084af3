"""The ``dct`` method (issue #29, ``../shared/METHODS.md`` "dct") against the clean-room reading in
``reference_dct.py``: the transform bit for bit against METHODS.md's FFT recipe (and how far a float64
cosine-matrix DCT is after the float16 rounding), token-count traces, the class token, the unreduced
setting, the float16 rounding under autocast, source maps, refusals, random ViTs and the real photos."""

import copy
import math

import pytest
import timm
import torch
from conftest import CPU_AUTOCAST_DTYPES, MODEL_FACTORIES, tiny_vit
from reference_dct import dct_forward, transform

import tomecis
from tomecis import dct as D
from tomecis.methods import BlockView
from tomecis.methods import dct as dct_method

TRACES = {  # METHODS.md: tokens entering blocks 0 ... 11, then the final norm
    0.9: [197, 178, 161, 145, 131, 118, 107, 97, 88, 80, 73, 66, 60],
    0.7: [197, 139, 98, 69, 49, 35, 25, 18, 13, 10, 8, 6, 5],
    0.5: [197, 99, 50, 26, 14, 8, 5, 3, 2, 2, 2, 2, 2],
}


def images_for(model, batch=2, seed=0):
    h, w = model.patch_embed.img_size
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def deit_tiny_shape():
    return timm.create_model("deit_tiny_patch16_224").eval()  # timm's init: counts only


@pytest.mark.parametrize("keep", sorted(TRACES))
def test_token_count_traces(deit_tiny_shape, keep):
    model = tomecis.patch(copy.deepcopy(deit_tiny_shape), method="dct", keep=keep)
    with torch.no_grad():
        model(images_for(deit_tiny_shape))
    assert [197] + model.merge_state.tokens == TRACES[keep]
    tokens = 197
    for _ in range(12):  # the count function alone gives the same trace
        tokens -= dct_method.count(tokens, 0, 12, 0, keep)
    assert tokens == TRACES[keep][-1]


@pytest.mark.parametrize("keep", [0.5, 0.7, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("tokens", [1, 2, 7, 80, 196])
def test_transform_is_the_fft_recipe_bit_for_bit(keep, tokens):
    """The product's transform (tokens on the last axis of [B, C, T]) equals METHODS.md's recipe (rows in
    the code's channel-major layout) exactly, float16 rounding included."""
    x = 3 * torch.randn(3, tokens, 24, generator=torch.Generator().manual_seed(tokens))
    kept = math.ceil(tokens * keep)
    mine = D.truncate(x, kept).half()
    assert mine.shape == (3, kept, 24)
    assert torch.equal(mine, transform(x, keep, "fft"))


@pytest.mark.parametrize("keep", [0.7, 0.9])
def test_a_float64_matrix_dct_differs_by_rare_float16_steps(keep):
    """A matrix-product DCT is the same function: before rounding within 1e-5 of float64; after the float16
    rounding a few values (here ~0.1-0.2%) land one float16 step apart, which is why the product follows
    the FFT route (METHODS.md, "Precision")."""
    x = 3 * torch.randn(4, 196, 192, generator=torch.Generator().manual_seed(1))
    kept = math.ceil(196 * keep)
    exact = transform(x.double(), keep, "matrix").half()  # float64, then float16
    unrounded = D.truncate(x, kept)
    mine = unrounded.half()
    differ = mine.double() != exact.double()
    assert 0 < differ.sum() < 0.005 * differ.numel()
    steps = (mine.view(torch.int16).int() - exact.view(torch.int16).int()).abs()[differ]
    tiny = ((mine.float() - exact.float()).abs() < 1e-5)[differ]  # near 0 float16 steps are finer
    assert ((steps == 1) | tiny).all()  # neighbouring float16 values: one ulp apart
    print(f"\nkeep {keep}: {differ.sum().item()} of {differ.numel()} float16 values differ from float64's")


def test_dct_round_trip_and_amplitude():
    """Keeping every coefficient gives the tokens back (then float16); truncating multiplies the mean token
    (the DC component) by sqrt(T / T') (D2)."""
    x = torch.randn(2, 50, 8, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(D.truncate(x, 50), x, rtol=0, atol=2e-6)
    constant = torch.ones(1, 50, 3)
    torch.testing.assert_close(D.truncate(constant, 40), torch.full((1, 40, 3), math.sqrt(50 / 40)))


def test_reduce_keeps_the_class_token_and_rounds_to_float16():
    x = 5 * torch.randn(2, 11, 6, generator=torch.Generator().manual_seed(3))
    state = tomecis.patch(tiny_vit(), method="dct", keep=0.7).merge_state
    view = BlockView(x, x, None, None, index=0, depth=1, count=dct_method.count(11, 0, 1, 0, 0.7))
    out = dct_method.reduce(state.spec, view, state)
    assert out.shape == (2, 1 + math.ceil(10 * 0.7), 6) and out.dtype == x.dtype
    assert torch.equal(out[:, 0], x[:, 0])  # bit for bit, never rounded
    assert torch.equal(out[:, 1:], out[:, 1:].half().float())
    view = BlockView(x, x, None, None, index=0, depth=1, count=0)  # T' = T: only the float16 rounding
    out = dct_method.reduce(state.spec, view, state)
    assert torch.equal(out[:, 1:], D.truncate(x[:, 1:], 10).half().float())


@pytest.mark.parametrize("dtype", CPU_AUTOCAST_DTYPES)
def test_the_float16_rounding_happens_under_autocast(dtype):
    model = tomecis.patch(tiny_vit(depth=2), method="dct", keep=0.8)
    x = images_for(model)
    block0 = model.blocks[0]
    seen = []
    hook = block0.register_forward_hook(lambda module, args, out: seen.append(out))
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        model(x)
    hook.remove()
    tokens = seen[0][:, 1:].float()
    assert torch.equal(tokens, tokens.half().float())


def test_unreduced_keep_equals_timm():
    model = MODEL_FACTORIES["deit_tiny"]()
    x = images_for(model)
    with torch.no_grad():
        expected = model(x)
        patched = tomecis.patch(copy.deepcopy(model), method="dct", keep=0.9)
        patched(x)
        tomecis.set_reduction(patched, "dct", keep=1.0)
        assert torch.equal(patched(x), expected)
    assert patched.merge_state.tokens == [197] * 12


def test_source_map_is_the_resampling_footprint():
    model = tomecis.patch(tiny_vit(), method="dct", keep=0.7, trace_source=True)
    with torch.no_grad():
        model(images_for(model, batch=3))
    source = model.merge_state.source  # [3, N, 65]
    assert source.shape[1] == model.merge_state.tokens[-1]
    assert torch.equal(source[:, 0, 0], torch.ones(3)) and (source[:, 1:, 0] == 0).all()
    assert torch.equal(source.sum(dim=1), torch.ones(3, 65))  # a partition: every patch in one token
    owners = source[0, 1:, 1:].argmax(dim=0)
    assert (owners.diff() >= 0).all()  # contiguous, in token order
    one = dct_method.footprint(10, 7, torch.device("cpu"))
    assert one.sum(dim=1).tolist() == [2, 1, 2, 1, 2, 1, 1]  # floor(i * 7 / 10) for i = 0..9


def test_refusals():
    with pytest.raises(ValueError, match="dct.*--keep"):
        tomecis.set_reduction(tomecis.patch(tiny_vit()), "dct", r=4)
    distilled = MODEL_FACTORIES["deit_tiny_distilled"]()
    with pytest.raises(ValueError, match="'dct' supports models with a class token only"):
        tomecis.patch(distilled, method="dct", keep=0.9)


@pytest.mark.parametrize("keep", [0.5, 0.7, 0.9, 0.95])
def test_product_matches_reference_on_random_vits(keep):
    model = MODEL_FACTORIES["deit_tiny"]()
    x = images_for(model)
    patched = tomecis.patch(copy.deepcopy(model), method="dct", keep=keep, attention="explicit")
    with torch.no_grad():
        logits = patched(x)
    ref = dct_forward(model, x, keep)
    assert patched.merge_state.tokens == ref.tokens
    rel = (logits - ref.logits).abs().max() / ref.logits.abs().max()
    assert rel < 1e-3, f"keep {keep}: logits differ by {rel:.1e} relative"


# --------------------------------------------------------------------------- real photos


N_PHOTOS = 64
BATCH = 32


@pytest.mark.slow
@pytest.mark.assets
@pytest.mark.parametrize("keep", [0.7, 0.9, 0.95])
def test_product_predicts_as_reference_on_photos(deit_tiny_real, sample_photos, keep):
    """fp32 product (fused attention) against the fp32 reference (explicit attention, METHODS.md's FFT
    recipe): the same top-1 image by image. The float64 cosine-matrix reference is printed beside it."""
    images, labels = sample_photos
    index = torch.tensor([i * len(images) // N_PHOTOS for i in range(N_PHOTOS)])
    images, labels = images[index], labels[index]
    patched = tomecis.patch(copy.deepcopy(deit_tiny_real), method="dct", keep=keep)
    mine, fft, matrix = [], [], []
    for i in range(0, N_PHOTOS, BATCH):
        x = images[i : i + BATCH]
        with torch.no_grad():
            mine.append(patched(x).argmax(-1))
        fft.append(dct_forward(deit_tiny_real, x, keep).logits.argmax(-1))
        matrix.append(dct_forward(deit_tiny_real, x, keep, "matrix", torch.float64).logits.argmax(-1))
    mine, fft, matrix = torch.cat(mine), torch.cat(fft), torch.cat(matrix)
    print(
        f"\ndct keep {keep} on {N_PHOTOS} photos: top-1 {100 * (mine == labels).double().mean():.2f}%, "
        f"same top-1 as the fp32 FFT reference {(mine == fft).sum().item()}/{N_PHOTOS}, as the float64 "
        f"matrix reference {(mine == matrix).sum().item()}/{N_PHOTOS}"
    )
    assert torch.equal(mine, fft), f"photos {(mine != fft).nonzero().flatten().tolist()} differ"
