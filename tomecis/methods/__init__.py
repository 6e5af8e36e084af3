"""Token-reduction methods, one module each: how many tokens a block removes and how it removes them.

A method is declared once, by a ``tomecis.names.Method`` (the built-in ones in ``tomecis.names.METHODS``,
a researcher's own through the ``tomecis.methods`` entry points or an import path). Its declaration names
two functions, which the built-in modules here define as ``count`` and ``reduce``:

* ``count(T, index, depth, r, keep) -> int``: tokens the block removes (EViT adds its fused token back),
  from its input token count ``T`` (class token included), its index of ``depth`` blocks, the per-block
  ``r`` of the model's schedule and the keep ratio (one of them is used, as the method takes it); 0 runs
  timm's own block (unless the method declares ``reduce_at_zero``);
* ``reduce(method, view, state) -> x``: ``[B, N, C] -> [B, N', C]`` on the :class:`BlockView` its block
  hands it at the declared ``stage``, updating ``state.size`` and ``state.source`` where the method tracks
  them. A ``before_attn`` method may also set ``view.attn_next`` ``[B, H, N', N']``: the block then uses
  those attention probabilities on the reduced tokens instead of computing a fresh attention.

Shared pieces (ToMe's bipartite matching, the weighted merge, the class-attention row, sizes and source
maps) live in ``tomecis.merge``; the method modules import them, never copy them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Protocol

import torch


class TokenState(Protocol):
    """What a reduction reads and updates of a patched model's per-forward state (``patch.MergeState``)."""

    size: Optional[torch.Tensor]  # [B, N, 1] float32 token sizes, None before the first merge
    source: Optional[torch.Tensor]  # [B, N, N0] source map when tracing, else None
    class_token: bool
    distill_token: bool

    def ensure_sizes(self, x: torch.Tensor) -> None: ...


@dataclass
class BlockView:
    """What a reducing block hands its method's ``reduce``.

    ``x`` is the residual stream at the method's stage: the block's input (``before_attn``), after the
    attention residual (``after_attn``) or after the MLP residual (``after_mlp``). The attention products
    come from the block's own attention (for ``before_attn``, computed on ``LN1(x)`` before the reduction,
    with ``log s`` where the method's proportional attention applies)."""

    x: torch.Tensor  # [B, N, C] the residual stream
    metric: torch.Tensor  # [B, N, D] keys averaged over heads
    score: Optional[torch.Tensor]  # [B, N, 1] class importance score ("score" in needs), float32
    cls_attn: Optional[
        torch.Tensor
    ]  # [B, N] class row of attention averaged over heads ("cls_attn"), float32
    index: int  # the block's index
    depth: int  # blocks in the model
    count: int  # tokens the block removes, as the method's ``count`` said (EViT adds one back)
    attn: Optional[torch.Tensor] = None  # [B, H, N, N] post-softmax attention ("attn" in needs)
    attn_next: Optional[torch.Tensor] = None  # [B, H, N', N'] set by a before_attn reduce to reuse


def removed_by_keep(tokens: int, keep: float) -> int:
    """``floor(T - T * keep)``, in double precision, as the PiToMe harness writes it (not
    ``floor(T * (1 - keep))``, which differs, e.g. at T = 80, keep 0.9: 8 against 7)."""
    return math.floor(tokens - tokens * keep)
