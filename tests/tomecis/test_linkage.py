"""tomecis.linkage (ATC's batched complete linkage) against brute force in pure Python, and against SciPy's
reading (the nearest-neighbour-chain tree cut at K clusters, reference_atc.py), on random distance matrices
of several sizes and cluster counts; only the upper triangle may count."""

from __future__ import annotations

import itertools

import pytest
import torch
from reference_atc import complete_linkage_groups

from tomecis import linkage


def brute_force_complete_linkage(dist, clusters):
    """Greedy agglomeration by definition: join the two clusters whose largest member distance (upper
    triangle ``dist[p][q]``, ``p < q``) is smallest, until ``clusters`` remain. Sorted member lists."""
    groups = [[p] for p in range(len(dist))]

    def linkage_distance(a, b):
        return max(dist[min(p, q)][max(p, q)] for p in a for q in b)

    while len(groups) > clusters:
        i, j = min(
            itertools.combinations(range(len(groups)), 2),
            key=lambda ij: linkage_distance(groups[ij[0]], groups[ij[1]]),
        )
        groups[i] = sorted(groups[i] + groups[j])
        del groups[j]
    return sorted(groups, key=lambda g: g[0])


def groups_of(root):
    """``root [M]`` -> clusters as sorted member lists, ordered by smallest member."""
    groups = {}
    for p, r in enumerate(root.tolist()):
        groups.setdefault(r, []).append(p)
    return sorted(groups.values(), key=lambda g: g[0])


def random_distances(batch, points, seed, symmetric=False, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    d = torch.rand(batch, points, points, generator=g, dtype=dtype)
    return (d + d.transpose(1, 2)) / 2 if symmetric else d  # not symmetric: the lower triangle is noise


CASES = [(2, 1), (3, 2), (5, 1), (5, 3), (9, 4), (17, 9), (17, 16), (24, 1), (30, 11), (30, 29)]


@pytest.mark.parametrize("points, clusters", CASES, ids=str)
def test_batched_clusters_equal_brute_force_from_the_upper_triangle(points, clusters):
    dist = random_distances(3, points, seed=points * 100 + clusters)
    root = linkage.complete_linkage(dist, clusters)
    for b in range(3):
        upper = dist[b].tolist()
        expected = brute_force_complete_linkage(upper, clusters)
        assert groups_of(root[b]) == expected
        assert complete_linkage_groups(dist[b], clusters) == expected  # SciPy's tree, cut at K: the same


def test_only_the_upper_triangle_counts():
    """A lower triangle different from the upper one changes nothing; the transposed matrix (the lower
    triangle read as the upper) clusters differently, so the test can fail."""
    dist = random_distances(4, 20, seed=7)
    upper = dist.triu(1)
    changed = upper + torch.rand(4, 20, 20, dtype=torch.float64).tril(-1)
    assert torch.equal(linkage.complete_linkage(dist, 6), linkage.complete_linkage(changed, 6))
    transposed = linkage.complete_linkage(dist.transpose(1, 2).contiguous(), 6)
    assert not torch.equal(transposed, linkage.complete_linkage(dist, 6))


def test_float32_clusters_as_its_float64_widening():
    dist = random_distances(4, 40, seed=3, dtype=torch.float32)
    for clusters in (1, 10, 27, 39):
        assert torch.equal(
            linkage.complete_linkage(dist, clusters), linkage.complete_linkage(dist.double(), clusters)
        )


def test_roots_are_smallest_members_and_layout_places_every_point():
    dist = random_distances(5, 33, seed=11)
    clusters = 12
    root = linkage.complete_linkage(dist, clusters)
    heads, others, cluster = linkage.cluster_layout(root, clusters)
    assert heads.shape == (5, clusters) and others.shape == (5, 33 - clusters)
    for b in range(5):
        groups = groups_of(root[b])
        assert len(groups) == clusters
        assert heads[b].tolist() == [g[0] for g in groups]  # ascending smallest members
        assert others[b].tolist() == sorted(set(range(33)) - {g[0] for g in groups})
        for p, c in zip(others[b].tolist(), cluster[b].tolist()):
            assert p in groups[c]


def test_no_step_leaves_every_point_alone_and_bad_counts_raise():
    dist = random_distances(2, 6, seed=1)
    assert torch.equal(linkage.complete_linkage(dist, 6), torch.arange(6).expand(2, 6))
    with pytest.raises(ValueError, match=r"clusters must lie in \[1, 6\] for 6 points, got 0"):
        linkage.complete_linkage(dist, 0)
    with pytest.raises(ValueError, match="got 7"):
        linkage.complete_linkage(dist, 7)


def test_images_of_a_batch_are_clustered_independently():
    dist = random_distances(4, 15, seed=5)
    together = linkage.complete_linkage(dist, 5)
    for b in range(4):
        assert torch.equal(together[b], linkage.complete_linkage(dist[b : b + 1], 5)[0])


class _OpCounter(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def ops_of(points, clusters):
    counter = _OpCounter()
    with counter:
        linkage.complete_linkage(random_distances(2, points, seed=0), clusters)
    return counter.count


def test_each_step_dispatches_the_same_few_operators():
    """One joined pair costs 18 operators whatever the step (the host's share on a GPU; the benchmark's
    ceiling for ATC counts on it); the loop runs ``M - K`` times, the pointer jumping ``ceil(log2 M)``."""
    per_step = ops_of(64, 60) - ops_of(64, 61)
    assert per_step == 18
    assert ops_of(64, 40) - ops_of(64, 61) == 21 * per_step
