"""A grid point's row, predictions and failures, assembled from its pass's work-item outcomes.

Pure functions of the outcomes (no Ray): every image counted once (a repeated key is an error naming it
and its shards), the manifest total checked, decode failures kept or refused, and the pass's wall time
charged to the point by its share of loading + forward time (``eval_samples_per_sec``).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import time
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import pyarrow as pa
import timm
import torch

import shards
import tomecis
from tomecis.names import UNREDUCED
from tomecis.speedup import speedup_interval

from .calibrate import unmatched_columns
from .errors import SweepError
from .grid import BASELINE_AMOUNT, GridPoint
from .results import FAILURES_DIR, accuracy, failures_table, predictions_table
from .work import ModelProfile, PointKey, Reduction, ShardOutcome


def point_row(
    point: GridPoint,
    outcomes: List[ShardOutcome],
    profile: ModelProfile,
    expected_total: Optional[int],
    allow_decode_failures: bool,
    retries: int = 0,
    resumed: bool = False,
    dataset_title: str = "",
    matched: Optional[Mapping[str, object]] = None,
    planned: Optional[str] = None,
) -> Tuple[dict, pa.Table, pa.Table]:
    """The points row, predictions and decode failures of one grid point, after checking that nothing
    is missing or counted twice. ``retries``: work items of the pass that were retried; ``resumed``:
    the outcomes come from more than one run of the driver (a pass resumed from its spool), whose wall
    time from first start to last end would count the pause, so ``eval_samples_per_sec`` is None;
    ``dataset_title``: what the data is called when it is a public set (``ShardSet.title``), else '';
    ``matched``: the point's ``calibrate.MATCHED_COLUMNS`` when ``--match`` found it (else null);
    ``planned``: the model's planned amounts (``sweep.planned_json``), so the report can say what is missing."""
    _check_method_errors(point, outcomes, profile)
    keys = [k for o in outcomes for k in o.keys]
    labels = np.concatenate([o.labels for o in outcomes]) if outcomes else np.zeros(0, np.int32)
    top5 = np.concatenate([o.top5[point.key] for o in outcomes]) if outcomes else np.zeros((0, 5), np.int32)
    shard_of = [url for o in outcomes for url in o.key_shards]
    _check_unique_keys(point, keys, shard_of)
    _check_counts(point, outcomes, len(keys), expected_total, allow_decode_failures)
    device = device_names(outcomes, profile)
    predictions = predictions_table(point, keys, labels.tolist(), top5.tolist(), shard_of, device)
    failures = failures_table(point, [f for o in outcomes for f in o.failures], device)
    top1, top5_acc = accuracy(labels.tolist(), top5.tolist())
    row = dict(
        **point.identity(device),
        dataset_title=dataset_title or None,
        short_name=point.short_name,
        top1=top1,
        top5=top5_acc,
        n_images=len(keys),
        n_failed=sum(o.n_failed for o in outcomes),
        **_profile_columns(profile, point.key[1:]),
        **_pass_columns(outcomes, point.key, len(keys), resumed),
        **graph_columns(outcomes, profile, point.key),
        **(dict(matched) if matched else unmatched_columns()),
        planned=planned,
        retries=retries,
        torch_version=torch.__version__,
        timm_version=timm.__version__,
        ray_version=_ray_version(),
        tomecis_version=tomecis.__version__,
    )
    return row, predictions, failures


def _check_method_errors(point: GridPoint, outcomes: List[ShardOutcome], profile: ModelProfile) -> None:
    """A point whose method failed on an actor (``tomecis.MethodError``) fails, with the method's error."""
    errors = [o.point_errors[point.key] for o in outcomes if point.key in o.point_errors]
    if point.key[1:] in profile.point_errors:
        errors.append(f"timing: {profile.point_errors[point.key[1:]]}")
    if errors:
        raise SweepError(f"{point.label}: {errors[0]}")


