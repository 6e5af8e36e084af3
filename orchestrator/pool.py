"""Ray Core actors pulling shard-sized work items, with exactly-once acceptance and retries.

Each work item is ``(model, shards)``: a few shards, one per loader worker of an actor,
and the items of a model are disjoint. An actor has at most ``in_flight`` items
queued; when one finishes, the next item goes to that actor. A dead actor's
items go back to the queue and a fresh actor replaces it; a result is accepted
once per item (and every shard is in one item only), so retried work can never be
counted twice.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import ray
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError, RayTaskError

from .evaluator import Evaluator, EvaluatorConfig, ModelProfile, ShardOutcome, Weights


class SweepError(RuntimeError):
    """The sweep could not finish; the message says which item or point and why."""


class WorkFailed(SweepError):
    """One model's work (an item or its profile) failed after its retries; other models can still run."""


@dataclass(frozen=True)
class ActorResources:
    """What one actor asks Ray for."""

    num_actors: int
    num_cpus: float
    num_gpus: float


@dataclass
class _Actor:
    handle: object
    ready_ref: object
    index: int
    info: Optional[Dict[str, str]] = None
    in_flight: Dict[object, Tuple] = field(default_factory=dict)  # ObjectRef -> item


Item = Tuple[str, tuple]  # (model name, (ShardInfo, ...)): disjoint shard groups


def item_key(item: Item) -> Tuple[str, Tuple[str, ...]]:
    """``(model, shard urls)``: what a result is accepted under."""
    model, group = item
    return model, tuple(s.url for s in group)


def group_shards(shard_list, size: int) -> List[tuple]:
    """Consecutive, disjoint groups of at most ``size`` shards (every shard in exactly one group)."""
    shard_list = tuple(shard_list)
    return [shard_list[i : i + size] for i in range(0, len(shard_list), max(1, size))]


def fetch(ref):
    """``ray.get`` of one result (a seam: tests make it lose a result in transit)."""
    return ray.get(ref)


