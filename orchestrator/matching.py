"""What ``--match METHOD:AMOUNT`` measures: for every model and every other reducing method of the sweep,
the amount whose speed (or GFLOPs) is nearest the reference's (``calibrate.search``), before the decode pass.

GFLOPs come from the token counts (``tomecis.benchmark.count_gflops`` on the patched model at the amount;
no timing, so ``--dry-run`` shows them too). Speed is timed where the sweep runs: a Ray task reserving
what one of the sweep's actors reserves (its CPUs and GPU, on its node), with the actors' device, batch
size, amp and CUDA graphs, each candidate timed in turns against the reference
(``tomecis.benchmark.time_in_turns``): the search runs on the ratio of the two, and the row keeps both
img/s of the chosen amount's measurement. The model is built with random weights: the token counts and
speed of a method at an amount do not depend on them (and nothing needs to be downloaded or shipped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

import tomecis
from tomecis import benchmark as bm
from tomecis import device as dev
from tomecis.models import create_model, max_r
from tomecis.names import UNREDUCED, method_spec

from .calibrate import Calibration, MatchTarget, keep_candidates, r_candidates, search
from .grid import Amount, MethodPlan
from .work import ActorShape, EvaluatorConfig


@dataclass(frozen=True)
class Timing:
    """How the sweep times: the actors' device, batch size, amp, CUDA graphs, rounds and warm-up passes."""

    config: EvaluatorConfig
    runs: int = 10
    warmup: int = 3


def methods_to_match(plans: Sequence[MethodPlan], target: MatchTarget) -> List[Tuple[str, str]]:
    """``(method, kind)`` for every reducing method of the sweep but the reference's: the kind it is
    swept at (the first it declares among its planned amounts; its first declared kind without any)."""
    out = []
    for plan in plans:
        if plan.method in (UNREDUCED, target.method):
            continue
        declared = method_spec(plan.method).amounts
        planned = {"r" if r is not None else "keep" for r, _ in plan.amounts}
        out.append((plan.method, next((k for k in declared if k in planned), declared[0])))
    return out


class _Counts:
    """GFLOPs and per-block token counts of a patched model at (method, amount), one forward each, cached."""

    def __init__(self, model: nn.Module, device: torch.device):
        self.model, self.device = model, device
        self.seen: Dict[Tuple[str, Amount], Tuple[float, Tuple[int, ...]]] = {}

    def __call__(self, method: str, amount: Amount) -> Tuple[float, Tuple[int, ...]]:
        if (method, amount) not in self.seen:
            tomecis.set_reduction(self.model, method, r=amount[0], keep=amount[1])
            gflops = bm.count_gflops(self.model, self.device)  # one forward: merge_state.tokens is its
            self.seen[(method, amount)] = (gflops, tuple(self.model.merge_state.tokens))
        return self.seen[(method, amount)]


class _SpeedRatio:
    """``measure(amount)``: the method's img/s at ``amount`` over the reference's, timed in turns."""

    def __init__(self, model: nn.Module, method: str, target: MatchTarget, timing: Timing, device):
        self.model, self.method, self.target, self.timing, self.device = model, method, target, timing, device
        self.figures: Dict[Amount, Tuple[float, float]] = {}  # amount -> (its img/s, the reference's)

    def __call__(self, amount: Amount) -> float:
        cfg = self.timing.config
        settings = [
            bm.with_reduction(self.model, self.target.method, *self.target.amount),
            bm.with_reduction(self.model, self.method, *amount),
        ]
        timings = bm.time_in_turns(
            settings,
            cfg.batch_size,
            self.device,
            cfg.amp,
            self.timing.warmup,
            self.timing.runs,
            cfg.cuda_graphs,
        )
        reference, point = (bm.img_per_s(cfg.batch_size, s) for s in timings.seconds)
        self.figures[amount] = (point, reference)
        return point / reference


