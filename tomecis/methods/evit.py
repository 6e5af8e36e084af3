"""EViT (Liang et al., ICLR 2022) without retraining, as its authors' code runs it (``youweiliang/evit``).

Only blocks ``L // 4``, ``L // 2`` and ``3L // 4`` reduce (3, 6 and 9 on a 12-block DeiT: the code's
``drop_loc``; for other depths these three are our choice). With keep rate ``k`` a reducing block keeps
``K = ceil(k (N - 1))`` of its ``N - 1`` non-class tokens (a fused token an earlier block appended counts
among them; ``K = N - 1`` leaves the block as timm's). Attentiveness ``a_j`` is the class token's
post-softmax attention to token ``j``, averaged over heads (softmax over all ``N`` keys, the class column
then dropped and not renormalised). Kept: ``topk(a, K)``, in descending ``a``; the others are fused into
``sum_j a_j x_j`` on the residual stream, appended last. Output ``[class, K kept, fused]``. No sizes.

Departure from the paper, kept because the published numbers come from the code: the fused token is the
unnormalised attention-weighted *sum* of the dropped tokens, not their weighted average.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from ..names import Method
from . import BlockView, TokenState


def locations(depth: int) -> Tuple[int, ...]:
    """The reducing blocks: ``(L // 4, L // 2, 3L // 4)``, (3, 6, 9) for 12 blocks."""
    return tuple(sorted({depth // 4, depth // 2, 3 * depth // 4}))


def kept_tokens(tokens: int, keep: float) -> int:
    """``K = ceil(keep * (N - 1))``: non-class tokens kept of a block's ``N``."""
    return math.ceil(keep * (tokens - 1))


def count(tokens: int, index: int, depth: int, r: int, keep: Optional[float]) -> int:
    """Tokens dropped, ``N - 1 - K`` (0 where the block keeps all); one fused token is added back."""
    if keep is None or index not in locations(depth):
        return 0
    return max(0, tokens - 1 - kept_tokens(tokens, keep))


def keep_and_fuse(x: torch.Tensor, attentiveness: torch.Tensor, kept: int):
    """``x [B, N, C]``, ``attentiveness [B, N - 1]`` (non-class tokens) -> ``([B, kept + 2, C], idx [B, kept],
    dropped [B, N - 1] bool)``: the class token, the ``kept`` most attended tokens (descending), and the
    attention-weighted sum of the others."""
    others = x.narrow(1, 1, x.shape[1] - 1)  # [B, N - 1, C]
    idx = attentiveness.topk(kept, dim=1, largest=True, sorted=True).indices  # [B, K]
    batch = torch.arange(x.shape[0], device=x.device).unsqueeze(1)  # [B, 1]
    dropped_weight = attentiveness.scatter(1, idx, 0.0)  # [B, N - 1]: a_j where dropped, else 0
    fused = (others * dropped_weight.unsqueeze(-1).to(others.dtype)).sum(dim=1, keepdim=True)  # [B, 1, C]
    out = torch.cat([x.narrow(1, 0, 1), others[batch, idx], fused], dim=1)
    return out, idx, dropped_weight


def reduce(method: Method, view: BlockView, state: TokenState) -> torch.Tensor:
    """``[B, N, C] -> [B, K + 2, C]`` at a reducing block."""
    tokens = view.x.shape[1]
    kept = tokens - 1 - view.count  # K
    attentiveness = view.cls_attn.narrow(1, 1, tokens - 1)  # [B, N - 1]
    x, idx, dropped_weight = keep_and_fuse(view.x, attentiveness, kept)
    if state.source is not None:
        src = state.source  # [B, N, N0]
        batch = torch.arange(src.shape[0], device=src.device).unsqueeze(1)
        others = src.narrow(1, 1, tokens - 1)
        dropped = others.new_ones(others.shape[:2]).scatter(1, idx, 0.0).unsqueeze(-1)  # [B, N - 1, 1]
        fused = (others * dropped).amax(dim=1, keepdim=True)  # [B, 1, N0]
        state.source = torch.cat([src.narrow(1, 0, 1), others[batch, idx], fused], dim=1)
    return x
