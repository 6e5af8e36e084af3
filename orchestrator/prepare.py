"""What a sweep settles around its Ray work: the shards (and their total and fingerprint), the weights of
each model, the decode passes (models grouped by eval transform) and the size of a work item."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import timm

import shards
from shards.manifest import sha256_of_file
from tomecis.models import find_checkpoint, short_name

from .grid import GridPoint
from .placement import ActorPlan
from .work import DecodePass, Task, Weights


@dataclass
class Selection:
    """The shards a sweep evaluates, their image total (None without counts) and the dataset fingerprint;
    title: what the data is called when it is a public set (``shards.ShardSet.title``), else ''."""

    shards: Tuple[shards.ShardInfo, ...]
    total: Optional[int]
    fingerprint: str
    title: str = ""


def select_shards(
    shardset: shards.ShardSet, limit: Optional[int]
) -> Tuple[Tuple[shards.ShardInfo, ...], int, str]:
    """The shards to evaluate (local paths made absolute), their image total and the dataset fingerprint.

    ``limit`` keeps the first whole shards holding at least ``limit`` images (whole
    shards, so every count can still be checked against the manifest)."""
    chosen = tuple(absolute_shard(s) for s in shardset.shards)
    if limit is not None:
        if any(s.n_samples is None for s in chosen):
            raise ValueError(
                "--limit needs shard counts from a manifest; point --data at a directory with manifest.json"
            )
        kept, total = [], 0
        for shard in chosen:
            if total >= limit:
                break
            kept.append(shard)
            total += shard.n_samples
        chosen = tuple(kept)
    total = sum(s.n_samples for s in chosen) if all(s.n_samples is not None for s in chosen) else None
    return (
        chosen,
        total,
        shards.shardset.fingerprint_of(chosen),
    )  # the manifest's own when chosen is all of it


_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def absolute_shard(shard: shards.ShardInfo) -> shards.ShardInfo:
    """A local shard path made absolute on the driver: actors run in their own working directory, so a
    relative path would be resolved there (or on another node). URLs (``s3://``, ``gs://``, ``http(s)://``)
    and ``pipe:`` commands are left as they are."""
    if shard.url.startswith("pipe:") or _URL_SCHEME.match(shard.url):
        return shard
    return replace(shard, url=os.path.abspath(shard.url))


def weights_for(
    models: Sequence[str], checkpoint_dir: Optional[str], random_weights: bool
) -> Dict[str, Weights]:
    """Checkpoint files found before any Ray work (a missing one is an error), else pretrained or random."""
    found = {}
    for model in models:
        if checkpoint_dir:
            path = find_checkpoint(checkpoint_dir, model)
            found[model] = Weights("checkpoint", name=path.name, data_ref=[path], digest=sha256_of_file(path))
        else:
            found[model] = Weights("random" if random_weights else "pretrained")
    return found


def ship_weights(weights: Dict[str, Weights]) -> Dict[str, Weights]:
    """Put checkpoint bytes in Ray's object store once, so actors on any node can load them."""
    import ray  # here alone: planning passes (gpucheck's in-process evaluator) needs no Ray

    shipped = {}
    for model, w in weights.items():
        if w.source == "checkpoint":
            w = Weights(
                "checkpoint",
                name=w.name,
                data_ref=[ray.put(Path(w.data_ref[0]).read_bytes())],
                digest=w.digest,
            )
        shipped[model] = w
    return shipped


def shards_per_item(plan: ActorPlan, n_shards: int) -> int:
    """Shards per work item: one per DataLoader worker of a typical actor (CPU actors decode themselves:
    one shard), but small enough that every actor gets about two items in flight."""
    workers = sorted(s.loader_workers for s in plan.slots)[len(plan.slots) // 2]
    return max(1, min(workers, n_shards // (2 * plan.num_actors)))


def transform_key(model_or_name) -> tuple:
    """What makes two models' eval transforms the same: input size, crop, interpolation, mean, std.
    Models with equal keys share one decode pass."""
    cfg = shards.data_config(model_or_name)
    return tuple(
        tuple(v) if isinstance(v, (list, tuple)) else v
        for v in (
            cfg["input_size"],
            cfg["crop_pct"],
            cfg["interpolation"],
            cfg["mean"],
            cfg["std"],
            cfg.get("crop_mode", "center"),
        )
    )


def group_by_transform(models: Sequence[str]) -> List[List[str]]:
    """The models in groups of equal eval transform (``transform_key``), in order: one decode pass each.
    Models are built on the meta device (no weights, no memory)."""
    groups: Dict[tuple, List[str]] = {}
    for model in dict.fromkeys(models):
        groups.setdefault(transform_key(timm.create_model(model, device="meta")), []).append(model)
    return list(groups.values())


def pass_name(index: int, models: Sequence[str]) -> str:
    """``pass 1 (deit_tiny+deit_small)``."""
    return f"pass {index} ({'+'.join(short_name(m) for m in models)})"


def plan_passes(todo: Sequence[GridPoint], weights: Dict[str, Weights]) -> List[DecodePass]:
    """One decode pass per eval transform: models whose transforms are equal (DeiT-Ti/S/B) share one,
    with a task per (model, method) holding the amounts still to do (the baseline is the method ``none``)."""
    passes = []
    for index, models in enumerate(group_by_transform([p.model for p in todo]), 1):
        tasks = [
            Task(model, method, tuple((p.r, p.keep) for p in todo if (p.model, p.method) == (model, method)))
            for model in models
            for method in dict.fromkeys(p.method for p in todo if p.model == model)
        ]
        passes.append(DecodePass(pass_name(index, models), {m: weights[m] for m in models}, tuple(tasks)))
    return passes
