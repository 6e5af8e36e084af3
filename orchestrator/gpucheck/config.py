"""What a GPU check runs: its configuration (parsed once by the CLI), the places it looks for photos and
weights, its targets, and the one list of points (model, method, amount) that every step reads."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

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
    "speedup_vs_flops": 0.9,  # r = 13 speed-up over unpatched timm >= 0.9 x the FLOP ratio
    "fused_vs_explicit": 1.3,  # fused >= 1.3 x explicit at r = 13, DeiT-S, fp16
    "grid_efficiency": 0.85,  # the pass's wall time <= the grid's summed model-alone time / 0.85
    "agreement_unreduced": 99.5,  # % of images whose device top-1 equals CPU fp32's, at r = 0
    "agreement_reduced": 99.0,  # the same at every other point
}


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
    r_values: List[int] = field(default_factory=lambda: [0, 8, 13, 16])
    amp: str = "fp16"
    bench_batch_size: int = 256
    sweep_batch_size: int = 128
    runs: int = 20
    warmup: int = 5
    read_workers: List[int] = field(default_factory=lambda: sorted({2, 4, 8, os.cpu_count() or 1}))
    evaluator: str = "auto"  # auto: Ray's GPU actors where Ray is installed, else in-process
    agree_images: int = AGREE_IMAGES  # 0: no CPU fp32 comparison
    run_tests: bool = True
    tests_timeout: float = 240.0
    wheels: Optional[str] = None  # folder of wheels to install offline before anything needs them


@dataclass(frozen=True)
class CheckPoint:
    """One point every step measures: a model reduced by ``method`` at ``amount`` (today: r, tokens
    removed per block; 0 is the unreduced model)."""

    model: str
    method: str
    amount: int

    @property
    def unreduced(self) -> bool:
        return self.amount == 0


def check_points(cfg: GpuCheckConfig) -> List[CheckPoint]:
    """The points of this check, in report order, built here alone from ``--models`` and ``--r``: a new
    method or amount kind is one more comprehension here, and every step (benchmark, decode pass, CPU
    agreement, verdicts) follows."""
    return [CheckPoint(model, "tomecis", r) for model in cfg.models for r in cfg.r_values]


def methods_of(points: Sequence[CheckPoint], model: Optional[str] = None) -> Dict[str, List[int]]:
    """``{method: [amounts]}`` of the points (of one model), in order: what the benchmark and the grid take."""
    grouped: Dict[str, List[int]] = {}
    for point in points:
        if model is None or point.model == model:
            amounts = grouped.setdefault(point.method, [])
            if point.amount not in amounts:
                amounts.append(point.amount)
    return grouped