def _ray_version() -> Optional[str]:
    """Ray's installed version (read from its package metadata: this module never imports Ray), or None
    where Ray is not installed (gpucheck's in-process evaluator on a stock PyTorch image)."""
    try:
        return importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        return None


def _check_counts(
    point: GridPoint, outcomes, n_images: int, expected_total: Optional[int], allow_failures: bool
) -> None:
    """Every image of the manifest counted (scored or failed); failures only with ``allow_failures``."""
    n_failed = sum(o.n_failed for o in outcomes)
    where = point.label
    if expected_total is not None and n_images + n_failed != expected_total:
        raise SweepError(f"{where}: {n_images} images + {n_failed} failed != manifest total {expected_total}")
    if n_failed and not allow_failures:
        first = next(f for o in outcomes for f in o.failures)
        raise SweepError(
            f"{where}: {n_failed} images could not be decoded (first: shard {first.shard}, key {first.key}: "
            f"{first.error}); fix the shards or pass --allow-decode-failures to score the rest"
        )


def _profile_columns(profile: ModelProfile, reduction: Reduction) -> dict:
    """What the model, timed and counted alone, gives the row at ``reduction`` (method, r, keep)."""
    return dict(
        schedule=profile.schedule[reduction],
        infer_samples_per_sec=profile.infer_samples_per_sec.get(reduction),
        **speedup_columns(profile, reduction),
        gflops=profile.gflops[reduction],
        tokens_out=profile.tokens_out[reduction],
        param_count=round(profile.param_count, 3),
        img_size=profile.img_size,
        crop_pct=profile.crop_pct,
        interpolation=profile.interpolation,
    )


def speedup_columns(profile: ModelProfile, reduction: Reduction) -> dict:
    """``speedup`` over the model's unreduced point with its 95% interval (``tomecis.speedup``: the median
    of the per-round paired ratios and its order-statistics interval) and ``bench_seconds``, the point's
    seconds per timed round; all null without timing (``--no-bench``), the bounds null with under 6 rounds."""
    seconds = profile.bench_seconds.get(reduction)
    baseline = profile.bench_seconds.get((UNREDUCED, *BASELINE_AMOUNT))
    if not seconds or not baseline:
        return dict(speedup=None, speedup_low=None, speedup_high=None, bench_seconds=seconds or None)
    interval = speedup_interval(seconds, baseline)
    bounds = (interval.low, interval.high) if interval.has_interval else (None, None)
    return dict(
        speedup=interval.speedup, speedup_low=bounds[0], speedup_high=bounds[1], bench_seconds=list(seconds)
    )


def _pass_columns(outcomes: List[ShardOutcome], key: PointKey, n_images: int, resumed: bool) -> dict:
    """Where and when the decode pass ran, and its wall time charged to this point (None when resumed)."""
    started, finished = evaluation_span(outcomes)
    rate = None if resumed else eval_samples_per_sec(outcomes, key, n_images, finished - started)
    return dict(
        eval_samples_per_sec=rate,
        n_shards=sum(len(o.shards) for o in outcomes),
        started=_utc(started),
        finished=_utc(finished),
        nodes=sorted({o.node_id for o in outcomes}),
        hostnames=sorted({o.hostname for o in outcomes}),
    )


def graph_columns(outcomes: List[ShardOutcome], profile: ModelProfile, key: PointKey) -> dict:
    """``cuda_graphs``: every forward of the point, in the pass and in its timing, was a CUDA-graph replay;
    false as soon as one part ran eagerly (never a mix called graphed), and ``graph_error`` says why."""
    reduction = key[1:]
    parts = [o.cuda_graphs.get(key, False) for o in outcomes]
    if profile.infer_samples_per_sec.get(reduction) is not None:
        parts.append(profile.cuda_graphs.get(reduction, False))
    errors = [f"evaluation on {o.device}: {o.graph_errors[key]}" for o in outcomes if key in o.graph_errors]
    if reduction in profile.graph_errors:
        errors.append(f"timing: {profile.graph_errors[reduction]}")
    graphed = bool(parts) and all(parts)
    if not errors and any(parts) and not graphed:
        errors.append("some work items or the timing ran eagerly (an actor started with CUDA graphs off)")
    return dict(cuda_graphs=graphed, graph_error="; ".join(dict.fromkeys(errors)) or None)


