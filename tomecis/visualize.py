"""Merge-group pictures from source tracing: which input patches each token stands for.

    python -m tomecis.visualize IMAGE --model deit_small --r 13 --checkpoint PATH --out vis.png [--blocks 3,6,9,12]

The image is shown as the model sees it (timm's eval resize + centre crop, the normalisation
undone) beside the same image with each token's patch group painted in the mean colour of its
patches and a border between groups. ``--blocks`` adds the groups after several blocks (1-based),
read from the source map with forward hooks, so ``tomecis.patch`` needs no change.
Only torch, timm, PIL, numpy and matplotlib: no Ray, nothing of the orchestrator.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from clipattern import parsed_or_exit, run_or_report

from .models import create_model
from .names import check_amount, method_spec, methods_help
from .patch import patch, set_reduction

PANEL_PX = 400  # each panel is PANEL_PX square, under a TITLE_PX band for the titles
TITLE_PX = 40
FIGURE_DPI = 100
BORDER_COLOUR = (255, 255, 255)


@dataclass(frozen=True)
class GroupMap:
    """The patch groups after one block.

    ``groups``: ``[h, w]`` int, group index per patch, numbered 0..G-1 in raster order of each
    group's first patch. ``block``: 1-based block index (0: before any block). ``tokens``: tokens
    left after the block, prefix tokens included."""

    block: int
    tokens: int
    groups: np.ndarray

    @property
    def num_groups(self) -> int:
        return int(self.groups.max()) + 1


# --------------------------------------------------------------------------- image in, image out


def data_config(model: nn.Module) -> dict:
    """timm's eval data config for the model, at the model's own input size."""
    from timm.data import resolve_data_config

    height, width = model.patch_embed.img_size
    return resolve_data_config({"input_size": (3, height, width)}, model=model)


def load_image(path: str, model: nn.Module) -> Tuple[np.ndarray, torch.Tensor]:
    """An image file -> (what the model sees, for display ``[H, W, 3]`` uint8; the input ``[1, 3, H, W]``).

    The display image is the model input with the normalisation undone, so it is exactly the crop."""
    from PIL import Image
    from timm.data import create_transform

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist; pass a JPEG or PNG file")
    cfg = data_config(model)
    with Image.open(path) as img:
        x = create_transform(**cfg, is_training=False)(img.convert("RGB"))  # [3, H, W]
    return to_display(x, cfg["mean"], cfg["std"]), x[None]


def to_display(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo the normalisation: ``[3, H, W]`` float -> ``[H, W, 3]`` uint8."""
    mean_t = torch.tensor(mean, dtype=x.dtype)[:, None, None]
    std_t = torch.tensor(std, dtype=x.dtype)[:, None, None]
    pixels = (x * std_t + mean_t).clamp(0, 1) * 255
    return pixels.round().to(torch.uint8).permute(1, 2, 0).numpy()


# --------------------------------------------------------------------------- tracing


@torch.no_grad()
def trace_groups(model: nn.Module, x: torch.Tensor, blocks: Sequence[int]) -> List[GroupMap]:
    """Run one image through a model patched with ``trace_source=True``; the groups after each block.

    Args:
        model: a patched timm ViT (``tomecis.patch(model, r, trace_source=True)``).
        x: ``[1, 3, H, W]`` input.
        blocks: 1-based block indices (``len(model.blocks)`` is the final state).
    """
    state = getattr(model, "merge_state", None)
    if state is None or not state.trace_source:
        raise ValueError(
            "trace_groups needs a model patched with tomecis.patch(model, r=..., trace_source=True)"
        )
    if x.shape[0] != 1:
        raise ValueError(f"trace_groups takes one image, got a batch of {x.shape[0]}")
    depth = len(model.blocks)
    for block in blocks:
        if not 1 <= block <= depth:
            raise ValueError(f"block {block} is out of range: the model has blocks 1..{depth}")
    captured: Dict[int, Tuple[int, Optional[torch.Tensor]]] = {}

    def capture(index: int):
        def hook(module, inputs, output):  # runs after the block's merge: the state it leaves
            source = state.source
            captured[index] = (output.shape[1], None if source is None else source[0].clone())

        return hook

    handles = [model.blocks[b - 1].register_forward_hook(capture(b)) for b in sorted(set(blocks))]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    grid = tuple(model.patch_embed.grid_size)
    return [
        GroupMap(b, captured[b][0], patch_groups(captured[b][1], model.num_prefix_tokens, grid))
        for b in blocks
    ]


