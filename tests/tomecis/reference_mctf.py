"""A clean-room reading of ``../shared/METHODS.md`` "mctf", for the tests.

Written from that text alone, never from ``tomecis`` nor from the authors' repository, and sharing no code
with ``tomecis``: explicit N x N attention from the full ``qkv`` projection, per-image Python decisions
(sorted lists, dictionaries of groups), and the pooling written as matrix products with a 0/1 group
matrix ``G [N', N]`` (row t holds the input tokens merged into output token t): ``x' = G (w x) / G w``,
``s' = G s``, ``A' = G diag(w) A Gᵀ / G w``. Float64 by default.

Per block i (0 … L-1), input x (N tokens, class first), sizes s (None before the first merge):
count ``r' = r``; ``r' = N - 10`` if ``N - r' < 10``; ``r'' = min(int((N-1) r') if r' < 1 else r', (N-1)//2)``;
block 0 never reduces. A block that does not reduce: ``x + proj(softmax(q kᵀ/√d + log s) v)`` (``log s`` once
sizes exist), then the MLP. A reducing block: ``A`` as above on ``LN1(x)``; ``ā_j`` = column j of A averaged
over heads and queries; ``ι = (1/ā)/max(1/ā)``, ``σ = (1/s)/max(1/s)`` (1 without sizes); ``m`` = x / |x|;
A = even positions, B = odd ones; ``W[a][b] = ((m_a·m_b + 1)/2) (ι_a ι_b)^(1/20) (σ_a σ_b)^(1/40)``, the class
row -inf. Step 1: A by its best W descending; the first ``r''//2`` go into their best b. A_keep (the rest) by
position. Step 2: each b (all of B) takes its best a in A_keep; B by that best descending; the first
``r'' - r''//2`` go (with what they hold) into their a. Output ``[A_keep by position, the other B in that
descending order]``. ``ŝ = s / max s`` (1 without sizes), ``w = ā ŝ``. The block's attention output is
``proj(A' v')`` with v' from ``LN1(x')``; ``x ← x' + that``, then the MLP.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import List, Optional

import torch


@dataclass
class MctfOutput:
    logits: torch.Tensor  # [B, classes]
    source: torch.Tensor  # [B, N_final, N0] 0/1 groups, in output order
    size: torch.Tensor  # [B, N_final]
    tokens: List[int] = field(default_factory=list)  # tokens after each block


def mctf_count(N: int, index: int, r: int) -> int:
    if index == 0 or r == 0:
        return 0
    rp = r
    if N - rp < 10:
        rp = N - 10
    rpp = min(int((N - 1) * rp) if rp < 1 else rp, (N - 1) // 2)
    return max(rpp, 0)


def _heads(t: torch.Tensor, H: int) -> torch.Tensor:
    B, N, C = t.shape
    return t.reshape(B, N, H, C // H).transpose(1, 2)  # [B, H, N, d]


def _attention(attn_module, y: torch.Tensor, size: Optional[torch.Tensor]):
    """softmax(q kᵀ/√d + log s) [B, H, N, N] and v [B, H, N, d] from the full qkv projection."""
    C = y.shape[-1]
    H = attn_module.num_heads
    qkv = attn_module.qkv(y)
    q = attn_module.q_norm(_heads(qkv[..., :C], H))
    k = attn_module.k_norm(_heads(qkv[..., C : 2 * C], H))
    v = _heads(qkv[..., 2 * C :], H)
    logits = q @ k.transpose(-1, -2) / math.sqrt(C // H)
    if size is not None:
        logits = logits + size.log()[:, None, None, :]
    return logits.softmax(-1), v


def _project(attn_module, out: torch.Tensor) -> torch.Tensor:
    B, H, N, d = out.shape
    return attn_module.proj(out.transpose(1, 2).reshape(B, N, H * d))


def _groups_of_one_image(x, received, size, rpp):
    """The output groups (lists of input positions, output order) of one image: x [N, C], received [N],
    size [N] or None."""
    N = x.shape[0]
    m = x / x.norm(dim=-1, keepdim=True)
    info = (1 / received) / (1 / received).max()
    sig = None if size is None else (1 / size) / (1 / size).max()
    A = list(range(0, N, 2))
    Bs = list(range(1, N, 2))
    values = ((m[0::2] @ m[1::2].T + 1) / 2) * (info[0::2, None] * info[None, 1::2]) ** (1 / 20)
    if sig is not None:
        values = values * (sig[0::2, None] * sig[None, 1::2]) ** (1 / 40)
    values = values.tolist()  # [|A|][|B|]
    table = {(a, b): (-math.inf if a == 0 else values[a // 2][b // 2]) for a in A for b in Bs}
    r1, r2 = rpp // 2, rpp - rpp // 2
    best_b = {a: max(Bs, key=lambda b: table[a, b]) for a in A}
    ranked_a = sorted(A, key=lambda a: table[a, best_b[a]], reverse=True)
    held = {b: [b] for b in Bs}
    for a in ranked_a[:r1]:
        held[best_b[a]].append(a)
    a_keep = sorted(ranked_a[r1:])
    best_a = {b: max(a_keep, key=lambda a: table[a, b]) for b in Bs}
    ranked_b = sorted(Bs, key=lambda b: table[best_a[b], b], reverse=True)
    a_groups = {a: [a] for a in a_keep}
    for b in ranked_b[:r2]:
        a_groups[best_a[b]] += held[b]
    return [sorted(a_groups[a]) for a in a_keep] + [sorted(held[b]) for b in ranked_b[r2:]]


def mctf_forward(model, images: torch.Tensor, r: int, dtype=torch.float64) -> MctfOutput:
    """The model (a timm ViT with a class token) run with MCTF at ``r``, in ``dtype``."""
    m = copy.deepcopy(model).to(dtype).eval()
    with torch.no_grad():
        h = m._pos_embed(m.patch_embed(images.to(dtype)))
        Bn, N0, _ = h.shape
        size = None  # [B, N] once merged
        source = torch.eye(N0, dtype=dtype).expand(Bn, N0, N0).clone()
        tokens = []
        for i, blk in enumerate(m.blocks):
            N = h.shape[1]
            rpp = mctf_count(N, i, r)
            y = blk.norm1(h)
            A, v = _attention(blk.attn, y, size)
            if rpp == 0:
                h = h + blk.ls1(_project(blk.attn, A @ v))
            else:
                received = A.mean(dim=(1, 2))  # [B, N]
                s = torch.ones(Bn, N, dtype=dtype) if size is None else size
                w = received * (s / s.max(dim=1, keepdim=True).values)  # [B, N]
                rows, sizes, maps, sources = [], [], [], []
                for n in range(Bn):
                    groups = _groups_of_one_image(h[n], received[n], None if size is None else size[n], rpp)
                    G = torch.zeros(len(groups), N, dtype=dtype)
                    for t, members in enumerate(groups):
                        G[t, members] = 1
                    den = G @ w[n]  # [N']
                    rows.append((G @ (w[n, :, None] * h[n])) / den[:, None])
                    sizes.append(G @ s[n])
                    maps.append((G @ (w[n, None, :, None] * A[n]) @ G.T) / den[None, :, None])
                    sources.append(G @ source[n])
                h, size = torch.stack(rows), torch.stack(sizes)
                source = torch.stack(sources)
                A_next = torch.stack(maps)  # [B, H, N', N']
                _, v_next = _attention(blk.attn, blk.norm1(h), None)
                h = h + blk.ls1(_project(blk.attn, A_next @ v_next))
            h = h + blk.ls2(blk.mlp(blk.norm2(h)))
            tokens.append(h.shape[1])
        logits = m.forward_head(m.norm(h))
    sizes_out = torch.ones(Bn, h.shape[1], dtype=dtype) if size is None else size
    return MctfOutput(logits, source, sizes_out, tokens)
