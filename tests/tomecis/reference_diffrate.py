"""Clean-room reading of DiffRate with a fixed ratio (``../shared/METHODS.md``, "diffrate"), for the tests;
shares no code with ``tomecis``. Float64 by default, explicit attention, per-image Python decisions.

Schedule from the patch count P (double): n = P; per block r = floor(n - n k), prune_keep = n,
merge_keep = n - r, n = merge_keep; both counts include the class token. Per block: attention with
``+ log s`` of the sizes (all 1 at the start), x += proj(A v); a_j = mean over heads of A[h, 0, j], j >= 1;
the non-class tokens sorted by a descending; keep the first prune_keep; the first merge_keep (class included)
are destinations, every other token u goes to the destination j >= 1 of highest cosine similarity (residual
stream; first on ties), x_j = (x_j + sum x_u) / (1 + #u), s_j += sum best_u s_u; then the MLP.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import List

import torch


@dataclass
class DiffRateOutput:
    logits: torch.Tensor  # [B, classes]
    source: torch.Tensor  # [B, N_final, N0] 0/1: the input tokens each output token holds
    size: torch.Tensor  # [B, N_final]
    tokens: List[int] = field(default_factory=list)  # tokens after each block


def kept_numbers(P: int, depth: int, keep: float) -> List[tuple]:
    """[(prune_keep, merge_keep)] per block, METHODS.md's loop in Python floats."""
    out, n = [], P
    for _ in range(depth):
        r = math.floor(n - n * keep)
        out.append((n, n - r))
        n -= r
    return out


def _attention(block, x, size):
    """x + proj(A v) with A = softmax(q k^T d^-1/2 + log s); returns (x, A [B, H, N, N])."""
    attn = block.attn
    y = block.norm1(x)
    B, N, C = y.shape
    H = attn.num_heads
    qkv = (y @ attn.qkv.weight.T + attn.qkv.bias).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    logits = (q @ k.transpose(-1, -2)) * (C // H) ** -0.5 + size.log()[:, None, None, :]
    A = logits.softmax(dim=-1)
    return x + attn.proj((A @ v).transpose(1, 2).reshape(B, N, C)), A


def _one_image(x, size, source, a, prune_keep, merge_keep):
    """x [N, C], size [N], source [N, N0], a [N - 1] -> the block's tokens, sizes, sources."""
    order = [0] + [1 + j for j in torch.argsort(a, descending=True).tolist()]
    order = order[:prune_keep]
    x, size, source = x[order].clone(), size[order].clone(), source[order].clone()
    if merge_keep >= prune_keep:
        return x, size, source
    unit = x / x.norm(dim=-1, keepdim=True)
    total = x[:merge_keep].clone()
    members = [1] * merge_keep
    new_size = size[:merge_keep].clone()
    new_source = source[:merge_keep].clone()
    for u in range(merge_keep, prune_keep):
        sims = unit[1:merge_keep] @ unit[u]  # [merge_keep - 1]: the destinations j >= 1
        j = 1 + int(sims.argmax())  # torch documents: the first maximal index on ties
        best = sims[j - 1]
        total[j] += x[u]
        members[j] += 1
        new_size[j] += best * size[u]
        new_source[j] = torch.maximum(new_source[j], source[u])
    counts = torch.tensor(members, dtype=x.dtype)[:, None]
    return total / counts, new_size, new_source


def diffrate_forward(model, images: torch.Tensor, keep: float, dtype=torch.float64) -> DiffRateOutput:
    """``model`` (an unpatched timm DeiT) reduced by DiffRate's fixed-ratio schedule at ``keep``."""
    m = copy.deepcopy(model).to(dtype).eval()
    with torch.no_grad():
        x = m._pos_embed(m.patch_embed(images.to(dtype)))
        B, N0, _ = x.shape
        plan = kept_numbers(m.patch_embed.num_patches, len(m.blocks), keep)
        size = torch.ones(B, N0, dtype=dtype)
        source = torch.eye(N0, dtype=dtype)[None].repeat(B, 1, 1)
        tokens = []
        for block, (prune_keep, merge_keep) in zip(m.blocks, plan):
            x, A = _attention(block, x, size)
            a = A[:, :, 0, 1:].mean(dim=1)  # [B, N - 1]
            rows = [_one_image(x[b], size[b], source[b], a[b], prune_keep, merge_keep) for b in range(B)]
            x = torch.stack([r[0] for r in rows])
            size = torch.stack([r[1] for r in rows])
            source = torch.stack([r[2] for r in rows])
            x = x + block.mlp(block.norm2(x))
            tokens.append(x.shape[1])
        logits = m.head(m.norm(x)[:, 0])
    return DiffRateOutput(logits, source, size, tokens)
