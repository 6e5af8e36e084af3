"""Every model of one decode pass on one device: decode each batch once, run it at every (model, method, amount).

``evaluate_shards`` and ``profile_model`` are plain functions (tests call them
without Ray); ``Evaluator`` wraps them as the Ray actor the sweep starts, one per
device. Nothing here writes results or parses command lines; what it takes and gives back
(``DecodePass``, ``Task``, ``ShardOutcome``, ``ModelProfile``, ...) is defined in ``work``.

On a GPU the host never waits for one forward pass: a batch's forward passes are
queued, their top-5 indices gathered on the device and copied to pinned host
memory in one non-blocking copy, and the host collects that copy only after it
has queued the next batch (so decoding, copying and computing overlap). Forward
time per point comes from CUDA events, which time the device without stopping it.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

import shards
import tomecis
from tomecis import benchmark as bm
from tomecis import device as dev
from tomecis.graphs import GraphSet, capture_forward, cuda_graphs_available
from tomecis.models import create_model, load_state_dict, state_dict_from_bytes
from tomecis.names import UNREDUCED, MethodError, amount_label, load_on_actor

from .grid import BASELINE_AMOUNT
from .work import (
    ActorShape,
    DecodePass,
    EvaluatorConfig,
    ModelProfile,
    PointKey,
    Reduction,
    ShardOutcome,
    Task,
    Weights,
)

BASELINE: Reduction = (UNREDUCED, *BASELINE_AMOUNT)  # the unreduced point every speed-up is paired against

# --------------------------------------------------------------------------- building models


def build_model(model_name: str, weights: Weights, device: torch.device) -> nn.Module:
    """The patched model (unreduced until ``set_point`` sets each point's method and amount) on ``device``
    in eval mode."""
    if weights.source == "checkpoint":
        data = weights.data_ref[0]
        if not isinstance(data, bytes):  # an ObjectRef (bytes in-process, without Ray)
            import ray

            data = ray.get(data)
        model = create_model(model_name)
        load_state_dict(model, state_dict_from_bytes(data, weights.name), weights.name)
    else:
        model = create_model(model_name, pretrained=weights.source == "pretrained")
    return tomecis.patch(model.eval(), r=0).to(device)


def set_point(model: nn.Module, key: PointKey) -> nn.Module:
    """``model`` (patched) set to the point ``key`` = (model name, method, r, keep), between forwards."""
    _, method, r, keep = key
    tomecis.set_reduction(model, method, r=r, keep=keep)
    return model


def describe_point(key: PointKey) -> str:
    """``deit_tiny_patch16_224 evit keep0.7``."""
    return f"{key[0]} {key[1]} {amount_label(key[2], key[3])}"


# --------------------------------------------------------------------------- timing without stalls


class ForwardClock:
    """Marks points in time on the device's own timeline: CUDA events on a GPU (the host does not wait),
    ``perf_counter`` on a CPU (where work is synchronous anyway)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def wait(self, mark) -> None:
        if self.cuda:
            mark.synchronize()

    def seconds(self, start, end) -> float:
        """Seconds between two marks; for CUDA events, only once ``end`` has been waited for."""
        return start.elapsed_time(end) / 1000.0 if self.cuda else end - start


@dataclass
class _QueuedBatch:
    """A batch whose forward passes are queued on the device; ``collect`` waits for its results alone."""

    keys: List[str]
    key_shards: List[str]
    labels: np.ndarray
    top5_host: torch.Tensor  # [B, sum of k] int32, filled by a non-blocking copy
    widths: List[int]  # k of each point, in ``spans`` order
    spans: List[Tuple[PointKey, object, object]]  # (point, start mark, end mark)
    copied: object  # mark after the device-to-host copy

    def collect(self, clock: ForwardClock) -> Tuple[Dict[PointKey, np.ndarray], Dict[PointKey, float]]:
        clock.wait(self.copied)
        columns = np.split(self.top5_host.numpy(), np.cumsum(self.widths)[:-1], axis=1)
        top5 = {point: col for (point, _, _), col in zip(self.spans, columns)}
        seconds = {point: clock.seconds(start, end) for point, start, end in self.spans}
        return top5, seconds


def top5_indices(logits: torch.Tensor) -> torch.Tensor:
    """``[B, classes]`` -> ``[B, min(5, classes)]`` int32 class indices, best first, on the same device."""
    return logits.float().topk(min(5, logits.shape[-1]), dim=-1).indices.to(torch.int32)


class PointRunner:
    """Runs a batch through every (model, method, amount) of a pass: CUDA-graph replays where captured, eager
    forwards elsewhere (a CPU, ``cuda_graphs=False``, or a point whose capture failed).

    On CUDA with graphs, each point is captured once at ``batch_size`` (``tomecis.graphs.GraphSet``: one
    static input, one memory pool for all points), in task order, which is also the replay order. A
    shorter batch (a work item's last) is padded with zeros and its padded rows dropped. A point whose
    capture fails is named in ``graph_errors`` and a warning, and runs eagerly. A point whose method fails
    (``tomecis.MethodError``: a method not built in returned a wrong shape, NaN, ...) is named in
    ``point_errors`` and not run again; its columns hold zeros, which no point row ever reads."""

    def __init__(
        self,
        models: Dict[str, nn.Module],
        tasks: Sequence[Task],
        device: torch.device,
        amp: str = "none",
        batch_size: int = 128,
        cuda_graphs: bool = True,
        warn=print,
    ):
        self.models, self.tasks, self.device = models, list(tasks), device
        self.graphs: Optional[GraphSet] = None
        self.graph_errors: Dict[PointKey, str] = {}
        self.point_errors: Dict[PointKey, str] = {}
        capture = cuda_graphs and cuda_graphs_available(device)
        if not self.tasks or not (capture or device.type == "cuda"):
            return  # nothing to capture or warm up (a CPU)
        shape = bm.input_shape(models[self.tasks[0].model])
        example = torch.randn(batch_size, *shape, device=device)  # for capture and warm-up
        if capture:
            self._capture_all(example, amp, warn)
        if device.type == "cuda":
            self._warm_up(example, amp)

    def _warm_up(self, example: torch.Tensor, amp: str) -> None:
        """One untimed batch through every point on a GPU, so that lazy kernel loading and cuBLAS set-up
        happen before the pass's clock starts."""
        with torch.inference_mode(), dev.autocast(self.device, amp):
            _, _, _, copied = self.queue(example, ForwardClock(self.device))
        copied.synchronize()

    @property
    def point_keys(self) -> List[PointKey]:
        return [key for task in self.tasks for key in task.point_keys()]

    def graphed(self, key: PointKey) -> bool:
        return self.graphs is not None and key in self.graphs

    def _capture_all(self, example: torch.Tensor, amp: str, warn) -> None:
        self.graphs = GraphSet(example, amp)
        self.graphs.load(example)
        with torch.inference_mode():
            for key in self.point_keys:
                model = set_point(self.models[key[0]], key)
                error = capture_forward(self.graphs, key, model, top5_indices)
                if error is not None:
                    self.graph_errors[key] = error
                    warn(
                        f"warning: {describe_point(key)}: CUDA-graph capture failed, evaluated eagerly: {error}"
                    )

    def queue(
        self, images: torch.Tensor, clock: ForwardClock
    ) -> Tuple[torch.Tensor, List[int], List[Tuple[PointKey, object, object]], object]:
        """Run ``images [n, 3, H, W]`` (pinned host memory or the device) at every point, top-5 kept on the device, then one
        non-blocking copy of all of them to the host. Returns ``(top5 [n, sum k] int32 on the host, k of
        each point, (point, start, end) marks, mark after the copy)``. Each point's top-5 is copied out
        of its graph's output before the next replay. The caller holds the autocast context for the eager
        points (one for the whole stream: entering it per forward would redo its weight casts)."""
        n = images.shape[0]
        if self.graphs is not None:
            self.graphs.load(images)  # straight from pinned host memory into the static input
            images = self.graphs.static_input[:n]  # for points that run eagerly
        else:
            images = images.to(self.device, non_blocking=True)
        outputs, spans = [], []
        for key in self.point_keys:
            start = clock.mark()
            if self.graphed(key):
                top5 = self.graphs.replay(key)[:n].clone()
            else:
                top5 = self._eager(key, images)
            outputs.append(top5)
            spans.append((key, start, clock.mark()))
        host = torch.cat(outputs, dim=1).to("cpu", non_blocking=True)
        return host, [o.shape[1] for o in outputs], spans, clock.mark()

    def _eager(self, key: PointKey, images: torch.Tensor) -> torch.Tensor:
        """``images [n, 3, H, W]`` -> top-5 ``[n, 5]`` int32 of the point ``key``, eagerly; zeros for a
        point whose method failed (recorded in ``point_errors``, with the image count of the batch)."""
        n = images.shape[0]
        if key not in self.point_errors:
            try:
                return top5_indices(set_point(self.models[key[0]], key)(images))
            except MethodError as err:
                self.point_errors[key] = f"{err} (on a batch of {n} images)"
        width = min(5, self.models[key[0]].num_classes)
        return torch.zeros(n, width, dtype=torch.int32, device=self.device)


# --------------------------------------------------------------------------- plain functions


class _Results:
    """What the batches of one work item gave so far, in key order: keys, their shards, labels, and per
    point the top-5 rows and the forward seconds."""

    def __init__(self, points: List[PointKey]):
        self.keys: List[str] = []
        self.key_shards: List[str] = []
        self.labels: List[np.ndarray] = []
        self.top5: Dict[PointKey, List[np.ndarray]] = {p: [] for p in points}
        self.forward_seconds = {p: 0.0 for p in points}

    def absorb(self, batch: _QueuedBatch, clock: ForwardClock) -> None:
        """Wait for this batch's results alone and add them."""
        batch_top5, seconds = batch.collect(clock)
        for point in self.top5:
            self.top5[point].append(batch_top5[point])
            self.forward_seconds[point] += seconds[point]
        self.keys.extend(batch.keys)
        self.key_shards.extend(batch.key_shards)
        self.labels.append(batch.labels)

    def outcome(self, items: Sequence[shards.ShardInfo], stats: shards.ReadStats, **timing) -> ShardOutcome:
        return ShardOutcome(
            shards=[s.url for s in items],
            keys=self.keys,
            key_shards=self.key_shards,
            labels=np.concatenate(self.labels) if self.labels else np.zeros(0, np.int32),
            top5={p: np.concatenate(v) if v else np.zeros((0, 5), np.int32) for p, v in self.top5.items()},
            n_failed=stats.n_failed,
            failures=stats.failures,
            forward_seconds=self.forward_seconds,
            **timing,
        )


def evaluate_shards(
    models: Dict[str, nn.Module],
    tasks: Sequence[Task],
    items: Sequence[shards.ShardInfo],
    transform,
    device: torch.device,
    amp: str = "none",
    batch_size: int = 128,
    loader_workers: int = 0,
    pass_name: str = "",
    runner: Optional[PointRunner] = None,
    cuda_graphs: bool = True,
) -> ShardOutcome:
    """Decode ``items`` once with ``shards.iter_batches`` and run every batch through every task.

    ``runner`` runs the points (an actor keeps one per pass, so graphs are captured once); without one,
    a ``PointRunner`` is made here (on CUDA with ``cuda_graphs``: every point captured at ``batch_size``).

    ``min(loader_workers, len(items))`` DataLoader workers (0: here) split the shards between them, so each
    shard is read by exactly one worker. Each shard's count is checked against its manifest, and a shard
    never read is an error (``ShardCountError``); decode failures are returned, not dropped. One batch is
    queued on the device while the previous one's results are collected."""
    if runner is None:
        runner = PointRunner(models, tasks, device, amp, batch_size, cuda_graphs)
    clock, stats = ForwardClock(device), shards.ReadStats()
    results = _Results(runner.point_keys)
    load_seconds, started, queued = 0.0, time.time(), None
    tick = time.perf_counter()
    with torch.inference_mode(), dev.autocast(device, amp):
        pin = device.type == "cuda"
        batches = shards.iter_batches(
            items, transform, batch_size, loader_workers, stats, pin_memory=pin, with_shards=True
        )
        for images, labels, keys, key_shards in batches:
            load_seconds += time.perf_counter() - tick
            queued_now = runner.queue(images, clock)
            current = _QueuedBatch(list(keys), list(key_shards), labels.numpy().astype(np.int32), *queued_now)
            if queued is not None:
                results.absorb(
                    queued, clock
                )  # waits for the previous batch only: this one keeps the device busy
            queued = current
            tick = time.perf_counter()
        load_seconds += time.perf_counter() - tick  # the last wait, which ends the stream and checks counts
        if queued is not None:
            results.absorb(queued, clock)
    return results.outcome(
        items,
        stats,
        pass_name=pass_name,
        load_seconds=load_seconds,
        started=started,
        finished=time.time(),
        device=dev.device_name(device),
        cuda_graphs={key: runner.graphed(key) for key in runner.point_keys},
        graph_errors=dict(runner.graph_errors),
        point_errors=dict(runner.point_errors),
    )


def profile_model(
    model: nn.Module,
    reductions: Sequence[Reduction],
    device: torch.device,
    amp: str = "none",
    bench_batch_size: Optional[int] = None,
    runs: int = 10,
    warmup: int = 3,
    cuda_graphs: bool = True,
) -> ModelProfile:
    """GFLOPs, tokens left and tokens removed per block at each ``(method, r, keep)``; img/s too when
    ``bench_batch_size`` is given, every reduction timed in turns (on CUDA with ``cuda_graphs``:
    CUDA-graph replays, as ``tomecis.benchmark`` times them), with every round's seconds in
    ``bench_seconds``: the unreduced model's too, timed in the same turns even where it is not among
    ``reductions`` (a rerun that adds points to a finished baseline), so that every speed-up is paired."""
    cfg = shards.data_config(model)
    profile = ModelProfile(
        model=model.pretrained_cfg.get("architecture", ""),
        param_count=sum(p.numel() for p in model.parameters()) / 1e6,
        img_size=int(cfg["input_size"][-1]),
        crop_pct=float(cfg["crop_pct"]),
        interpolation=str(cfg["interpolation"]),
        device=dev.device_name(device),
    )
    for reduction in reductions:
        method, r, keep = reduction
        tomecis.set_reduction(model, method, r=r, keep=keep)
        try:
            profile.gflops[reduction] = bm.count_gflops(
                model, device
            )  # one forward: merge_state.tokens is its
            profile.tokens_out[reduction] = bm.tokens_left(model, device)
        except MethodError as err:  # a foreign method's point fails alone; the others are profiled
            profile.point_errors[reduction] = str(err)
            continue
        profile.schedule[reduction] = removed_per_block(model, r)
    reductions = [reduction for reduction in reductions if reduction not in profile.point_errors]
    if bench_batch_size:
        bm.measure_throughput(model, bench_batch_size, device, amp, warmup, 1)  # device warm-up, untimed
        timed = list(reductions) + ([] if BASELINE in reductions else [BASELINE])  # speed-ups need it
        settings = [reduction_setting(model, reduction) for reduction in timed]  # timed in turns
        timings = bm.time_in_turns(settings, bench_batch_size, device, amp, warmup, runs, cuda_graphs)
        for i, reduction in enumerate(timed):
            profile.bench_seconds[reduction] = timings.seconds[i]
            if reduction not in reductions:
                continue  # the baseline, timed only as the others' reference
            profile.infer_samples_per_sec[reduction] = bm.img_per_s(bench_batch_size, timings.seconds[i])
            profile.cuda_graphs[reduction] = timings.cuda_graphs[i]
            if timings.graph_errors[i]:
                profile.graph_errors[reduction] = timings.graph_errors[i]
    return profile


def reduction_setting(model: nn.Module, reduction: Reduction) -> bm.Setting:
    """A ``tomecis.benchmark`` setting that times ``model`` at ``reduction`` (method, r, keep)."""
    method, r, keep = reduction
    return bm.with_reduction(model, method, r, keep)


def removed_per_block(model: nn.Module, r: Optional[int]) -> List[int]:
    """The ``schedule`` column: for an r point the per-block r it asks for (``merge_state.schedule``, as
    the column always held); for a keep point the tokens each block of the last forward removed (from
    ``merge_state.tokens``; a fused token counts as kept)."""
    state = model.merge_state
    if r is not None:
        return [int(v) for v in state.schedule]
    before = [model.patch_embed.num_patches + model.num_prefix_tokens] + list(state.tokens[:-1])
    return [int(a - b) for a, b in zip(before, state.tokens)]


# --------------------------------------------------------------------------- the actor


class Evaluator:
    """Ray actor body: holds every model of one decode pass at a time on its device (``ray.remote(Evaluator)``)."""

    def __init__(self, config: EvaluatorConfig, shape: ActorShape = ActorShape()):
        self.config = config
        self.shape = shape
        torch.set_num_threads(max(1, int(shape.threads)))
        self.device = dev.resolve_device(config.device)
        self.pass_name: Optional[str] = None
        self.models: Dict[str, nn.Module] = {}
        self.broken: Dict[str, str] = {}  # model -> why it could not be built
        self.transform = None
        self.runner: Optional[PointRunner] = None  # the pass's points, captured once (CUDA graphs)
        self.items_started = 0
        where = f"node {socket.gethostname()} ({_node_id()[:8]})"
        self.method_error = load_on_actor(config.methods, where)  # "" when every method loads

    def ready(self) -> Dict[str, str]:
        """Where this actor runs: node id, hostname, device (also proves the actor started)."""
        return {
            "node_id": _node_id(),
            "hostname": socket.gethostname(),
            "device": dev.device_name(self.device),
            "pid": str(os.getpid()),
            "method_error": self.method_error,
        }

    def _check_methods(self) -> None:
        """Refuse work where a method of the sweep could not be loaded (``ready`` reports it first)."""
        if self.method_error:
            raise RuntimeError(self.method_error)

    def _ensure(self, decode_pass: DecodePass) -> Dict[str, nn.Module]:
        """The pass's models on the device (built once per pass; the previous pass's are freed first).
        A model that cannot be built (a bad checkpoint) is left out and its error kept in ``broken``;
        when none can be built, the error is raised."""
        if self.pass_name == decode_pass.name and set(self.models) | set(self.broken) == set(
            decode_pass.weights
        ):
            return self.models
        self.models, self.broken = {}, {}
        for name, weights in decode_pass.weights.items():
            try:
                self.models[name] = build_model(name, weights, self.device)
            except Exception as err:  # noqa: BLE001 - reported per model, the pass's other models go on
                self.broken[name] = f"{name} could not be built: {type(err).__name__}: {err}"
        if not self.models:
            raise RuntimeError("; ".join(self.broken.values()))
        self.transform = shards.eval_transform(next(iter(self.models.values())))
        self.pass_name = decode_pass.name
        return self.models

    def evaluate(self, decode_pass: DecodePass, items: Sequence[shards.ShardInfo]) -> ShardOutcome:
        self._check_methods()
        self.items_started += 1
        models = self._ensure(decode_pass)
        tasks = [t for t in decode_pass.tasks if t.model in models]
        if self.runner is None or self.runner.models is not models or self.runner.tasks != tasks:
            self.runner = None  # the previous pass's graphs go before this pass's are captured
            cfg = self.config
            self.runner = PointRunner(models, tasks, self.device, cfg.amp, cfg.batch_size, cfg.cuda_graphs)
        outcome = evaluate_shards(
            models,
            tasks,
            items,
            self.transform,
            self.device,
            self.config.amp,
            self.config.batch_size,
            self.shape.loader_workers,
            decode_pass.name,
            self.runner,
        )
        outcome.node_id, outcome.hostname = _node_id(), socket.gethostname()
        outcome.model_errors = dict(self.broken)
        return outcome

    def profile(
        self, decode_pass: DecodePass, model: str, bench: bool, runs: int, warmup: int
    ) -> ModelProfile:
        """``model``'s profile at every point it has in ``decode_pass`` (its baseline and every method's
        amounts, timed in turns against each other)."""
        self._check_methods()
        cfg = self.config
        profile = profile_model(
            self._ensure(decode_pass)[model],
            decode_pass.reductions(model),
            self.device,
            cfg.amp,
            cfg.batch_size if bench else None,
            runs,
            warmup,
            cfg.cuda_graphs,
        )
        profile.model = model
        return profile


def _node_id() -> str:
    """The Ray node id, or "local" outside Ray (also where Ray is not installed)."""
    try:
        import ray
    except ImportError:
        return "local"
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
