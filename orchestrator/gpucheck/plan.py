"""The planned work, said before anything runs: the points per model, the passes each step makes, and on a
GPU a rough estimate of the seconds against the budget (``BUDGET_SECONDS``, the CUDA tests included).

The estimate is arithmetic on assumed rates of one H100-class GPU in fp16 (``GPU_IMG_PER_S``, the
unreduced model at batch 256, CUDA-graph replays) and of its host (``CPU_GFLOPS``: the CPU fp32 run's
rate; ``DECODE_IMG_PER_S_PER_WORKER``: a loader worker's JPEG decode), with fixed costs per capture and per
model build. It is there to keep the defaults inside the budget when a method or an amount is added
(a test holds the default plan to it), not to predict a machine: the report's "Steps" table has the
seconds each step really took."""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

from tomecis.names import short_name

from .config import BUDGET_SECONDS, GPU_IMAGES, CheckPoint, GpuCheckConfig, methods_of
from .readpath import READ_IMAGES

GPU_IMG_PER_S = {"deit_tiny": 25_000.0, "deit_small": 10_000.0, "deit_base": 3_500.0}
GPU_IMG_PER_S_OTHER = 3_000.0
GFLOPS = {"deit_tiny": 1.26, "deit_small": 4.61, "deit_base": 17.6}  # per image, unreduced
GFLOPS_OTHER = 18.0
CPU_GFLOPS = 400.0  # fp32 on the CPU cores of a GPU machine (16 or more)
DECODE_IMG_PER_S_PER_WORKER = 120.0  # JPEG decode + eval transform, one loader worker
EAGER_PASS_SECONDS = 0.012  # an eager forward on the host: ~800 ATen ops at ~15 us each
CAPTURE_SECONDS = 1.0  # one CUDA-graph capture, warm-up included
SETTING_SECONDS = 1.0  # per benchmark setting: its FLOP and ATen-op counts
MODEL_SECONDS = 3.0  # building a model, moving it to the device


def benchmark_groups(points: Sequence[CheckPoint], model: str) -> List[Dict[str, object]]:
    """The ``tomecis.benchmark`` runs of one model: the methods with the same amounts share one (their
    settings timed in turns with one unpatched model), the baseline with the first."""
    groups: Dict[tuple, Dict[str, object]] = {}
    for method, amounts in methods_of(points, model).items():
        if not amounts or method == "none":
            continue
        key = tuple(amounts)
        group = groups.setdefault(
            key,
            dict(
                methods=[],
                r_values=[r for r, _ in amounts if r is not None],
                keep_values=[k for _, k in amounts if k is not None],
            ),
        )
        group["methods"].append(method)
    found = list(groups.values())
    if any(p.unreduced for p in points if p.model == model):
        if found:
            found[0]["methods"].insert(0, "none")
        else:
            found = [dict(methods=["none"], r_values=[], keep_values=[])]
    return found


def estimate_seconds(cfg: GpuCheckConfig, points: Sequence[CheckPoint], cpus: int = 16) -> Dict[str, float]:
    """Rough seconds per step on one H100-class GPU with ``cpus`` cores (see the module's note)."""
    photos = cfg.photos_limit
    images = photos * (cfg.repeat or max(1, math.ceil(GPU_IMAGES / photos)))  # as photos.sample_shards
    seconds = dict(benchmark=0.0, decode=0.0, agreement=0.0, read_bench=0.0, tests=0.0)
    compute = 0.0
    for model in cfg.models:
        name = short_name(model)
        rate = GPU_IMG_PER_S.get(name, GPU_IMG_PER_S_OTHER)
        mine = [p for p in points if p.model == model]
        passes = cfg.warmup + cfg.runs + 2  # capture warm-up included
        for group in benchmark_groups(points, model):
            n = sum(1 for p in mine if p.method in group["methods"] and not p.unreduced)
            n += "none" in group["methods"]
            graphed = (1 + 3.5 * n) * passes * cfg.bench_batch_size / rate  # explicit: ~2.5x the fused
            graphed += (1 + 2 * n) * CAPTURE_SECONDS
            eager = (1 + n) * passes * max(EAGER_PASS_SECONDS, cfg.bench_batch_size / rate)
            seconds["benchmark"] += 2 * MODEL_SECONDS + graphed + eager + 2 * n * SETTING_SECONDS
        compute += len(mine) * images / rate
        profile = len(mine) * (cfg.warmup + cfg.runs) * cfg.sweep_batch_size / rate
        seconds["decode"] += MODEL_SECONDS + len(mine) * (CAPTURE_SECONDS + SETTING_SECONDS) + profile
        cpu_rate = CPU_GFLOPS / GFLOPS.get(name, GFLOPS_OTHER)
        seconds["agreement"] += len(mine) * min(cfg.agree_images, photos) / cpu_rate + MODEL_SECONDS
    decode_rate = max(1, cpus - 1) * DECODE_IMG_PER_S_PER_WORKER
    seconds["decode"] += max(compute, images / decode_rate)
    seconds["read_bench"] = sum(
        min(images, READ_IMAGES) / (max(1, w) * DECODE_IMG_PER_S_PER_WORKER)
        for w in (2, 4, 8, cpus)
        if w <= cpus
    )
    seconds["tests"] = cfg.tests_timeout if cfg.run_tests else 0.0
    return {k: round(v, 1) for k, v in seconds.items()}


def plan_lines(cfg: GpuCheckConfig, points: Sequence[CheckPoint], notes: Sequence[str] = ()) -> List[str]:
    """What will run, one line each: the points per model, the notes on amounts, the images per step, and
    (on a GPU) the estimate against the budget."""
    lines = []
    for model in cfg.models:
        mine = [p for p in points if p.model == model]
        lines.append(
            f"plan: {short_name(model)}: {len(mine)} point(s): "
            + ", ".join(f"{p.method} {p.amount}" for p in mine)
        )
    lines += [f"plan: {note}" for note in notes]
    lines.append(
        f"plan: benchmark {cfg.runs} timed passes of batch {cfg.bench_batch_size} per setting, graphed and eager; "
        f"decode pass at {len(points)} point(s); CPU fp32 agreement on {cfg.agree_images} photos at each"
    )
    if cfg.device == "cuda":
        est = estimate_seconds(cfg, points)
        total = sum(est.values())
        parts = ", ".join(f"{k} {v:.0f}" for k, v in est.items())
        lines.append(
            f"plan: about {total:.0f} s on one H100-class GPU ({parts}; tests at most their timeout), "
            f"budget {BUDGET_SECONDS:.0f} s"
            + ("" if total <= BUDGET_SECONDS else ": OVER BUDGET, fewer points?")
        )
    return lines
