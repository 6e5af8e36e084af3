"""What a GPU check runs: its configuration (parsed once by the CLI), the places it looks for photos and
weights, its targets, and the one list of points (model, method, amount) that every step reads."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from tomecis.names import (
    METHODS,
    REDUCING_METHODS,
    UNREDUCED,
    Amount,
    amount_label,
    is_unreduced,
    method_spec,
    short_name,
)

REPO = Path(__file__).resolve().parents[2]
# the 500 sample photos: beside the checkout (../shared), or inside it (shared/, as a device copy carries it)
SAMPLE_PLACES = (
    REPO.parent / "shared" / "assets" / "imagenet-sample",
    REPO / "shared" / "assets" / "imagenet-sample",
)
# checkpoints <timm name>.pth|.pt|.bin|.safetensors: a git-ignored .weights/ in the checkout (what the offline
# recipe copies), then the shared assets beside the checkout or inside it
WEIGHT_PLACES = (
    REPO / ".weights",
    REPO.parent / "shared" / "assets" / "weights",
    REPO / "shared" / "assets" / "weights",
)
PHOTOS_LIMIT = (
    250  # photos read from the folder (about 27 MB of ImageNet JPEGs): enough to time the data path
)
GPU_IMAGES = 10_000  # on a GPU the photos are repeated up to this many images, so that the pass lasts seconds
SHARD_SIZE = 250  # images a shard: 40 shards of 10,000, more than a GPU actor's loader workers
AGREE_IMAGES = 250  # images run again on the CPU in fp32, to compare with the device run image by image
EVALUATORS = ("auto", "in-process", "ray", "both")

TARGETS = {
    "speedup_vs_flops": 0.9,  # each method's speed-up over unpatched timm >= 0.9 x its FLOP ratio
    "fused_vs_explicit": 1.3,  # fused >= 1.3 x explicit for ToMeCIS at r = 13, DeiT-S, fp16
    "grid_efficiency": 0.85,  # the pass's wall time <= the grid's summed model-alone time / 0.85
    "agreement_unreduced": 99.5,  # % of images whose device top-1 equals CPU fp32's, at the baseline
    "agreement_reduced": 99.0,  # the same at every other point
}
# The whole check on one GPU, the CUDA tests included: a lent device gives 15 minutes in all, of which the
# machine's start takes about 3; nine methods (issue #29) at one amount each need about 8.5 minutes.
BUDGET_SECONDS = 540.0

# The one amount each reducing method is checked at by default, as its declaration says
# (``Method.default_amount``): r = 13 for the methods whose published settings count tokens (ToMeCIS, ToMe),
# keep 0.9 for the PiToMe harness's methods, EViT and ATC at 0.7, MCTF at its authors' scripts' r 16; a
# method of your own at its declared default, else r 13 or keep 0.9 by the first kind it takes.
DEFAULT_AMOUNTS: Dict[str, Amount] = {name: METHODS[name].default() for name in REDUCING_METHODS}


def default_amount(method: str) -> Amount:
    """The amount a method runs at when none is given (``Method.default``)."""
    return method_spec(method).default()


@dataclass
class GpuCheckConfig:
    """What to run; parsed once from the command line."""

    out: str = "gpu-report"
    data: Optional[str] = None  # shards; default: written from the photos
    photos: Optional[str] = None  # <synset>/<name>.JPEG folder; default: ../shared/assets/imagenet-sample
    photos_limit: int = PHOTOS_LIMIT  # the first N photos (sorted by path)
    repeat: Optional[int] = None  # copies of each photo in the shards; default: GPU_IMAGES (CPU: 1)
    checkpoint_dir: Optional[str] = None  # default: the first of WEIGHT_PLACES holding the model's checkpoint
    random_weights: bool = False  # random weights for every model (timing only: no accuracy verdict)
    device: str = "cuda"
    models: List[str] = field(default_factory=lambda: ["deit_tiny_patch16_224", "deit_small_patch16_224"])
    methods: List[str] = field(default_factory=lambda: list(REDUCING_METHODS))  # the baseline comes anyway
    r_values: Optional[List[int]] = None  # --r; None: each method's default amount (DEFAULT_AMOUNTS)
    keep_values: Optional[List[float]] = None  # --keep; None: likewise
    all_amounts: bool = False  # every method at every amount given (or default) of every kind it takes
    amp: str = "fp16"
    bench_batch_size: int = 256
    sweep_batch_size: int = 128
    runs: int = 20
    warmup: int = 5
    read_workers: List[int] = field(default_factory=lambda: sorted({2, 4, 8, os.cpu_count() or 1}))
    evaluator: str = "auto"  # auto: Ray's GPU actors where Ray is installed, else in-process
    agree_images: int = AGREE_IMAGES  # 0: no CPU fp32 comparison
    run_tests: bool = True
    tests_timeout: float = 180.0
    wheels: Optional[str] = None  # folder of wheels to install offline before anything needs them


@dataclass(frozen=True)
class CheckPoint:
    """One point every step measures: a model reduced by ``method`` at ``r`` (tokens removed per block) or
    ``keep`` (per-block keep ratio), the other None; the baseline is ``("none", r=0, keep=None)``. Its
    ``key`` is the grid's and the evaluator's ``(model, method, r, keep)``."""

    model: str
    method: str
    r: Optional[int] = None
    keep: Optional[float] = None

    @property
    def key(self) -> Tuple[str, str, Optional[int], Optional[float]]:
        return self.model, self.method, self.r, self.keep

    @property
    def amount(self) -> str:
        """``r13``, ``keep0.9``; ``r0`` for the baseline."""
        return amount_label(self.r, self.keep)

    @property
    def label(self) -> str:
        """``deit_tiny tomecis r13``: the point in a line a person reads."""
        return f"{short_name(self.model)} {self.method} {self.amount}"

    @property
    def unreduced(self) -> bool:
        return self.method == UNREDUCED


def baseline(model: str) -> CheckPoint:
    return CheckPoint(model, UNREDUCED, 0, None)


def method_amounts(cfg: GpuCheckConfig) -> Tuple[Dict[str, List[Amount]], List[str]]:
    """``{method: [(r, keep), ...]}`` for every method of ``cfg.methods`` (``none`` left out: the baseline
    is in every check), and one line for each method whose amounts are not what the flags said.

    The rules, for a method ``m`` whose default amount (``DEFAULT_AMOUNTS``) is of kind ``k``:

    - no ``--r`` and no ``--keep``: ``m`` at its default amount;
    - ``--r`` and/or ``--keep`` given: they replace the defaults. ``m`` runs every given value of kind
      ``k``; where ``k`` was not given, every given value of the other kind it takes (``--r 0,13``: pitome
      and tofu at r = 13 too); where neither kind it takes was given (EViT with ``--r`` alone), its default
      amount, with a line saying so (a check covers every method asked for);
    - ``--all-amounts``: ``m`` at every value it takes of the given (else the default) r and keep values.

    An r of 0 or a keep of 1 is the baseline itself, never a method's point; a method left with no other
    amount gets none, with a line."""
    given = {"r": cfg.r_values, "keep": cfg.keep_values}
    chosen = [m for m in cfg.methods if m != UNREDUCED]
    defaults = {
        "r": list(dict.fromkeys(default_amount(m)[0] for m in chosen if default_amount(m)[0] is not None)),
        "keep": list(dict.fromkeys(default_amount(m)[1] for m in chosen if default_amount(m)[1] is not None)),
    }
    explicit = any(v is not None for v in given.values())
    plan: Dict[str, List[Amount]] = {}
    notes: List[str] = []
    for method in chosen:
        spec = method_spec(method)
        default = default_amount(method)
        kind = "r" if default[0] is not None else "keep"
        if cfg.all_amounts:
            values = {k: given[k] if given[k] is not None else defaults[k] for k in ("r", "keep")}
            amounts = [_amount(k, v) for k in spec.amounts for v in values[k]]
        elif not explicit:
            amounts = [default]
        else:
            kinds = [kind] + [k for k in spec.amounts if k != kind]
            took = next((k for k in kinds if spec.takes(k) and given[k] is not None), None)
            if took is None:
                amounts = [default]
                flags = " or ".join("--" + a for a in spec.amounts)
                notes.append(f"{method} takes {flags}, none given: at its default {amount_label(*default)}")
            else:
                amounts = [_amount(took, v) for v in given[took]]
        kept = [a for a in dict.fromkeys(amounts) if not is_unreduced(*a)]
        if amounts and not kept:
            notes.append(
                f"{method}: {', '.join(amount_label(*a) for a in amounts)} reduce nothing (the baseline)"
            )
        plan[method] = kept
    return plan, notes


def _amount(kind: str, value) -> Amount:
    return (int(value), None) if kind == "r" else (None, float(value))


def check_points(cfg: GpuCheckConfig) -> List[CheckPoint]:
    """The points of this check, in report order, built here alone: per model, its baseline, then every
    method of ``--methods`` at its amounts (``method_amounts``). Every step (benchmark, decode pass, CPU
    agreement, verdicts) follows this list."""
    plan, _ = method_amounts(cfg)
    return [
        point
        for model in cfg.models
        for point in [baseline(model)]
        + [CheckPoint(model, method, r, keep) for method, amounts in plan.items() for r, keep in amounts]
    ]


def methods_of(points: Sequence[CheckPoint], model: Optional[str] = None) -> Dict[str, List[Amount]]:
    """``{method: [(r, keep)]}`` of the points (of one model), in order: what the benchmark and the grid take."""
    grouped: Dict[str, List[Amount]] = {}
    for point in points:
        if model is None or point.model == model:
            amounts = grouped.setdefault(point.method, [])
            if (point.r, point.keep) not in amounts:
                amounts.append((point.r, point.keep))
    return grouped