def device_names(outcomes: List[ShardOutcome], profile: ModelProfile) -> str:
    """The device that evaluated (and timed) the point; when actors ran on different devices (a cluster
    with mixed GPU types), every name, sorted and joined with `` + ``, so that the mix shows in the
    ``device`` column (and the report keeps it apart from single-device runs) instead of being hidden."""
    return " + ".join(sorted({o.device for o in outcomes} | {profile.device}))


def evaluation_span(outcomes: List[ShardOutcome]) -> Tuple[float, float]:
    """Wall-clock timestamps (``time.time()``, the actors' clocks) at which the point's first work item
    started and its last one finished; now, twice, when there are no outcomes."""
    if not outcomes:
        now = time.time()
        return now, now
    return min(o.started for o in outcomes), max(o.finished for o in outcomes)


def _utc(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc)


def _check_unique_keys(point: GridPoint, keys: List[str], shard_of: List[str]) -> None:
    """Every image key once in the point; else ``SweepError`` naming a repeated key and its shards."""
    if len(set(keys)) == len(keys):
        return
    shards_of: Dict[str, List[str]] = {}
    for key, shard in zip(keys, shard_of):
        shards_of.setdefault(key, []).append(shard)
    repeated = {k: v for k, v in shards_of.items() if len(v) > 1}
    key, where = next(iter(repeated.items()))
    more = f" ({len(repeated) - 1} more key(s) repeat too)" if len(repeated) > 1 else ""
    raise SweepError(
        f"{point.label}: image key {key!r} occurs {len(where)} times, in shard(s) "
        f"{', '.join(sorted(set(where)))}{more}; every key must be unique: rewrite the shards from sources "
        "without repeated images (python -m shards.write), or drop the repeating shard from --data"
    )


def describe_decode_failures(
    failures: Dict[str, List[shards.DecodeFailure]], out: str, first: int = 5
) -> str:
    """What ``--allow-decode-failures`` left out, per model: the first few (shard, key, error) and a count."""
    lines = []
    for model, items in failures.items():
        if not items:
            continue
        lines.append(f"{model}: {len(items)} image(s) could not be decoded and were not scored:")
        lines += [f"  shard {f.shard}, key {f.key}: {f.error}" for f in items[:first]]
        if len(items) > first:
            lines.append(f"  ... and {len(items) - first} more")
    if lines:
        lines.append(f"every one is listed in {out.rstrip('/')}/{FAILURES_DIR}/ (one file per point)")
    return "\n".join(lines)


def eval_samples_per_sec(
    outcomes: List[ShardOutcome], key: PointKey, n_images: int, wall: float
) -> Optional[float]:
    """Images per second of the evaluation pass, data loading included, as if it had run this point alone.

    ``wall``, the pass's wall time, runs from the first item's start to the last item's end, over all actors
    (``evaluation_span``). One decode fed every (model, method, amount) of the pass, so the pass is charged to the
    point ``key`` in proportion to what it cost: the loading time plus its forward time, over the loading
    time plus every point's forward time (summed over the items):
    ``n_images / (wall * (load + forward[key]) / (load + sum(forward)))``. With one point it is images / wall."""
    if not outcomes or n_images == 0:
        return None
    load = sum(o.load_seconds for o in outcomes)
    forward = {q: sum(o.forward_seconds[q] for o in outcomes) for q in outcomes[0].forward_seconds}
    busy = load + sum(forward.values())
    if wall <= 0 or busy <= 0:
        return None
    return n_images / (wall * (load + forward[key]) / busy)
