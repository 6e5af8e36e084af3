"""PiToMe (Tran et al., NeurIPS 2024), as its authors' harness codes it (``hchautran/PiToMe``, ``algo/pitome``).

Per block with ``r > 0`` (``T`` = the block's tokens *without* the class token):

1. metric: the keys of the non-class tokens, L2-normalised; ``sim`` the ``T x T`` cosine matrix;
2. energy ``E_j = mean_k ELU(sim_jk - m_i)`` over all ``T`` tokens (``j`` included), margin
   ``m_i = 0.75 - 0.75 i / L``; ``order = argsort(E, descending)``;
3. blocks ``i < ceil(L / 2)``: bipartite matching over the energy order with nothing protected
   (A = ``order[0::2]``, B = ``order[1::2]``; A sorted by its best similarity into B, descending; the first
   ``r`` merge into their best B). Output ``[class, the other A in that sorted order, B]``;
4. blocks ``i >= ceil(L / 2)``: the ``2r`` highest-energy tokens are mergeable, the rest protected;
   A = ``order[0:2r:2]``, B = ``order[1:2r:2]``; *every* A token merges into its best B. Output
   ``[class, protected (energy order), B]``;

merging by the size-weighted average, sizes summed (they start at 1). Attention is plain softmax.

Departures from the paper, kept because the published numbers come from the code: no proportional
attention in the harness; ``T`` counts the tokens without the class token where the ToMe-style methods
count it; the first half of the blocks runs energy-ordered bipartite matching instead of the protected
split. Sorts are the harness's own calls (``torch.argsort(..., descending=True)``, not stable): two tokens
with bit-identical float32 energies do occur on real photos (about 0.5% of images at keep 0.7), and since A
and B are alternate ranks of the energy order, which of the two comes first decides which set each joins.
With ``attention="explicit"`` the logits are the harness's bit for bit on the CPU; fused attention rounds
differently (block outputs ~1e-6 apart), which flips the rare image with near-tied energies.

Amounts: ``r`` per block, or a keep ratio ``r_l = floor(T - T * keep)``; either clamped to ``T // 2``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .. import merge as M
from ..names import Method
from . import BlockView, TokenState, removed_by_keep


def count(tokens: int, index: int, depth: int, r: int, keep: Optional[float]) -> int:
    others = tokens - 1  # the class token is not counted
    asked = removed_by_keep(others, keep) if keep is not None else r
    return max(0, min(asked, others // 2))


def margin(index: int, depth: int) -> float:
    """The energy margin of block ``index``: ``0.75 - 0.75 i / L``."""
    return 0.75 - 0.75 * (index / depth)  # the harness's expression


def bipartite_phase(index: int, depth: int) -> bool:
    """Whether block ``index`` matches over the whole energy order (the first ``ceil(L / 2)`` blocks)."""
    return index < math.ceil(depth / 2)


def energy_order(metric: torch.Tensor, margin_value: float):
    """``metric [B, T, D]`` (non-class tokens) -> ``(sim [B, T, T], order [B, T])``, energy descending."""
    m = M.as_dtype(metric, M.accumulation_dtype(metric.dtype))
    m = m / m.norm(dim=-1, keepdim=True)
    with M.autocast_off(metric.device):
        sim = m @ m.transpose(-1, -2)  # [B, T, T]
    energy = F.elu(sim - margin_value).mean(dim=-1)  # [B, T]
    return sim, torch.argsort(energy, dim=-1, descending=True)  # the harness's call: not stable


def pitome_matching(metric: torch.Tensor, r: int, margin_value: float, bipartite: bool) -> M.Matching:
    """PiToMe's matching on ``metric [B, N, D]`` (class token first, never merged), removing ``r`` tokens.

    Returns a :class:`tomecis.merge.Matching` whose ``src_idx`` / ``dst_idx`` are ``[B, r]`` positions in
    ``metric`` (sources, their destinations) and ``keep_idx`` the positions kept besides the destinations."""
    B = metric.shape[0]
    with torch.no_grad():
        sim, order = energy_order(metric.narrow(1, 1, metric.shape[1] - 1), margin_value)  # indices w/o class
        if bipartite:
            a, b = order[:, 0::2], order[:, 1::2]  # [B, ceil(T/2)], [B, floor(T/2)]
        else:
            a, b = order.narrow(1, 0, 2 * r)[:, 0::2], order.narrow(1, 0, 2 * r)[:, 1::2]  # [B, r] each
        scores = sim.gather(1, a.unsqueeze(-1).expand(-1, -1, sim.shape[-1]))  # [B, |A|, T]
        scores = scores.gather(2, b.unsqueeze(1).expand(-1, a.shape[1], -1))  # [B, |A|, |B|]
        best, best_b = scores.max(dim=-1)  # [B, |A|]
        if bipartite:
            edge = best.argsort(dim=-1, descending=True)  # [B, |A|], the harness's (unstable) sort
            src_a = edge.narrow(1, 0, r)  # [B, r] indices into A
            kept = a.gather(1, edge.narrow(1, r, edge.shape[1] - r))  # [B, |A| - r] unmerged A
            src, dst = a.gather(1, src_a), best_b.gather(1, src_a)  # [B, r] token, index into B
        else:
            kept = order.narrow(1, 2 * r, order.shape[1] - 2 * r)  # [B, T - 2r] protected
            src, dst = a, best_b
        cls = torch.zeros(B, 1, dtype=order.dtype, device=order.device)
        out_idx = torch.cat([cls, kept + 1, b + 1], dim=1)  # [B, N - r] positions in x
        dst_row = 1 + kept.shape[1] + dst  # [B, r]
    merge, prune = M.index_merge(out_idx, src + 1, dst_row)
    return M.Matching(merge, r, src + 1, b.gather(1, dst) + 1, kept + 1, prune)


def reduce(method: Method, view: BlockView, state: TokenState) -> torch.Tensor:
    """``[B, N, C] -> [B, N - r, C]``: PiToMe's matching, size-weighted merge, sizes summed."""
    matching = pitome_matching(
        view.metric, view.count, margin(view.index, view.depth), bipartite_phase(view.index, view.depth)
    )
    state.ensure_sizes(view.x)
    x, state.size = M.merge_tokens(matching, view.x, None, state.size)
    if state.source is not None:
        state.source = M.merge_source(matching, state.source)
    return x
