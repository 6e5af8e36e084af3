"""Where the evaluator actors go: a plan made from each node's own resources, not the cluster's totals.

``plan_actors`` is a pure function of the alive nodes (``alive_nodes()`` reads them from Ray), so every
rule here is tested without a cluster:

- GPU actors: one per GPU of each node, each reserving its share of that node's CPUs
  (node CPUs / node GPUs) and running one DataLoader worker per CPU but one (which feeds the GPU:
  collating, copying, launching kernels), unless ``cpus_per_actor`` /
  ``loader_workers`` say otherwise.
- CPU actors: up to 4 CPUs each, never more than a node has, as many per node as fit.
- An explicit ``num_actors`` above what the nodes hold, GPU or CPU alike, asks for the rest without a
  node: their pending demand is what makes Ray's autoscaler start nodes (a cluster may start with none).
- Without ``num_actors``, a request that fits no node that exists is an error at once, naming the
  request and the biggest node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

MAX_CPUS_PER_CPU_ACTOR = 4
PENDING_LOADER_WORKERS = 4  # a GPU actor on a node that does not exist yet: its CPUs are unknown


class PlacementError(ValueError):
    """The requested actors cannot be placed on the cluster's nodes; the message says why and what to change."""


@dataclass(frozen=True)
class NodeResources:
    """One alive Ray node: its id, address and total CPUs and GPUs."""

    node_id: str
    address: str
    cpus: float
    gpus: float


@dataclass(frozen=True)
class ActorSlot:
    """One actor of the plan: the node it is pinned to (None: any node, e.g. one the autoscaler will
    start), what it reserves, and its torch threads and DataLoader workers."""

    node_id: Optional[str]
    address: str
    num_cpus: float
    num_gpus: float
    threads: int
    loader_workers: int


@dataclass(frozen=True)
class ActorPlan:
    device: str  # "cpu" or "cuda"
    slots: Tuple[ActorSlot, ...]

    @property
    def num_actors(self) -> int:
        return len(self.slots)

    @property
    def uses_gpus(self) -> bool:
        return self.device == "cuda"

    def describe(self) -> str:
        """The plan as a person reads it: actors per node, with what each reserves and runs."""
        groups: Dict[Tuple, int] = {}
        for slot in self.slots:
            key = (
                slot.node_id or "",
                slot.address,
                slot.num_gpus,
                slot.num_cpus,
                slot.loader_workers,
                slot.threads,
            )
            groups[key] = groups.get(key, 0) + 1
        nodes = {s.node_id for s in self.slots if s.node_id}
        lines = [
            f"plan: {self.num_actors} {self.device.upper() if self.uses_gpus else 'CPU'} actor(s) on {len(nodes)} node(s)"
        ]
        for (node_id, address, gpus, cpus, workers, threads), count in groups.items():
            where = (
                f"node {address} ({node_id[:8]})"
                if node_id
                else "pending (no node yet: the autoscaler must start one)"
            )
            device = f"{gpus:g} GPU, " if gpus else ""
            lines.append(
                f"  {where}: {count} actor(s) x ({device}{cpus:g} CPU, {workers} loader worker(s), {threads} torch thread(s))"
            )
        return "\n".join(lines)


def alive_nodes() -> List[NodeResources]:
    """The cluster's alive nodes and their total resources (``ray.nodes()``)."""
    import ray

    return [
        NodeResources(
            n["NodeID"],
            n.get("NodeManagerAddress", "?"),
            float(n["Resources"].get("CPU", 0)),
            float(n["Resources"].get("GPU", 0)),
        )
        for n in ray.nodes()
        if n.get("Alive")
    ]


