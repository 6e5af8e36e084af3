"""Step 3: the decode pass over the shards at every point: without Ray, the actor's own code
(``Evaluator`` and ``evaluate_shards``, with the loader workers a GPU actor would get on this machine) in
this process; with Ray, a sweep on GPU actors. Either gives each point's row (as the sweep assembles it,
``points.point_row``) and its per-image top-1, which the CPU agreement step compares."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from tomecis.names import amount_label

from .config import CheckPoint, GpuCheckConfig, methods_of
from .machine import ray_version
from .weights import ModelWeights

POINT_FIELDS = [
    "model",
    "short_name",
    "method",
    "r",
    "keep",
    "top1",
    "n_images",
    "infer_samples_per_sec",
    "eval_samples_per_sec",
    "started",
    "finished",
    "device",
    "cuda_graphs",  # where the point rows carry it (the CUDA-graph runner)
]
PointId = Tuple[str, str, Optional[int], Optional[float]]  # (timm name, method, r, keep): CheckPoint.key


@dataclass
class PassResult:
    """One pass's point rows (``POINT_FIELDS``) and, per point, each image's top-1 and label."""

    points: List[dict] = field(default_factory=list)
    top1: Dict[PointId, Dict[str, int]] = field(default_factory=dict)  # point -> {key: predicted class}
    labels: Dict[str, int] = field(default_factory=dict)  # key -> true class


def evaluators_to_run(choice: str, has_ray: bool) -> List[str]:
    """``auto``: Ray's GPU actors where Ray is installed, else the in-process evaluator."""
    if choice == "auto":
        return ["ray"] if has_ray else ["in-process"]
    return ["in-process", "ray"] if choice == "both" else [choice]


def local_actor_shape(device: str):
    """What ``placement`` would give one actor on this machine: torch threads and loader workers (a GPU
    actor: one worker per CPU but one, which feeds the GPU; a CPU actor: up to 4 threads, no workers)."""
    from ..placement import NodeResources, plan_actors
    from ..work import ActorShape

    gpus = torch.cuda.device_count() if device == "cuda" else 0
    node = NodeResources("local", "localhost", float(os.cpu_count() or 1), float(gpus))
    slot = plan_actors([node], device).slots[0]
    return ActorShape(threads=slot.threads, loader_workers=slot.loader_workers)


def evaluate_in_process(
    data: str,
    points: Sequence[CheckPoint],
    weights: Dict[str, ModelWeights],
    device: str,
    amp: str,
    batch_size: int,
    shape,
    limit: Optional[int] = None,
    timing: Optional[Tuple[int, int]] = None,
) -> PassResult:
    """The points over the shards of ``data`` (the first whole shards holding ``limit`` images, when
    given) by the actor's body in this process. ``timing`` = (runs, warm-up): also time each model alone
    and assemble each point's row as the sweep does; None: predictions only."""
    import shards

    from ..evaluator import Evaluator
    from ..points import point_row
    from ..prepare import plan_passes, select_shards
    from ..work import EvaluatorConfig

    chosen, total, fingerprint = select_shards(shards.resolve_data(data), limit)
    work = {model: w.work_weights() for model, w in weights.items()}
    grid = check_grid(
        points, amp, batch_size, {model: w.tag for model, w in work.items()}, device, fingerprint
    )
    result = PassResult()
    threads = torch.get_num_threads()  # the evaluator sets its own, as an actor does; given back after
    try:
        evaluator = Evaluator(EvaluatorConfig(device=device, amp=amp, batch_size=batch_size), shape)
        for decode_pass in plan_passes(grid, work):
            outcome = evaluator.evaluate(decode_pass, chosen)
            if outcome.model_errors:
                raise RuntimeError("; ".join(outcome.model_errors.values()))
            result.labels.update(zip(outcome.keys, (int(v) for v in outcome.labels)))
            for model in dict.fromkeys(task.model for task in decode_pass.tasks):
                profile = timing and evaluator.profile(decode_pass, model, True, *timing)
                for point in grid:
                    if point.model != model:
                        continue
                    top5 = outcome.top5[point.key]
                    result.top1[point.key] = dict(zip(outcome.keys, (int(v) for v in top5[:, 0])))
                    if profile:
                        result.points.append(point_row(point, [outcome], profile, total, False)[0])
    finally:
        torch.set_num_threads(threads)
    result.points = point_fields(result.points)
    return result


def check_grid(points: Sequence[CheckPoint], amp, batch_size, tags, device, dataset):
    """The sweep's grid points (``grid.GridPoint``) of the check's points, in their order: the sweep's
    own ``build_grid`` per (method, amounts) (it adds each model's baseline), kept where wanted."""
    from ..grid import build_grid

    models = list(dict.fromkeys(p.model for p in points))
    built = {}
    for method, amounts in methods_of(points).items():
        r_values = [r for r, _ in amounts if r is not None]
        keeps = [k for _, k in amounts if k is not None]
        for point in build_grid(
            models,
            r_values,
            [method],
            amp,
            batch_size,
            tags,
            device,
            dataset=dataset,
            keep_values=keeps,
        ):
            built.setdefault(point.key, point)
    missing = [p.label for p in points if p.key not in built]
    if missing:
        raise ValueError(f"the sweep's grid has no point for {', '.join(missing)}")
    return [built[p.key] for p in points]


