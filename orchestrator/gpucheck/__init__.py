"""One command that proves the GPU path and measures it: ``python -m orchestrator.gpucheck --out gpu-report/``.

On a machine with CUDA, in a few minutes on one GPU (under 8 on an H100/H200), it writes
``gpu-report/report.md`` (rewritten after every step, so an interrupted run still leaves what it measured)
and ``results.json``, printing the seconds each step took. Its first lines say which weights each model ran
with (a checkpoint and its sha256, found by default in ``.weights/`` or the shared assets, or random weights
and why). Its points: per model, the unreduced baseline and every reduction method at one amount each
(``config.DEFAULT_AMOUNTS``; ``--methods``, ``--r``, ``--keep`` and ``--all-amounts`` change them, by the
rules of ``config.method_amounts``), said with an estimate of the time before anything runs (``plan``).
The steps, one module each:

- ``machine``: versions, cores, Ray or none, the GPU;  ``install``: ``--wheels DIR`` installed offline;
- ``benchmark``: ``tomecis.benchmark`` at every point, CUDA-graph replays and eager side by side (fp16,
  batch 256, with ``--explicit``): each method's speed-up against its FLOP ratio, fused / explicit, ATen ops;
- ``photos``: the shards, ``--data`` or written from a folder of photos, repeated to time the data path;
- ``decode``: the decode pass, in-process (the actor's own code, no Ray) or on Ray's actors: top-1, eval
  img/s against infer img/s per point, the grid efficiency;
- ``agreement``: a CPU fp32 run of the first ``--agree-images`` photos at every point, compared with the
  device run image by image (targets 99.5% at the baseline, 99% at every method's point, real weights only);
- ``readpath``: ``shards.bench`` at several loader-worker counts;  ``cudatests``: ``tests/test_cuda.py``;
- ``config`` (the configuration, targets, default amounts and the one list of points: ``check_points``),
  ``plan`` (the planned work and its estimate against the budget), ``weights``,
  ``report`` (the report and ``run_step``), ``check`` (the steps in turn), ``cli`` (the flags, ``main``).

Without CUDA it says so in one line and exits 2; ``--device cpu`` rehearses the whole report on the CPU.
"""

from .check import run_check
from .cli import build_parser, config_from_args, main
from .config import (
    DEFAULT_AMOUNTS,
    GPU_IMAGES,
    SAMPLE_PLACES,
    WEIGHT_PLACES,
    CheckPoint,
    GpuCheckConfig,
    check_points,
)
from .decode import evaluators_to_run, local_actor_shape, run_inprocess_step, run_sweep_step
from .install import install_wheels
from .machine import ray_version
from .photos import list_photos, sample_shards
from .weights import ModelWeights, choose_weights

__all__ = [
    "DEFAULT_AMOUNTS",
    "GPU_IMAGES",
    "SAMPLE_PLACES",
    "WEIGHT_PLACES",
    "CheckPoint",
    "GpuCheckConfig",
    "ModelWeights",
    "build_parser",
    "check_points",
    "choose_weights",
    "config_from_args",
    "evaluators_to_run",
    "install_wheels",
    "list_photos",
    "local_actor_shape",
    "main",
    "ray_version",
    "run_check",
    "run_inprocess_step",
    "run_sweep_step",
    "sample_shards",
]
