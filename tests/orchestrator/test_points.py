"""orchestrator.points.graph_columns: a row is called graphed only when every forward behind it was a
CUDA-graph replay (the pass's work items and the model-alone timing); otherwise it says which part ran
eagerly and why, never a silent mix."""

from __future__ import annotations

import numpy as np

from orchestrator.points import graph_columns
from orchestrator.work import ModelProfile, ShardOutcome

KEY = ("deit_tiny_patch16_224", "evit", None, 0.7)


def outcome(graphed: bool, error: str = "", device: str = "NVIDIA H200") -> ShardOutcome:
    return ShardOutcome(
        pass_name="p",
        shards=["s"],
        keys=["k"],
        key_shards=["s"],
        labels=np.zeros(1, np.int32),
        top5={KEY: np.zeros((1, 5), np.int32)},
        n_failed=0,
        failures=[],
        load_seconds=0.0,
        forward_seconds={KEY: 0.1},
        device=device,
        cuda_graphs={KEY: graphed},
        graph_errors={KEY: error} if error else {},
    )


def profile(timed: bool = True, graphed: bool = True, error: str = "") -> ModelProfile:
    p = ModelProfile("deit_tiny_patch16_224", 5.7, 224, 0.875, "bicubic", "NVIDIA H200")
    if timed:
        p.infer_samples_per_sec[KEY[1:]], p.cuda_graphs[KEY[1:]] = 5000.0, graphed
    if error:
        p.graph_errors[KEY[1:]] = error
    return p


def test_graphed_only_when_every_part_was_replayed():
    assert graph_columns([outcome(True), outcome(True)], profile(), KEY) == dict(
        cuda_graphs=True, graph_error=None
    )
    assert graph_columns([outcome(True)], profile(timed=False), KEY)["cuda_graphs"] is True  # --no-bench
    assert graph_columns([outcome(False), outcome(False)], profile(graphed=False), KEY) == dict(
        cuda_graphs=False, graph_error=None
    )  # --no-cuda-graphs, or a CPU: eager by choice, nothing failed


def test_a_failed_capture_anywhere_makes_the_row_eager_and_says_where():
    row = graph_columns([outcome(True), outcome(False, "capture broke")], profile(), KEY)
    assert row == dict(cuda_graphs=False, graph_error="evaluation on NVIDIA H200: capture broke")
    row = graph_columns([outcome(True)], profile(graphed=False, error="out of memory"), KEY)
    assert row == dict(cuda_graphs=False, graph_error="timing: out of memory")


def test_a_mix_without_an_error_is_named_not_hidden():
    row = graph_columns([outcome(True), outcome(False)], profile(), KEY)
    assert row["cuda_graphs"] is False and "ran eagerly" in row["graph_error"]
