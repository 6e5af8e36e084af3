"""MCTF on the real DeiT-Tiny weights and photos (../shared/assets; skipped when absent): the patched model
(fp32, CPU) and the float64 clean-room reference (reference_mctf.py) predict the same class image by image
at r 8, 13 and 16 (issue #29). An image whose top-1 differs passes only as a precision near-tie: the product
in float64 predicts and merges as the float64 reference. Likewise an image whose fp32 merge decisions differ
from the float64 reference's must merge exactly as it (decisions and output order) when the product runs in
float64 (seen on 96 photos: 3 images at r 8, 4 at r 13, 1 at r 16, all with the same top-1; on 3 of them
the fp32 reference, which sums in another order, splits differently again). Prints top-1 and the
agreement, for the record."""

import copy

import pytest
import torch
from reference_mctf import mctf_forward

import tomecis

pytestmark = [pytest.mark.assets, pytest.mark.slow]

N_PHOTOS = 96  # spread evenly over the 500 photos (and so over the 500 classes)
BATCH = 32


@pytest.fixture(scope="module")
def photos(sample_photos):
    images, labels = sample_photos
    index = torch.tensor([i * len(images) // N_PHOTOS for i in range(N_PHOTOS)])
    return images[index], labels[index]


def groups(source):
    return [{tuple(row.nonzero().flatten().tolist()) for row in rows} for rows in source]


@pytest.mark.parametrize("r", [8, 13, 16])
def test_product_predicts_as_reference_on_photos(deit_tiny_real, photos, r):
    images, labels = photos
    patched = tomecis.patch(copy.deepcopy(deit_tiny_real), method="mctf", r=r, trace_source=True)
    mine, theirs, split, worst = [], [], [], 0.0
    for i in range(0, len(images), BATCH):
        x = images[i : i + BATCH]
        with torch.no_grad():
            logits = patched(x)
        ref = mctf_forward(deit_tiny_real, x, r)
        assert patched.merge_state.tokens == ref.tokens
        mine.append(logits.argmax(-1))
        theirs.append(ref.logits.argmax(-1))
        worst = max(worst, ((logits.double() - ref.logits).abs().amax(-1) / ref.logits.abs().amax(-1)).max())
        split += [
            i + j
            for j, (a, b) in enumerate(zip(groups(patched.merge_state.source), groups(ref.source)))
            if a != b
        ]
    mine, theirs = torch.cat(mine), torch.cat(theirs)
    differ = (mine != theirs).nonzero().flatten().tolist()
    print(
        f"\ndeit_tiny mctf r {r} on {len(images)} photos: top-1 {100.0 * (mine == labels).double().mean():.2f}% "
        f"(reference {100.0 * (theirs == labels).double().mean():.2f}%), same top-1 on "
        f"{len(images) - len(differ)}/{len(images)}, tokens {patched.merge_state.tokens}, largest relative "
        f"logit difference {worst:.1e}, images whose merge decisions differ (near-ties) {split}"
    )
    patched64 = tomecis.patch(copy.deepcopy(deit_tiny_real).double(), method="mctf", r=r, trace_source=True)
    for i in split:  # merges that differ in fp32 are precision near-ties: in float64 both decide alike
        x = images[i : i + 1]
        with torch.no_grad():
            patched64(x.double())
        ref64 = mctf_forward(deit_tiny_real, x, r)
        assert torch.equal(patched64.merge_state.source.double(), ref64.source), (
            f"mctf r {r}: photo {i} merges unlike the reference in float64 too"
        )
    for i in differ:  # a different top-1 passes only where the float64 product predicts as the reference
        x = images[i : i + 1]
        with torch.no_grad():
            fp64 = patched64(x.double())
        ref64 = mctf_forward(deit_tiny_real, x, r)
        message = f"mctf r {r}: top-1 differs on photo {i} (of the {len(images)} chosen)"
        assert fp64.argmax(-1) == ref64.logits.argmax(-1), message + ", also in float64"
        assert torch.equal(patched64.merge_state.source.double(), ref64.source), message + ", also in float64"
        print(
            f"  photo {i}: a precision near-tie; in float64 the product predicts and merges as the reference"
        )