class EvaluatorPool:
    """Start actors, feed them items, survive their deaths."""

    def __init__(
        self,
        config: EvaluatorConfig,
        resources: ActorResources,
        weights: Dict[str, Weights],
        max_retries: int = 3,
        in_flight: int = 2,
        start_timeout: float = 600.0,
    ):
        self.config = config
        self.resources = resources
        self.weights = weights
        self.max_retries = max_retries
        self.in_flight = in_flight
        self.start_timeout = start_timeout
        self._remote = ray.remote(Evaluator)
        self.actors: List[_Actor] = []
        self._next_index = 0
        self.replaced = 0
        for _ in range(resources.num_actors):
            self._start_actor(first_generation=True)

    # ------------------------------------------------------------------ actors

    def _start_actor(self, first_generation: bool = False) -> _Actor:
        config = self.config
        if not (first_generation and self._next_index == 0):
            config = EvaluatorConfig(**{**config.__dict__, "exit_on_item": None})  # the hook kills one actor, once
        handle = self._remote.options(
            num_cpus=self.resources.num_cpus, num_gpus=self.resources.num_gpus, max_restarts=0
        ).remote(config)
        actor = _Actor(handle=handle, ready_ref=handle.ready.remote(), index=self._next_index)
        self._next_index += 1
        self.actors.append(actor)
        return actor

    def _replace(self, actor: _Actor) -> None:
        self.actors.remove(actor)
        ray.kill(actor.handle, no_restart=True)
        self.replaced += 1
        self._start_actor()

    def _ready_actors(self) -> List[_Actor]:
        pending = {a.ready_ref: a for a in self.actors if a.info is None}
        if pending:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
            for ref in done:
                actor = pending[ref]
                try:
                    actor.info = ray.get(ref)
                except RayActorError:
                    self._replace(actor)
        return [a for a in self.actors if a.info is not None]

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor.handle, no_restart=True)
        self.actors = []

    # ------------------------------------------------------------------ evaluation

    def evaluate(
        self, items: List[Item], r_values: Dict[str, List[int]], on_result: Callable[[ShardOutcome], None]
    ) -> Dict[Tuple[str, Tuple[str, ...]], ShardOutcome]:
        """Run every item once; returns ``item_key(item) -> outcome``. On an error, results still
        in flight are forgotten, so a later call never mistakes them for its own."""
        try:
            return self._evaluate(items, r_values, on_result)
        except BaseException:
            for actor in self.actors:
                actor.in_flight.clear()
            raise

    def _evaluate(self, items: List[Item], r_values, on_result) -> Dict[Tuple[str, Tuple[str, ...]], ShardOutcome]:
        _check_disjoint(items)
        queue = deque(items)
        attempts: Dict[Tuple[str, Tuple[str, ...]], int] = {}
        accepted: Dict[Tuple[str, Tuple[str, ...]], ShardOutcome] = {}
        idle_since = time.monotonic()
        while len(accepted) < len(items):
            ready = self._ready_actors()
            self._dispatch(queue, ready, r_values, accepted)
            refs = [ref for a in self.actors for ref in a.in_flight]
            if not refs:
                if time.monotonic() - idle_since > self.start_timeout:
                    raise SweepError(
                        f"no evaluator actor could start within {self.start_timeout:.0f}s "
                        f"(each asks for {self.resources.num_cpus} CPU, {self.resources.num_gpus} GPU); "
                        "check the cluster's resources with `ray status`"
                    )
                time.sleep(0.05)
                continue
            idle_since = time.monotonic()
            done, _ = ray.wait(refs, num_returns=1, timeout=1.0)
            for ref in done:
                self._collect(ref, queue, attempts, accepted, on_result)
        return accepted

    def _dispatch(self, queue, ready: List[_Actor], r_values, accepted) -> None:
        for actor in ready:
            while queue and len(actor.in_flight) < self.in_flight:
                model, group = queue.popleft()
                if item_key((model, group)) in accepted:
                    continue
                ref = actor.handle.evaluate.remote(model, self.weights[model], group, r_values[model])
                actor.in_flight[ref] = (model, group)

    def _collect(self, ref, queue, attempts, accepted, on_result) -> None:
        actor = next(a for a in self.actors if ref in a.in_flight)
        item = actor.in_flight.pop(ref)
        key = item_key(item)
        try:
            outcome = fetch(ref)
        except RayActorError:  # the process or its node died: every queued item of it goes back
            lost = [item] + list(actor.in_flight.values())
            actor.in_flight.clear()
            for item in lost:
                self._retry(item, queue, attempts, "its actor died")
            self._replace(actor)
            return
        except RayTaskError as err:  # the task raised (unreadable shard, count mismatch, ...)
            self._retry(item, queue, attempts, str(err.cause) if err.cause else str(err))
            return
        except ObjectLostError as err:  # the result was made but lost before the driver fetched it (node gone)
            self._retry(item, queue, attempts, f"its result was lost in transit ({type(err).__name__})")
            return
        if key not in accepted:  # exactly once, however often the item ran
            accepted[key] = outcome
            on_result(outcome)

    def _retry(self, item: Item, queue, attempts, why: str) -> None:
        key = item_key(item)
        model, urls = key
        attempts[key] = attempts.get(key, 0) + 1
        if attempts[key] > self.max_retries:
            raise WorkFailed(f"{model} on shard(s) {', '.join(urls)} failed {attempts[key]} times; last: {why}")
        queue.appendleft(item)

    # ------------------------------------------------------------------ profiling

    def profile(self, model: str, r_values: List[int], bench: bool, runs: int, warmup: int) -> ModelProfile:
        """FLOPs, tokens and (with ``bench``) img/s of ``model``, measured on one ready actor (alone, so
        that no timing shares a device); retried on another actor up to ``max_retries`` times."""
        attempts = 0
        while True:
            actor = self._wait_ready()[0]
            try:
                return ray.get(actor.handle.profile.remote(model, self.weights[model], r_values, bench, runs, warmup))
            except (RayActorError, RayTaskError, ObjectLostError) as err:
                attempts += 1
                if attempts > self.max_retries:
                    raise WorkFailed(f"profiling {model} failed {attempts} times; last: {err}") from err
                if isinstance(err, RayActorError):
                    self._replace(actor)

    def _wait_ready(self) -> List[_Actor]:
        deadline = time.monotonic() + self.start_timeout
        while True:
            ready = self._ready_actors()
            if ready:
                return ready
            if time.monotonic() > deadline:
                raise SweepError(f"no evaluator actor became ready within {self.start_timeout:.0f}s")
            try:
                ray.get([a.ready_ref for a in self.actors], timeout=1.0)
            except (GetTimeoutError, RayActorError):
                pass  # checked again at the top of the loop


def _check_disjoint(items: List[Item]) -> None:
    """No shard in two items of one model: acceptance per item is then exactly once per shard."""
    seen = set()
    for model, urls in map(item_key, items):
        for url in urls:
            if (model, url) in seen:
                raise ValueError(f"shard {url} is in two work items of {model}; items must be disjoint")
            seen.add((model, url))
