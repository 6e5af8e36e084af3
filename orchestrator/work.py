"""What travels between the driver and the actors: the work (weights, tasks, decode passes), how an actor
runs it (config, shape), and what comes back (a work item's outcome, a model's profile).

Plain dataclasses, importable without Ray or torch (``points``, ``spool``, ``prepare`` and the report's
side of the house use them without starting an actor); ``evaluator`` is the actor that consumes and
produces them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

if TYPE_CHECKING:  # annotations only: neither is imported at run time
    import numpy as np

    import shards

PointKey = Tuple[
    str, str, Optional[int], Optional[float]
]  # (timm model name, method, r, keep): one grid point
Reduction = Tuple[str, Optional[int], Optional[float]]  # (method, r, keep): a point of one model


@dataclass(frozen=True)
class EvaluatorConfig:
    """How an actor runs its models; the same for every actor of a sweep."""

    device: str = "auto"
    amp: str = "none"
    batch_size: int = 128
    cuda_graphs: bool = True  # on CUDA: capture each point once, replay it per batch (False: eager)
    methods: Tuple[str, ...] = ()  # methods not built in, each actor loads: entry-point names, import paths
    py_modules: Tuple[str, ...] = ()  # the import-path methods' files or package dirs (Ray's runtime_env)


@dataclass(frozen=True)
class ActorShape:
    """What one actor was given: torch CPU threads and DataLoader workers (from its share of the node)."""

    threads: int = 1
    loader_workers: int = 0


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


@dataclass(frozen=True)
class Task:
    """One model in one method, to be run at each of ``amounts`` (``(r, keep)`` pairs) on every decoded batch."""

    model: str  # timm name
    method: str
    amounts: Tuple[Tuple[Optional[int], Optional[float]], ...]

    def point_keys(self) -> List[PointKey]:
        return [(self.model, self.method, r, keep) for r, keep in self.amounts]


@dataclass
class DecodePass:
    """Models that share one eval transform: each batch is decoded once and run at every task.

    ``weights`` maps every model of the pass to its weights; ``tasks`` are its (model, method, amounts)."""

    name: str
    weights: Dict[str, Weights]
    tasks: Tuple[Task, ...]

    @property
    def point_keys(self) -> List[PointKey]:
        return [key for task in self.tasks for key in task.point_keys()]

    def reductions(self, model: str) -> List[Reduction]:
        """``(method, r, keep)`` of every point of ``model`` in this pass, in task order."""
        return [key[1:] for key in self.point_keys if key[0] == model]


@dataclass
class ShardOutcome:
    """A work item (one or more shards) decoded once and run at every point of its pass: per-image
    top-5 (``[n, 5]`` int32) for each point, in key order, with the shard each key came from."""

    pass_name: str
    shards: List[str]  # the item's shard URLs
    keys: List[str]
    key_shards: List[str]  # [n]: the shard URL of each key
    labels: np.ndarray  # [n] int32
    top5: Dict[PointKey, np.ndarray]  # (model, method, r, keep) -> [n, 5] int32
    n_failed: int
    failures: List[shards.DecodeFailure]
    load_seconds: float  # time spent waiting for decoded batches
    forward_seconds: Dict[PointKey, float]  # device time of each point's forward passes
    started: float = 0.0  # wall clock (time.time()) when decoding began
    finished: float = 0.0  # wall clock when the last batch was done
    node_id: str = ""
    hostname: str = ""
    device: str = ""
    model_errors: Dict[str, str] = field(
        default_factory=dict
    )  # model -> why it could not be built (no points for it)
    cuda_graphs: Dict[PointKey, bool] = field(
        default_factory=dict
    )  # point -> its forwards were graph replays
    graph_errors: Dict[PointKey, str] = field(
        default_factory=dict
    )  # point -> why its capture failed (ran eagerly)
    point_errors: Dict[PointKey, str] = field(
        default_factory=dict
    )  # point -> why its method failed (tomecis.MethodError): the point fails, the others go on


@dataclass
class ModelProfile:
    """What the results need to know of a model at each of its points (``Reduction``: method, r, keep),
    measured on the actor's device."""

    model: str
    param_count: float  # millions
    img_size: int
    crop_pct: float
    interpolation: str
    device: str
    schedule: Dict[Reduction, List[int]] = field(default_factory=dict)  # tokens removed by each block
    gflops: Dict[Reduction, float] = field(default_factory=dict)
    tokens_out: Dict[Reduction, int] = field(default_factory=dict)
    infer_samples_per_sec: Dict[Reduction, float] = field(default_factory=dict)
    bench_seconds: Dict[Reduction, List[float]] = field(
        default_factory=dict
    )  # seconds of each timed round (round i of every reduction, the baseline's too, timed side by side)
    cuda_graphs: Dict[Reduction, bool] = field(default_factory=dict)  # img/s timed as graph replays
    graph_errors: Dict[Reduction, str] = field(default_factory=dict)  # why its capture failed (timed eagerly)
    point_errors: Dict[Reduction, str] = field(default_factory=dict)  # why its method failed (not profiled)
