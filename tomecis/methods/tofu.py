"""ToFu (Kim et al., WACV 2024), as the PiToMe harness codes it (``hchautran/PiToMe``, ``algo/tofu``).

Every block with ``r > 0``: ToMe's bipartite soft matching on the keys (A = even positions, the class
token's row ``-inf``; B = odd; the ``r`` A tokens with the best match are the sources). Blocks
``i <= L // 2`` **prune**: the sources are dropped, B unchanged. Blocks ``i > L // 2`` merge by MLERP as
coded: each B token becomes the plain mean of itself and its sources, rescaled by
``max(||x_b||, max_s ||x_s||) / ||x_b||`` with ``||x_b||`` taken *before* merging. Output order:
``[unmerged A (ascending position), B]``. No sizes, no proportional attention.

Departures from the paper, kept because the published numbers come from the code: the prune/merge split
falls at ``L // 2`` (7 pruning and 5 merging blocks on a 12-block DeiT), and the norm rule divides by the
destination's norm before merging rather than by the merged token's norm.

Amounts: ``r`` per block, or a keep ratio ``r_l = floor(T - T * keep)`` (``T`` counts the class token);
either clamped to ``(T - 1) // 2``.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import merge as M
from ..names import Method
from . import BlockView, TokenState, removed_by_keep


def count(tokens: int, index: int, depth: int, r: int, keep: Optional[float]) -> int:
    asked = removed_by_keep(tokens, keep) if keep is not None else r
    return max(0, min(asked, (tokens - 1) // 2))


def prunes(index: int, depth: int) -> bool:
    """Whether block ``index`` of ``depth`` prunes (the first half and the middle block) or merges."""
    return index <= depth // 2


def norm_preserving_merge(matching: M.Matching, x: torch.Tensor) -> torch.Tensor:
    """ToFu's MLERP as coded: ``[B, N, C] -> [B, N - r, C]``.

    ``m_b = (x_b + sum_s x_s) / (1 + n_b)``, then ``m_b / ||x_b|| * max(||x_b||, max_s ||x_s||)``; a token
    nothing merged into keeps its value (the factor is 1). The mean is one ``scatter_add`` of ``[x, 1]``
    and a division (``scatter_reduce``'s ``mean`` would fill a count tensor as large as ``x``)."""
    C = x.shape[-1]
    norms = x.norm(dim=-1, keepdim=True)  # [B, N, 1]
    summed = matching.merge(torch.cat([x, torch.ones_like(norms)], dim=-1), mode="sum")  # [B, N - r, C + 1]
    mean = summed.narrow(-1, 0, C) / summed.narrow(-1, C, 1)  # [B, N - r, C]
    largest = matching.merge(norms, mode="amax")  # [B, N - r, 1] max(||x_b||, max_s ||x_s||)
    return mean / matching.prune(norms) * largest


def reduce(method: Method, view: BlockView, state: TokenState) -> torch.Tensor:
    """Prune or MLERP-merge ``view.count`` tokens: ``[B, N, C] -> [B, N - r, C]``."""
    matching = M.bipartite_soft_matching(view.metric, view.count, class_token=True)
    if prunes(view.index, view.depth):
        x = matching.prune(view.x)
        if state.source is not None:
            state.source = matching.prune(state.source)
        return x
    if state.source is not None:
        state.source = M.merge_source(matching, state.source)
    return norm_preserving_merge(matching, view.x)
