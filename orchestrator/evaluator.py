"""One patched model on one device: decode each batch once, run it at every r of the grid.

``evaluate_shards`` and ``profile_model`` are plain functions (tests call them
without Ray); ``Evaluator`` wraps them as the Ray actor the sweep starts, one per
device. Nothing here writes results or parses command lines.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

import shards
import tomecis
from tomecis import benchmark as bm
from tomecis.models import create_model, load_state_dict, state_dict_from_bytes


@dataclass(frozen=True)
class EvaluatorConfig:
    """How an actor runs its model; the same for every actor of a sweep."""

    device: str = "auto"
    amp: str = "none"
    mode: str = "tomecis"
    batch_size: int = 128
    loader_workers: Optional[int] = None  # None: 4 on a GPU, 0 on a CPU
    threads: Optional[int] = None  # torch CPU threads (the CPUs Ray gave the actor)
    exit_on_item: Optional[int] = None  # test hook: the process dies when it starts its N-th work item


@dataclass(frozen=True)
class Weights:
    """Where a model's weights come from: checkpoint bytes (shipped through Ray's object store so that
    no node needs the driver's files), timm's pretrained download, or random initialisation."""

    source: str  # "checkpoint" | "pretrained" | "random"
    name: str = ""  # checkpoint file name (picks the format)
    data_ref: Optional[list] = None  # [ObjectRef] of the bytes, wrapped so Ray does not fetch it eagerly
    digest: str = ""  # sha256 of the checkpoint file's bytes

    @property
    def tag(self) -> str:
        """What the results key on: ``random``, ``pretrained`` or ``ckpt_<first 12 hex of the sha256>``."""
        return f"ckpt_{self.digest[:12]}" if self.source == "checkpoint" else self.source


@dataclass
class ShardOutcome:
    """A work item (one or more shards of one model) evaluated at every r: per-image top-5
    (``[n, 5]`` int32) for each r, in key order, with the shard each key came from."""

    model: str
    shards: List[str]  # the item's shard URLs
    r_values: List[int]
    keys: List[str]
    key_shards: List[str]  # [n]: the shard URL of each key
    labels: np.ndarray  # [n] int32
    top5: Dict[int, np.ndarray]  # r -> [n, 5] int32
    n_failed: int
    failures: List[shards.DecodeFailure]
    load_seconds: float
    forward_seconds: Dict[int, float]
    started: float = 0.0  # wall clock (time.time()) when decoding began
    finished: float = 0.0  # wall clock when the last batch was done
    node_id: str = ""
    hostname: str = ""
    device: str = ""


@dataclass
class ModelProfile:
    """What the results need to know of a model, measured on the actor's device."""

    model: str
    param_count: float  # millions
    img_size: int
    crop_pct: float
    interpolation: str
    device: str
    schedule: Dict[int, List[int]] = field(default_factory=dict)
    gflops: Dict[int, float] = field(default_factory=dict)
    tokens_out: Dict[int, int] = field(default_factory=dict)
    infer_samples_per_sec: Dict[int, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- plain functions


def loader_workers_for(configured: Optional[int], on_gpu: bool) -> int:
    """DataLoader workers per actor: ``configured`` (``--loader-workers``) when given, else 4 on a GPU
    and 0 on a CPU (the actor decodes itself)."""
    if configured is not None:
        return configured
    return 4 if on_gpu else 0


def build_model(model_name: str, weights: Weights, mode: str, device: torch.device) -> nn.Module:
    """The patched model (r = 0) on ``device`` in eval mode."""
    if weights.source == "checkpoint":
        import ray

        data = weights.data_ref[0]
        if not isinstance(data, bytes):
            data = ray.get(data)
        model = create_model(model_name)
        load_state_dict(model, state_dict_from_bytes(data, weights.name), weights.name)
    else:
        model = create_model(model_name, pretrained=weights.source == "pretrained")
    return tomecis.patch(model.eval(), r=0, mode=mode).to(device)


def evaluate_shards(
    model: nn.Module,
    items: Sequence[shards.ShardInfo],
    r_values: Sequence[int],
    transform,
    device: torch.device,
    amp: str = "none",
    batch_size: int = 128,
    loader_workers: int = 0,
) -> ShardOutcome:
    """Decode ``items`` once with ``shards.iter_batches``: ``min(loader_workers, len(items))`` DataLoader
    workers (0: here) split the shards between them (``split_shards``), so each shard is read by exactly
    one worker (the sweep gives a worker one shard each). Every batch goes through ``model`` at each r.
    Each shard's count is checked against its manifest, and a shard never read is an error
    (``ShardCountError``, from ``shards.check_complete``); decode failures are returned, not dropped."""
    keys: List[str] = []
    key_shards: List[str] = []
    labels: List[np.ndarray] = []
    top5: Dict[int, List[np.ndarray]] = {r: [] for r in r_values}
    forward_seconds = {r: 0.0 for r in r_values}
    stats = shards.ReadStats()
    load_seconds = 0.0
    started = time.time()
    tick = time.perf_counter()
    with torch.inference_mode():
        batches = shards.iter_batches(
            items, transform, batch_size, loader_workers, stats, pin_memory=device.type == "cuda", with_shards=True
        )
        for images, batch_labels, batch_keys, batch_shards in batches:
            images = images.to(device, non_blocking=True)
            load_seconds += time.perf_counter() - tick
            for r in r_values:
                start = time.perf_counter()
                top5[r].append(_top5(model, images, r, device, amp))
                forward_seconds[r] += time.perf_counter() - start
            keys.extend(batch_keys)
            key_shards.extend(batch_shards)
            labels.append(batch_labels.numpy().astype(np.int32))
            tick = time.perf_counter()
    load_seconds += time.perf_counter() - tick  # the last wait, which ends the stream and checks counts
    return ShardOutcome(
        model=model.pretrained_cfg.get("architecture", ""),
        shards=[s.url for s in items],
        r_values=list(r_values),
        keys=keys,
        key_shards=key_shards,
        labels=np.concatenate(labels) if labels else np.zeros(0, np.int32),
        top5={r: np.concatenate(v) if v else np.zeros((0, 5), np.int32) for r, v in top5.items()},
        n_failed=stats.n_failed,
        failures=stats.failures,
        load_seconds=load_seconds,
        forward_seconds=forward_seconds,
        started=started,
        finished=time.time(),
        device=bm.device_name(device),
    )


def _top5(model: nn.Module, images: torch.Tensor, r: int, device: torch.device, amp: str) -> np.ndarray:
    """``[B, 5]`` int32 class indices, best first (fewer columns when the model has < 5 classes)."""
    model.r = r
    with bm.autocast(device, amp):
        logits = model(images)
    k = min(5, logits.shape[-1])
    return logits.float().topk(k, dim=-1).indices.to(torch.int32).cpu().numpy()


def profile_model(
    model: nn.Module,
    r_values: Sequence[int],
    device: torch.device,
    amp: str = "none",
    bench_batch_size: Optional[int] = None,
    runs: int = 10,
    warmup: int = 3,
) -> ModelProfile:
    """GFLOPs, tokens left and schedule at each r; img/s too when ``bench_batch_size`` is given."""
    cfg = shards.data_config(model)
    profile = ModelProfile(
        model=model.pretrained_cfg.get("architecture", ""),
        param_count=sum(p.numel() for p in model.parameters()) / 1e6,
        img_size=int(cfg["input_size"][-1]),
        crop_pct=float(cfg["crop_pct"]),
        interpolation=str(cfg["interpolation"]),
        device=bm.device_name(device),
    )
    for r in r_values:
        model.r = r
        profile.schedule[r] = list(model.merge_state.schedule)
        profile.gflops[r] = bm.count_gflops(model, device)
        profile.tokens_out[r] = bm.tokens_left(model, device)
    if bench_batch_size:
        bm.measure_throughput(model, bench_batch_size, device, amp, warmup, 1)  # device warm-up, untimed
        settings = [bm.with_r(model, r) for r in r_values]  # every r timed in turns: drift hits them alike
        times = bm.time_in_turns(settings, bench_batch_size, device, amp, warmup, runs)
        profile.infer_samples_per_sec = {r: bm.img_per_s(bench_batch_size, t) for r, t in zip(r_values, times)}
    return profile


# --------------------------------------------------------------------------- the actor


class Evaluator:
    """Ray actor body: holds one patched model at a time on its device (``ray.remote(Evaluator)``)."""

    def __init__(self, config: EvaluatorConfig):
        self.config = config
        if config.threads:
            torch.set_num_threads(int(config.threads))
        self.device = bm.resolve_device(config.device)
        self.model_name: Optional[str] = None
        self.model: Optional[nn.Module] = None
        self.transform = None
        self.items_started = 0

    def ready(self) -> Dict[str, str]:
        """Where this actor runs: node id, hostname, device (also proves the actor started)."""
        return {"node_id": _node_id(), "hostname": socket.gethostname(), "device": bm.device_name(self.device), "pid": str(os.getpid())}

    def _ensure(self, model_name: str, weights: Weights) -> nn.Module:
        if self.model_name != model_name:
            self.model = None  # free the previous model's memory before loading the next
            self.model = build_model(model_name, weights, self.config.mode, self.device)
            self.transform = shards.eval_transform(self.model)
            self.model_name = model_name
        return self.model

    def evaluate(self, model_name: str, weights: Weights, items: Sequence[shards.ShardInfo], r_values: List[int]) -> ShardOutcome:
        self.items_started += 1
        if self.config.exit_on_item is not None and self.items_started == self.config.exit_on_item:
            os._exit(17)  # test hook: die like a crashed or preempted worker, mid-sweep
        model = self._ensure(model_name, weights)
        workers = loader_workers_for(self.config.loader_workers, self.device.type == "cuda")
        outcome = evaluate_shards(model, items, r_values, self.transform, self.device, self.config.amp, self.config.batch_size, workers)
        outcome.model = model_name
        outcome.node_id, outcome.hostname = _node_id(), socket.gethostname()
        return outcome

    def profile(self, model_name: str, weights: Weights, r_values: List[int], bench: bool, runs: int, warmup: int) -> ModelProfile:
        model = self._ensure(model_name, weights)
        batch = self.config.batch_size if bench else None
        profile = profile_model(model, r_values, self.device, self.config.amp, batch, runs, warmup)
        profile.model = model_name
        return profile


def _node_id() -> str:
    """The Ray node id, or "local" outside Ray."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
