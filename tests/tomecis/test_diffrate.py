"""The ``diffrate`` method (issue #29, ``../shared/METHODS.md`` "diffrate") against the clean-room reading in
``reference_diffrate.py``: the schedule and its token-count traces, refusals, the class token, the order
of the output, sizes, the unreduced setting, random ViTs (logits, sources in output order, sizes) and the
real photos."""

import copy

import pytest
import timm
import torch
from conftest import MODEL_FACTORIES, tiny_vit
from reference_diffrate import diffrate_forward, kept_numbers

import tomecis
from tomecis.methods import diffrate

TRACES = {  # METHODS.md: tokens entering blocks 0 ... 11, then the final norm
    0.9: [197, 177, 160, 144, 130, 117, 106, 96, 87, 79, 72, 65, 59],
    0.7: [197, 138, 97, 68, 48, 34, 24, 17, 12, 9, 7, 5, 4],
    0.99: [197, 195, 194, 193, 192, 191, 190, 189, 188, 187, 186, 185, 184],
}


def images_for(model, batch=2, seed=0):
    h, w = model.patch_embed.img_size
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def deit_tiny_shape():
    return timm.create_model("deit_tiny_patch16_224").eval()  # timm's init: counts only


@pytest.mark.parametrize("keep", sorted(TRACES))
def test_token_count_traces(deit_tiny_shape, keep):
    model = tomecis.patch(copy.deepcopy(deit_tiny_shape), method="diffrate", keep=keep)
    with torch.no_grad():
        logits = model(images_for(deit_tiny_shape))
    assert logits.isfinite().all()
    assert [197] + model.merge_state.tokens == TRACES[keep]
    schedule = diffrate.schedule(196, 12, keep)
    assert schedule == kept_numbers(196, 12, keep)
    assert [merge_keep for _, merge_keep in schedule] == TRACES[keep][1:]
    assert schedule[0][0] == 196 and [p for p, _ in schedule[1:]] == TRACES[keep][1:-1]  # D5, D6


def test_block_zero_prunes_one_token_even_at_keep_near_one():
    assert diffrate.count(197, 0, 12, 0, 0.999) == 1  # prune 197 -> 196, merge nothing
    assert diffrate.count(196, 1, 12, 0, 0.999) == 0  # later blocks: nothing (the sort still runs)


@pytest.mark.parametrize("keep", [0.5, 0.4, 0.1])
def test_refuses_keep_at_or_below_one_half(deit_tiny_shape, keep):
    model = tomecis.patch(copy.deepcopy(deit_tiny_shape))
    with pytest.raises(ValueError, match=rf"'diffrate' cannot take keep={keep:g}.*0\.5 < keep < 1"):
        tomecis.set_reduction(model, "diffrate", keep=keep)
    model.method, model.keep = "diffrate", keep  # set behind set_reduction's back: the forward refuses
    with pytest.raises(ValueError, match="'diffrate' cannot take"):
        model(images_for(deit_tiny_shape, batch=1))


def test_check_follows_the_schedule():
    diffrate.check(None, 0.51, 12, 196)
    diffrate.check(None, 1.0, 12, 196)  # the unreduced model
    diffrate.check(None, 0.5, 2, 196)  # two blocks at 0.5 keep 49 tokens: fine
    with pytest.raises(ValueError, match="block 7"):
        diffrate.check(None, 0.5, 12, 196)


def test_refuses_r_and_distilled_models():
    with pytest.raises(ValueError, match="diffrate.*--keep"):
        tomecis.set_reduction(tomecis.patch(tiny_vit()), "diffrate", r=4)
    with pytest.raises(ValueError, match="'diffrate' supports models with a class token only"):
        tomecis.patch(MODEL_FACTORIES["deit_tiny_distilled"](), method="diffrate", keep=0.9)


def test_unreduced_keep_equals_timm():
    model = MODEL_FACTORIES["deit_tiny"]()
    x = images_for(model)
    with torch.no_grad():
        expected = model(x)
        patched = tomecis.patch(copy.deepcopy(model), method="diffrate", keep=0.9)
        patched(x)
        tomecis.set_reduction(patched, "diffrate", keep=1.0)
        assert torch.equal(patched(x), expected)
    assert patched.merge_state.tokens == [197] * 12


