"""Token-reduction methods, one module each: how many tokens a block removes and how it removes them.

``tomecis.patch`` runs every block the same way: attention (with what the method needs beside it), the
attention residual, then the method's ``reduce``, then the MLP. A block whose ``count`` is 0 runs timm's
own code instead. The table of names and what each method needs is ``tomecis.names.METHODS``; this
package maps each reducing method to its two functions:

* ``count(T, index, depth, r, keep) -> int``: tokens the block merges or drops (EViT adds its fused token
  back), from its input token count ``T``
  (class token included), its index of ``depth`` blocks, the per-block ``r`` of the model's schedule and
  the keep ratio (one of them is used, as the method takes it);
* ``reduce(method, view, state) -> x``: ``[B, N, C] -> [B, N', C]``, updating ``state.size`` and
  ``state.source`` where the method tracks them.

Shared pieces (ToMe's bipartite matching, the weighted merge, the class-attention row, sizes and source
maps) live in ``tomecis.merge``; the method modules import them, never copy them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Protocol

import torch

from ..names import Method


class TokenState(Protocol):
    """What a reduction reads and updates of a patched model's per-forward state (``patch.MergeState``)."""

    size: Optional[torch.Tensor]  # [B, N, 1] float32 token sizes, None before the first merge
    source: Optional[torch.Tensor]  # [B, N, N0] source map when tracing, else None
    class_token: bool
    distill_token: bool

    def ensure_sizes(self, x: torch.Tensor) -> None: ...


@dataclass
class BlockView:
    """What a reducing block hands its method, after the attention residual."""

    x: torch.Tensor  # [B, N, C] the residual stream
    metric: torch.Tensor  # [B, N, D] keys averaged over heads
    score: Optional[torch.Tensor]  # [B, N, 1] class importance score (methods with needs_score), float32
    cls_attn: Optional[torch.Tensor]  # [B, N] class row of attention averaged over heads (needs_cls_attn)
    index: int  # the block's index
    depth: int  # blocks in the model
    count: int  # tokens the block merges or drops, as the method's ``count`` said (EViT adds one back)


CountFn = Callable[[int, int, int, int, Optional[float]], int]
ReduceFn = Callable[[Method, BlockView, TokenState], torch.Tensor]


@dataclass(frozen=True)
class Reducer:
    count: CountFn
    reduce: ReduceFn


def removed_by_keep(tokens: int, keep: float) -> int:
    """``floor(T - T * keep)``, in double precision, as the PiToMe harness writes it (not
    ``floor(T * (1 - keep))``, which differs, e.g. at T = 80, keep 0.9: 8 against 7)."""
    return math.floor(tokens - tokens * keep)


from . import evit, pitome, tofu, tome  # noqa: E402 - they import BlockView and removed_by_keep from here

# Reducing method name -> its functions (the unreduced method has none); one entry per reducing method
# of tomecis.names.METHODS.
REDUCERS: Dict[str, Reducer] = {
    "tomecis": Reducer(tome.count, tome.reduce),
    "tome": Reducer(tome.count, tome.reduce),
    "pitome": Reducer(pitome.count, pitome.reduce),
    "tofu": Reducer(tofu.count, tofu.reduce),
    "evit": Reducer(evit.count, evit.reduce),
}
