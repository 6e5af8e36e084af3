"""Ray Core actors pulling shard-sized work items, with exactly-once acceptance and retries.

Each work item is ``(decode pass, shards)``: a few shards, one per loader worker of an actor,
and the items of a pass are disjoint. Actors are started from an ``ActorPlan`` (``placement``):
each is pinned to the node it was sized for. An actor has at most ``in_flight`` items
queued; when one finishes, the next item goes to that actor. A dead actor's
items go back to the queue and a fresh actor replaces it; a result is accepted
once per item (and every shard is in one item only), so retried work can never be
counted twice.

``ActorSet`` holds the actors (start, replace, readiness); ``EvaluatorPool`` runs the work on them
(dispatch, exactly-once acceptance, retries, profiling).
"""

from __future__ import annotations

import re
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Tuple

import ray
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .errors import SweepError, WorkFailed
from .evaluator import Evaluator
from .placement import ActorPlan, ActorSlot, alive_nodes
from .work import ActorShape, DecodePass, EvaluatorConfig, ModelProfile, ShardOutcome


@dataclass
class _Actor:
    handle: object
    ready_ref: object
    index: int
    slot: ActorSlot
    requested: float = 0.0  # time.monotonic() when it was asked for
    info: Optional[Dict[str, str]] = None
    in_flight: Dict[object, Tuple] = field(default_factory=dict)  # ObjectRef -> item


Item = Tuple[str, tuple]  # (decode pass name, (ShardInfo, ...)): disjoint shard groups


def item_key(item: Item) -> Tuple[str, Tuple[str, ...]]:
    """``(pass name, shard urls)``: what a result is accepted under."""
    name, group = item
    return name, tuple(s.url for s in group)


def group_shards(shard_list, size: int) -> List[tuple]:
    """Consecutive, disjoint groups of at most ``size`` shards (every shard in exactly one group)."""
    shard_list = tuple(shard_list)
    return [shard_list[i : i + size] for i in range(0, len(shard_list), max(1, size))]


def shipped_modules(paths: Tuple[str, ...]) -> Optional[Dict[str, list]]:
    """A ``runtime_env`` whose ``py_modules`` are ``paths`` (the import-path methods' files or package
    directories) uploaded to the cluster, or None without paths. An actor's ``runtime_env`` takes only
    uploaded URIs (Ray uploads local paths for ``ray.init``'s job-level one alone, and the sweep may join a
    running job), so this runs Ray's own upload step, the one ``ray.init`` runs for its ``py_modules``."""
    if not paths:
        return None
    from ray._private.runtime_env.py_modules import upload_py_modules_if_needed

    with tempfile.TemporaryDirectory() as scratch:
        try:
            return upload_py_modules_if_needed(
                {"py_modules": list(paths)}, include_gitignore=True, scratch_dir=scratch
            )
        except Exception as err:  # noqa: BLE001 - Ray's upload errors vary; the modules are named
            raise SweepError(
                f"cannot ship the method module(s) {', '.join(paths)} to the cluster: {err}"
            ) from err


def fetch(ref):
    """``ray.get`` of one result (a seam: tests make it lose a result in transit)."""
    return ray.get(ref)


WaitReport = Callable[[int, int, float], None]  # (actors started, actors waiting, seconds waited)
Say = Callable[[str], None]  # one line for the user: an actor died, an item goes back to the queue


