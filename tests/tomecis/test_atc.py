"""ATC (issue #29, ``../shared/METHODS.md`` "atc") against the clean-room reading in ``reference_atc.py``:
cluster counts and METHODS.md's token-count traces, the patched model against the reference on random
ViTs (token counts, clusters, logits), the class token, the unreduced setting, refusals; and on the real
DeiT-Tiny photos (slow, ../shared/assets), the same top-1 image by image at keep 0.9, 0.8 and 0.7."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import MODEL_FACTORIES, tiny_vit
from reference_atc import atc_forward

import tomecis
from tomecis.methods import atc


def images_for(model, batch=2, seed=0):
    h, w = model.patch_embed.img_size
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def rows_as_set(source):
    """Per image, the set of input-position groups its output tokens hold (order aside)."""
    return [{tuple(row.nonzero().flatten().tolist()) for row in rows} for rows in source]


@pytest.fixture(scope="module")
def deit_tiny():
    return MODEL_FACTORIES["deit_tiny"]()  # random weights, 197 tokens, 12 blocks


# --------------------------------------------------------------------------- counts and traces


@pytest.mark.parametrize(
    "keep, expected",
    [(0.9, [176, 158, 142]), (0.8, [156, 125, 100]), (0.7, [137, 96, 67]), (0.1, [19, 1, 0])],
)
def test_stage_cluster_counts_are_int_of_p_times_keep_powers(keep, expected):
    assert [atc.stage_clusters(196, keep, s) for s in range(3)] == expected
    assert atc.locations(12) == (3, 6, 9)


TRACES = {  # METHODS.md: tokens entering blocks 0 ... 11, then the final norm
    0.9: [197, 197, 197, 197, 177, 177, 177, 159, 159, 159, 143, 143, 143],
    0.7: [197, 197, 197, 197, 138, 138, 138, 97, 97, 97, 68, 68, 68],
    0.1: [197, 197, 197, 197, 20, 20, 20, 2, 2, 2, 2, 2, 2],
}


@pytest.mark.parametrize("keep", sorted(TRACES))
def test_traces_of_methods_md_on_a_deit_tiny_shaped_model(keep):
    model = tomecis.patch(timm.create_model("deit_tiny_patch16_224").eval(), method="atc", keep=keep)
    with torch.no_grad():
        model(images_for(model))
    assert [197] + model.merge_state.tokens == TRACES[keep]


def test_reference_traces_match_methods_md(deit_tiny):
    for keep in (0.7, 0.1):
        assert [197] + atc_forward(deit_tiny, images_for(deit_tiny, batch=1), keep).tokens == TRACES[keep]


def test_count_rules():
    # no stage, or K_s = 0 (keep 0.1 at block 9): nothing; K capped at N - 1
    assert atc.count(197, 2, 12, 0, 0.7, patches=196) == 0
    assert atc.count(2, 9, 12, 0, 0.1, patches=196) == 0
    assert atc.count(197, 3, 12, 0, 0.7, patches=196) == 196 - 137
    assert atc.count(50, 6, 12, 0, 0.7, patches=196) == 0  # K_1 = 96 > 49: K = N - 1
    assert atc.count(197, 3, 12, 0, None, patches=196) == 0
    assert atc.count(197, 3, 12, 0, 1.0, patches=196) == 0
    # two stages on one block (depth 2: 0, 1, 1): the later stage's count wins
    assert atc.clusters_at(1, 2, 100, 0.5) == 12 and atc.clusters_at(0, 2, 100, 0.5) == 50
    with pytest.raises(ValueError, match="method 'atc' needs the model's patch count"):
        atc.count(197, 3, 12, 0, 0.7)


# --------------------------------------------------------------------------- product against reference

CASES = [
    ("tiny_vit", 0.7),
    ("tiny_vit", 0.5),
    ("deit_tiny", 0.9),
    ("deit_tiny", 0.7),
    ("vit_layerscale_qknorm", 0.6),
]


@pytest.mark.parametrize("name, keep", CASES, ids=str)
def test_product_matches_reference(name, keep):
    """float64 product = float64 reference (distances in float32 in both, as METHODS.md says): same token
    counts, same clusters and output order (source map), logits to 1e-6 (the product keeps sizes, and so
    takes ``log s``, in float32); fp32 product: same counts and clusters, logits to 1e-4 relative."""
    base = tiny_vit() if name == "tiny_vit" else MODEL_FACTORIES[name]()
    x = images_for(base, batch=3)
    ref = atc_forward(base, x, keep)
    for dtype in (torch.float64, torch.float32):
        patched = tomecis.patch(copy.deepcopy(base).to(dtype), method="atc", keep=keep, trace_source=True)
        with torch.no_grad():
            logits = patched(x.to(dtype))
        state = patched.merge_state
        assert state.tokens == ref.tokens
        if dtype == torch.float64:
            torch.testing.assert_close(logits, ref.logits, rtol=1e-6, atol=1e-6)
            assert torch.equal(state.source.double(), ref.source), "different clusters or output order"
            torch.testing.assert_close(state.size.squeeze(-1).double(), ref.size)
        else:
            rel = (logits.double() - ref.logits).abs().max() / ref.logits.abs().max()
            assert rel < 1e-4, f"logits differ by {rel:.2e} relative"
            assert rows_as_set(state.source) == rows_as_set(ref.source), "different clusters"


def test_class_token_is_its_own_cluster_of_size_one(deit_tiny):
    model = tomecis.patch(copy.deepcopy(deit_tiny), method="atc", keep=0.7, trace_source=True)
    with torch.no_grad():
        model(images_for(deit_tiny, batch=3))
    state = model.merge_state
    assert torch.equal(state.source[:, 0], F.one_hot(torch.zeros(3, dtype=torch.long), 197).float())
    assert (state.source[:, 1:, 0] == 0).all() and (state.size[:, 0] == 1).all()
    assert torch.equal(state.source.sum(1), torch.ones(3, 197))  # a partition of the input tokens
    assert torch.equal(state.size.squeeze(-1), state.source.sum(-1))
    first = state.source[:, 1:].argmax(-1)  # clusters in order of their smallest member
    assert (first[:, 1:] > first[:, :-1]).all()


def test_reduce_leaves_the_class_row_and_averages_by_size():
    """One reducing block's ``reduce`` on its own: row 0 is the input's row 0 bit for bit; a cluster row is
    the size-weighted mean of its members."""
    from tomecis.methods import BlockView
    from tomecis.patch import MergeState

    torch.manual_seed(0)
    x, metric = torch.randn(2, 9, 5), torch.randn(2, 9, 4)
    state = MergeState(schedule=[0] * 4, method="atc", keep=0.5, trace_source=True, patches=8)
    state.size = torch.rand(2, 9, 1) + 1.0
    state.size[:, 0] = 1.0  # the class token is always its own cluster of size 1
    state.source = torch.eye(9)[None].repeat(2, 1, 1)
    size_in = state.size.clone()
    out = atc.reduce(state.spec, BlockView(x, metric, None, None, 1, 4, 5), state)
    assert out.shape == (2, 4, 5) and torch.equal(out[:, 0], x[:, 0])
    for b in range(2):
        for row, members in enumerate(state.source[b]):
            idx = members.nonzero().flatten()
            w = size_in[b, idx]
            torch.testing.assert_close(out[b, row], (x[b, idx] * w).sum(0) / w.sum())
            torch.testing.assert_close(state.size[b, row, 0], w.sum())


def test_keep_one_is_timm_and_refusals(deit_tiny):
    x = images_for(deit_tiny)
    with torch.no_grad():
        expected = deit_tiny(x)
        patched = tomecis.patch(copy.deepcopy(deit_tiny), method="atc", keep=0.7)
        patched(x)  # reduce once, then keep 1
        tomecis.set_reduction(patched, "atc", keep=1.0)
        assert torch.equal(patched(x), expected)
    assert patched.merge_state.tokens == [197] * 12
    with pytest.raises(ValueError, match="method 'atc' takes --keep, not --r"):
        tomecis.set_reduction(patched, "atc", r=8)
    distilled = MODEL_FACTORIES["deit_tiny_distilled"]()
    with pytest.raises(ValueError, match="method 'atc' supports models with a class token only"):
        tomecis.patch(distilled, method="atc", keep=0.7)


# --------------------------------------------------------------------------- real photos

N_PHOTOS = 64  # spread evenly over the 500 photos
BATCH = 32


@pytest.mark.assets
@pytest.mark.slow
@pytest.mark.parametrize("keep", [0.9, 0.8, 0.7])
def test_product_predicts_as_reference_on_photos(deit_tiny_real, sample_photos, keep):
    """fp32 product against the float64 reference, image by image: the same top-1. Images whose clusters
    differ (near-ties between distances that precision decides) are printed."""
    images, labels = sample_photos
    index = torch.tensor([i * len(images) // N_PHOTOS for i in range(N_PHOTOS)])
    images, labels = images[index], labels[index]
    patched = tomecis.patch(copy.deepcopy(deit_tiny_real), method="atc", keep=keep, trace_source=True)
    mine, theirs, split = [], [], []
    for i in range(0, len(images), BATCH):
        x = images[i : i + BATCH]
        with torch.no_grad():
            logits = patched(x)
        ref = atc_forward(deit_tiny_real, x, keep)
        assert patched.merge_state.tokens == ref.tokens
        mine.append(logits.argmax(-1))
        theirs.append(ref.logits.argmax(-1))
        split += [
            i + j
            for j, (a, b) in enumerate(zip(rows_as_set(patched.merge_state.source), rows_as_set(ref.source)))
            if a != b
        ]
    mine, theirs = torch.cat(mine), torch.cat(theirs)
    print(
        f"\ndeit_tiny atc keep {keep} on {len(images)} photos: top-1 "
        f"{100.0 * (mine == labels).double().mean().item():.2f}% (reference "
        f"{100.0 * (theirs == labels).double().mean().item():.2f}%), images whose clusters differ {split}"
    )
    assert torch.equal(mine, theirs), (
        f"top-1 differs on photos {(mine != theirs).nonzero().flatten().tolist()}"
    )
