"""Clean-room readings of the token-reduction methods of issue #25 (EViT, PiToMe, ToFu), for the tests.

Written from the issue's "Semantics" section and the clarifications recorded in the tests, never from
``tomecis/methods`` nor from the authors' repositories. Like ``reference.py`` it shares no code with
``tomecis``: explicit N x N attention, per-sample Python decisions (orderings, matchings, groups), float64
by default. ToMe and ToMeCIS with a keep ratio reuse ``reference.py``'s block with the per-block amounts
the keep ratio gives.

A block is ``x <- x + Attn(LN1(x))``, then the reduction (if any), then ``x <- x + MLP(LN2(x))``; a block
that reduces nothing runs as timm's own block. Attention is plain softmax (no size bias) for EViT, PiToMe
and ToFu. "Keys" are the per-head keys of the qkv projection (unscaled), averaged over heads.

- ToFu (T counts the class token): ToMe's bipartite matching on cosine of keys (A = even positions, the
  class token's row -inf; B = odd; A ranked by its best score, descending, ties by position; the first r
  are sources). Blocks ``i <= L//2`` drop the sources; blocks ``i > L//2`` merge each B token b with its
  sources s as ``m = (x_b + sum x_s) / (1 + n_b)``, then ``m * max(|x_b|, max_s |x_s|) / |x_b|``.
  Output ``[unmerged A in increasing position, B]``.
- PiToMe (T excludes the class token): cosine of the non-class keys, energy
  ``E_j = mean_k ELU(sim_jk - m_i)`` with ``m_i = 0.75 - 0.75 i / L``, ``order = argsort(E, desc)``.
  Blocks ``i < ceil(L/2)``: A = order[0::2], B = order[1::2], A ranked by its best sim to B (descending,
  stable), the first r merge; output ``[class, unmerged A in that ranking, B]``. Later blocks:
  A = order[0:2r:2], B = order[1:2r:2], protected = order[2r:], every a merges; output
  ``[class, protected, B]``. Merging is the size-weighted average, sizes summed (starting at 1).
- EViT: blocks ``L//4, L//2, 3L//4`` only; ``K = ceil(keep (N - 1))``; a_j = the class token's
  post-softmax attention to j averaged over heads (class column dropped, not renormalised); output
  ``[class, topk(a, K) by descending a, sum over dropped j of a_j x_j]``; nothing happens when K = N - 1.

Amounts: ``r`` (the same in every block) or ``keep`` (``r = floor(T - T*keep)`` from the block's own T;
for EViT the keep rate of its three blocks). Clamps: ToFu/ToMe/ToMeCIS ``min(r, (T-1)//2)`` (T with the
class token), PiToMe ``min(r, T//2)`` (T without it).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F
from reference import reference_forward

NEW_METHODS = ("pitome", "tofu", "evit")
TOME_METHODS = ("tome", "tomecis")


@dataclass
class MethodOutput:
    logits: torch.Tensor  # [B, classes] in the reference's dtype
    source: torch.Tensor  # [B, N_final, N0] 0/1: which input tokens each output token holds
    size: torch.Tensor  # [B, N_final] token sizes (PiToMe's weights; bookkeeping elsewhere)
    tokens: List[int] = field(default_factory=list)  # token count after each block


def keep_to_r(T: int, keep: float) -> int:
    """The per-block amount of a keep ratio: floor(T - T*keep) in double precision, as the issue says
    (not floor(T*(1-keep)): at T = 80, keep 0.9 that is 7, this is 8)."""
    return math.floor(T - T * keep)


def tome_keep_schedule(n0: int, depth: int, keep: float) -> List[int]:
    """ToMe/ToMeCIS per-block r for a keep ratio: T counts the class token, r clamped to (T-1)//2."""
    schedule, T = [], n0
    for _ in range(depth):
        r = min(keep_to_r(T, keep), (T - 1) // 2)
        schedule.append(r)
        T -= r
    return schedule


def evit_blocks(depth: int) -> List[int]:
    return [depth // 4, depth // 2, 3 * depth // 4]


def method_forward(
    model,
    images: torch.Tensor,
    method: str,
    *,
    r: Optional[int] = None,
    keep: Optional[float] = None,
    dtype: torch.dtype = torch.float64,
) -> MethodOutput:
    """Run ``model`` (a timm VisionTransformer with a class token, unpatched) reduced by ``method``.

    ``method``: "none", "pitome", "tofu", "evit", or "tome"/"tomecis" (float64 only; delegated to
    ``reference.reference_forward`` with the per-block amounts of ``r`` or ``keep``)."""
    if (r is None) == (keep is None) and method != "none":
        raise ValueError("give exactly one of r and keep")
    if getattr(model, "dist_token", None) is not None or getattr(model, "num_prefix_tokens", 1) != 1:
        raise ValueError("the reference handles models with a class token and no other prefix token")
    depth = len(model.blocks)
    if method in TOME_METHODS:
        if dtype != torch.float64:
            raise ValueError("reference.py runs in float64 only")
        n0 = model.patch_embed.num_patches + 1
        schedule = [r] * depth if keep is None else tome_keep_schedule(n0, depth, keep)
        out = reference_forward(model, images, schedule, mode=method)
        return MethodOutput(out.logits, out.source, out.size, out.tokens)
    if method == "evit" and r is not None:
        raise ValueError("EViT takes a keep rate only")
    if method not in ("none",) + NEW_METHODS:
        raise ValueError(f"unknown method {method!r}")

    m = copy.deepcopy(model).to(dtype).eval()
    with torch.no_grad():
        x = m.patch_embed(images.to(dtype))
        x = m._pos_embed(x)
        x = m.patch_drop(x)
        x = m.norm_pre(x)
        B, N0, _ = x.shape
        size = torch.ones(B, N0, dtype=dtype)
        source = torch.eye(N0, dtype=dtype)[None].repeat(B, 1, 1)
        tokens = []
        for i, block in enumerate(m.blocks):
            N = x.shape[1]
            amount = _block_amount(method, i, depth, N, r, keep)
            if amount <= 0:  # reduces nothing: timm's own block
                x = block(x)
            else:
                x, size, source = _reducing_block(block, x, size, source, method, i, depth, amount)
            tokens.append(x.shape[1])
        x = m.norm(x)
        logits = m.forward_head(x)
    return MethodOutput(logits, source, size, tokens)


def _block_amount(method, i, depth, N, r, keep):
    """Tokens removed by block i, whose input has N tokens (class token included); for EViT the number
    of non-class tokens kept (0: the block does not reduce)."""
    if method == "none":
        return 0
    if method == "evit":
        if i not in evit_blocks(depth):
            return 0
        K = math.ceil(keep * (N - 1))
        return 0 if K >= N - 1 else K
    if method == "tofu":
        amount = r if keep is None else keep_to_r(N, keep)
        return min(amount, (N - 1) // 2)
    if method == "pitome":
        T = N - 1
        amount = r if keep is None else keep_to_r(T, keep)
        return min(amount, T // 2)
    raise ValueError(method)


def _attention(block, x):
    """The attention residual, written out: (x + Attn(LN1(x)), P [B, H, N, N], keys [B, N, D])."""
    attn = block.attn
    y = block.norm1(x)
    B, N, C = y.shape
    H, D = attn.num_heads, attn.head_dim
    qkv = F.linear(y, attn.qkv.weight, attn.qkv.bias).reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q, k = attn.q_norm(q), attn.k_norm(k)
    P = ((q @ k.transpose(-1, -2)) * (D**-0.5)).softmax(dim=-1)  # plain softmax: no size bias
    out = (P @ v).transpose(1, 2).reshape(B, N, H * D)
    out = attn.norm(out)
    if getattr(attn, "gate", None) is not None:
        out = out * attn.gate(y).sigmoid()
    x = x + block.ls1(attn.proj(out))
    return x, P, k.mean(dim=1)


def _reducing_block(block, x, size, source, method, i, depth, amount):
    x, P, keys = _attention(block, x)
    cls_attn = P[:, :, 0, :].mean(dim=1)  # [B, N], class column included
    rows_x, rows_size, rows_source = [], [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small per-sample ops: a thread pool only adds waiting
    try:
        for b in range(x.shape[0]):
            if method == "tofu":
                plan = _tofu_plan(keys[b], amount, merge=i > depth // 2)
            elif method == "pitome":
                margin = 0.75 - 0.75 * i / depth
                plan = _pitome_plan(keys[b], amount, margin, late=i >= math.ceil(depth / 2))
            else:
                plan = _evit_plan(cls_attn[b], amount)
            xb, sb, srcb = _apply(plan, x[b], size[b], source[b], cls_attn[b])
            rows_x.append(xb)
            rows_size.append(sb)
            rows_source.append(srcb)
    finally:
        torch.set_num_threads(threads)
    x, size, source = torch.stack(rows_x), torch.stack(rows_size), torch.stack(rows_source)
    x = x + block.ls2(block.mlp(block.norm2(x)))
    return x, size, source


# --------------------------------------------------------------------------- per-sample decisions
# A plan is (kind, rows): rows[o] = the input positions that output token o combines, its first entry
# being the token that receives (B token, kept token); kind says how they combine.


def _first_argmax(values: torch.Tensor) -> torch.Tensor:
    return values.argmax(dim=-1)  # torch documents: the first maximal index on ties


def _tofu_plan(keys, r, merge):
    N = keys.shape[0]
    k = keys / keys.norm(dim=-1, keepdim=True)
    a_pos = list(range(0, N, 2))
    b_pos = list(range(1, N, 2))
    sims = k[a_pos] @ k[b_pos].T  # [|A|, |B|]
    sims[0, :] = -math.inf  # the class token is never a source
    best_j = _first_argmax(sims).tolist()
    best = sims.max(dim=-1).values.tolist()
    ranked = sorted(range(len(a_pos)), key=lambda ai: (-best[ai], ai))  # descending, ties by position
    sources = ranked[:r]
    kept = sorted(a_pos[ai] for ai in ranked[r:])
    rows = [[a] for a in kept]
    groups = {bp: [bp] for bp in b_pos}
    if merge:
        for ai in sources:
            groups[b_pos[best_j[ai]]].append(a_pos[ai])
    rows += [groups[bp] for bp in b_pos]
    return ("mlerp" if merge else "copy"), rows


def _pitome_plan(keys, r, margin, late):
    k = keys[1:] / keys[1:].norm(dim=-1, keepdim=True)  # non-class tokens, position j+1
    sim = k @ k.T  # [T, T], diagonal included
    energy = F.elu(sim - margin, alpha=1.0).mean(dim=-1).tolist()
    T = len(energy)
    order = sorted(range(T), key=lambda j: (-energy[j], j))  # argsort descending
    if late:
        A, B, protected = order[0 : 2 * r : 2], order[1 : 2 * r : 2], order[2 * r :]
    else:
        A, B = order[0::2], order[1::2]
    s = sim[A][:, B]  # [|A|, |B|] in A's and B's list orders
    best_j = _first_argmax(s).tolist()
    best = s.max(dim=-1).values.tolist()
    if late:
        sources, kept = list(range(len(A))), protected
    else:
        ranked = sorted(range(len(A)), key=lambda ai: -best[ai])  # descending, stable
        sources, kept = ranked[:r], [A[ai] for ai in ranked[r:]]
    groups = {bj: [B[bj]] for bj in range(len(B))}
    for ai in sources:
        groups[best_j[ai]].append(A[ai])
    rows = [[0]] + [[j + 1] for j in kept] + [[p + 1 for p in groups[bj]] for bj in range(len(B))]
    return "size", rows


def _evit_plan(cls_attn, K):
    a = cls_attn[1:].tolist()  # attention of the class query to the non-class tokens, not renormalised
    ranked = sorted(range(len(a)), key=lambda j: (-a[j], j))
    kept, dropped = ranked[:K], ranked[K:]
    return "evit", [[0]] + [[j + 1] for j in kept] + [[None] + [j + 1 for j in dropped]]


def _apply(plan, x, size, source, cls_attn):
    """Build the output tokens of one sample from its plan."""
    kind, rows = plan
    out_x, out_size, out_source = [], [], []
    for members in rows:
        if kind == "evit" and members[0] is None:  # the fused token: an unnormalised attention sum
            idx = members[1:]
            out_x.append((cls_attn[idx][:, None] * x[idx]).sum(dim=0))
        elif len(members) == 1:
            idx = members
            out_x.append(x[members[0]].clone())
        elif kind == "size":
            idx = members
            w = size[idx]
            out_x.append((w[:, None] * x[idx]).sum(dim=0) / w.sum())
        elif kind == "mlerp":
            idx = members
            dst = x[members[0]]
            norms = x[idx].norm(dim=-1)
            mean = x[idx].sum(dim=0) / len(idx)
            out_x.append(mean * norms.max() / dst.norm())
        else:
            raise AssertionError(plan)
        out_size.append(size[idx].sum())
        out_source.append(source[idx].amax(dim=0))
    return torch.stack(out_x), torch.stack(out_size), torch.stack(out_source)
