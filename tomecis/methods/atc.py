"""ATC (Haurum et al., ECCV 2024) without retraining, as its authors' code runs it on a DeiT
(``JoakimHaurum/ATC`` @227c94b, ``ATC_setup/models/atc.py``; ``../shared/METHODS.md``, section "atc").

Amount ``--keep κ`` (the code's ``--reduction_ratio``), at blocks ``L // 4``, ``L // 2``, ``3L // 4``
(3, 6, 9 on a 12-block DeiT: the README's ``--reduction_loc 3 6 9``; other depths are our choice; where
two locations coincide the later stage's count wins, as the code's per-block table is filled). The
``s``-th location keeps ``K_s = int(P * κ ** (s + 1))`` clusters, in double, relative to the model's patch
count ``P`` (not to the current token count); in the block ``K = min(K_s, N - 1)``, and a location whose
``K_s`` is 0 does not reduce (κ 0.1: 19, 1, 0).

A reducing block, after the attention residual and before the MLP: the head-mean keys ``k̄`` of all
``N`` tokens, ``m = k̄ / ‖k̄‖`` (by division, no epsilon), ``S = m mᵀ`` in float32, ``D = 1 − S`` over the
non-class tokens, of which only the upper triangle is read; complete-linkage agglomerative clustering of
the ``N − 1`` non-class tokens down to ``K`` clusters (the code: scikit-learn per image on the CPU;
here batched in torch, ``tomecis.linkage``, same clusters ties aside); each cluster becomes one token,
the size-weighted mean of its residual-stream vectors (float32 accumulation), sizes summed (sizes start
at 1 at the first reduction; the class token is its own cluster of size 1). Output
``[class, one token per cluster]``, clusters ordered by their smallest member's position (the code emits
scikit-learn's label order; the order changes nothing but float summation later). Proportional attention
(``+ log s``) in every block after the first reducing one. Source maps of a cluster are summed.

Departures from the paper, kept because the published numbers come from the code (METHODS.md):
D11, the paper fine-tunes DeiT with ATC, here it runs on off-the-shelf weights; D12, the per-stage count is
``int(P·κ^(s+1))``, relative to the original patch count. Ours from the code: the clustering runs in
float32 where the code's SciPy widens to float64 (exact: complete linkage only compares and takes maxima
of the input distances), and a block whose ``K`` equals ``N − 1`` (κ above ~0.995) is left alone, where the
code would re-emit every token as its own cluster (``x·s/s``, a rounding-level change).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import linkage
from .. import merge as M
from ..names import Method
from . import BlockView, TokenState


def locations(depth: int) -> Tuple[int, int, int]:
    """The reducing blocks of stages 0, 1, 2: ``(L // 4, L // 2, 3L // 4)``, (3, 6, 9) for 12 blocks."""
    return (depth // 4, depth // 2, 3 * depth // 4)


def stage_clusters(patches: int, keep: float, stage: int) -> int:
    """``K_s = int(P * κ ** (s + 1))``, in double, exactly as the code writes it."""
    return int(patches * keep ** (stage + 1))


def clusters_at(index: int, depth: int, patches: int, keep: float) -> int:
    """``K_s`` of block ``index`` (the last stage placed there), or 0 where no stage is."""
    stages = [s for s, block in enumerate(locations(depth)) if block == index]
    return stage_clusters(patches, keep, stages[-1]) if stages else 0


def count(tokens: int, index: int, depth: int, r: int, keep: Optional[float], patches: int = 0) -> int:
    """Tokens removed at block ``index`` from its ``N = tokens``: ``N − 1 − min(K_s, N − 1)``, 0 where
    ``K_s`` is 0 (no stage there, or κ small) or no keep ratio is set. ``patches``: the model's ``P``."""
    if keep is None:
        return 0
    if patches <= 0:
        raise ValueError("method 'atc' needs the model's patch count (patches > 0) for its cluster counts")
    clusters = clusters_at(index, depth, patches, keep)
    if clusters <= 0:
        return 0
    return tokens - 1 - min(clusters, tokens - 1)


def key_distances(metric: torch.Tensor) -> torch.Tensor:
    """``metric [B, N, D]`` head-mean keys -> ``D = 1 − m mᵀ`` ``[B, N − 1, N − 1]`` float32 over the
    non-class tokens (``m`` the keys divided by their L2 norm; the product over all ``N`` tokens)."""
    with M.autocast_off(metric.device):
        m = M.as_dtype(metric, torch.float32)
        m = m / m.norm(dim=-1, keepdim=True)
        similarity = m @ m.transpose(-1, -2)  # [B, N, N]
    N = similarity.shape[1]
    return 1.0 - similarity.narrow(1, 1, N - 1).narrow(2, 1, N - 1)


def cluster_matching(metric: torch.Tensor, clusters: int) -> M.Matching:
    """Complete-linkage clusters of the non-class tokens as a ``Matching``: ``merge(x) [B, N, C] ->
    [B, K + 1, C]``, row 0 the class token, row ``1 + c`` cluster ``c`` (clusters by smallest member).
    ``keep_idx [B, K]``: each cluster's smallest member (token position); ``src_idx [B, N − 1 − K]``: the
    other tokens; ``dst_idx``: the cluster (``0 … K − 1``) each of them joins."""
    root = linkage.complete_linkage(key_distances(metric), clusters)  # [B, N - 1] over non-class tokens
    heads, others, cluster = linkage.cluster_layout(root, clusters)
    class_row = heads.new_zeros(heads.shape[0], 1)
    out_idx = torch.cat([class_row, heads + 1], dim=1)  # [B, K + 1] token positions
    merge, prune = M.index_merge(out_idx, others + 1, cluster + 1)
    return M.Matching(merge, others.shape[1], others + 1, cluster, heads + 1, prune)


def reduce(method: Method, view: BlockView, state: TokenState) -> torch.Tensor:
    """``[B, N, C] -> [B, K + 1, C]`` at a reducing block: size-weighted cluster means, sizes summed."""
    clusters = view.x.shape[1] - 1 - view.count  # K
    matching = cluster_matching(view.metric, clusters)
    state.ensure_sizes(view.x)
    x, state.size = M.merge_tokens(matching, view.x, None, state.size)
    if state.source is not None:
        state.source = matching.merge(state.source, mode="sum")
    return x
