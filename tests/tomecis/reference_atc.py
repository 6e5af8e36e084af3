"""Clean-room reading of ATC (``../shared/METHODS.md``, section "atc"), for the tests.

Written from METHODS.md alone, never from ``tomecis`` nor from the authors' repository; shares no code with
``tomecis``. Float64 by default, explicit ``N x N`` attention, per-image Python decisions.

- Cluster counts: ``K_s = int(P * keep ** (s + 1))`` for the stages ``s = 0, 1, 2`` at blocks
  ``L//4, L//2, 3L//4`` (a later stage placed on the same block wins); in the block ``K = min(K_s, N - 1)``;
  ``K_s = 0`` or ``K = N - 1`` reduces nothing.
- A reducing block: attention (with ``+ log s_key`` once sizes exist), its residual; then the head-mean keys
  ``k`` of all ``N`` tokens, ``m = k / |k|``, ``S = m m^T`` (METHODS.md: float32, so ``distance_dtype``
  defaults to float32), ``D = 1 - S`` over the non-class tokens, upper triangle only; complete linkage of
  the ``N - 1`` non-class tokens as SciPy computes it: the nearest-neighbour chain builds the whole tree,
  its merges are sorted by height (stably) and the first ``N - 1 - K`` are applied (the tree cut at ``K``
  clusters); each cluster -> the size-weighted mean of its residual-stream rows, sizes summed; output
  ``[class, clusters by smallest member]``; then the MLP.
- Proportional attention in every block after the first reducing one.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import List, Optional

import torch


@dataclass
class AtcOutput:
    logits: torch.Tensor  # [B, classes]
    source: torch.Tensor  # [B, N_final, N0] 0/1: which input tokens each output token holds
    size: torch.Tensor  # [B, N_final]
    tokens: List[int] = field(default_factory=list)  # tokens after each block


def stage_blocks(depth: int) -> List[int]:
    return [depth // 4, depth // 2, (3 * depth) // 4]


def clusters_for_block(i: int, depth: int, patches: int, keep: float) -> int:
    """K_s of block i (0 where no stage sits)."""
    K = 0
    for s, block in enumerate(stage_blocks(depth)):
        if block == i:
            K = int(patches * keep ** (s + 1))
    return K


def nn_chain_complete(dist: List[List[float]]) -> List[tuple]:
    """The whole complete-linkage tree of ``n`` points by the nearest-neighbour chain (SciPy's algorithm
    for complete linkage): ``dist[p][q]`` read for ``p < q`` only. Returns the ``n - 1`` merges as
    ``(height, members_a, members_b)`` in the order the chain finds them."""
    n = len(dist)
    d = [[math.inf] * n for _ in range(n)]  # symmetric, built from the upper triangle alone
    for p in range(n):
        for q in range(p + 1, n):
            d[p][q] = d[q][p] = dist[p][q]
    members = {p: [p] for p in range(n)}
    active = list(range(n))
    merges = []
    chain: List[int] = []
    while len(active) > 1:
        if not chain:
            chain.append(active[0])
        a = chain[-1]
        b = chain[-2] if len(chain) > 1 else None
        row = d[a]
        best, best_d = b, (row[b] if b is not None else math.inf)
        for c in active:
            if c != a and row[c] < best_d:
                best, best_d = c, row[c]
        if best == b:  # a and b are reciprocal nearest neighbours: merge them
            chain.pop()
            chain.pop()
            merges.append((best_d, list(members[a]), list(members[b])))
            keep_id, gone = min(a, b), max(a, b)
            active.remove(gone)
            for c in active:
                if c != keep_id:
                    d[keep_id][c] = d[c][keep_id] = max(d[a][c], d[b][c])
            members[keep_id] = members[a] + members[b]
            del members[gone]
        else:
            chain.append(best)
    return merges


def cut_tree(merges: List[tuple], n: int, clusters: int) -> List[List[int]]:
    """Sort the merges by height (stable) and apply the first ``n - clusters``: the tree cut at ``clusters``.
    Returns the clusters as sorted member lists, ordered by smallest member."""
    ordered = sorted(merges, key=lambda m: m[0])
    owner = list(range(n))

    def find(p):
        while owner[p] != p:
            p = owner[p]
        return p

    for _, a, b in ordered[: n - clusters]:
        ra, rb = find(a[0]), find(b[0])
        owner[max(ra, rb)] = min(ra, rb)
    groups = {}
    for p in range(n):
        groups.setdefault(find(p), []).append(p)
    return sorted(groups.values(), key=lambda g: g[0])


def complete_linkage_groups(dist: torch.Tensor, clusters: int) -> List[List[int]]:
    """``dist [n, n]`` (upper triangle read) -> the complete-linkage clusters cut at ``clusters``."""
    rows = dist.double().tolist()
    return cut_tree(nn_chain_complete(rows), len(rows), clusters)


def _attention(block, x, size):
    """Explicit attention of a timm block on LN1(x), with + log s_key where sizes are given; also the
    head-mean keys. Returns (out [B, N, C], keys [B, N, D])."""
    attn = block.attn
    B, N, C = x.shape
    h = block.norm1(x)
    qkv = attn.qkv(h).reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q, k = attn.q_norm(q), attn.k_norm(k)  # identities on DeiT; a qk-norm ViT's keys as its attention uses
    logits = (q @ k.transpose(-2, -1)) * attn.scale
    if size is not None:
        logits = logits + size.log()[:, None, None, :]
    probs = logits.softmax(dim=-1)
    out = (probs @ v).transpose(1, 2).reshape(B, N, C)
    return attn.proj(out), k.mean(dim=1)


def _cluster_block(x, size, source, keys, K, distance_dtype):
    """Per image: complete-linkage clusters of the non-class tokens, merged into size-weighted means."""
    B, N, _ = x.shape
    xs, sizes, sources = [], [], []
    for b in range(B):
        m = keys[b].to(distance_dtype)
        m = m / m.norm(dim=-1, keepdim=True)
        dist = 1 - (m @ m.T)[1:, 1:]
        groups = complete_linkage_groups(dist, K)
        rows_x, rows_s, rows_src = [x[b, 0]], [size[b, 0]], [source[b, 0]]
        for group in groups:
            idx = torch.tensor(group) + 1
            w = size[b, idx]
            rows_x.append((x[b, idx] * w[:, None]).sum(0) / w.sum())
            rows_s.append(w.sum())
            rows_src.append(source[b, idx].sum(0))
        xs.append(torch.stack(rows_x))
        sizes.append(torch.stack(rows_s))
        sources.append(torch.stack(rows_src))
    return torch.stack(xs), torch.stack(sizes), torch.stack(sources)


def atc_forward(
    model,
    images: torch.Tensor,
    keep: float,
    dtype: torch.dtype = torch.float64,
    distance_dtype: Optional[torch.dtype] = torch.float32,
) -> AtcOutput:
    """Run ``model`` (a timm VisionTransformer with a class token, unpatched) reduced by ATC at ``keep``.
    ``distance_dtype``: the dtype of ``m`` and ``S`` (float32 as METHODS.md says; None: ``dtype``)."""
    if getattr(model, "dist_token", None) is not None or getattr(model, "num_prefix_tokens", 1) != 1:
        raise ValueError("the reference handles models with a class token and no other prefix token")
    m = copy.deepcopy(model).to(dtype).eval()
    depth, patches = len(m.blocks), m.patch_embed.num_patches
    with torch.no_grad():
        x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(images.to(dtype)))))
        B, N0, _ = x.shape
        size = None  # no sizes before the first reducing block
        ones = torch.ones(B, N0, dtype=dtype)
        source = torch.eye(N0, dtype=dtype)[None].repeat(B, 1, 1)
        tokens = []
        for i, block in enumerate(m.blocks):
            N = x.shape[1]
            K_s = clusters_for_block(i, depth, patches, keep)
            K = min(K_s, N - 1)
            out, keys = _attention(block, x, size)
            x = x + block.ls1(out)
            if K_s > 0 and K < N - 1:
                x, size, source = _cluster_block(
                    x, ones if size is None else size, source, keys, K, distance_dtype or dtype
                )
                ones = None
            x = x + block.ls2(block.mlp(block.norm2(x)))
            tokens.append(x.shape[1])
        logits = m.forward_head(m.norm(x))
    final_size = size if size is not None else torch.ones(B, x.shape[1], dtype=dtype)
    return AtcOutput(logits, source, final_size, tokens)
