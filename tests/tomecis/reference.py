"""A direct, explicit-attention, float64 reading of ../shared/SPEC.md, written for the tests.

It shares no code with ``tomecis``: full N x N attention matrices, per-sample
Python loops for the matching and the merge, float64 throughout. The library
must agree with it (logits, source maps, sizes).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import List, Sequence

import torch
import torch.nn.functional as F


@dataclass
class ReferenceOutput:
    logits: torch.Tensor  # [B, classes] float64
    source: torch.Tensor  # [B, N_final, N0] 0/1: which input token ended in which output token
    size: torch.Tensor  # [B, N_final]
    tokens: List[int] = field(default_factory=list)  # token count after each block


def reference_forward(
    model, images: torch.Tensor, schedule: Sequence[int], mode: str = "tomecis"
) -> ReferenceOutput:
    """Run ``model`` (a timm VisionTransformer, unpatched) the SPEC way in float64."""
    m = copy.deepcopy(model).double().eval()
    distill = getattr(m, "dist_token", None) is not None
    with torch.no_grad():
        x = m.patch_embed(images.double())
        x = m._pos_embed(x)
        x = m.norm_pre(x)
        B, N0, _ = x.shape
        size = torch.ones(B, N0, dtype=torch.float64)
        source = torch.eye(N0, dtype=torch.float64)[None].repeat(B, 1, 1)
        merged_once = False
        tokens = []
        for block, r_l in zip(m.blocks, schedule):
            x, size, source, merged = _block(block, x, size, source, r_l, merged_once, distill, mode)
            merged_once = merged_once or merged
            tokens.append(x.shape[1])
        x = m.norm(x)
        logits = m.forward_head(x)
    return ReferenceOutput(logits, source, size, tokens)


def _block(block, x, size, source, r_l, merged_once, distill, mode):
    if r_l <= 0:  # SPEC: behaves exactly as the unpatched timm block
        return block(x), size, source, False
    attn = block.attn
    y = block.norm1(x)
    B, N, C = y.shape
    H, D = attn.num_heads, attn.head_dim
    qkv = F.linear(y, attn.qkv.weight, attn.qkv.bias).reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q @ k.transpose(-1, -2)) * (D**-0.5)  # [B, H, N, N]
    if merged_once:
        logits = logits + size.log()[:, None, None, :]
    P = logits.softmax(dim=-1)
    out = (P @ v).transpose(1, 2).reshape(B, N, H * D)
    out = attn.norm(out)
    if attn.gate is not None:
        out = out * attn.gate(y).sigmoid()
    x = x + block.ls1(attn.proj(out))

    score = P[:, :, 0, :].mean(dim=1) * v.mean(dim=1).norm(dim=-1)  # [B, N]
    metric = k.mean(dim=1)  # [B, N, D]
    new_x, new_size, new_source = [], [], []
    for b in range(B):
        weight = score[b] if mode == "tomecis" else size[b]
        xb, sb, srcb = _merge_one(x[b], size[b], source[b], metric[b], weight, r_l, distill)
        new_x.append(xb)
        new_size.append(sb)
        new_source.append(srcb)
    x, size, source = torch.stack(new_x), torch.stack(new_size), torch.stack(new_source)
    x = x + block.ls2(block.mlp(block.norm2(x)))
    return x, size, source, True


def _merge_one(x, size, source, metric, weight, r_l, distill):
    """One sample: x [N, C], size [N], source [N, N0], metric [N, D], weight [N]."""
    N = x.shape[0]
    protected = 2 if distill else 1
    r = min(r_l, (N - protected) // 2)
    if r <= 0:
        return x, size, source
    m = metric / metric.norm(dim=-1, keepdim=True)
    a_pos = list(range(0, N, 2))
    b_pos = list(range(1, N, 2))
    best, partner = {}, {}
    for a in a_pos:
        sims = [-math.inf if (a == 0 or (distill and bp == 1)) else float(m[a] @ m[bp]) for bp in b_pos]
        j = max(range(len(b_pos)), key=lambda i: (sims[i], -i))  # argmax, first on ties
        best[a], partner[a] = sims[j], b_pos[j]
    ranked = sorted(a_pos, key=lambda a: (-best[a], a))  # descending, stable
    sources, kept = ranked[:r], sorted(ranked[r:])
    groups = {bp: [bp] for bp in b_pos}
    for a in sources:
        groups[partner[a]].append(a)

    rows_x, rows_size, rows_source = [], [], []
    order = [("A", a) for a in kept] + [("B", bp) for bp in b_pos]
    if distill:  # [class, distillation, other kept A..., other B...]
        order = [order[0], ("B", 1)] + order[1 : len(kept)] + [("B", bp) for bp in b_pos[1:]]
    for kind, pos in order:
        members = [pos] if kind == "A" else groups[pos]
        w = torch.stack([weight[i] for i in members])
        rows_x.append(sum(w[i] * x[j] for i, j in enumerate(members)) / w.sum())
        rows_size.append(sum(size[j] for j in members))
        rows_source.append(torch.stack([source[j] for j in members]).amax(dim=0))
    return torch.stack(rows_x), torch.stack(rows_size), torch.stack(rows_source)
