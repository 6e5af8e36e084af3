"""tomecis.graphs on a machine without CUDA, and the properties graph replay relies on that a CPU can check:
every row of a batch is computed on its own (so padding a short batch changes no kept row), and the
forward traces whole, without a host sync, under ``torch.compile(fullgraph=True)`` (a sync would break a
CUDA-graph capture). The replays themselves are tested in tests/test_cuda.py."""

from __future__ import annotations

import pytest
import torch
from conftest import MODEL_FACTORIES, tiny_vit

import tomecis
from tomecis import graphs

CPU = torch.device("cpu")


def test_graph_set_needs_cuda_and_capture_without_graphs_is_a_no_op():
    assert not graphs.cuda_graphs_available(CPU)
    with pytest.raises(graphs.GraphCaptureError, match="CUDA graphs need a CUDA device, got cpu"):
        graphs.GraphSet(torch.zeros(2, 3))
    assert graphs.capture_forward(None, "k", tiny_vit()) is None


@pytest.mark.parametrize("mode", ["tomecis", "tome"])
@pytest.mark.parametrize("r", [0, 8, 16])
def test_padding_a_short_batch_changes_no_kept_row(mode, r):
    """A replay of a batch captured at 8 images runs a batch of 5 padded with zeros: rows 0-4 must be what
    the 5 images alone give (merging decides per image, never across the batch)."""
    model = tomecis.patch(tiny_vit(), r=r, mode=mode)
    torch.manual_seed(1)
    images = torch.randn(5, 3, 64, 64)
    padded = torch.cat([images, torch.zeros(3, 3, 64, 64)])
    with torch.inference_mode():
        alone, in_padded = model(images), model(padded)[:5]
    torch.testing.assert_close(in_padded, alone, rtol=1e-5, atol=1e-5)
    assert torch.equal(in_padded.argmax(-1), alone.argmax(-1))


@pytest.mark.slow
def test_every_method_and_amount_traces_whole_without_a_host_sync():
    """Issues #19 and #25: the CPU-side guard for capture. ``fullgraph=True`` fails on any graph break: an
    ``.item()``, a ``.cpu()``, a shape read from data or other data-dependent Python in the forward; every
    method at every kind of amount it takes must trace as one graph (one CUDA graph per point)."""
    model = MODEL_FACTORIES["deit_tiny"]()
    tomecis.patch(model, r=0)
    x = torch.randn(2, 3, 224, 224)
    settings = [(m, {"r": r}) for m in ("tomecis", "tome") for r in (0, 8, 13, 16)]
    settings += [(m, {"r": 13}) for m in ("pitome", "tofu")]
    settings += [("mctf", {"r": r}) for r in (8, 16, 100)]  # 100: blocks that remove nothing, sizes kept
    settings += [(m, {"keep": 0.9}) for m in ("tomecis", "pitome", "tofu", "evit")] + [
        ("evit", {"keep": 0.7})
    ]
    settings += [("atc", {"keep": 0.7}), ("atc", {"keep": 0.1})]  # keep 0.1: block 9 does not reduce
    settings += [(m, {"keep": k}) for m in ("dct", "diffrate") for k in (0.7, 0.9)]  # torch.fft traces too
    for method, amount in settings:
        tomecis.set_reduction(model, method, **amount)
        with torch.inference_mode():
            eager = model(x)
        torch._dynamo.reset()
        traced = torch.compile(model, fullgraph=True, backend="eager")
        with torch.inference_mode():
            torch.testing.assert_close(traced(x), eager, rtol=1e-5, atol=1e-5, msg=f"{method} {amount}")
