"""Step 3: the decode pass over the shards at every point: without Ray, the actor's own code
(``Evaluator`` and ``evaluate_shards``, with the loader workers a GPU actor would get on this machine) in
this process; with Ray, a sweep on GPU actors. Either gives each point's row (as the sweep assembles it,
``points.point_row``) and its per-image top-1, which the CPU agreement step compares."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .config import CheckPoint, GpuCheckConfig, methods_of
from .machine import ray_version
from .weights import ModelWeights

POINT_FIELDS = [
    "model",
    "short_name",
    "mode",
    "r",
    "top1",
    "n_images",
    "infer_samples_per_sec",
    "eval_samples_per_sec",
    "started",
    "finished",
    "device",
    "cuda_graphs",  # where the point rows carry it (the CUDA-graph runner)
]
PointId = Tuple[str, str, int]  # (timm name, method, amount): a CheckPoint's fields


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
    from ..grid import build_grid
    from ..points import point_row
    from ..prepare import plan_passes, select_shards
    from ..work import EvaluatorConfig

    chosen, total, fingerprint = select_shards(shards.resolve_data(data), limit)
    work = {model: w.work_weights() for model, w in weights.items()}
    wanted = {(p.model, p.method, p.amount) for p in points}
    grid = [
        point
        for method, amounts in methods_of(points).items()
        for point in build_grid(
            list(dict.fromkeys(p.model for p in points)),
            amounts,
            method,
            amp,
            batch_size,
            {model: w.tag for model, w in work.items()},
            device,
            dataset=fingerprint,
        )
        if (point.model, point.mode, point.r) in wanted
    ]
    result = PassResult()
    threads = torch.get_num_threads()  # the evaluator sets its own, as an actor does; given back after
    try:
        evaluator = Evaluator(EvaluatorConfig(device=device, amp=amp, batch_size=batch_size), shape)
        for decode_pass in plan_passes(grid, work):
            outcome = evaluator.evaluate(decode_pass, chosen)
            if outcome.model_errors:
                raise RuntimeError("; ".join(outcome.model_errors.values()))
            result.labels.update(zip(outcome.keys, (int(v) for v in outcome.labels)))
            for task in decode_pass.tasks:
                profile = timing and evaluator.profile(decode_pass, task, True, *timing)
                for point in grid:
                    if (point.model, point.mode) != (task.model, task.mode):
                        continue
                    top5 = outcome.top5[point.key]
                    result.top1[(point.model, point.mode, point.r)] = dict(
                        zip(outcome.keys, (int(v) for v in top5[:, 0]))
                    )
                    if profile:
                        result.points.append(point_row(point, [outcome], profile, total, False)[0])
    finally:
        torch.set_num_threads(threads)
    result.points = point_fields(result.points)
    return result


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
        for method, amounts in methods_of([p for p in points if p.model in models]).items():
            summary = run_sweep(_sweep_config(cfg, data, out, models, method, amounts, folder))
            results = ResultsDir(str(out))
            rows = results.read_point_files(summary.written).to_pandas().to_dict("records")
            stems = [Path(f).stem for f in summary.written]
            preds = results.read_predictions(stems, ("key", "label", "pred"))
            for stem, row in zip(stems, rows):
                mine = preds[preds.point_file == stem]
                key = (row["model"], row["mode"], int(row["r"]))
                result.top1[key] = dict(zip(mine.key, (int(v) for v in mine.pred)))
                result.labels.update(zip(mine.key, (int(v) for v in mine.label)))
            result.points += point_fields(rows)
    return result


def _sweep_config(cfg, data, out, models, method, amounts, folder):
    from ..sweep import SweepConfig

    return SweepConfig(
        models=list(models),
        r_values=list(amounts),
        modes=[method],
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
        "| model | mode | r | top-1 | images | infer img/s | eval img/s | eval / infer |"
        + (" CUDA graphs |" if graphs else ""),
        "|---|---|--:|--:|--:|--:|--:|--:|" + ("---|" if graphs else ""),
    ]
    for p in points:
        lines.append(
            f"| {p['short_name']} | {p['mode']} | {p['r']} | {p['top1']:.2f} | {p['n_images']} | "
            f"{p['infer_samples_per_sec']:.0f} | {p['eval_samples_per_sec']:.0f} | "
            f"{p['eval_samples_per_sec'] / p['infer_samples_per_sec']:.2f} |"
            + (f" {p.get('cuda_graphs')} |" if graphs else "")
        )
    return "\n".join(lines)
