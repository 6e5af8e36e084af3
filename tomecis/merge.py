"""Pure tensor functions of ToMeCIS: matching, class importance, weighted merging.

Nothing here knows about models, modules or devices. Shapes use
``B`` batch, ``H`` heads, ``N`` tokens, ``D`` head width, ``C`` channels.

The matching is ToMe's bipartite soft matching (Bolya et al., ICLR 2023); the
weighting is the class importance score of ToMeCIS (Seol et al., IECON 2023):
token ``j`` scores ``mean_h P[h, 0, j] * || mean_h v[h, j, :] ||_2``, the class
token's attention to it times the norm of its value vector, both averaged over
heads. The score and the weighted average are computed in float32 (in half
precision the products underflow and the average turns NaN).
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, NamedTuple, Optional, Tuple

import torch

# A merge function maps a per-token tensor [B, N, C] to [B, N - r, C] with a
# reduction ("sum", "mean" or "amax") over the tokens merged into each destination.
MergeFn = Callable[..., torch.Tensor]


class Matching(NamedTuple):
    """One block's reduction decision, computed once and applied to any per-token tensor.

    ``merge(x, mode)`` reduces ``[B, N, C] -> [B, N', C]``: the output rows are input rows picked in
    output order, and the merged-away rows are reduced into their destinations with ``mode``
    (``"sum"``, ``"mean"`` or ``"amax"``). ``prune(x)`` picks the same rows and drops the merged-away
    ones (ToFu's pruning blocks). ``r`` is ``N - N'``.
    For ToMe's matching, ``src_idx`` / ``dst_idx`` are ``[B, r]`` indices into set A / set B (for tests
    and tracing) and ``keep_idx`` is ``[B, |A| - r]`` (kept A tokens, ascending); other matchings
    fill them with what they chose (their docstrings say).
    """

    merge: MergeFn
    r: int
    src_idx: torch.Tensor
    dst_idx: torch.Tensor
    keep_idx: torch.Tensor
    prune: Callable[[torch.Tensor], torch.Tensor]


_HALF_TYPES = (torch.float16, torch.bfloat16)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types, else the dtype itself (float64 stays float64).

    Plain Python on purpose: ``torch.promote_types`` is an operator call of its own."""
    return torch.float32 if dtype in _HALF_TYPES else dtype


def as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype``, with no operator call when it already is (every call costs host time)."""
    return t if t.dtype == dtype else t.to(dtype)


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """A context in which autocast is off for ``device``'s type (a no-op where autocast does not exist)."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # e.g. the meta device
        return contextlib.nullcontext()


def protected_tokens(class_token: bool, distill_token: bool) -> int:
    """How many prefix tokens can never be merged away: 1 (class) or 2 (class + distillation)."""
    if distill_token and not class_token:
        raise ValueError("a distillation token is only supported together with a class token")
    return int(class_token) + int(distill_token)


def clamp_r(r: int, num_tokens: int, class_token: bool = True, distill_token: bool = False) -> int:
    """``min(r, (N - protected) // 2)``, never below 0: at most half the mergeable tokens go."""
    protected = protected_tokens(class_token, distill_token)
    return max(0, min(int(r), (num_tokens - protected) // 2))


def bipartite_soft_matching(
    metric: torch.Tensor,
    r: int,
    class_token: bool = True,
    distill_token: bool = False,
) -> Matching:
    """ToMe's bipartite soft matching on a token metric.

    Args:
        metric: ``[B, N, C]`` similarity features (ToMeCIS: keys averaged over heads).
        r: tokens to remove; clamped to ``(N - protected) // 2``.
        class_token: token 0 is a class token (its row is ``-inf``: never merged).
        distill_token: token 1 is a distillation token (its column is ``-inf``).

    Returns:
        A :class:`Matching`. Set A is the even positions, set B the odd ones; the
        ``r`` A tokens with the highest best-similarity are merged into their best
        B partner; the output order is ``[kept A (ascending), B (original order)]``,
        with a distillation token moved right after the class token.
    """
    B, N, _ = metric.shape
    r = clamp_r(r, N, class_token, distill_token)
    device = metric.device
    if r <= 0:
        empty = torch.empty(B, 0, dtype=torch.long, device=device)
        keep = torch.arange(0, N, 2, device=device).expand(B, -1)
        return Matching(_identity_merge, 0, empty, empty, keep, _identity_prune)

    with torch.no_grad():
        node_max, node_idx = _best_partners(metric, class_token, distill_token)  # [B, |A|]: best(a), b*(a)
        order = torch.sort(node_max, dim=-1, descending=True, stable=True).indices  # [B, |A|]
        src_idx = order.narrow(1, 0, r)  # [B, r] A positions that merge away
        keep_idx = order.narrow(1, r, order.shape[1] - r).sort(dim=-1).values  # [B, |A| - r] ascending
        dst_idx = node_idx.gather(dim=-1, index=src_idx)  # [B, r] their B partners

        out_idx = _output_index(keep_idx, N, distill_token)  # [B, N - r]
        src_pos = 2 * src_idx  # [B, r] positions in x
        dst_row = keep_idx.shape[1] + dst_idx  # [B, r] rows of the output

    merge, prune = index_merge(out_idx, src_pos, dst_row)
    return Matching(merge, r, src_idx, dst_idx, keep_idx, prune)


def index_merge(
    out_idx: torch.Tensor, src_pos: torch.Tensor, dst_row: torch.Tensor
) -> Tuple[MergeFn, Callable[[torch.Tensor], torch.Tensor]]:
    """The merge and prune functions of a reduction given by indices (every matching method builds one).

    Args:
        out_idx: ``[B, N']`` output row t is input row ``out_idx[:, t]``.
        src_pos: ``[B, s]`` input rows merged away.
        dst_row: ``[B, s]`` the output row each of them is reduced into.

    Returns:
        ``merge(x [B, N, C], mode) -> [B, N', C]`` (rows picked by advanced indexing, one operator each,
        no ``[B, n, C]`` index to build; the reduction one ``scatter_add_`` / ``scatter_reduce_`` into the
        picked rows, ``include_self``), and ``prune(x) -> [B, N', C]`` (the picked rows alone).
    """
    batch = torch.arange(out_idx.shape[0], device=out_idx.device).unsqueeze(1)  # [B, 1] row of each index

    def prune(x: torch.Tensor) -> torch.Tensor:
        return x[batch, out_idx]  # [B, N', C]

    def merge(x: torch.Tensor, mode: str = "mean") -> torch.Tensor:
        out = x[batch, out_idx]  # [B, N', C]
        moved = x[batch, src_pos]  # [B, s, C]
        rows = dst_row.unsqueeze(-1).expand(-1, -1, x.shape[-1])  # [B, s, C]
        if mode == "sum":
            return out.scatter_add_(1, rows, moved)
        return out.scatter_reduce_(1, rows, moved, reduce=mode)

    return merge, prune


def _best_partners(
    metric: torch.Tensor, class_token: bool, distill_token: bool
) -> Tuple[torch.Tensor, torch.Tensor]:
    """For each A token (even positions): its best B partner (odd positions) by cosine similarity.

    ``metric [B, N, C]`` -> ``(best similarity [B, |A|], partner index into B [B, |A|])``; a class
    token's row and a distillation token's column are ``-inf``, so neither is ever merged."""
    m = as_dtype(metric, accumulation_dtype(metric.dtype))
    m = m / m.norm(dim=-1, keepdim=True)
    a, b = m[:, ::2], m[:, 1::2]  # [B, |A|, C], [B, |B|, C]
    scores = a @ b.transpose(-1, -2)  # [B, |A|, |B|]
    if class_token:
        scores.select(1, 0).fill_(-math.inf)  # the class token's row
    if distill_token:
        scores.select(2, 0).fill_(-math.inf)  # the distillation token's column
    return scores.max(dim=-1)


def _output_index(keep_idx: torch.Tensor, num_tokens: int, distill_token: bool) -> torch.Tensor:
    """``[B, N - r]``: output token t is input token ``out_idx[:, t]``.

    The kept A tokens (``keep_idx [B, |A| - r]``, ascending), then every B token; a distillation
    token moves right after the class token. A source merged into B token j lands on output row
    ``|kept| + j`` in both layouts."""
    B = keep_idx.shape[0]
    b_pos = torch.arange(1, num_tokens, 2, device=keep_idx.device).expand(B, -1)  # [B, |B|]
    a_keep = 2 * keep_idx  # [B, |A| - r] positions in x
    if distill_token:
        return torch.cat([a_keep[:, :1], b_pos[:, :1], a_keep[:, 1:], b_pos[:, 1:]], dim=1)
    return torch.cat([a_keep, b_pos], dim=1)


def _identity_merge(x: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    return x


def _identity_prune(x: torch.Tensor) -> torch.Tensor:
    return x


def class_attention(
    q_cls: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    log_size: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Row 0 of the attention matrix, in float32, without the other N - 1 rows.

    Args:
        q_cls: ``[B, H, 1, D]`` the class token's query.
        k: ``[B, H, N, D]`` keys.
        scale: logit scale (``D ** -0.5``).
        log_size: ``[B, N, 1]`` proportional-attention bias ``log s``, or None.

    Returns:
        ``[B, H, N]``: ``softmax(q_0 k^T * scale + log s)`` per head, at least float32.
    """
    B, _, N, _ = k.shape
    bias = None if log_size is None else log_size.reshape(B, 1, 1, N)
    return class_row(q_cls, k, scale, bias).squeeze(2)


def class_row(
    q_cls: torch.Tensor, k: torch.Tensor, scale: float, bias: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``softmax(q_0 k^T * scale + bias)`` ``[B, H, 1, N]``, at least float32 (autocast off).

    ``q_cls [B, H, 1, D]``, ``k [B, H, N, D]``, ``bias [B, 1, 1, N]`` (``log s``) or None."""
    dtype = accumulation_dtype(k.dtype)
    with autocast_off(k.device):  # autocast would run the product (and so the softmax) in half precision
        logits = (as_dtype(q_cls, dtype) @ as_dtype(k, dtype).transpose(-1, -2)) * scale  # [B, H, 1, N]
        if bias is not None:
            logits = logits + as_dtype(bias, dtype)
        return logits.softmax(dim=-1)


def class_importance(cls_attn: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Class importance score ``S_j = mean_h P[h, 0, j] * || mean_h v[h, j] ||_2``.

    Args:
        cls_attn: ``[B, H, N]`` the class token's attention (after softmax).
        v: ``[B, H, N, D]`` value vectors.

    Returns:
        ``[B, N, 1]`` scores in float32 (float64 for float64 inputs) (every token, class token included).
    """
    return class_importance_of_row(cls_attn.unsqueeze(2), v)


def class_importance_of_row(cls_row: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """:func:`class_importance` from the class row as :func:`class_row` gives it.

    ``cls_row [B, H, 1, N]`` (after softmax), ``v [B, H, N, D]`` -> ``[B, N, 1]`` at least float32."""
    dtype = accumulation_dtype(v.dtype)
    attn = as_dtype(cls_row, dtype).mean(dim=1).transpose(1, 2)  # [B, N, 1]
    v_norm = as_dtype(v, dtype).mean(dim=1).norm(dim=-1, keepdim=True)  # [B, N, 1]
    return attn * v_norm


def merge_weighted(
    matching: Matching,
    x: torch.Tensor,
    weight: torch.Tensor,
) -> torch.Tensor:
    """Weighted average of merged tokens: ``(sum w x) / (sum w)`` per destination.

    Computed in at least float32 whatever ``x``'s dtype (fp16 weights underflow); the
    weights are clamped to the smallest positive float32 so that the denominator
    is strictly positive, which leaves every normal float32 weight unchanged.

    Args:
        matching: the block's :class:`Matching`.
        x: ``[B, N, C]`` tokens.
        weight: ``[B, N, 1]`` non-negative weights (class importance or size).

    Returns:
        ``[B, N - r, C]`` in ``x``'s dtype.
    """
    if matching.r == 0:
        return x
    return merge_tokens(matching, x, weight)[0]


def merge_tokens(
    matching: Matching,
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    size: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One block's merge in one reduction: the weighted average of ``x`` and the summed sizes.

    ``x [B, N, C]``; ``weight [B, N, 1]`` (the class importance score; clamped as in
    :func:`merge_weighted`), or None to weight by ``size`` itself (ToMe: sizes are at
    least 1, so no clamp is needed); ``size [B, N, 1]`` or None.
    ``[x * w, w, size]`` are reduced together, so the result equals separate merges exactly.

    Returns:
        ``(x [B, N - r, C] in x's dtype, size [B, N - r, 1] float32 or None)``.
    """
    if weight is None and size is None:
        raise ValueError("merge_tokens needs a weight, or the sizes to weight by")
    dtype = accumulation_dtype(x.dtype)
    C = x.shape[-1]
    if weight is None:
        w = as_dtype(size, dtype)  # [B, N, 1]: the sizes are the weights (and their merge the new sizes)
    else:
        w = as_dtype(weight, dtype).clamp_min(torch.finfo(torch.float32).tiny)
    columns = [as_dtype(x, dtype) * w, w]
    if weight is not None and size is not None:
        columns.append(as_dtype(size, dtype))
    merged = matching.merge(torch.cat(columns, dim=-1), mode="sum")  # [B, N - r, C + 1 (+ 1)]
    den = merged.narrow(-1, C, 1)  # [B, N - r, 1]
    x_out = as_dtype(merged.narrow(-1, 0, C) / den, x.dtype)
    if size is None:
        return x_out, None
    size_out = den if weight is None else merged.narrow(-1, C + 1, 1)
    return x_out, as_dtype(size_out, size.dtype)


def merge_size(matching: Matching, size: torch.Tensor) -> torch.Tensor:
    """Token sizes add up: ``[B, N, 1] -> [B, N - r, 1]``."""
    return matching.merge(size, mode="sum")


def merge_source(matching: Matching, source: torch.Tensor) -> torch.Tensor:
    """Source map (which input token ended in which token): ``[B, N, N0] -> [B, N - r, N0]``."""
    return matching.merge(source, mode="amax")


def initial_state(x: torch.Tensor, trace_source: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Sizes (all ones, ``[B, N, 1]``) and, if traced, the identity source map ``[B, N, N]``."""
    B, N, _ = x.shape
    size = torch.ones(B, N, 1, device=x.device, dtype=torch.float32)
    source = None
    if trace_source:
        source = torch.eye(N, device=x.device, dtype=torch.float32)[None].expand(B, N, N).contiguous()
    return size, source
