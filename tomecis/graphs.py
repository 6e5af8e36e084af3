"""Forward passes captured once as CUDA graphs and replayed: what a GPU does, without the host's launches.

In eager PyTorch the host dispatches every operator in Python and C++ before its kernel is launched: a
patched DeiT-S at r = 13 dispatches about 765 operators per forward (timm's own model 227). On an
H100-class GPU in fp16 that host work takes as long as the kernels themselves, so an eager img/s figure
measures the host. A CUDA graph records the kernels of one forward once, at a fixed input shape; a replay
launches all of them with one call, so the figure measures the GPU.

``GraphSet`` holds the graphs of one device: every captured function reads one static input ``[B, ...]``
and all of them share one memory pool, so forty (model, mode, r) settings do not hold forty sets of
activations. Graphs are replayed in the order they were captured, one at a time, and a replay's output
is only valid until the next replay: copy out what you keep (e.g. the top-5) first.

A shorter batch is padded to the captured batch with zeros and the padded rows are dropped; every row of
a ViT is computed on its own (token merging included), so the kept rows do not depend on the padding.
"""

from __future__ import annotations

import inspect
from typing import Callable, Dict, Hashable, Optional

import torch

from .device import autocast

GraphFn = Callable[[torch.Tensor], torch.Tensor]  # static input [B, ...] -> output [B, ...] on the device


class GraphCaptureError(RuntimeError):
    """A function could not be captured as a CUDA graph; the message names it and says why."""


def cuda_graphs_available(device: torch.device) -> bool:
    """Whether CUDA graphs can be used on ``device`` (a CUDA device with the graph API)."""
    return device.type == "cuda" and torch.cuda.is_available() and hasattr(torch.cuda, "CUDAGraph")


def _graph_context(graph, pool, stream):
    """``torch.cuda.graph`` capturing on ``stream``; thread-local capture mode where this torch has it,
    so that another thread's CUDA calls (a pin-memory thread) cannot break the capture."""
    kwargs = {"pool": pool, "stream": stream}
    if "capture_error_mode" in inspect.signature(torch.cuda.graph).parameters:
        kwargs["capture_error_mode"] = "thread_local"
    return torch.cuda.graph(graph, **kwargs)


class GraphSet:
    """CUDA graphs of several functions of one static input, sharing one memory pool.

    ``capture(key, fn)`` records ``fn(static_input)`` (after warm-up runs on the capture stream, as
    PyTorch's CUDA-graph notes ask); ``load(images)`` copies a batch into the static input (padding a
    short one); ``replay(key)`` runs the recorded kernels and returns the static output ``[B, ...]``.
    Autocast is entered with its weight-cast cache off during capture: a cast cached before capture
    would be freed when the autocast context ends while the graph still reads it.
    """

    def __init__(self, example: torch.Tensor, amp: str = "none", warmup: int = 2):
        if not cuda_graphs_available(example.device):
            raise GraphCaptureError(f"CUDA graphs need a CUDA device, got {example.device}")
        self.device = example.device
        self.amp = amp
        self.warmup = warmup
        self.static_input = torch.zeros_like(example)  # [B, ...]
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream(self.device)
        self.graphs: Dict[Hashable, torch.cuda.CUDAGraph] = {}
        self.outputs: Dict[Hashable, torch.Tensor] = {}

    @property
    def batch_size(self) -> int:
        return self.static_input.shape[0]

    def __contains__(self, key: Hashable) -> bool:
        return key in self.graphs

    def capture(self, key: Hashable, fn: GraphFn) -> torch.Tensor:
        """Record ``fn`` under ``key``; returns its static output. Raises ``GraphCaptureError`` naming
        ``key`` (the set stays usable: nothing is recorded for that key)."""
        if key in self.graphs:
            raise ValueError(f"{key!r} is captured already")
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.stream(self.stream), autocast(self.device, self.amp, cache=False):
                for _ in range(self.warmup):
                    fn(self.static_input)
                with _graph_context(graph, self.pool, self.stream):
                    output = fn(self.static_input)
        except Exception as err:  # noqa: BLE001 - reported with the key, the caller runs it eagerly
            current.wait_stream(self.stream)
            torch.cuda.synchronize(self.device)
            raise GraphCaptureError(f"{key!r}: {type(err).__name__}: {err}") from err
        current.wait_stream(self.stream)
        self.graphs[key], self.outputs[key] = graph, output
        return output

    def load(self, images: torch.Tensor) -> int:
        """Copy ``images [n, ...]`` (n <= batch) into the static input, zeros after row n; returns n."""
        n = images.shape[0]
        if n > self.batch_size or images.shape[1:] != self.static_input.shape[1:]:
            raise ValueError(
                f"a batch of shape {tuple(images.shape)} does not fit the captured input "
                f"{tuple(self.static_input.shape)}: capture at the largest batch you will run"
            )
        self.static_input[:n].copy_(images, non_blocking=True)
        if n < self.batch_size:
            self.static_input[n:].zero_()
        return n

    def replay(self, key: Hashable) -> torch.Tensor:
        """Run ``key``'s graph on the static input; its output ``[B, ...]`` is valid until the next replay."""
        self.graphs[key].replay()
        return self.outputs[key]


def capture_forward(
    graphs: Optional[GraphSet],
    key: Hashable,
    model: torch.nn.Module,
    head: Callable[[torch.Tensor], torch.Tensor] = lambda logits: logits,
) -> Optional[str]:
    """Capture ``head(model(static input))`` into ``graphs`` under ``key``, with the model as it is set now
    (its r and mode). Returns None when it was captured (or there are no graphs), else the error text.
    The model's per-forward merge state is dropped afterwards: the capture's sizes live in the graph pool."""
    if graphs is None:
        return None
    try:
        graphs.capture(key, lambda x: head(model(x)))
    except GraphCaptureError as err:
        return str(err)
    finally:
        state = getattr(model, "merge_state", None)
        if state is not None:
            state.reset()
    return None
