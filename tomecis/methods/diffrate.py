"""DiffRate as the PiToMe harness runs it on a DeiT with a fixed ratio (``hchautran/PiToMe`` ``algo/DiffRate``).

Keep ratio ``k`` gives a fixed-ratio schedule, computed once from the patch count ``P`` in double (the
harness's ``init_kept_num_using_ratio``): ``n = P``; per block ``r_i = floor(n - n k)``, ``prune_keep_i = n``,
``merge_keep_i = n - r_i``, ``n = merge_keep_i``. The block uses both as token counts **including** the class
token. Every block, between the attention residual and the MLP (``after_attn``):

1. attention with proportional attention (``+ log s`` of the sizes, which restart at 1 for all ``P + 1``
   tokens every forward, so block 0 has no effective bias);
2. ``a_j``: the class token's post-softmax attention to ``j``, averaged over heads (not renormalised);
3. the non-class tokens sorted by ``a`` descending (``torch.sort``, not stable), ``x`` and the sizes reordered
   so, in every block, also where nothing is removed;
4. prune to the first ``prune_keep_i`` tokens;
5. merge to ``K = merge_keep_i``: metric ``x / |x|`` of the residual stream, the first ``K`` tokens are
   destinations (the class token's column ``-inf``), each other token goes to its most similar destination
   (first on ties); ``x_j <- (x_j + sum x_u) / (1 + #u)`` (unweighted), ``s_j <- s_j + sum best_u s_u``;
6. output ``[class, the K - 1 kept tokens in descending-a order]``, then the MLP.

Since block ``i > 0`` enters with ``merge_keep_{i-1} = n_i`` tokens, it prunes nothing and removes
``floor(N - N k)`` by merging; block 0 (``N = P + 1``) prunes one token, the lowest ``a``, then merges
``r_0``: ``count`` below computes this from the block's ``N`` alone.

Departures of the code from DiffRate's paper, kept (``../shared/METHODS.md``, "diffrate"):

* **D4** a fixed-ratio schedule, not DiffRate's searched per-layer prune and merge rates;
* **D5** the schedule counts ``P`` patches but is applied to counts that include the class token;
* **D6** so block 0 prunes one token at every ratio, 1.0 included (the project never runs keep 1: it is the
  unreduced model);
* **D7** the merge is an unweighted mean while sizes are similarity-scaled sums used only by the proportional
  attention; the merge metric is the residual stream, not the keys.

Valid amounts: every block must keep ``merge_keep_i >= 2`` (else every token is averaged into the class
token, whose size turns ``-inf`` and the next block's logits NaN): ``0.5 < k < 1`` always works; on a DeiT
(``P = 196``, 12 blocks) nothing else does (``check``). Traced sources merge like the tokens (``amax``).
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

from .. import merge as M
from ..names import Method
from . import BlockView, TokenState


def schedule(patches: int, depth: int, keep: float) -> List[Tuple[int, int]]:
    """``[(prune_keep_i, merge_keep_i)]`` for ``depth`` blocks: the harness's fixed-ratio schedule from
    ``P = patches``, in double (counts that the blocks read as including the class token, D5)."""
    n = patches
    kept = []
    for _ in range(depth):
        removed = math.floor(n - n * keep)
        kept.append((n, n - removed))
        n = n - removed
    return kept


def check(r: Optional[int], keep: Optional[float], depth: int, patches: int) -> None:
    """Refuse a keep ratio whose schedule leaves a block with fewer than 2 tokens (the class token alone:
    NaN logits); keep 1 (the unreduced model) and r (refused elsewhere) pass."""
    if keep is None or keep >= 1.0:
        return
    for index, (_, merge_keep) in enumerate(schedule(patches, depth, keep)):
        if merge_keep < 2:
            raise ValueError(
                f"method 'diffrate' cannot take keep={keep:g} on a model with {patches} patches and {depth} "
                f"blocks: its fixed-ratio schedule keeps {merge_keep} token(s) at block {index} (the class "
                f"token alone; the logits would be NaN): use 0.5 < keep < 1, which keeps at least 2 tokens in "
                f"every block of every model"
            )


def count(tokens: int, index: int, depth: int, r: int, keep: Optional[float]) -> int:
    """``N - merge_keep_i``: block 0 (``N = P + 1``) prunes 1 and merges ``floor(P - P k)``; later blocks
    (``N = n_i``, the schedule's own count) merge ``floor(N - N k)``. Keep 1 is the unreduced model: 0
    (the code would still prune one token in block 0, D6)."""
    if keep is None or keep >= 1.0:
        return 0
    n = tokens - 1 if index == 0 else tokens  # the schedule's n_i (D5)
    return tokens - (n - math.floor(n - n * keep))


def plan(
    x: torch.Tensor, cls_attn: torch.Tensor, prune_keep: int, merge_keep: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One block's decisions on ``x [B, N, C]`` and ``cls_attn [B, N]`` (float32, class column included).

    Returns ``out_idx [B, K]`` (the kept tokens' input rows, class first, then descending ``a``),
    ``src_pos [B, prune_keep - K]`` (input rows merged away), ``dst_row [B, prune_keep - K]`` (the output
    row each joins) and ``best [B, prune_keep - K]`` (its cosine similarity there)."""
    B, N, _ = x.shape
    order = torch.sort(cls_attn.narrow(1, 1, N - 1), dim=1, descending=True).indices + 1  # [B, N - 1]
    ranked = torch.cat([order.new_zeros(B, 1), order], dim=1).narrow(1, 0, prune_keep)  # [B, prune_keep]
    batch = torch.arange(B, device=x.device).unsqueeze(1)  # [B, 1]
    moved = prune_keep - merge_keep
    out_idx = ranked.narrow(1, 0, merge_keep)
    src_pos = ranked.narrow(1, merge_keep, moved)
    if moved == 0:
        return out_idx, src_pos, src_pos, src_pos.to(torch.float32)
    tokens = M.as_dtype(x[batch, ranked], M.accumulation_dtype(x.dtype))  # [B, prune_keep, C]
    metric = tokens / tokens.norm(dim=-1, keepdim=True)  # no epsilon
    sim = metric.narrow(1, merge_keep, moved) @ metric.narrow(1, 0, merge_keep).transpose(1, 2)  # [B, s, K]
    sim.select(2, 0).fill_(-math.inf)  # never into the class token
    best, dst_row = sim.max(dim=-1)  # [B, s]: first index on ties
    return out_idx, src_pos, dst_row, best


def reduce(method: Method, view: BlockView, state: TokenState) -> torch.Tensor:
    """``[B, N, C] -> [B, merge_keep_i, C]`` after the attention residual: sort, prune, merge (see the
    module docstring); sizes (``state.size``, created here at block 0) and traced sources follow."""
    x = view.x
    tokens = x.shape[1]
    prune_keep = tokens - 1 if view.index == 0 else tokens  # D6: block 0 prunes one token
    merge_keep = tokens - view.count
    state.ensure_sizes(x)
    out_idx, src_pos, dst_row, best = plan(x, view.cls_attn, prune_keep, merge_keep)
    merge, _ = M.index_merge(out_idx, src_pos, dst_row)
    size = state.size  # [B, N, 1]
    scaled = size.scatter(
        1, src_pos.unsqueeze(-1), size.gather(1, src_pos.unsqueeze(-1)) * best.unsqueeze(-1)
    )
    state.size = merge(scaled, mode="sum")  # s_j + sum best_u s_u
    if state.source is not None:
        state.source = merge(state.source, mode="amax")
    return merge(x, mode="mean")  # (x_j + sum x_u) / (1 + #u)
