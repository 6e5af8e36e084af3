"""MCTF, multi-criteria token fusion (Lee et al., CVPR 2024), as its authors' code evaluates a DeiT
(``mlvlab/MCTF`` @2004da0, the eval scripts' settings; ``../shared/METHODS.md`` "mctf").

Amount ``r``: tokens removed by each activated block (blocks ``1 … L-1``; block 0 never reduces). Block ``i``
with ``N`` input tokens removes ``min(r', (N - 1) // 2)`` with ``r' = r``, or ``N - 10`` where ``N - r < 10``
(in that order, in Python ints as the code), i.e. ``min(r, N - 10, (N - 1) // 2)``.

The reduction sits at the *start* of the block (stage ``before_attn``), on the block's input ``x``:

1. the pre-merge attention ``A = softmax(q kᵀ d^-½ + log s)`` ``[B, H, N, N]`` of ``LN1(x)`` (``q, k`` from
   the first ``2C`` rows of ``qkv`` as their own product; ``log s`` once sizes exist);
2. the score of A token ``a`` (even positions, the class token first) and B token ``b`` (odd positions):
   ``W = ((cos(x_a, x_b) + 1) / 2)^(1/τ_sim) · (ι_a ι_b)^(1/τ_info) · (σ_a σ_b)^(1/τ_size)`` with the
   residual stream ``x`` itself L2-normalised, ``ι = (1/ā) / max(1/ā)`` from the attention each token
   receives (``ā``: ``A`` averaged over heads and queries), ``σ = (1/s) / max(1/s)`` (left out while there
   are no sizes), ``τ = 1, 20, 40``; the class token's row is ``-inf``;
3. two-step bidirectional matching: the ``r1 = r // 2`` A tokens with the highest best score (``argsort``,
   descending, not stable) merge into their best B token; then every B token (carrying what it received)
   finds its best among the kept A tokens (``A_keep``, by position), and the ``r2 = r - r1`` best (``sort``,
   descending) merge there. Output ``[A_keep by position, kept B by descending best score]``;
4. attention-weighted pooling: with ``ŝ = s / max s`` and ``w = ā ŝ``, ``x' = Σ_g (x ā) ŝ / Σ_g w`` over
   each group ``g``, sizes summed, and the one-step-ahead attention ``A'``: ``A`` summed over each group's
   keys, then averaged over each group's queries with the weights ``w`` (rows still sum to 1);
5. the block's attention output is ``proj(A' v')`` with ``v'`` from ``LN1(x')`` (the last ``C`` rows of
   ``qkv`` as their own product): the attention is not recomputed (``view.attn_next``). Then the MLP.

Proportional attention applies in every block once sizes exist (``prop_attn="always"``): blocks that remove
nothing still add ``log s``. Sums are taken as the code takes them: step-1 sources added into their B
destinations, then the step-2 groups into their A destinations (two ``index_add`` steps, in the code's order), so a
group may chain ``a -> b -> a'``.

Departures from the paper, kept because the published numbers come from the code (METHODS.md):
D8 the authors evaluate MCTF-fine-tuned checkpoints; we apply it to off-the-shelf weights. D9 the count is
absolute (``r`` per activated block), capped at ``(N - 1) // 2`` and at 10 tokens remaining, and block 0
never reduces. D10 the matching metric is the residual stream, not the keys; merging happens before the
block's attention, whose map is the merged pre-merge map (one-step-ahead), not a fresh attention.
Project choices: a block whose count comes out below 0 (models with fewer than 10 tokens, where the code
fails) runs as a plain block; models with a distillation token are refused (the code protects one token).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch

from .. import merge as M
from ..names import Method
from . import BlockView, TokenState

TAU_SIM = 1  # the eval scripts' --mctf_type temperatures: similarity, informativeness, size
TAU_INFO = 20
TAU_SIZE = 40
MIN_TOKENS = 10  # the code never leaves fewer tokens than this


def count(tokens: int, index: int, depth: int, r: int, keep: Optional[float]) -> int:
    """Tokens block ``index`` removes from its ``tokens`` inputs: 0 in block 0 (and for a keep ratio, which
    MCTF does not take), else the code's rule in its order: ``r' = r``, ``r' = N - 10`` where ``N - r' < 10``,
    then ``min(int((N - 1) r') if r' < 1 else r', (N - 1) // 2)``; below 0 (fewer than 10 tokens) is 0."""
    if keep is not None or index == 0 or not r:
        return 0
    amount = r
    if tokens - amount < MIN_TOKENS:
        amount = tokens - MIN_TOKENS
    amount = min(int((tokens - 1) * amount) if amount < 1 else amount, (tokens - 1) // 2)
    return max(0, amount)


class TwoStepMerge:
    """MCTF's bidirectional merge of one block, applied to any per-token tensor ``[B, N, c] -> [B, N', c]``.

    Built from ``[B, k]`` indices: ``src_a`` (A indices merged away in step 1), ``dst_b`` (their B
    destinations), ``keep_a`` (A indices kept, ascending), ``src_b`` / ``dst_a`` (B indices merged away in
    step 2, and their destinations as indices into ``keep_a``), ``keep_b`` (B indices kept, in output order),
    and ``N``. Rows are addressed in the flattened ``[B * N, c]`` tensor (one index per operator): step 1
    adds the A sources into their B rows, step 2 adds those B rows (with what they now hold) into their A
    rows, then the output rows ``[kept A, kept B]`` are picked. Each sum is taken in the code's order
    (destination first, then its sources in their sorted order), so the values equal its two
    ``scatter_reduce`` steps."""

    def __init__(self, src_a, dst_b, keep_a, src_b, dst_a, keep_b, tokens: int) -> None:
        batch = src_a.shape[0]
        base = torch.arange(0, batch * tokens, tokens, device=src_a.device).unsqueeze(1)  # [B, 1] first rows
        self.tokens = tokens
        self.src1 = (base + 2 * src_a).flatten()  # rows of the step-1 sources (A: even positions)
        self.dst1 = (base + 1 + 2 * dst_b).flatten()  # their B rows (odd positions)
        self.src2 = (base + 1 + 2 * src_b).flatten()
        self.dst2 = (base + 2 * keep_a.gather(1, dst_a)).flatten()
        self.out = (base + torch.cat([2 * keep_a, 1 + 2 * keep_b], dim=1)).flatten()  # [B * N']
        self.batch = batch

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        """``t [B, N, c] -> [B, N', c]`` (any float dtype)."""
        flat = t.reshape(self.batch * self.tokens, -1)
        flat = flat.index_add(0, self.dst1, flat.index_select(0, self.src1))
        flat.index_add_(0, self.dst2, flat.index_select(0, self.src2))  # flat is the fresh sum of step 1
        return flat.index_select(0, self.out).reshape(self.batch, -1, flat.shape[-1])


def scores(x: torch.Tensor, received: torch.Tensor, size: Optional[torch.Tensor]) -> torch.Tensor:
    """MCTF's multi-criteria score ``W [B, |A|, |B|]`` (the class token's row ``-inf``).

    Args:
        x: ``[B, N, C]`` the residual stream (the metric, L2-normalised here without epsilon).
        received: ``[B, N]`` attention each token receives (averaged over heads and queries).
        size: ``[B, N, 1]`` token sizes in ``x``'s dtype, or None (no size factor).
    """
    metric = x / x.norm(dim=-1, keepdim=True)
    similarity = metric[:, ::2] @ metric[:, 1::2].transpose(-1, -2)  # [B, |A|, |B|]
    w = (similarity + 1) / 2  # to the power 1 / TAU_SIM = 1: the identity, exactly as the code's ** 1.0
    info = 1 / received  # [B, N]
    info = (info / info.amax(dim=1, keepdim=True)).unsqueeze(-1)  # [B, N, 1]
    w = w * (info[:, ::2] * info[:, 1::2].transpose(1, 2)) ** (1 / TAU_INFO)
    if size is not None:
        inverse = 1 / size
        inverse = inverse / inverse.amax(dim=1, keepdim=True)  # [B, N, 1]
        w = w * (inverse[:, ::2] * inverse[:, 1::2].transpose(1, 2)) ** (1 / TAU_SIZE)
    w.select(1, 0).fill_(-math.inf)  # the class token is never a source nor a step-2 destination
    return w


def bidirectional_matching(w: torch.Tensor, r: int) -> TwoStepMerge:
    """The two-step matching on ``W [B, |A|, |B|]`` removing ``r`` tokens: ``r // 2`` A -> B, then the rest
    B -> kept A (the same ``W``), with the code's unstable descending sorts."""
    r1 = r // 2
    r2 = r - r1
    best, best_b = w.max(dim=-1)  # [B, |A|]
    order = best.argsort(dim=-1, descending=True)
    src_a = order.narrow(1, 0, r1)  # [B, r1]
    keep_a = order.narrow(1, r1, order.shape[1] - r1).sort(dim=1).values  # [B, |A| - r1] by position
    dst_b = best_b.gather(1, src_a)  # [B, r1]
    to_kept = w.gather(1, keep_a.unsqueeze(-1).expand(-1, -1, w.shape[2])).transpose(
        1, 2
    )  # [B, |B|, |A_keep|]
    best2, best_a = to_kept.max(dim=-1)  # [B, |B|]
    order2 = best2.sort(dim=-1, descending=True).indices
    src_b = order2.narrow(1, 0, r2)  # [B, r2]
    keep_b = order2.narrow(1, r2, order2.shape[1] - r2)  # [B, |B| - r2] by descending best2
    dst_a = best_a.gather(1, src_b)  # [B, r2] indices into keep_a
    return TwoStepMerge(src_a, dst_b, keep_a, src_b, dst_a, keep_b, w.shape[1] + w.shape[2])


def pool(
    merge: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    attn: torch.Tensor,
    received: torch.Tensor,
    size: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attention-weighted pooling with the one-step-ahead attention.

    Args:
        merge: the block's :class:`TwoStepMerge`.
        x: ``[B, N, C]`` tokens; attn: ``[B, H, N, N]`` pre-merge attention; received: ``[B, N]``;
        size: ``[B, N, 1]`` sizes in ``x``'s dtype (ones before the first merge).

    Returns:
        ``x' [B, N', C]``, sizes ``[B, N', 1]``, ``A' [B, H, N', N']``.
    """
    C = x.shape[-1]
    received = received.unsqueeze(-1)  # [B, N, 1]
    relative = size / size.amax(dim=1, keepdim=True)  # ŝ [B, N, 1]
    weight = received * relative  # w [B, N, 1]
    merged = merge(torch.cat([x * received * relative, weight, size], dim=-1))  # [B, N', C + 2]
    norm = merged.narrow(-1, C, 1)  # [B, N', 1]
    x_new = merged.narrow(-1, 0, C) / norm
    B, H, N, _ = attn.shape
    by_key = attn.permute(0, 3, 2, 1)  # [B, N_k, N_q, H]
    keys_summed = merge(by_key).reshape(B, -1, N, H).transpose(1, 2)  # [B, N_q, N', H]: group keys summed
    weighted = keys_summed * received.unsqueeze(-1) * relative.unsqueeze(-1)  # (A ā_q) ŝ_q
    attn_new = merge(weighted).reshape(B, -1, keys_summed.shape[2], H)  # [B, N'_q, N'_k, H]
    return x_new, merged.narrow(-1, C + 1, 1), (attn_new / norm.unsqueeze(-1)).permute(0, 3, 1, 2)


def reduce(method: Method, view: BlockView, state: TokenState) -> torch.Tensor:
    """``[B, N, C] -> [B, N - count, C]`` at the start of an activated block; sets ``view.attn_next``
    ``[B, H, N', N']`` (the block's attention probabilities on the merged tokens), ``state.size`` and, when
    tracing, ``state.source`` (merge-sum of the source maps)."""
    x, attn = view.x, view.attn
    dtype = M.accumulation_dtype(x.dtype)
    x = M.as_dtype(x, dtype)
    attn = M.as_dtype(attn, dtype)
    size = None if state.size is None else M.as_dtype(state.size, dtype)
    received = attn.mean(dim=(1, 2))  # ā [B, N]
    merge = bidirectional_matching(scores(x, received, size), view.count)
    if size is None:
        size = x.new_ones(x.shape[0], x.shape[1], 1)
    x_new, size_new, view.attn_next = pool(merge, x, attn, received, size)
    state.size = M.as_dtype(size_new, torch.float32)
    if state.source is not None:
        state.source = merge(state.source)
    return M.as_dtype(x_new, view.x.dtype)
