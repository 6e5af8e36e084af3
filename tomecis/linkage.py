"""Complete-linkage agglomerative clustering, batched in torch (ATC's clustering, ``tomecis.methods.atc``).

Pure tensor functions: no model knowledge, no NumPy/SciPy, no per-image Python loop. Shapes use ``B``
batch, ``M`` points, ``K`` clusters.

Complete linkage joins, again and again, the two clusters whose largest pairwise distance is smallest,
until ``K`` clusters remain. The cluster distance after joining ``u`` and ``v`` is, towards any ``w``,
``max(d(u, w), d(v, w))`` (the Lance-Williams update for complete linkage), so one ``[B, M, M]`` matrix
of cluster distances holds everything: per step the closest live pair per image (row minima, then the
first row and column holding the smallest: a flat ``argmin``'s pair), then the
row and column of the joined cluster become the element-wise maximum of the two and the absorbed one is
masked with ``+inf``. The number of steps, ``M - K``, is a Python int, so the whole clustering traces as
one graph under ``torch.compile(fullgraph=True)`` and captures as one CUDA graph.

Same clusters as SciPy's ``linkage(method="complete")`` cut at ``K`` clusters (scikit-learn's
``AgglomerativeClustering(n_clusters=K, linkage="complete")`` and ``fcluster(..., "maxclust")``),
ties aside: complete-linkage merge heights never decrease, so the tree SciPy builds (nearest-neighbour
chain, then sorted by height) lists exactly the merges of this greedy global-minimum agglomeration in
order, and cutting it at ``K`` clusters undoes its last ``K - 1`` merges, leaving the clusters this loop
has after ``M - K`` steps. Exact ties in the distances may be broken differently.

No arithmetic touches a distance: a cluster distance is always one of the input entries (a maximum of
them), so the clustering is exact in the input's dtype; float32 distances widened to float64 (as SciPy
does) give the same comparisons, hence the same clusters.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch


def symmetric_from_upper(distance: torch.Tensor) -> torch.Tensor:
    """``[B, M, M] -> [B, M, M]``: entries ``p < q`` mirrored below the diagonal, diagonal ``+inf``.

    Only the strict upper triangle of ``distance`` is read (SciPy's condensed form), so an input that is
    not exactly symmetric (a float32 matrix product) clusters as SciPy clusters it."""
    upper = distance.triu(1)
    full = upper + upper.transpose(1, 2)
    full.diagonal(dim1=1, dim2=2).fill_(math.inf)
    return full


def complete_linkage(distance: torch.Tensor, clusters: int) -> torch.Tensor:
    """Complete-linkage agglomeration of ``M`` points down to ``clusters`` clusters, per image.

    Args:
        distance: ``[B, M, M]`` pairwise distances, floating point; only entries ``p < q`` are read.
        clusters: ``K``, ``1 <= K <= M``.

    Returns:
        ``root [B, M]`` int64: for each point, the representative of its cluster, which is the cluster's
        smallest member (``torch.argmin`` returns the first of equal minima, so of a symmetric pair the
        one above the diagonal: the surviving row is always the smaller index).
    """
    B, M, _ = distance.shape
    if not 1 <= clusters <= M:
        raise ValueError(f"complete_linkage: clusters must lie in [1, {M}] for {M} points, got {clusters}")
    full = symmetric_from_upper(distance)  # [B, M, M] cluster distances, +inf where no live pair
    parent = torch.arange(M, device=distance.device).expand(B, M).contiguous()  # [B, M]
    dead_row = full.new_full((B, 1, M), math.inf)  # [B, 1, M] what an absorbed cluster's row becomes
    for _ in range(M - clusters):
        p, prow = _closest_row(full)  # [B, 1], [B, 1, M]: the first row holding the smallest distance
        q = prow.argmin(dim=2)  # [B, 1] its first column there: p < q (the matrix is symmetric)
        q_index = q.unsqueeze(-1).expand(B, 1, M)  # [B, 1, M]
        joined = torch.maximum(prow, full.gather(1, q_index))  # [B, 1, M] max(d(p, w), d(q, w))
        rows = torch.cat([p.unsqueeze(-1).expand(B, 1, M), q_index], dim=1)  # [B, 2, M]
        values = torch.cat([joined, dead_row], dim=1)  # [B, 2, M]: row p joined, row q dead
        full.scatter_(1, rows, values)
        full.transpose(1, 2).scatter_(1, rows, values)  # the same as columns
        parent.scatter_(1, q, p)  # q's parent is p
    return find_roots(parent)


def _closest_row(full: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``full [B, M, M]`` -> the first row holding each image's smallest entry, ``p [B, 1]``, and that row
    ``[B, 1, M]``. Row minima then their argmin (the row-major first occurrence, as a flat argmin gives):
    ``amin`` is vectorised where a flat ``argmin`` over ``M * M`` is not (5x faster on a CPU)."""
    B, M, _ = full.shape
    p = full.amin(dim=2).argmin(dim=1, keepdim=True)  # [B, 1]
    return p, full.gather(1, p.unsqueeze(-1).expand(B, 1, M))


def find_roots(parent: torch.Tensor) -> torch.Tensor:
    """``parent [B, M]`` int64 forest (a root is its own parent) -> ``root [B, M]``, by pointer jumping
    (``ceil(log2 M)`` gathers, a count fixed by ``M``)."""
    M = parent.shape[1]
    for _ in range(max(1, math.ceil(math.log2(max(M, 2))))):
        parent = parent.gather(1, parent)
    return parent


def cluster_layout(root: torch.Tensor, clusters: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each point goes when every cluster becomes one row, clusters ordered by their representative.

    Args:
        root: ``[B, M]`` int64 from :func:`complete_linkage` (a representative is its own root).
        clusters: ``K``, the number of distinct roots in every row.

    Returns:
        ``heads [B, K]``: the representatives, ascending (cluster ``c`` is row ``c``);
        ``others [B, M - K]``: the other points, ascending;
        ``cluster [B, M - K]``: the cluster (row) each of ``others`` joins.
    """
    B, M = root.shape
    position = torch.arange(M, device=root.device).expand(B, M)  # [B, M]
    is_head = root == position  # [B, M]
    order = (position + M * is_head).argsort(dim=1)  # distinct keys: non-heads ascending, then heads
    others, heads = order.narrow(1, 0, M - clusters), order.narrow(1, M - clusters, clusters)
    rank = is_head.cumsum(dim=1) - 1  # [B, M] at a head: its cluster's row
    cluster = rank.gather(1, root.gather(1, others))  # [B, M - K]
    return heads, others, cluster