@pytest.mark.parametrize("keep", [0.6, 0.7, 0.9, 0.99])
def test_product_matches_reference_on_random_vits(keep):
    """Logits close, the same token counts, and the source maps equal row for row: the same prunes, the
    same merges and the same output order [class, descending class attention]; sizes close."""
    model = MODEL_FACTORIES["deit_tiny"]()
    x = images_for(model, batch=3)
    patched = tomecis.patch(copy.deepcopy(model), method="diffrate", keep=keep, trace_source=True)
    with torch.no_grad():
        logits = patched(x)
    ref = diffrate_forward(model, x, keep)
    state = patched.merge_state
    assert state.tokens == ref.tokens
    assert torch.equal(state.source.double(), ref.source)
    torch.testing.assert_close(state.size.squeeze(-1).double(), ref.size, rtol=1e-5, atol=1e-5)
    rel = (logits.double() - ref.logits).abs().max() / ref.logits.abs().max()
    assert rel < 1e-4, f"keep {keep}: logits differ by {rel:.1e} relative"


def test_class_token_untouched_and_sizes_are_similarity_scaled():
    model = tomecis.patch(tiny_vit(depth=1), method="diffrate", keep=0.7, trace_source=True)
    with torch.no_grad():
        model(images_for(model, batch=3))
    state = model.merge_state
    assert torch.equal(state.source[:, 0], torch.nn.functional.one_hot(torch.zeros(3).long(), 65).float())
    assert (state.source[:, 1:, 0] == 0).all()
    assert torch.equal(state.size[:, 0], torch.ones(3, 1))  # nothing ever merges into the class token
    members = state.source.sum(dim=-1)  # [3, N]: input tokens each output token holds
    merged = members > 1
    assert merged.any()
    assert (state.size.squeeze(-1)[merged] < members[merged]).all()  # best similarity < 1 scales sizes down
    assert (state.size.squeeze(-1)[~merged] == 1).all()
    assert state.source.sum(dim=(1, 2)).tolist() == [64.0] * 3  # 65 tokens, one pruned in block 0


def test_sort_runs_where_nothing_is_removed():
    """Block 1 at keep 0.99 on a 65-token ViT removes nothing, yet reorders (reduce_at_zero)."""
    model = tiny_vit(depth=2)
    patched = tomecis.patch(copy.deepcopy(model), method="diffrate", keep=0.99, trace_source=True)
    x = images_for(model, batch=2)
    with torch.no_grad():
        patched(x)
    assert patched.merge_state.tokens == [64, 64]
    ref = diffrate_forward(model, x, 0.99)
    assert torch.equal(patched.merge_state.source.double(), ref.source)
    assert tomecis.METHODS["diffrate"].reduce_at_zero


# --------------------------------------------------------------------------- real photos


N_PHOTOS = 64
BATCH = 32


@pytest.mark.slow
@pytest.mark.assets
@pytest.mark.parametrize("keep", [0.7, 0.9, 0.95])
def test_product_predicts_as_reference_on_photos(deit_tiny_real, sample_photos, keep):
    """fp32 product against the float64 reference: the same top-1 and the same merges image by image."""
    images, labels = sample_photos
    index = torch.tensor([i * len(images) // N_PHOTOS for i in range(N_PHOTOS)])
    images, labels = images[index], labels[index]
    patched = tomecis.patch(copy.deepcopy(deit_tiny_real), method="diffrate", keep=keep, trace_source=True)
    mine, theirs, split = [], [], []
    for i in range(0, N_PHOTOS, BATCH):
        x = images[i : i + BATCH]
        with torch.no_grad():
            mine.append(patched(x).argmax(-1))
        ref = diffrate_forward(deit_tiny_real, x, keep)
        assert patched.merge_state.tokens == ref.tokens
        theirs.append(ref.logits.argmax(-1))
        rows = patched.merge_state.source.double()
        split += [i + j for j in range(len(x)) if not torch.equal(rows[j], ref.source[j])]
    mine, theirs = torch.cat(mine), torch.cat(theirs)
    print(
        f"\ndiffrate keep {keep} on {N_PHOTOS} photos: top-1 {100 * (mine == labels).double().mean():.2f}%, "
        f"same top-1 as the reference {(mine == theirs).sum().item()}/{N_PHOTOS}; photos whose merges or "
        f"order differ (near-ties) {split}"
    )
    assert torch.equal(mine, theirs), f"photos {(mine != theirs).nonzero().flatten().tolist()} differ"
