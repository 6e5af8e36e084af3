"""Real DeiT-Tiny weights on the 500 real ImageNet photos of ../shared/assets (skipped when absent)."""

import pytest
import torch
from conftest import DEIT_TINY_WEIGHTS, require_assets

import tomecis

pytestmark = [pytest.mark.assets, pytest.mark.slow]


def top1(model, images, labels, batch=100):
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            correct += (model(images[i : i + batch]).argmax(-1) == labels[i : i + batch]).sum().item()
    return 100.0 * correct / len(images)


def test_checkpoint_loads_and_tomecis_keeps_accuracy(sample_photos):
    require_assets(DEIT_TINY_WEIGHTS)
    images, labels = sample_photos
    assert len(images) == 500
    model = tomecis.create_model("deit_tiny", checkpoint=DEIT_TINY_WEIGHTS)
    unmerged = top1(model, images, labels)
    assert unmerged >= 75.0
    tomecis.patch(model, r=0)
    assert top1(model, images, labels) == unmerged
    model.r = 13
    merged = top1(model, images, labels)
    assert merged >= unmerged - 6.0, f"r=13 top-1 {merged:.1f}% vs {unmerged:.1f}% unmerged"
    print(f"deit_tiny on 500 sample photos: r=0 {unmerged:.1f}%, r=13 {merged:.1f}%")


def test_wrong_checkpoint_names_the_file(tmp_path):
    require_assets(DEIT_TINY_WEIGHTS)
    with pytest.raises(ValueError, match="deit_tiny_patch16_224.pth does not fit"):
        tomecis.create_model("deit_small", checkpoint=DEIT_TINY_WEIGHTS)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        tomecis.create_model("deit_tiny", checkpoint=tmp_path / "missing.pth")