def calibrate_model(
    model: nn.Module,
    model_name: str,
    methods: Sequence[Tuple[str, str]],
    target: MatchTarget,
    device: torch.device,
    timing: Optional[Timing] = None,
) -> List[Calibration]:
    """Each ``(method, kind)`` of ``methods`` matched to ``target`` on the patched ``model``: by GFLOPs
    (token counts, on ``device``), or by speed (``timing`` given: timed in turns on ``device``)."""
    counts = _Counts(model, device)
    found = []
    for method, kind in methods:
        candidates = r_candidates(max_r(model)) if kind == "r" else keep_candidates()
        candidates = [a for a in candidates if _takes(model, method, a)]  # e.g. diffrate: keep > 0.5 only
        candidates = _reducing(candidates, counts, method)
        key = (lambda a, m=method: counts(m, a)[1]) if kind == "keep" else None
        if target.by == "gflops":
            reference = counts(target.method, target.amount)[0]
            result = search(lambda a, m=method: counts(m, a)[0], reference, candidates, key)
            value = result.value
        else:
            if timing is None:
                raise ValueError("matching by speed needs the sweep's timing settings")
            ratio = _SpeedRatio(model, method, target, timing, device)
            result = search(ratio, 1.0, candidates, key)
            value, reference = ratio.figures[result.measured_at]
        found.append(
            Calibration(
                model_name,
                method,
                result.amount,
                target.by,
                target.label,
                value,
                reference,
                result.reached,
                result.reachable,
            )
        )
    return found


def _reducing(candidates: List[Amount], counts: "_Counts", method: str) -> List[Amount]:
    """``candidates`` less the smallest keeps that reduce nothing: an amount whose token counts are the
    unreduced model's is the baseline, and would break the search's ordering (ATC: below keep 1/196 no
    stage has a cluster to make, so keep 0.005 is the unreduced model while keep 0.01 leaves 2 tokens)."""
    unreduced = counts(UNREDUCED, (0, None))[1]
    start = 0
    while start < len(candidates) and counts(method, candidates[start])[1] == unreduced:
        start += 1
    return candidates[start:]


def _takes(model: nn.Module, method: str, amount: Amount) -> bool:
    """Whether ``method`` takes ``amount`` on ``model`` (its declaration's ``check``: DiffRate refuses
    keep <= 0.5 on a DeiT); calibration searches only the amounts a method can run at."""
    try:
        tomecis.set_reduction(model, method, r=amount[0], keep=amount[1])
    except ValueError:
        return False
    return True


def calibration_model(model_name: str, device: torch.device) -> nn.Module:
    """The model calibration measures: timm's architecture with random weights, patched, on ``device``."""
    return tomecis.patch(create_model(model_name).eval(), r=0).to(device)


def calibrate_here(
    model_name: str,
    methods: Sequence[Tuple[str, str]],
    target: MatchTarget,
    timing: Optional[Timing] = None,
    shape: ActorShape = ActorShape(),
) -> List[Calibration]:
    """``calibrate_model`` in this process on the timing's device (CPU for GFLOPs), with the threads an
    actor of the sweep gets (``shape``): the body of the Ray task ``calibrate_on_cluster`` starts."""
    if timing is not None:
        torch.set_num_threads(max(1, int(shape.threads)))
    device = dev.resolve_device(timing.config.device) if timing is not None else torch.device("cpu")
    return calibrate_model(calibration_model(model_name, device), model_name, methods, target, device, timing)


def calibrate_on_cluster(
    plan, models: Sequence[str], methods, target: MatchTarget, timing: Timing
) -> List[Calibration]:
    """Speed calibration of every model in Ray tasks shaped like the plan's actors (``plan.slots``: their
    CPUs, GPU and node): GPU tasks run side by side, one per slot; CPU tasks one after another (they
    would share the cores and disturb each other's timing)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(calibrate_here)
    lanes = list(plan.slots) if plan.uses_gpus else list(plan.slots[:1])
    found: List[Calibration] = []
    for start in range(0, len(models), len(lanes)):
        refs = []
        for slot, model in zip(lanes, models[start : start + len(lanes)]):
            options = dict(num_cpus=slot.num_cpus, num_gpus=slot.num_gpus, max_retries=0)
            if slot.node_id is not None:
                options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(slot.node_id, soft=True)
            shape = ActorShape(slot.threads, slot.loader_workers)
            refs.append(remote.options(**options).remote(model, methods, target, timing, shape))
        for ref in refs:
            found += ray.get(ref)
    return found