class ActorSet:
    """The planned actors: each started pinned to the node it was sized for, replaced when it dies (on
    the same node while that lives, else on any node that fits), and asked whether it is ready yet.
    Actors dying before they are ready, over and over (a crash loop), is a ``SweepError``."""

    def __init__(
        self,
        config: EvaluatorConfig,
        plan: ActorPlan,
        max_retries: int,
        start_timeout: float,
        on_wait: Optional[WaitReport],
        on_retry: Say,
    ):
        self.config, self.plan = config, plan
        self.max_retries, self.start_timeout = max_retries, start_timeout
        self.on_wait, self.on_retry = on_wait, on_retry
        self._remote = ray.remote(Evaluator)
        self.actors: List[_Actor] = []
        self._next_index = 0
        self.replaced = 0
        self._reported_wait = False
        self._failed_starts = 0  # actors that died before becoming ready, since the last one that did
        self._runtime_env = shipped_modules(config.py_modules)
        for slot in plan.slots:
            self._start(slot)

    def _start(self, slot: ActorSlot) -> _Actor:
        options = dict(num_cpus=slot.num_cpus, num_gpus=slot.num_gpus, max_restarts=0)
        if slot.node_id is not None:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(slot.node_id, soft=False)
        if self._runtime_env:  # import-path methods reach every node with the job, not by hand
            options["runtime_env"] = self._runtime_env
        handle = self._remote.options(**options).remote(
            self.config, ActorShape(slot.threads, slot.loader_workers)
        )
        actor = _Actor(handle, handle.ready.remote(), self._next_index, slot, time.monotonic())
        self._next_index += 1
        self.actors.append(actor)
        return actor

    def replace(self, actor: _Actor) -> None:
        """A fresh actor in a dead one's place: on the same node while it lives, else on any node that fits."""
        self.actors.remove(actor)
        ray.kill(actor.handle, no_restart=True)
        self.replaced += 1
        slot = actor.slot
        if slot.node_id is not None and slot.node_id not in {n.node_id for n in alive_nodes()}:
            slot = replace(slot, node_id=None, address="")
        self._start(slot)

    def ready(self) -> List[_Actor]:
        """The actors that are ready (checked without waiting); the wait for the others is reported."""
        pending = {a.ready_ref: a for a in self.actors if a.info is None}
        if pending:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
            for ref in done:
                actor = pending[ref]
                try:
                    actor.info = ray.get(ref)
                    self._failed_starts = 0
                except RayActorError as err:
                    self._start_failed(actor, err)
                    continue
                if actor.info.get("method_error"):  # the same on a fresh actor there: no retry
                    raise SweepError(f"{describe_actor(actor)}: {actor.info['method_error']}")
        ready = [a for a in self.actors if a.info is not None]
        if self.on_wait is not None and len(ready) < len(self.actors):
            oldest = min(a.requested for a in self.actors if a.info is None)
            self.on_wait(len(ready), len(self.actors) - len(ready), time.monotonic() - oldest)
            self._reported_wait = True
        elif self.on_wait is not None and self._reported_wait:  # all started: the line says so once
            self.on_wait(len(ready), 0, 0.0)
            self._reported_wait = False
        return ready

    def _start_failed(self, actor: _Actor, err: RayActorError) -> None:
        """An actor died before it was ready: replace it, but not forever (a crash loop would create
        actors without end, each cancelled in turn, and fill the log)."""
        self._failed_starts += 1
        if self._failed_starts > self.max_retries + len(self.plan.slots):
            raise SweepError(
                f"evaluator actors died before starting {self._failed_starts} times in a row; last: {_why(err)}"
            )
        self.on_retry(f"{describe_actor(actor)} died before starting ({_why(err)}); starting another")
        self.replace(actor)

    def wait_ready(self) -> List[_Actor]:
        """The ready actors, once there is at least one; ``SweepError`` after ``start_timeout``."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            ready = self.ready()
            if ready:
                return ready
            if time.monotonic() > deadline:
                raise SweepError(self.not_started())
            try:
                ray.get([a.ready_ref for a in self.actors], timeout=1.0)
            except (GetTimeoutError, RayActorError):
                pass  # checked again at the top of the loop

    def not_started(self) -> str:
        """What never came within ``--actor-start-timeout``: the actors still waiting, what each asks for
        and where, and what to check."""
        waiting = [a for a in self.actors if a.info is None] or self.actors
        slot = waiting[0].slot
        where = f"on node {slot.address} ({slot.node_id[:8]})" if slot.node_id else "on any node"
        return (
            f"--actor-start-timeout {self.start_timeout:g}: {len(waiting)} of {len(self.actors)} evaluator actor(s) "
            f"never started; each asks for {slot.num_cpus:g} CPU, {slot.num_gpus:g} GPU {where}, and no node with "
            "that much free came (busy, or the autoscaler started none: no node type that fits, or max_workers "
            "reached); check `ray status`, or give the autoscaler longer with a bigger --actor-start-timeout"
        )

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor.handle, no_restart=True)
        self.actors = []


class EvaluatorPool:
    """Feed the actors (``ActorSet``) the items of a pass, accept each item's result once, put the items
    of a dead or failing actor back in the queue (``max_retries`` times each); profile each task."""

    def __init__(
        self,
        config: EvaluatorConfig,
        plan: ActorPlan,
        max_retries: int = 3,
        in_flight: int = 2,
        start_timeout: float = 600.0,
        on_wait: Optional[WaitReport] = None,
        on_retry: Optional[Say] = None,
    ):
        self.plan = plan
        self.max_retries = max_retries
        self.in_flight = in_flight
        self.start_timeout = start_timeout
        self.on_retry = on_retry or (lambda line: None)
        self.fleet = ActorSet(config, plan, max_retries, start_timeout, on_wait, self.on_retry)
        self.retries = 0  # times a work item went back to the queue, over the pool's life
        self.attempts: Dict[Tuple[str, Tuple[str, ...]], int] = {}  # this pass: item -> its retries so far

    @property
    def actors(self) -> List[_Actor]:
        return self.fleet.actors

    @property
    def replaced(self) -> int:
        """Actors started in a dead one's place, over the pool's life."""
        return self.fleet.replaced

    def shutdown(self) -> None:
        self.fleet.shutdown()

    # ------------------------------------------------------------------ evaluation

    def evaluate(
        self, items: List[Item], decode_pass: DecodePass, on_result: Callable[[ShardOutcome], None]
    ) -> Dict[Tuple[str, Tuple[str, ...]], ShardOutcome]:
        """Run every item of ``decode_pass`` once; returns ``item_key(item) -> outcome``. On an error,
        results still in flight are forgotten, so a later call never mistakes them for its own."""
        try:
            return self._evaluate(items, decode_pass, on_result)
        except BaseException:
            for actor in self.actors:
                actor.in_flight.clear()
            raise

    def _evaluate(
        self, items: List[Item], decode_pass, on_result
    ) -> Dict[Tuple[str, Tuple[str, ...]], ShardOutcome]:
        _check_disjoint(items)
        queue = deque(items)
        attempts = self.attempts = {}
        accepted: Dict[Tuple[str, Tuple[str, ...]], ShardOutcome] = {}
        idle_since = time.monotonic()
        while len(accepted) < len(items):
            ready = self.fleet.ready()
            self._dispatch(queue, ready, decode_pass, accepted)
            refs = [ref for a in self.actors for ref in a.in_flight]
            if not refs:
                if time.monotonic() - idle_since > self.start_timeout:
                    raise SweepError(self.fleet.not_started())
                time.sleep(0.05)
                continue
            idle_since = time.monotonic()
            done, _ = ray.wait(refs, num_returns=1, timeout=1.0)
            for ref in done:
                self._collect(ref, queue, attempts, accepted, on_result)
        return accepted

    def _dispatch(self, queue, ready: List[_Actor], decode_pass: DecodePass, accepted) -> None:
        for actor in ready:
            while queue and len(actor.in_flight) < self.in_flight:
                item = queue.popleft()
                if item_key(item) in accepted:
                    continue
                actor.in_flight[actor.handle.evaluate.remote(decode_pass, item[1])] = item

    def _collect(self, ref, queue, attempts, accepted, on_result) -> None:
        actor = next(a for a in self.actors if ref in a.in_flight)
        item = actor.in_flight.pop(ref)
        key = item_key(item)
        try:
            outcome = fetch(ref)
        except RayActorError as err:  # the process or its node died: every queued item of it goes back
            lost = [item] + list(actor.in_flight.values())
            actor.in_flight.clear()
            for item in lost:
                self._retry(item, queue, attempts, f"died ({_death_reason(err)})", actor)
            self.fleet.replace(actor)
            return
        except RayTaskError as err:  # the task raised (unreadable shard, count mismatch, ...)
            self._retry(item, queue, attempts, f"raised {err.cause if err.cause else err}", actor)
            return
        except (
            ObjectLostError
        ) as err:  # the result was made but lost before the driver fetched it (node gone)
            why = f"made a result that was lost in transit ({type(err).__name__})"
            self._retry(item, queue, attempts, why, actor)
            return
        if key not in accepted:  # exactly once, however often the item ran
            accepted[key] = outcome
            on_result(outcome)

    def _retry(self, item: Item, queue, attempts, what: str, actor: _Actor) -> None:
        """Put ``item`` back at the head of the queue, with a line saying which item, which actor and
        ``what`` it did (``died (Ray's reason)``, ``raised ...``); ``WorkFailed`` once the item has failed
        more than ``max_retries`` times."""
        key = item_key(item)
        name, urls = key
        attempts[key] = attempts.get(key, 0) + 1
        why = f"{describe_actor(actor)} {what}"
        if attempts[key] > self.max_retries:
            raise WorkFailed(
                f"{name} on shard(s) {', '.join(urls)} failed {attempts[key]} times; last: {why}"
            )
        self.retries += 1
        self.on_retry(
            f"retry: {name}, shard(s) {', '.join(_base(u) for u in urls)}: {why}; "
            f"back in the queue (attempt {attempts[key] + 1} of {self.max_retries + 1})"
        )
        queue.appendleft(item)

    # ------------------------------------------------------------------ profiling

    def profile(
        self, decode_pass: DecodePass, bench: bool, runs: int, warmup: int
    ) -> Dict[str, ModelProfile]:
        """FLOPs, tokens and (with ``bench``) img/s of every model of the pass at each of its points
        (``model -> profile``; a model's points, baseline included, are timed in turns on one actor).

        GPU actors each own a device, so the models are spread over the ready actors and timed in parallel;
        CPU actors share their node's cores, so one actor times every model, one after another. A failed
        profile is retried on another actor up to ``max_retries`` times."""
        profiles: Dict[str, ModelProfile] = {}
        pending = list(dict.fromkeys(task.model for task in decode_pass.tasks))
        attempts = 0
        while pending:
            ready = self.fleet.wait_ready()
            lanes = ready if self.plan.uses_gpus else ready[:1]
            batch = [(model, lanes[i % len(lanes)]) for i, model in enumerate(pending[: len(lanes)])]
            refs = [
                actor.handle.profile.remote(decode_pass, model, bench, runs, warmup) for model, actor in batch
            ]
            for (model, actor), ref in zip(batch, refs):
                try:
                    profiles[model] = ray.get(ref)
                    pending.remove(model)
                except (RayActorError, RayTaskError, ObjectLostError) as err:
                    attempts += 1
                    if attempts > self.max_retries:
                        raise WorkFailed(f"profiling {model} failed {attempts} times; last: {err}") from err
                    what = (
                        f"died ({_death_reason(err)})"
                        if isinstance(err, RayActorError)
                        else f"raised {_why(err)}"
                    )
                    self.on_retry(
                        f"retry: profiling {model}: {describe_actor(actor)} {what}; "
                        f"again (attempt {attempts + 1} of {self.max_retries + 1})"
                    )
                    if isinstance(err, RayActorError) and actor in self.actors:
                        self.fleet.replace(actor)
        return profiles


def describe_actor(actor: _Actor) -> str:
    """``actor 3 (node 10.0.1.17 4f2a9c01, cpu (1 threads), pid 812)``: which actor, where, on what device."""
    info = actor.info or {}
    node = info.get("node_id") or actor.slot.node_id or ""
    where = " ".join(x for x in (actor.slot.address, node[:8]) if x) or "not placed yet"
    device = info.get("device") or ("GPU" if actor.slot.num_gpus else "CPU")
    pid = f", pid {info['pid']}" if info.get("pid") else ""
    return f"actor {actor.index} (node {where}, {device}{pid})"


def _death_reason(err: Exception) -> str:
    """Ray's reason for an actor's death, in one line: the exception its task raised, else the sentence
    saying why the actor is dead (without the list of possible root causes), else the first line."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(err).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b.*:", line)]
    dead = [line for line in lines if "is dead because" in line or "exit detail" in line.lower()]
    line = (raised or dead or lines or [type(err).__name__])[-1 if raised else 0]
    for tail in (" There are some potential root causes", " Some common causes include"):
        line = line.split(tail)[0]
    return line[:300]


def _base(url: str) -> str:
    """A shard URL's last part (``imagenet-val-000003.tar``), for lines a person reads."""
    return url.rstrip("/").rsplit("/", 1)[-1] or url


def _why(err: Exception) -> str:
    """The gist of a Ray error: the exception its creation task raised, if any, else its first line."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(err).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b.*:", line)]
    return raised[-1] if raised else (lines[0] if lines else type(err).__name__)


def _check_disjoint(items: List[Item]) -> None:
    """No shard in two items of one pass: acceptance per item is then exactly once per shard."""
    seen = set()
    for name, urls in map(item_key, items):
        for url in urls:
            if (name, url) in seen:
                raise ValueError(f"shard {url} is in two work items of {name}; items must be disjoint")
            seen.add((name, url))
