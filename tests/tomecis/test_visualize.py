"""Merge pictures: groups partition the patch grid, colours and borders, the PNG and the CLI."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_vit
from PIL import Image

import tomecis
from tomecis import visualize as V

GRID = (8, 8)  # tiny_vit: 64x64 input, 8x8 patches
PATCH = (8, 8)


def png_size(path) -> tuple:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def photo(tmp_path) -> Path:
    """A generated photo: smooth colour gradients plus a bright disc, 96x80 (resized and cropped by timm)."""
    yy, xx = np.mgrid[0:80, 0:96]
    image = np.stack([xx * 2.5, yy * 3.0, 255 - xx * 2.0], axis=-1)
    image[(yy - 40) ** 2 + (xx - 50) ** 2 < 300] = [250, 220, 40]
    path = tmp_path / "photo.png"
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(path)
    return path


def traced(r, depth=6, **kwargs):
    return tomecis.patch(tiny_vit(depth=depth, **kwargs), r=r, trace_source=True)


def test_groups_partition_the_patch_grid_exactly(photo):
    model = traced(r=4)
    _, x = V.load_image(str(photo), model)
    maps = V.trace_groups(model, x, [1, 2, 3, 4, 5, 6])
    for m in maps:
        assert m.groups.shape == GRID
        # every patch in exactly one group, groups numbered 0..G-1 with none empty
        assert sorted(np.unique(m.groups)) == list(range(m.num_groups))
        assert m.num_groups == m.tokens - 1  # one group per token left, the class token aside
    assert [m.tokens for m in maps] == [65 - 4 * b for b in range(1, 7)]


def test_groups_match_the_source_map_token_by_token(photo):
    model = traced(r=4)
    _, x = V.load_image(str(photo), model)
    (final,) = V.trace_groups(model, x, [6])
    source = model.merge_state.source[0, :, 1:]  # [N, 64], the class token's column dropped
    for token in range(1, source.shape[0]):
        patches = np.flatnonzero(source[token].numpy())
        assert len(set(final.groups.ravel()[patches])) == 1  # one token's patches share a group
    assert source.sum(dim=0).eq(1).all()


def test_deeper_groups_only_join_shallower_ones(photo):
    model = traced(r=4)
    _, x = V.load_image(str(photo), model)
    shallow, deep = V.trace_groups(model, x, [2, 5])
    for g in range(shallow.num_groups):
        assert len(np.unique(deep.groups[shallow.groups == g])) == 1  # merges never split a group


def test_r_zero_leaves_every_patch_its_own_group(photo):
    model = traced(r=0)
    _, x = V.load_image(str(photo), model)
    (m,) = V.trace_groups(model, x, [6])
    assert model.merge_state.source is None
    assert m.num_groups == 64 and m.tokens == 65
    np.testing.assert_array_equal(m.groups, np.arange(64).reshape(GRID))


def test_distilled_models_drop_both_prefix_tokens(photo):
    model = tomecis.patch(
        tomecis.create_model("deit_tiny_distilled", num_classes=10, img_size=64, patch_size=8, depth=2),
        r=5,
        trace_source=True,
    )
    _, x = V.load_image(str(photo), model)
    (m,) = V.trace_groups(model, x, [2])
    assert m.num_groups == m.tokens - 2 == 64 - 10


def test_partition_check_rejects_a_broken_source_map():
    source = torch.zeros(3, 5)
    source[0, 0] = 1
    source[1, 1:3] = 1
    source[2, 2:5] = 1  # patch 2 (column 2) in two tokens
    with pytest.raises(ValueError, match="not a partition"):
        V.patch_groups(source, 1, (2, 2))


def test_mean_colours_and_borders():
    image = np.zeros((16, 16, 3), np.uint8)
    image[:, :8] = [100, 0, 0]
    image[:8, 8:] = [0, 200, 0]
    image[8:, 8:] = [0, 0, 50]
    groups = np.array([[0, 1], [0, 1]])  # left column of patches, right column
    painted = V.mean_colour_image(image, groups, (8, 8))
    assert (painted[:, :8] == [100, 0, 0]).all()
    assert (painted[:, 8:] == [0, 100, 25]).all()
    border = V.group_borders(groups, (8, 8))
    assert border[:, 7].all() and border.sum() == 16  # one line between the two groups, none inside


def test_display_image_is_the_crop_the_model_sees(photo):
    model = traced(r=2)
    image, x = V.load_image(str(photo), model)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and x.shape == (1, 3, 64, 64)
    cfg = V.data_config(model)
    renormalised = (
        torch.from_numpy(image).permute(2, 0, 1).float() / 255 - torch.tensor(cfg["mean"])[:, None, None]
    ) / torch.tensor(cfg["std"])[:, None, None]
    assert torch.allclose(renormalised, x[0], atol=0.01)


def test_picture_is_a_png_with_a_panel_per_depth(photo, tmp_path):
    maps = V.visualize(tiny_vit(depth=6), str(photo), r=4, out=str(tmp_path / "vis.png"), blocks=[2, 4, 6])
    assert [m.block for m in maps] == [2, 4, 6]
    width, height = png_size(tmp_path / "vis.png")
    assert (width, height) == (4 * V.PANEL_PX, V.PANEL_PX + V.TITLE_PX)


def test_cli_on_deit_tiny_random_weights(photo, tmp_path, capsys):
    out = tmp_path / "cli.png"
    assert (
        V.main(
            [
                str(photo),
                "--model",
                "deit_tiny",
                "--r",
                "13",
                "--random-weights",
                "--blocks",
                "3,12",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "block 12: 40 groups" in capsys.readouterr().out  # 196 patches - 12 * 13 merged
    assert png_size(out) == (1200, 440)


def test_cli_errors_name_the_culprit(photo, tmp_path, capsys):
    assert (
        V.main(
            [
                str(tmp_path / "missing.jpg"),
                "--model",
                "deit_tiny",
                "--random-weights",
                "--out",
                str(tmp_path / "x.png"),
            ]
        )
        == 1
    )
    assert "missing.jpg does not exist" in capsys.readouterr().err
    assert (
        V.main(
            [
                str(photo),
                "--model",
                "deit_tiny",
                "--random-weights",
                "--blocks",
                "13",
                "--out",
                str(tmp_path / "x.png"),
            ]
        )
        == 1
    )
    assert "blocks 1..12" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        V.config_from_args([str(photo), "--model", "deit_tiny"])  # no weights chosen
    assert "--checkpoint PATH, --pretrained, or --random-weights" in capsys.readouterr().err


@pytest.mark.parametrize(
    "method, amount",
    [("pitome", {"keep": 0.8}), ("pitome", {"r": 4}), ("evit", {"keep": 0.6}), ("tofu", {"keep": 0.8})],
)
def test_every_method_traces_its_sources(photo, method, amount):
    """Issue #25: the source map follows each method. Merges (PiToMe) and EViT's fused token keep a
    partition; ToFu's pruning blocks drop tokens, whose patches then belong to no group (-1), and its
    merging blocks keep the rest a partition; the token count after each block matches the map."""
    model = tomecis.set_reduction(tomecis.patch(tiny_vit(depth=6), trace_source=True), method, **amount)
    _, x = V.load_image(str(photo), model)
    maps = V.trace_groups(model, x, [1, 2, 3, 4, 5, 6])
    tokens = model.merge_state.tokens
    for m in maps:
        groups = m.groups
        held = groups[groups >= 0]
        assert sorted(set(held.tolist())) == list(range(m.num_groups)), (method, m.block)
        if method == "tofu":
            assert m.num_groups == tokens[m.block - 1] - 1  # every token but the class token holds patches
        else:
            assert (groups >= 0).all() and m.num_groups == tokens[m.block - 1] - 1
    if method == "tofu":
        assert (maps[-1].groups < 0).any()  # blocks 0-3 of 6 pruned
    out = V.render(np.zeros((64, 64, 3), np.uint8), maps, PATCH, str(photo.parent / f"{method}.png"))
    assert png_size(out)[0] > 0


def test_pruned_patches_are_painted_black():
    groups = np.array([[0, -1], [1, 1]])
    image = np.full((16, 16, 3), 200, np.uint8)
    painted = V.mean_colour_image(image, groups, PATCH)
    assert (painted[:8, 8:] == 0).all() and (painted[:8, :8] == 200).all() and (painted[8:] == 200).all()
