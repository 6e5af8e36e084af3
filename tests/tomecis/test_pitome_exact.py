"""PiToMe exactly as the authors' harness computes it, bit for bit on the CPU (issue #29, item 5).

``harness_pitome`` below is a clean-room reading, in fp32, of what METHODS.md says the harness
(hchautran/PiToMe ``algo/pitome``) computes on a DeiT, written with the same kinds of calls the code makes:
the explicit attention ``softmax((q @ kᵀ) * scale) @ v`` in every block, ``F.normalize`` keys, the energy
``ELU(sim - m).mean``, the unstable ``argsort(descending=True)`` of the energies and of the bipartite edges,
and the size-weighted average ``merge(x * s, sum) / merge(s, sum)``. The product with
``attention="explicit"`` must give the same logits, bit for bit, on real photos at keep 0.7 and 0.9:
ties between float32 energies (they happen on real photos) are then broken as the code breaks them.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import tomecis

pytestmark = [pytest.mark.assets, pytest.mark.slow]

N_PHOTOS = 96
BATCH = 32


def _attention(block, x):
    """The harness's attention: ``[B, N, C] -> (out [B, N, C], keys averaged over heads [B, N, d])``."""
    attn_module = block.attn
    B, N, C = x.shape
    H = attn_module.num_heads
    qkv = attn_module.qkv(x).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q @ k.transpose(-2, -1)) * attn_module.scale).softmax(dim=-1)
    out = attn_module.proj((attn @ v).transpose(1, 2).reshape(B, N, C))
    return out, k.mean(1)


def _merge(x, cls, a_rows, b_rows, unm_rows, src_rows, dst_idx):
    """``[class, A rows kept (unm_rows into A), B with A's src rows summed into dst_idx]`` of ``x [B, T+1, C]``."""
    B = x.shape[0]
    batch = torch.arange(B).unsqueeze(1)
    body = x[:, 1:, :]
    src_all, dst = body[batch, a_rows, :], body[batch, b_rows, :]
    C = x.shape[-1]
    unm = src_all.gather(1, unm_rows.unsqueeze(-1).expand(-1, -1, C)) if unm_rows is not None else None
    src = src_all.gather(1, src_rows.unsqueeze(-1).expand(-1, -1, C))
    dst = dst.scatter_reduce(1, dst_idx.unsqueeze(-1).expand(-1, -1, C), src, reduce="sum")
    parts = [cls] + ([unm] if unm is not None else []) + [dst]
    return torch.cat(parts, dim=1)


def _pitome_merge(metric, r, margin, bipartite):
    """The harness's merge plan on ``metric [B, T+1, d]`` (class first) as a function of ``x``."""
    m = F.normalize(metric[:, 1:, :], p=2, dim=-1)
    sim = m @ m.transpose(-1, -2)
    energy = F.elu(sim - margin, alpha=1.0).mean(dim=-1)
    order = torch.argsort(energy, descending=True)
    B, T, _ = sim.shape
    if bipartite:
        a, b = order[..., ::2], order[..., 1::2]
        scores = sim.gather(-1, b.unsqueeze(-2).expand(B, T, b.shape[-1]))
        scores = scores.gather(-2, a.unsqueeze(-1).expand(B, a.shape[-1], b.shape[-1]))
        best, best_b = scores.max(dim=-1)
        edge = best.argsort(dim=-1, descending=True)
        unm_rows, src_rows = edge[:, r:], edge[:, :r]
        dst_idx = best_b.gather(1, src_rows)
        protected = None
    else:
        merge_idx, protected = order[:, : 2 * r], order[:, 2 * r :]
        a, b = merge_idx[..., ::2], merge_idx[..., 1::2]
        scores = sim.gather(-1, b.unsqueeze(-2).expand(B, T, r))
        scores = scores.gather(-2, a.unsqueeze(-1).expand(B, r, r))
        dst_idx = scores.max(dim=-1).indices
        unm_rows, src_rows = None, torch.arange(r).expand(B, r)

    def merge(x):
        cls = x[:, :1, :]
        if protected is None:
            return _merge(x, cls, a, b, unm_rows, src_rows, dst_idx)
        batch = torch.arange(x.shape[0]).unsqueeze(1)
        kept = x[:, 1:, :][batch, protected, :]
        out = _merge(x, cls, a, b, None, src_rows, dst_idx)
        return torch.cat([cls, kept, out[:, 1:, :]], dim=1)

    return merge


def harness_pitome(model, images, keep):
    """Logits ``[B, 1000]`` of PiToMe at ``keep`` as the harness computes them in fp32."""
    x = model.norm_pre(model._pos_embed(model.patch_embed(images)))
    depth = len(model.blocks)
    size = None
    for i, block in enumerate(model.blocks):
        out, metric = _attention(block, block.norm1(x))
        x = x + out
        T = x.shape[1] - 1
        r = math.floor(T - T * keep)
        merge = _pitome_merge(metric, r, 0.75 - 0.75 * (i / depth), i < math.ceil(depth * 0.5))
        if size is None:
            size = torch.ones_like(x[..., 0, None])
        x = merge(x * size)
        size = merge(size)
        x = x / size
        x = x + block.mlp(block.norm2(x))
    return model.forward_head(model.norm(x))


@pytest.mark.parametrize("keep", [0.7, 0.9])
def test_explicit_pitome_gives_the_harness_logits_bit_for_bit(deit_tiny_real, sample_photos, keep):
    images, _ = sample_photos
    index = torch.tensor([i * len(images) // N_PHOTOS for i in range(N_PHOTOS)])
    images = images[index]
    product = tomecis.patch(copy.deepcopy(deit_tiny_real), method="pitome", keep=keep, attention="explicit")
    fused = tomecis.patch(copy.deepcopy(deit_tiny_real), method="pitome", keep=keep)
    flips = 0
    with torch.no_grad():
        for i in range(0, len(images), BATCH):
            x = images[i : i + BATCH]
            theirs = harness_pitome(deit_tiny_real, x, keep)
            mine = product(x)
            differ = (mine != theirs).any(-1).nonzero().flatten().tolist()
            assert not differ, f"keep {keep}: photos {[i + j for j in differ]} differ from the harness"
            flips += (fused(x).argmax(-1) != theirs.argmax(-1)).sum().item()
    print(f"\npitome keep {keep}: explicit = harness on {len(images)} photos; fused flips {flips} top-1s")
