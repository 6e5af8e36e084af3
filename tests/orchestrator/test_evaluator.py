"""orchestrator.evaluator without Ray: one decode feeds every (model, mode, r); results equal direct calls."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from conftest import randomize
from shards_testing import tiny_dataset, write_tiny_shards

import shards
import tomecis
from orchestrator import evaluator
from orchestrator.evaluator import Evaluator, ForwardClock, evaluate_shards
from orchestrator.prepare import transform_key
from orchestrator.work import DecodePass, EvaluatorConfig, Task, Weights
from tomecis import graphs

CPU = torch.device("cpu")
TINY, DISTILLED = "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluator")
    write_tiny_shards(root, tiny_dataset(n_images=9, n_classes=3), shard_size=4)
    return shards.resolve_data(str(root / "shards"))


@pytest.fixture(scope="module")
def models():
    return {
        TINY: tomecis.patch(randomize(timm.create_model(TINY), 1)),
        DISTILLED: tomecis.patch(randomize(timm.create_model(DISTILLED), 2)),
    }


def test_every_point_of_a_pass_equals_the_model_run_directly(tiny_shards, models):
    tasks = [
        Task(TINY, "none", ((0, None),)),
        Task(TINY, "tomecis", ((8, None), (None, 0.7))),
        Task(TINY, "evit", ((None, 0.7),)),
        Task(TINY, "pitome", ((None, 0.9),)),
        Task(DISTILLED, "tome", ((16, None),)),
    ]
    transform = shards.eval_transform(models[TINY])
    outcome = evaluate_shards(
        models, tasks, tiny_shards.shards, transform, torch.device("cpu"), batch_size=4, pass_name="p"
    )
    assert outcome.keys == sorted(outcome.keys) and len(outcome.keys) == 9 and outcome.n_failed == 0
    assert (
        set(outcome.top5)
        == set(outcome.forward_seconds)
        == {
            (TINY, "none", 0, None),
            (TINY, "tomecis", 8, None),
            (TINY, "tomecis", None, 0.7),
            (TINY, "evit", None, 0.7),
            (TINY, "pitome", None, 0.9),
            (DISTILLED, "tome", 16, None),
        }
    )
    assert all(s > 0 for s in outcome.forward_seconds.values()) and outcome.load_seconds > 0
    images = torch.stack([img for img, _, _ in _decoded(tiny_shards, transform)])
    with torch.inference_mode():
        for (model, method, r, keep), top5 in outcome.top5.items():
            tomecis.set_reduction(models[model], method, r=r, keep=keep)
            expected = models[model](images).topk(5, dim=-1).indices.numpy()
            np.testing.assert_array_equal(top5, expected)
    assert outcome.key_shards == [s.url for s in tiny_shards.shards for _ in range(s.n_samples)]


def _decoded(shardset, transform):
    for images, labels, keys in shards.iter_batches(shardset, transform, batch_size=100):
        yield from zip(images, labels, keys)


def test_cpu_clock_measures_wall_time():
    clock = ForwardClock(torch.device("cpu"))
    start = clock.mark()
    end = clock.mark()
    clock.wait(end)
    assert 0 <= clock.seconds(start, end) < 1


def test_deits_share_a_transform_and_a_384_pixel_vit_does_not():
    tiny, small = transform_key(TINY), transform_key("deit_small_patch16_224")
    assert tiny == small and tiny != transform_key("vit_tiny_patch16_384")


def test_a_model_that_cannot_be_built_is_reported_and_the_others_run(tiny_shards, tmp_path):
    """A pass of two models, one with a checkpoint that is not one: the other model's points come back,
    the broken one is named in ``model_errors``. With every model broken, the item raises."""
    good = randomize(timm.create_model(TINY), 1)
    torch.save({"model": good.state_dict()}, tmp_path / "good.pth")
    weights = {
        TINY: Weights("checkpoint", "good.pth", [(tmp_path / "good.pth").read_bytes()], "a" * 64),
        DISTILLED: Weights("checkpoint", "bad.pth", [b"not a checkpoint"], "b" * 64),
    }
    decode_pass = DecodePass(
        "p", weights, (Task(TINY, "none", ((0, None),)), Task(DISTILLED, "tomecis", ((8, None),)))
    )
    actor = Evaluator(EvaluatorConfig(device="cpu", batch_size=4))
    outcome = actor.evaluate(decode_pass, tiny_shards.shards[:1])
    assert set(outcome.top5) == {(TINY, "none", 0, None)} and len(outcome.keys) == 4
    assert (
        list(outcome.model_errors) == [DISTILLED] and "could not be built" in outcome.model_errors[DISTILLED]
    )
    all_bad = DecodePass("q", {DISTILLED: weights[DISTILLED]}, (Task(DISTILLED, "none", ((0, None),)),))
    with pytest.raises(RuntimeError, match=f"{DISTILLED} could not be built"):
        actor.evaluate(all_bad, tiny_shards.shards[:1])


class ReplayOnCpu:
    """A stand-in for ``tomecis.graphs.GraphSet`` on the CPU: the same static input and padding, a
    "replay" reruns the captured function on it with the point's method and amount (a graph has them baked in),
    and a capture of ``fail`` raises as a broken one would. It lets the CPU check the PointRunner's graph
    path: padding, copying out, falling back."""

    def __init__(self, example, models, fail=()):
        self.static_input = torch.zeros_like(example)
        self.models, self.functions, self.fail = models, {}, set(fail)

    def __contains__(self, key):
        return key in self.functions

    def capture(self, key, fn):
        if key in self.fail:
            raise graphs.GraphCaptureError(
                f"{key!r}: RuntimeError: operation not permitted when stream is capturing"
            )
        self.functions[key] = fn
        return fn(self.static_input)

    load = graphs.GraphSet.load
    batch_size = graphs.GraphSet.batch_size

    def replay(self, key):
        tomecis.set_reduction(self.models[key[0]], key[1], r=key[2], keep=key[3])
        return self.functions[key](self.static_input)


def test_graph_path_pads_the_last_batch_and_runs_a_failed_capture_eagerly(tiny_shards, models, monkeypatch):
    """9 images in batches of 4: the last batch (1 image) is padded to 4 and its padded rows dropped; the
    point whose capture fails runs eagerly, is named in a warning and in ``graph_errors``, and is the only
    point with ``cuda_graphs`` false. Every point's top-5 equals a run without graphs."""
    broken = (TINY, "tome", 8, None)
    monkeypatch.setattr(evaluator, "cuda_graphs_available", lambda device: True)
    monkeypatch.setattr(
        evaluator, "GraphSet", lambda example, amp: ReplayOnCpu(example, models, fail=[broken])
    )
    tasks = [
        Task(TINY, "none", ((0, None),)),
        Task(TINY, "tomecis", ((8, None),)),
        Task(TINY, "tome", ((8, None),)),
        Task(TINY, "evit", ((None, 0.7),)),
        Task(DISTILLED, "tome", ((16, None),)),
    ]
    transform = shards.eval_transform(models[TINY])
    warnings = []
    runner = evaluator.PointRunner(models, tasks, CPU, batch_size=4, warn=warnings.append)
    graphed = evaluate_shards(models, tasks, tiny_shards.shards, transform, CPU, batch_size=4, runner=runner)
    eager = evaluate_shards(
        models, tasks, tiny_shards.shards, transform, CPU, batch_size=4, cuda_graphs=False
    )
    assert len(graphed.keys) == 9 and graphed.keys == eager.keys
    for key in eager.top5:
        np.testing.assert_array_equal(graphed.top5[key], eager.top5[key], err_msg=str(key))
    assert graphed.cuda_graphs == {key: key != broken for key in eager.top5}
    assert list(graphed.graph_errors) == [broken] and "stream is capturing" in graphed.graph_errors[broken]
    assert warnings == [
        f"warning: {TINY} tome r8: CUDA-graph capture failed, evaluated eagerly: {graphed.graph_errors[broken]}"
    ]
    assert not any(eager.cuda_graphs.values()) and not eager.graph_errors