def run_inprocess_step(
    cfg: GpuCheckConfig, data: str, points: Sequence[CheckPoint], weights: Dict[str, ModelWeights]
) -> PassResult:
    """The decode pass without Ray: the actor's body (its models, warm-up, ``evaluate_shards`` with loader
    workers, pinned memory and CUDA events; its model-alone timing) called in this process over every shard."""
    return evaluate_in_process(
        data,
        points,
        weights,
        cfg.device,
        cfg.amp,
        cfg.sweep_batch_size,
        local_actor_shape(cfg.device),
        timing=(cfg.runs, cfg.warmup),
    )


def run_sweep_step(
    cfg: GpuCheckConfig, data: str, points: Sequence[CheckPoint], weights: Dict[str, ModelWeights]
) -> PassResult:
    """A sweep of the points on GPU actors (a local Ray started for it), one per weights folder (the
    sweep takes one ``--checkpoint-dir``); its rows and predictions read back from its results."""
    if ray_version() is None:
        raise RuntimeError(
            "Ray is not installed here; --evaluator in-process runs the same decode pass without it"
        )
    from ..results import ResultsDir
    from ..sweep import run_sweep

    out = Path(cfg.out) / "results"
    folders: Dict[Optional[Path], List[str]] = {}
    for model, w in weights.items():
        folders.setdefault(w.path.parent if w.path else None, []).append(model)
    result = PassResult()
    for folder, models in folders.items():
        mine = [p for p in points if p.model in models]
        summary = run_sweep(_sweep_config(cfg, data, out, models, methods_of(mine), folder))
        results = ResultsDir(str(out))
        rows = results.read_point_files(summary.written).to_pandas().to_dict("records")
        stems = [Path(f).stem for f in summary.written]
        preds = results.read_predictions(stems, ("key", "label", "pred"))
        wanted = {p.key for p in mine}
        for stem, row in zip(stems, rows):
            key = row_key(row)
            if key in wanted:  # the sweep may run pairs the check did not ask for: timed, not compared
                got = preds[preds.point_file == stem]
                result.top1[key] = dict(zip(got.key, (int(v) for v in got.pred)))
                result.labels.update(zip(got.key, (int(v) for v in got.label)))
        result.points += point_fields(rows)  # every row of the pass: the grid efficiency is the pass's
    return result


def row_key(row: dict) -> PointId:
    """A points row's ``(model, method, r, keep)``, its nulls (NaN from pandas) as None."""

    def value(v, kind):
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else kind(v)

    return row["model"], row["method"], value(row["r"], int), value(row["keep"], float)


def _sweep_config(cfg, data, out, models, plan: Dict[str, List[tuple]], folder):
    """One sweep of every method of ``plan`` (one pass over the shards, one Ray start): a sweep takes one r
    list and one keep list for all its methods, so with methods at different amounts it also runs pairs
    the check did not ask for (in the decode table, not in the agreement)."""
    from ..sweep import SweepConfig

    methods = [m for m, amounts in plan.items() if amounts and m != "none"]
    amounts = [a for m in methods for a in plan[m]]
    return SweepConfig(
        models=list(models),
        r_values=list(dict.fromkeys(r for r, _ in amounts if r is not None)),
        keep_values=list(dict.fromkeys(k for _, k in amounts if k is not None)),
        methods=methods or ["none"],
        data=data,
        out=str(out),
        batch_size=cfg.sweep_batch_size,
        device=cfg.device,
        amp=cfg.amp,
        checkpoint_dir=str(folder) if folder else None,
        random_weights=folder is None,
        address="local",
        bench_runs=cfg.runs,
        bench_warmup=cfg.warmup,
        force=True,
        progress=False,
    )


def point_fields(rows) -> List[dict]:
    return [{k: row[k] for k in POINT_FIELDS if k in row} for row in rows]


def grid_efficiency(points: Sequence[dict]) -> float:
    """Summed model-alone time of the grid over the pass's wall time: 1.0 means the data path cost nothing."""
    alone = sum(p["n_images"] / p["infer_samples_per_sec"] for p in points)
    wall = (max(p["finished"] for p in points) - min(p["started"] for p in points)).total_seconds()
    return alone / wall if wall > 0 else float("nan")


def sweep_table(points: Sequence[dict]) -> str:
    """Per point: top-1, images, infer img/s (model alone), eval img/s (data path included)."""
    graphs = any("cuda_graphs" in p for p in points)
    lines = [
        "| model | method | amount | top-1 | images | infer img/s | eval img/s | eval / infer |"
        + (" CUDA graphs |" if graphs else ""),
        "|---|---|---|--:|--:|--:|--:|--:|" + ("---|" if graphs else ""),
    ]
    for p in points:
        lines.append(
            f"| {p['short_name']} | {p['method']} | {amount_label(*row_key(p)[2:])} | {p['top1']:.2f} | {p['n_images']} | "
            f"{p['infer_samples_per_sec']:.0f} | {p['eval_samples_per_sec']:.0f} | "
            f"{p['eval_samples_per_sec'] / p['infer_samples_per_sec']:.2f} |"
            + (f" {p.get('cuda_graphs')} |" if graphs else "")
        )
    return "\n".join(lines)