def patch_groups(source: Optional[torch.Tensor], num_prefix: int, grid: Tuple[int, int]) -> np.ndarray:
    """Group index per patch ``[h, w]`` from a source map.

    Args:
        source: ``[N, N0]`` 0/1: token ``n`` holds input token ``j`` (prefix tokens first), or None
            when nothing has merged (every patch its own group).
        num_prefix: class (+ distillation) tokens at the front of both axes, dropped here.
        grid: ``(h, w)`` patches, ``h * w = N0 - num_prefix``.

    Patches that no token holds (pruned: ToFu's first blocks drop tokens) get group ``-1``.
    Raises ``ValueError`` if a patch belongs to several tokens."""
    h, w = grid
    if source is None:
        return np.arange(h * w).reshape(h, w)
    patches = source[:, num_prefix:].float()  # [N, h*w]
    if patches.shape[1] != h * w:
        raise ValueError(f"source map has {patches.shape[1]} patch columns, but the grid is {h}x{w}")
    cover = patches.sum(dim=0)
    if torch.any(cover > 1):
        bad = int((cover > 1).sum())
        raise ValueError(f"source map is not a partition: {bad} patches belong to several tokens")
    kept = (cover == 1).numpy()  # [h*w]
    owner = patches.argmax(dim=0).numpy()  # [h*w] token holding each patch
    groups = np.full(h * w, -1)
    _, first, inverse = np.unique(owner[kept], return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # number groups by their first patch in raster order
    groups[kept] = order[inverse.ravel()]
    return groups.reshape(h, w)


# --------------------------------------------------------------------------- drawing


def pixel_groups(groups: np.ndarray, patch_size: Tuple[int, int]) -> np.ndarray:
    """``[h, w]`` patch groups -> ``[h * ph, w * pw]`` group per pixel."""
    return np.repeat(np.repeat(groups, patch_size[0], axis=0), patch_size[1], axis=1)


def mean_colour_image(image: np.ndarray, groups: np.ndarray, patch_size: Tuple[int, int]) -> np.ndarray:
    """Each group painted in the mean colour of its pixels: ``[H, W, 3]`` uint8 -> same shape; pruned
    patches (group -1) are painted black."""
    per_pixel = pixel_groups(groups, patch_size).ravel()
    dropped = per_pixel < 0
    per_pixel = np.where(dropped, per_pixel.max() + 1, per_pixel)  # pruned pixels: one group of their own
    pixels = image.reshape(-1, 3).astype(np.float64)
    counts = np.bincount(per_pixel)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.stack(
            [np.bincount(per_pixel, weights=pixels[:, c]) / counts for c in range(3)], axis=1
        )  # [G, 3]
    out = np.round(np.nan_to_num(means[per_pixel])).astype(np.uint8)
    out[dropped] = 0
    return out.reshape(image.shape)


def group_borders(groups: np.ndarray, patch_size: Tuple[int, int]) -> np.ndarray:
    """``[H, W]`` bool: pixels whose right or lower neighbour is in another group."""
    per_pixel = pixel_groups(groups, patch_size)
    border = np.zeros(per_pixel.shape, dtype=bool)
    border[:, :-1] |= per_pixel[:, :-1] != per_pixel[:, 1:]
    border[:-1, :] |= per_pixel[:-1, :] != per_pixel[1:, :]
    return border


def draw_groups(image: np.ndarray, groups: np.ndarray, patch_size: Tuple[int, int]) -> np.ndarray:
    """The mean-colour picture with group borders drawn: ``[H, W, 3]`` uint8."""
    picture = mean_colour_image(image, groups, patch_size)
    picture[group_borders(groups, patch_size)] = BORDER_COLOUR
    return picture


def render(
    image: np.ndarray, maps: Sequence[GroupMap], patch_size: Tuple[int, int], path: str, title: str = ""
) -> str:
    """Write a PNG of ``PANEL_PX * (1 + len(maps))`` x ``PANEL_PX + TITLE_PX`` pixels: the image, then one
    panel per group map."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state, no backend switch

    size = (PANEL_PX * (1 + len(maps)) / FIGURE_DPI, (PANEL_PX + TITLE_PX) / FIGURE_DPI)
    fig = Figure(figsize=size, dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 1 + len(maps), squeeze=False)[0]
    axes[0].imshow(image)
    axes[0].set_title(f"input ({image.shape[1]}x{image.shape[0]} crop)", fontsize=9)
    for ax, group_map in zip(axes[1:], maps):
        ax.imshow(draw_groups(image, group_map.groups, patch_size))
        ax.set_title(f"after block {group_map.block}: {group_map.num_groups} patch groups", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=FIGURE_DPI)
    return path


def visualize(
    model: nn.Module,
    image_path: str,
    r: int,
    out: str,
    blocks: Optional[Sequence[int]] = None,
    method: str = "tomecis",
    title: str = "",
    keep: Optional[float] = None,
) -> List[GroupMap]:
    """Patch ``model`` (in place, with source tracing), trace one image and write the picture to ``out``.

    ``r`` or ``keep``, whichever ``method`` takes (``keep`` wins when given). ``blocks``: 1-based depths
    to show; default the last block only. Returns the group maps drawn."""
    patch(model, r=0, method=method, trace_source=True)
    set_reduction(model, method, **({"keep": keep} if keep is not None else {"r": r}))
    model.eval()
    image, x = load_image(image_path, model)
    maps = trace_groups(model, x, list(blocks) if blocks else [len(model.blocks)])
    render(image, maps, tuple(model.patch_embed.patch_size), out, title)
    return maps


# --------------------------------------------------------------------------- CLI


@dataclass
class VisualizeConfig:
    """Everything the CLI needs, parsed once."""

    image: str
    model: str
    r: int
    out: str
    blocks: Optional[List[int]] = None
    method: str = "tomecis"
    keep: Optional[float] = None
    checkpoint: Optional[str] = None
    pretrained: bool = False
    random_weights: bool = False


def parse_blocks(text: str) -> List[int]:
    """``"3,6,9,12"`` -> ``[3, 6, 9, 12]`` (1-based block indices)."""
    try:
        blocks = [int(item) for item in text.split(",") if item.strip()]
    except ValueError as err:
        raise ValueError(f"expected comma-separated block numbers such as 3,6,9,12, got {text!r}") from err
    if not blocks or min(blocks) < 1:
        raise ValueError(f"block numbers start at 1, got {text!r}")
    return blocks


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tomecis.visualize", description=__doc__.split("\n\n")[0])
    p.add_argument("image", help="an image file (JPEG, PNG)")
    p.add_argument(
        "--model", default="deit_small", help="short name (deit_small) or timm name (default %(default)s)"
    )
    p.add_argument("--r", type=int, default=13, help="tokens merged per block (default %(default)s)")
    p.add_argument(
        "--method",
        "--mode",
        dest="method",
        default="tomecis",
        help=methods_help(),
    )
    p.add_argument("--keep", type=float, help="per-block keep ratio in (0, 1], in place of --r")
    p.add_argument("--blocks", help="show the groups after these blocks, e.g. 3,6,9,12 (default: the last)")
    p.add_argument("--out", default="vis.png", help="PNG to write (default %(default)s)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", help="local .pth / .safetensors weights")
    weights.add_argument(
        "--pretrained", action="store_true", help="timm's published weights (needs the Hugging Face Hub)"
    )
    weights.add_argument(
        "--random-weights", action="store_true", help="untrained model (smoke tests: the groups mean nothing)"
    )
    return p


def config_from_args(argv: Optional[Sequence[str]] = None) -> VisualizeConfig:
    """Parse and check the arguments (``clipattern``'s pattern: each ``dest`` is a VisualizeConfig field)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.r < 0:
        parser.error(f"--r must be >= 0, got {args.r}")
    amount = (None, args.keep) if args.keep is not None else (args.r, None)
    parsed_or_exit(parser, "--method", lambda m: check_amount(m, *amount), args.method)
    args.method = method_spec(args.method).name  # an import path's method, by its name from now on
    if not (args.checkpoint or args.pretrained or args.random_weights):
        parser.error("pick the weights: --checkpoint PATH, --pretrained, or --random-weights (a smoke test)")
    blocks = parsed_or_exit(parser, "--blocks", parse_blocks, args.blocks) if args.blocks else None
    return VisualizeConfig(**{**vars(args), "blocks": blocks})


def main(argv: Optional[Sequence[str]] = None) -> int:
    cfg = config_from_args(argv)
    return run_or_report(lambda: _draw_and_print(cfg), (ValueError, FileNotFoundError, OSError))


def _draw_and_print(cfg: VisualizeConfig) -> int:
    model = create_model(cfg.model, pretrained=cfg.pretrained, checkpoint=cfg.checkpoint)
    weights = (
        Path(cfg.checkpoint).name
        if cfg.checkpoint
        else "timm pretrained"
        if cfg.pretrained
        else "random weights"
    )
    amount = f"keep = {cfg.keep:g}" if cfg.keep is not None else f"r = {cfg.r}"
    title = f"{cfg.model}, {cfg.method}, {amount} ({weights}): {Path(cfg.image).name}"
    maps = visualize(model, cfg.image, cfg.r, cfg.out, cfg.blocks, cfg.method, title, cfg.keep)
    summary = ", ".join(f"block {m.block}: {m.num_groups} groups" for m in maps)
    print(f"wrote {cfg.out} ({summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
