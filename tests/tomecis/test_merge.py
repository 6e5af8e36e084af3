"""Unit tests of the pure tensor functions in tomecis.merge, on hand-made inputs."""

import math

import pytest
import torch
from conftest import CPU_AUTOCAST_DTYPES

from tomecis import merge as M


def unit(*rows):
    t = torch.tensor(rows, dtype=torch.float32)
    return t / t.norm(dim=-1, keepdim=True)


def test_matching_on_a_hand_made_example():
    # positions: 0=cls(A) 1(B) 2(A) 3(B) 4(A) 5(B)
    metric = unit([1, 0], [0, 1], [0.1, 1], [1, 0.05], [1, 0.02], [-1, 0.3])[None]
    m = M.bipartite_soft_matching(metric, r=1)
    # A=2 is closest to B=1, A=4 to B=3; A=4 (cos ~0.9995) beats A=2 (cos ~0.995)
    assert m.r == 1
    assert m.src_idx.tolist() == [[2]]  # A index 2 == position 4
    assert m.dst_idx.tolist() == [[1]]  # B index 1 == position 3
    assert m.keep_idx.tolist() == [[0, 1]]  # class token and position 2, ascending
    x = torch.arange(6, dtype=torch.float32)[None, :, None]
    merged = m.merge(x, mode="sum")
    assert merged[0, :, 0].tolist() == [0, 2, 1, 3 + 4, 5]  # kept A, then all B


def test_class_token_is_never_merged_and_r_is_clamped():
    metric = torch.ones(2, 7, 4)  # every pair equally similar
    m = M.bipartite_soft_matching(metric, r=100)
    assert m.r == (7 - 1) // 2
    assert (m.src_idx != 0).all()
    assert M.bipartite_soft_matching(metric, r=0).r == 0
    assert M.clamp_r(5, 3) == 1 and M.clamp_r(5, 2) == 0 and M.clamp_r(5, 1, True, True) == 0


def test_distillation_token_is_never_a_destination_and_stays_second():
    g = torch.Generator().manual_seed(0)
    metric = torch.randn(3, 11, 8, generator=g)
    metric[:, 1] = metric[:, 2]  # position 2 (A) would love to merge into position 1 (dist)
    m = M.bipartite_soft_matching(metric, r=4, distill_token=True)
    assert m.r == (11 - 2) // 2
    assert (m.dst_idx != 0).all()
    x = torch.arange(11, dtype=torch.float32)[None, :, None].expand(3, -1, -1)
    out = m.merge(x, mode="amax")
    assert out[:, 0, 0].tolist() == [0] * 3 and out[:, 1, 0].tolist() == [1] * 3


def test_class_importance_is_mean_attention_times_norm_of_mean_value():
    cls_attn = torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.6, 0.3]]])  # [B=1, H=2, N=3]
    v = torch.zeros(1, 2, 3, 2)
    v[0, 0, :, 0] = torch.tensor([3.0, 1.0, 0.0])
    v[0, 1, :, 1] = torch.tensor([4.0, 1.0, 2.0])
    score = M.class_importance(cls_attn, v)
    expected = [0.3 * math.hypot(1.5, 2.0), 0.425 * math.hypot(0.5, 0.5), 0.275 * math.hypot(0.0, 1.0)]
    assert score.shape == (1, 3, 1)
    assert score[0, :, 0].tolist() == pytest.approx(expected, rel=1e-6)


def test_class_attention_equals_row_zero_of_full_softmax_with_size_bias():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 3, 9, 4, generator=g), torch.randn(2, 3, 9, 4, generator=g)
    size = torch.randint(1, 5, (2, 9, 1), generator=g).float()
    full = (q @ k.transpose(-1, -2) * 0.5 + size.log()[:, None, None, :, 0]).softmax(-1)
    row = M.class_attention(q[:, :, :1], k, 0.5, size.log())
    torch.testing.assert_close(row, full[:, :, 0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", CPU_AUTOCAST_DTYPES)
def test_class_attention_is_float32_under_autocast(dtype):
    """SPEC: the score is computed in float32; autocast must not turn the q·k product into half precision."""
    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(2, 3, 50, 16, generator=g) * 3, torch.randn(2, 3, 50, 16, generator=g) * 3
    size = torch.randint(1, 5, (2, 50, 1), generator=g).float()
    exact = M.class_attention(q[:, :, :1], k, 0.25, size.log())
    with torch.autocast("cpu", dtype=dtype):
        under = M.class_attention(q[:, :, :1], k, 0.25, size.log())
    assert under.dtype == torch.float32
    torch.testing.assert_close(under, exact, rtol=1e-6, atol=1e-7)


def test_weighted_merge_equals_the_formula_in_float32():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 9, 5, generator=g)
    w = torch.rand(2, 9, 1, generator=g)
    m = M.bipartite_soft_matching(torch.randn(2, 9, 4, generator=g), r=3)
    out = M.merge_weighted(m, x, w)
    for b in range(2):
        for j, d in enumerate(range(1, 9, 2)):
            members = [d] + [2 * int(s) for s, t in zip(m.src_idx[b], m.dst_idx[b]) if int(t) == j]
            num = sum(w[b, i] * x[b, i] for i in members)
            den = sum(w[b, i] for i in members)
            torch.testing.assert_close(out[b, m.keep_idx.shape[1] + j], num / den, rtol=1e-6, atol=1e-7)


def test_weighted_merge_survives_zero_and_half_precision_weights():
    x = torch.randn(1, 9, 4).half()
    m = M.bipartite_soft_matching(torch.randn(1, 9, 4), r=4)
    zero = torch.zeros(1, 9, 1, dtype=torch.float16)
    out = M.merge_weighted(m, x, zero)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    tiny = torch.full((1, 9, 1), 1e-30)  # underflows to 0 in fp16, fine in float32
    assert torch.isfinite(M.merge_weighted(m, x, tiny)).all()


def test_sizes_add_and_sources_partition_the_input():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 13, 4, generator=g)
    size, source = M.initial_state(x, trace_source=True)
    for r in (4, 3, 2):
        m = M.bipartite_soft_matching(torch.randn(2, size.shape[1], 4, generator=g), r=r)
        size, source = M.merge_size(m, size), M.merge_source(m, source)
    assert size.shape[1] == 13 - 9
    assert size.sum(dim=1).flatten().tolist() == [13.0, 13.0]
    assert torch.equal(source.sum(dim=1), torch.ones(2, 13))  # every input token in exactly one output
    assert torch.equal(source.sum(dim=-1, keepdim=True), size)