def plan_actors(
    nodes: Sequence[NodeResources],
    device: str = "auto",
    num_actors: Optional[int] = None,
    cpus_per_actor: Optional[float] = None,
    loader_workers: Optional[int] = None,
) -> ActorPlan:
    """The actors to start, each sized to fit a node that exists (see the module docstring).

    ``device``: ``auto`` (GPU actors when any node has a GPU), ``cuda`` or ``cpu``. Raises
    ``PlacementError`` when nothing fits."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    has_gpus = any(n.gpus >= 1 for n in nodes)
    if device == "cuda" or (device == "auto" and has_gpus):
        return ActorPlan("cuda", tuple(_gpu_slots(nodes, num_actors, cpus_per_actor, loader_workers)))
    return ActorPlan("cpu", tuple(_cpu_slots(nodes, num_actors, cpus_per_actor, loader_workers)))


def _gpu_slots(nodes, num_actors, cpus_per_actor, loader_workers) -> List[ActorSlot]:
    per_node = []
    for node in nodes:
        gpus = int(node.gpus)
        if gpus < 1:
            continue
        cpus = cpus_per_actor if cpus_per_actor is not None else max(1.0, float(int(node.cpus // gpus)))
        fits = gpus if cpus <= 0 else min(gpus, int(node.cpus // cpus))
        workers = (
            loader_workers if loader_workers is not None else max(1, int(cpus) - 1)
        )  # a core launches kernels
        per_node.append([ActorSlot(node.node_id, node.address, cpus, 1, max(1, int(cpus)), workers)] * fits)
    slots = _interleave(per_node)
    if num_actors is None:
        if not slots:
            raise PlacementError(_no_gpu_fits(nodes, cpus_per_actor))
        return slots
    cpus = cpus_per_actor if cpus_per_actor is not None else 1.0
    workers = loader_workers if loader_workers is not None else PENDING_LOADER_WORKERS
    return _with_pending(slots, num_actors, ActorSlot(None, "", cpus, 1, max(1, int(cpus)), workers))


def _no_gpu_fits(nodes, cpus_per_actor) -> str:
    gpu_nodes = [n for n in nodes if n.gpus >= 1]
    if not gpu_nodes:
        return (
            "--device cuda, but no node of the Ray cluster has a GPU yet; pass --num-actors N to have the autoscaler "
            f"start GPU nodes, or use --device auto (the cluster: {_describe_nodes(nodes)})"
        )
    biggest = max(gpu_nodes, key=lambda n: n.cpus)
    return (
        f"--cpus-per-actor {cpus_per_actor:g}: no GPU node has {cpus_per_actor:g} CPUs; the biggest has {biggest.cpus:g} "
        f"(node {biggest.address}); ask for at most {biggest.cpus:g}, or leave --cpus-per-actor out to use each node's share"
    )


def _cpu_slots(nodes, num_actors, cpus_per_actor, loader_workers) -> List[ActorSlot]:
    per_node = []
    for node in nodes:
        cpus = (
            cpus_per_actor
            if cpus_per_actor is not None
            else min(float(MAX_CPUS_PER_CPU_ACTOR), float(int(node.cpus)))
        )
        if cpus <= 0 or node.cpus < cpus:
            continue
        workers = loader_workers if loader_workers is not None else 0
        per_node.append(
            [ActorSlot(node.node_id, node.address, cpus, 0, max(1, int(cpus)), workers)]
            * int(node.cpus // cpus)
        )
    slots = _interleave(per_node)
    if num_actors is None:
        if not slots:
            raise PlacementError(_no_cpu_fits(nodes, cpus_per_actor))
        return slots
    cpus = cpus_per_actor if cpus_per_actor is not None else (slots[0].num_cpus if slots else 1.0)
    workers = loader_workers if loader_workers is not None else 0
    return _with_pending(slots, num_actors, ActorSlot(None, "", cpus, 0, max(1, int(cpus)), workers))


def _with_pending(slots: List[ActorSlot], num_actors: int, pending: ActorSlot) -> List[ActorSlot]:
    """The first ``num_actors`` of ``slots``, topped up with ``pending`` (no node yet: their demand makes the
    autoscaler start nodes for them) where the nodes hold fewer."""
    missing = num_actors - len(slots)
    return (slots + [pending] * max(0, missing))[:num_actors]


def _no_cpu_fits(nodes, cpus_per_actor) -> str:
    if not nodes or max(n.cpus for n in nodes) < 1:
        return (
            f"no node of the Ray cluster has a CPU for an actor ({_describe_nodes(nodes)}); add a worker node with "
            "CPUs, or pass --num-actors N to have the autoscaler start nodes for N actors"
        )
    biggest = max(nodes, key=lambda n: n.cpus)
    return (
        f"--cpus-per-actor {cpus_per_actor:g}: no node has {cpus_per_actor:g} CPUs; the biggest has {biggest.cpus:g} "
        f"(node {biggest.address}); ask for at most {biggest.cpus:g}, or pass --num-actors N to have the autoscaler "
        "start nodes that fit"
    )


def _interleave(per_node: List[List[ActorSlot]]) -> List[ActorSlot]:
    """Node by node in turns (first actor of every node, then the second, ...), so that a smaller
    ``num_actors`` still spreads over the nodes."""
    slots: List[ActorSlot] = []
    for i in range(max((len(s) for s in per_node), default=0)):
        slots += [s[i] for s in per_node if i < len(s)]
    return slots


def _describe_nodes(nodes: Sequence[NodeResources]) -> str:
    if not nodes:
        return "no alive node"
    return ", ".join(f"{n.address}: {n.cpus:g} CPU, {n.gpus:g} GPU" for n in nodes)
