"""Sweep (model, r) grid points over a Ray cluster into Parquet results.

    python -m orchestrator.sweep --models deit_tiny,deit_small --r 0,8-16 --data shards/ --out results/

Flow: parse the grid -> resolve the shards -> skip points already in ``--out`` ->
start one actor per device -> then model by model: each (model, shard) item is
decoded once and run at every r of that model -> outcomes are accepted once per
item -> the model alone is timed on random input -> per point, counts are checked
against the manifest and the row + predictions are written (before the next model
starts, so a later failure keeps them) -> a table per model is printed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import ray
import timm
import torch
from tqdm import tqdm

import shards
from shards.manifest import sha256_of_file
import tomecis
from tomecis.models import find_checkpoint, max_r
from tomecis.patch import MODES

from . import report
from .evaluator import EvaluatorConfig, ModelProfile, ShardOutcome, Weights, loader_workers_for
from .grid import AMPS, GridPoint, build_grid, parse_models, parse_r_values
from .pool import ActorResources, EvaluatorPool, SweepError, WorkFailed, group_shards, item_key
from .results import FAILURES_DIR, ResultsDir, accuracy, failures_table, predictions_table


@dataclass
class SweepConfig:
    """Everything a sweep needs, parsed once from the command line."""

    models: List[str]
    r_values: List[int]
    data: Optional[str] = None
    out: str = "results"
    batch_size: int = 128
    device: str = "auto"
    amp: str = "none"
    mode: str = "tomecis"
    checkpoint_dir: Optional[str] = None
    random_weights: bool = False
    limit: Optional[int] = None
    address: str = "auto"
    bench: bool = True
    bench_runs: int = 10
    bench_warmup: int = 3
    force: bool = False
    num_actors: Optional[int] = None
    cpus_per_actor: Optional[float] = None
    loader_workers: Optional[int] = None
    max_retries: int = 3
    actor_start_timeout: float = 900.0
    allow_decode_failures: bool = False
    progress: bool = True
    exit_on_item: Optional[int] = None  # test hook: the first actor dies when it starts its N-th item


@dataclass
class SweepSummary:
    written: List[str] = field(default_factory=list)
    skipped: List[GridPoint] = field(default_factory=list)
    failed: Dict[GridPoint, str] = field(default_factory=dict)
    decode_failures: Dict[str, List[shards.DecodeFailure]] = field(default_factory=dict)  # model -> images not scored
    actors_replaced: int = 0
    table: str = ""


# --------------------------------------------------------------------------- preparation (no Ray)


def select_shards(shardset: shards.ShardSet, limit: Optional[int]) -> Tuple[Tuple[shards.ShardInfo, ...], int, str]:
    """The shards to evaluate (local paths made absolute), their image total and the dataset fingerprint.

    ``limit`` keeps the first whole shards holding at least ``limit`` images (whole
    shards, so every count can still be checked against the manifest)."""
    chosen = tuple(absolute_shard(s) for s in shardset.shards)
    if limit is not None:
        if any(s.n_samples is None for s in chosen):
            raise ValueError("--limit needs shard counts from a manifest; point --data at a directory with manifest.json")
        kept, total = [], 0
        for shard in chosen:
            if total >= limit:
                break
            kept.append(shard)
            total += shard.n_samples
        chosen = tuple(kept)
    total = sum(s.n_samples for s in chosen) if all(s.n_samples is not None for s in chosen) else None
    return chosen, total, shards.read.fingerprint_of(chosen)  # the manifest's own when chosen is all of it


_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def absolute_shard(shard: shards.ShardInfo) -> shards.ShardInfo:
    """A local shard path made absolute on the driver: actors run in their own working directory, so a
    relative path would be resolved there (or on another node). URLs (``s3://``, ``gs://``, ``http(s)://``)
    and ``pipe:`` commands are left as they are."""
    if shard.url.startswith("pipe:") or _URL_SCHEME.match(shard.url):
        return shard
    return replace(shard, url=os.path.abspath(shard.url))


def weights_for(models: Sequence[str], cfg: SweepConfig) -> Dict[str, Weights]:
    """Checkpoint files found before any Ray work (a missing one is an error), else pretrained or random."""
    found = {}
    for model in models:
        if cfg.checkpoint_dir:
            path = find_checkpoint(cfg.checkpoint_dir, model)
            found[model] = Weights("checkpoint", name=path.name, data_ref=[path], digest=sha256_of_file(path))
        else:
            found[model] = Weights("random" if cfg.random_weights else "pretrained")
    return found


def _ship_weights(weights: Dict[str, Weights]) -> Dict[str, Weights]:
    """Put checkpoint bytes in Ray's object store once, so actors on any node can load them."""
    shipped = {}
    for model, w in weights.items():
        if w.source == "checkpoint":
            w = Weights("checkpoint", name=w.name, data_ref=[ray.put(Path(w.data_ref[0]).read_bytes())], digest=w.digest)
        shipped[model] = w
    return shipped


# --------------------------------------------------------------------------- Ray


def connect(address: str) -> bool:
    """Join or start Ray; True when this call initialised it (so the sweep shuts it down)."""
    if ray.is_initialized():
        return False
    if address == "local":
        ray.init(include_dashboard=False)
    elif address == "auto":
        if os.environ.get("RAY_ADDRESS"):
            _check_reachable(os.environ["RAY_ADDRESS"], "RAY_ADDRESS")
            ray.init()
        else:
            try:
                ray.init(address="auto")
            except ConnectionError:  # no running cluster: the embedded default
                ray.init(include_dashboard=False)
    else:
        _check_reachable(address, "--address")
        try:
            ray.init(address=address)
        except ConnectionError as err:
            raise SweepError(f"--address {address}: cannot join the Ray cluster there ({err}); {_ADDRESS_HINT}") from err
    return True


_ADDRESS_HINT = "check the address (`ray status` on the head node prints it), or use --address local to start Ray here"


def _check_reachable(address: str, source: str, timeout: float = 5.0) -> None:
    """A quick TCP connect to ``host:port`` (``ray://`` too) before ``ray.init``, which would otherwise
    wait minutes on an address where nothing answers; raises ``SweepError`` naming the address."""
    if address in ("auto", "local") or "://" in address and not address.startswith("ray://"):
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"{source} {address}: expected HOST:PORT (e.g. 10.0.0.1:6379 or ray://10.0.0.1:10001); {_ADDRESS_HINT}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise SweepError(f"{source} {address}: no Ray cluster answers there ({err}); {_ADDRESS_HINT}") from err


def device_kind(cfg: SweepConfig) -> str:
    """``cpu`` or ``cuda``: what the actors will run on (with ``--device auto``, asks the cluster)."""
    if cfg.device != "auto":
        return cfg.device
    return "cuda" if plan_actors(cfg).num_gpus > 0 else "cpu"


def plan_actors(cfg: SweepConfig) -> ActorResources:
    """One actor per GPU when the cluster has GPUs (and --device allows), else CPU actors.

    ``--device cuda --num-actors N`` asks for N GPU actors even before the GPU nodes
    exist: their pending demand makes Ray's autoscaler start them (``ray up`` clusters)."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    if cfg.device == "cuda" or (cfg.device == "auto" and gpus > 0):
        count = cfg.num_actors or gpus
        if count == 0:
            raise SweepError("--device cuda, but the Ray cluster has no GPU yet; pass --num-actors N to have the autoscaler start GPU nodes, or use --device auto")
        return ActorResources(count, cfg.cpus_per_actor or 1, 1)
    per_actor = cfg.cpus_per_actor or max(1, min(cpus, 4))
    return ActorResources(cfg.num_actors or max(1, int(cpus // per_actor)), per_actor, 0)


def shards_per_item(cfg: SweepConfig, resources: ActorResources, n_shards: int) -> int:
    """Shards per work item: one per DataLoader worker of an actor (4 on GPU unless --loader-workers,
    none on CPU: one shard), but small enough that every actor gets about two items in flight."""
    workers = loader_workers_for(cfg.loader_workers, resources.num_gpus > 0)
    return max(1, min(workers, n_shards // (2 * resources.num_actors)))


# --------------------------------------------------------------------------- assembling points


def point_row(
    point: GridPoint,
    outcomes: List[ShardOutcome],
    profile: ModelProfile,
    dataset: str,
    expected_total: Optional[int],
    allow_decode_failures: bool,
) -> Tuple[dict, pa.Table, pa.Table]:
    """The points row, predictions and decode failures of one grid point, after checking that nothing
    is missing or counted twice."""
    keys = [k for o in outcomes for k in o.keys]
    labels = np.concatenate([o.labels for o in outcomes]) if outcomes else np.zeros(0, np.int32)
    top5 = np.concatenate([o.top5[point.r] for o in outcomes]) if outcomes else np.zeros((0, 5), np.int32)
    shard_of = [url for o in outcomes for url in o.key_shards]
    n_images, n_failed = len(keys), sum(o.n_failed for o in outcomes)
    _check_unique_keys(point, keys, shard_of)
    if expected_total is not None and n_images + n_failed != expected_total:
        raise SweepError(f"{point.short_name} r={point.r}: {n_images} images + {n_failed} failed != manifest total {expected_total}")
    if n_failed and not allow_decode_failures:
        first = next(f for o in outcomes for f in o.failures)
        raise SweepError(
            f"{point.short_name} r={point.r}: {n_failed} images could not be decoded (first: shard {first.shard}, "
            f"key {first.key}: {first.error}); fix the shards or pass --allow-decode-failures to score the rest"
        )
    device = device_names(outcomes, profile)
    started, finished = evaluation_span(outcomes)  # the evaluation pass's wall time, also for eval_samples_per_sec
    predictions = predictions_table(point, keys, labels.tolist(), top5.tolist(), shard_of, dataset, device)
    failures = failures_table(point, [f for o in outcomes for f in o.failures], dataset, device)
    top1, top5_acc = accuracy(labels.tolist(), top5.tolist())
    row = dict(
        model=point.model,
        short_name=point.short_name,
        mode=point.mode,
        r=point.r,
        schedule=profile.schedule[point.r],
        top1=top1,
        top5=top5_acc,
        n_images=n_images,
        n_failed=n_failed,
        infer_samples_per_sec=profile.infer_samples_per_sec.get(point.r),
        infer_batch_size=point.batch_size,
        eval_samples_per_sec=eval_samples_per_sec(outcomes, point.r, n_images, finished - started),
        gflops=profile.gflops[point.r],
        tokens_out=profile.tokens_out[point.r],
        param_count=round(profile.param_count, 3),
        img_size=profile.img_size,
        crop_pct=profile.crop_pct,
        interpolation=profile.interpolation,
        amp=point.amp,
        weights=point.weights,
        device=device,
        dataset=dataset,
        n_shards=sum(len(o.shards) for o in outcomes),
        started=_utc(started),
        finished=_utc(finished),
        nodes=sorted({o.node_id for o in outcomes}),
        hostnames=sorted({o.hostname for o in outcomes}),
        torch_version=torch.__version__,
        timm_version=timm.__version__,
        ray_version=ray.__version__,
        tomecis_version=tomecis.__version__,
    )
    return row, predictions, failures


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
        f"{point.short_name} r={point.r}: image key {key!r} occurs {len(where)} times, in shard(s) "
        f"{', '.join(sorted(set(where)))}{more}; every key must be unique: rewrite the shards from sources "
        "without repeated images (python -m shards.write), or drop the repeating shard from --data"
    )


def describe_decode_failures(failures: Dict[str, List[shards.DecodeFailure]], out: str, first: int = 5) -> str:
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


def eval_samples_per_sec(outcomes: List[ShardOutcome], r: int, n_images: int, wall: float) -> Optional[float]:
    """Images per second of the evaluation pass, data loading included, as if it had run this r alone.

    ``wall``, the pass's wall time, runs from the first item's start to the last item's end, over all actors
    (``evaluation_span``). One
    decode fed every r, so the pass is charged to r in proportion to what r cost: the loading time plus
    r's forward time, over the loading time plus every r's forward time (summed over the items):
    ``n_images / (wall * (load + forward[r]) / (load + sum(forward)))``. With one r it is images / wall."""
    if not outcomes or n_images == 0:
        return None
    load = sum(o.load_seconds for o in outcomes)
    forward = {q: sum(o.forward_seconds[q] for o in outcomes) for q in outcomes[0].forward_seconds}
    busy = load + sum(forward.values())
    if wall <= 0 or busy <= 0:
        return None
    return n_images / (wall * (load + forward[r]) / busy)


# --------------------------------------------------------------------------- the sweep


def run_sweep(cfg: SweepConfig) -> SweepSummary:
    """Evaluate every grid point not yet in ``cfg.out``; raises ``SweepError`` if any point fails.

    Ray starts only when there is work, or with ``--device auto`` (the device kind, part of the
    results' key, then depends on the cluster's GPUs)."""
    chosen, total, fingerprint = select_shards(shards.resolve_data(cfg.data), cfg.limit)
    weights = weights_for(cfg.models, cfg)
    results = ResultsDir(cfg.out)
    summary = SweepSummary()
    started_ray = connect(cfg.address) if cfg.device == "auto" else False
    try:
        grid = build_grid(cfg.models, cfg.r_values, cfg.mode, cfg.amp, cfg.batch_size, {m: w.tag for m, w in weights.items()}, device_kind(cfg))
        todo = []
        for point in grid:
            (todo if cfg.force or not results.is_done(point, fingerprint) else summary.skipped).append(point)
        if todo:
            started_ray = connect(cfg.address) or started_ray
            models = [m for m in cfg.models if any(p.model == m for p in todo)]
            _evaluate(cfg, todo, models, {m: weights[m] for m in models}, chosen, total, fingerprint, results, summary)
    finally:
        if started_ray:
            ray.shutdown()
    done = results.read_points_of(grid, fingerprint).to_pandas()
    summary.table = report.sweep_tables(done, [p.model for p in grid], fingerprint, cfg.mode, cfg.amp, cfg.batch_size)
    if summary.failed:
        lines = "\n".join(f"  {p.short_name} r={p.r}: {why}" for p, why in summary.failed.items())
        left_out = describe_decode_failures(summary.decode_failures, cfg.out)
        raise SweepError(f"{len(summary.failed)} grid point(s) not written:\n{lines}" + (f"\n{left_out}" if left_out else ""))
    return summary


def _evaluate(cfg, todo, models, weights, chosen, total, fingerprint, results, summary) -> None:
    """Model by model: evaluate every shard, profile, write the model's points; a model whose
    work fails is recorded in ``summary.failed`` and the next model still runs."""
    resources = plan_actors(cfg)
    evaluator_config = EvaluatorConfig(
        device=cfg.device,
        amp=cfg.amp,
        mode=cfg.mode,
        batch_size=cfg.batch_size,
        loader_workers=cfg.loader_workers,
        threads=max(1, int(resources.num_cpus)),
        exit_on_item=cfg.exit_on_item,
    )
    pool = EvaluatorPool(
        evaluator_config, resources, _ship_weights(weights), max_retries=cfg.max_retries, start_timeout=cfg.actor_start_timeout
    )
    groups = group_shards(chosen, shards_per_item(cfg, resources, len(chosen)))
    n_total = sum(s.n_samples or 0 for s in chosen) * len(models) or None
    bar = tqdm(total=n_total, unit="img", desc=f"sweep {len(todo)} points", disable=not cfg.progress, file=sys.stderr)
    try:
        for model in models:
            points = [p for p in todo if p.model == model]
            _evaluate_model(cfg, pool, points, groups, total, fingerprint, results, summary, bar)
    finally:
        bar.close()
        summary.actors_replaced = pool.replaced
        pool.shutdown()


def _evaluate_model(cfg, pool, points, groups, total, fingerprint, results, summary, bar) -> None:
    """One model's points, written as soon as its shards are in and it is profiled (a later failure,
    or Ctrl-C, keeps them; a rerun skips them)."""
    model = points[0].model
    r_values = {model: [p.r for p in points]}
    items = [(model, group) for group in groups]
    try:
        outcomes = pool.evaluate(items, r_values, lambda o: bar.update(len(o.keys) + o.n_failed))
        profile = pool.profile(model, r_values[model], cfg.bench, cfg.bench_runs, cfg.bench_warmup)
    except WorkFailed as err:
        for point in points:
            summary.failed[point] = str(err)
        return
    model_outcomes = [outcomes[item_key(item)] for item in items]  # the same for every point of the model
    model_failures = [f for o in model_outcomes for f in o.failures]
    for point in points:
        try:
            row, predictions, failures = point_row(point, model_outcomes, profile, fingerprint, total, cfg.allow_decode_failures)
        except SweepError as err:
            summary.failed[point] = str(err)
            continue
        summary.written.append(results.write_point(point, fingerprint, row, predictions, failures))
        if len(failures):
            summary.decode_failures[model] = model_failures


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orchestrator.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", required=True, help="comma-separated: deit_tiny,deit_small or timm names")
    p.add_argument("--r", required=True, help="r values: 0,8-16 or 8-16:2 or 13")
    p.add_argument("--data", help=f"shards: a directory with manifest.json, a brace pattern, a list or URLs (default ${shards.read.TOMECIS_DATA_ENV})")
    p.add_argument("--out", default="results", help="results directory or URI (s3://...) (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"], help="auto: GPU actors when the cluster has GPUs, else CPU actors")
    p.add_argument("--amp", default="none", choices=list(AMPS))
    p.add_argument("--mode", default="tomecis", choices=list(MODES))
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint-dir", help="directory of <timm model name>.pth|.safetensors (offline clusters)")
    weights.add_argument("--random-weights", action="store_true", help="random initialisation (smoke tests, timing only)")
    p.add_argument("--limit", type=int, help="only the first whole shards holding at least N images")
    p.add_argument("--address", default="auto", help="auto (join a running cluster, else start one here), local, or ADDR")
    p.add_argument("--bench", action=argparse.BooleanOptionalAction, default=True, help="time the model alone on random input")
    p.add_argument("--bench-runs", type=int, default=10)
    p.add_argument("--force", action="store_true", help="recompute points already in --out")
    p.add_argument("--num-actors", type=int, help="actors to start (default: one per GPU, else CPUs / cpus-per-actor)")
    p.add_argument("--cpus-per-actor", type=float, help="CPUs each actor asks Ray for (default 1 with GPUs, else up to 4)")
    p.add_argument("--loader-workers", type=int, help="DataLoader workers per actor (default 4 on GPU, 0 on CPU)")
    p.add_argument("--max-retries", type=int, default=3, help="retries of a work item whose actor died or failed")
    p.add_argument("--actor-start-timeout", type=float, default=900.0, help="seconds to wait for actors to be placed (autoscaling) (default %(default)s)")
    p.add_argument("--allow-decode-failures", action="store_true", help="score the decodable images when some fail (n_failed is recorded)")
    p.add_argument("--no-progress", action="store_true")
    return p


def config_from_args(argv: Optional[Sequence[str]] = None) -> SweepConfig:
    """Parse and validate everything before any Ray work; errors name the argument."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        models = parse_models(args.models)
    except ValueError as err:
        parser.error(f"--models: {err}")
    try:
        r_values = parse_r_values(args.r)
    except ValueError as err:
        parser.error(f"--r: {err}")
    for name in ("batch_size", "bench_runs", "limit", "num_actors"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.max_retries < 0:
        parser.error("--max-retries must be >= 0")
    if args.checkpoint_dir and not Path(args.checkpoint_dir).is_dir():
        parser.error(f"--checkpoint-dir {args.checkpoint_dir} is not a directory")
    return SweepConfig(
        models=models,
        r_values=r_values,
        data=args.data,
        out=args.out,
        batch_size=args.batch_size,
        device=args.device,
        amp=args.amp,
        mode=args.mode,
        checkpoint_dir=args.checkpoint_dir,
        random_weights=args.random_weights,
        limit=args.limit,
        address=args.address,
        bench=args.bench,
        bench_runs=args.bench_runs,
        force=args.force,
        num_actors=args.num_actors,
        cpus_per_actor=args.cpus_per_actor,
        loader_workers=args.loader_workers,
        max_retries=args.max_retries,
        actor_start_timeout=args.actor_start_timeout,
        allow_decode_failures=args.allow_decode_failures,
        progress=not args.no_progress,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    cfg = config_from_args(argv)
    try:
        validate_inputs(cfg)
        summary = run_sweep(cfg)
    except (SweepError, ValueError, FileNotFoundError, shards.ShardReadError, shards.ShardCountError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary.table)
    left_out = describe_decode_failures(summary.decode_failures, cfg.out)
    if left_out:
        print(f"\n{left_out}")
    print(f"\n{len(summary.written)} point(s) written, {len(summary.skipped)} already done, to {cfg.out}")
    return 0


def check_supported(model: str) -> torch.nn.Module:
    """The model, built on the meta device (no memory, no weights), must take ``tomecis.patch``:
    a timm VisionTransformer with a class token. Raises ``ValueError`` naming the model; returns the
    patched meta-device model (for further shape checks without building it again)."""
    try:
        return tomecis.patch(timm.create_model(model, device="meta"))
    except (TypeError, ValueError) as err:
        raise ValueError(f"--models: {model} cannot be swept: {err}") from err


def validate_inputs(cfg: SweepConfig) -> None:
    """Data, weights and r checks that need files or model shapes, done before Ray starts."""
    for model in cfg.models:
        limit = max_r(check_supported(model))  # one meta-device build for both checks
        too_big = [r for r in cfg.r_values if r > limit]
        if too_big:
            raise ValueError(f"--r {too_big[0]} is impossible for {model}: a block can merge at most {limit} of its tokens")
    select_shards(shards.resolve_data(cfg.data), cfg.limit)
    if cfg.checkpoint_dir:  # only that each exists: run_sweep hashes them (weights_for), still before Ray starts
        for model in cfg.models:
            find_checkpoint(cfg.checkpoint_dir, model)


if __name__ == "__main__":
    sys.exit(main())
