"""ToMe and ToMeCIS: bipartite soft matching on the keys, every block, then a weighted average.

ToMe (Bolya et al., ICLR 2023; facebookresearch/ToMe) averages merged tokens weighted by their sizes;
ToMeCIS (Seol et al., IECON 2023; ``../shared/SPEC.md``) by their class importance score. Both apply
proportional attention (``log s`` added to the attention logits) once tokens have merged, and track sizes.

Amounts: ``r`` from the model's schedule, or a keep ratio: ``r_l = floor(T - T * keep)`` with ``T`` the
block's input tokens, class token included (as the PiToMe harness runs ToMe with a ratio); either is
clamped to half the mergeable tokens by the matching.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import merge as M
from ..names import Method
from . import BlockView, TokenState, removed_by_keep


def count(tokens: int, index: int, depth: int, r: int, keep: Optional[float]) -> int:
    """Tokens the block asks to remove (the matching clamps it to ``(T - protected) // 2``)."""
    return removed_by_keep(tokens, keep) if keep is not None else r


def reduce(method: Method, view: BlockView, state: TokenState) -> torch.Tensor:
    """``[B, N, C] -> [B, N - r, C]``: merged tokens averaged as ``method.weight`` says; sizes add up."""
    matching = M.bipartite_soft_matching(view.metric, view.count, state.class_token, state.distill_token)
    state.ensure_sizes(view.x)
    weight = method.weight(view.score, state.size)  # [B, N, 1], or None: weighted by size
    x, state.size = M.merge_tokens(matching, view.x, weight, state.size)
    if state.source is not None:
        state.source = M.merge_source(matching, state.source)
    return x
