"""Clean-room reading of the DCT method (``../shared/METHODS.md``, "dct"), for the tests; shares no code
with ``tomecis``.

A block is timm's (plain explicit attention, ``softmax(q k^T d^-1/2) v``, then the MLP), and at its end,
where ``keep < 1``: the class token is set aside, the other ``T`` tokens go through the orthonormal DCT-II of
length ``T`` along the token axis (per image and channel), the lowest ``T' = ceil(T * keep)`` coefficients
come back through the orthonormal inverse of length ``T'`` (the ``sqrt(T / T')`` amplitude uncorrected), and
the result is rounded to float16 and back.

Two readings of the transform:

* ``"fft"``: the recipe METHODS.md's "Precision" paragraph gives, step by step in float32/complex64, one row
  per (channel, image) with the tokens last (the code's layout); the float16 rounding makes the route matter;
* ``"matrix"``: the DCT written as a cosine matrix from its definition, in float64 (how close the two are).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import List

import torch


@dataclass
class DctOutput:
    logits: torch.Tensor  # [B, classes]
    tokens: List[int] = field(default_factory=list)  # tokens after each block


def fft_dct(rows: torch.Tensor) -> torch.Tensor:
    """``[R, T]`` float32 -> ``[R, T]``: orthonormal DCT-II, METHODS.md's FFT recipe."""
    T = rows.shape[1]
    evens = rows[:, 0::2]
    odds_reversed = torch.flip(rows[:, 1::2], dims=[1])
    spectrum = torch.fft.fft(torch.cat([evens, odds_reversed], dim=1), dim=1)
    angle = -torch.arange(T, dtype=torch.float32)[None, :] * math.pi / (2 * T)
    real = spectrum.real * torch.cos(angle) - spectrum.imag * torch.sin(angle)
    real[:, 0] /= 2 * math.sqrt(T)
    real[:, 1:] /= 2 * math.sqrt(T / 2)
    return 2 * real


def fft_idct(coefficients: torch.Tensor) -> torch.Tensor:
    """``[R, n]`` float32 -> ``[R, n]``: the orthonormal inverse of length ``n``, METHODS.md's recipe."""
    n = coefficients.shape[1]
    y = coefficients.clone() / 2
    y[:, 0] *= 2 * math.sqrt(n)
    y[:, 1:] *= 2 * math.sqrt(n / 2)
    angle = torch.arange(n, dtype=torch.float32)[None, :] * math.pi / (2 * n)
    u_real = y
    u_imag = torch.cat([y[:, :1] * 0, -torch.flip(y, dims=[1])[:, : n - 1]], dim=1)
    w_real = u_real * torch.cos(angle) - u_imag * torch.sin(angle)
    w_imag = u_real * torch.sin(angle) + u_imag * torch.cos(angle)
    u = torch.fft.ifft(torch.complex(w_real, w_imag), dim=1).real
    out = torch.zeros_like(u)
    for j in range(n - n // 2):
        out[:, 2 * j] = u[:, j]
    for j in range(n // 2):
        out[:, 2 * j + 1] = u[:, n - 1 - j]
    return out


def cosine_matrix(T: int) -> torch.Tensor:
    """``[T, T]`` float64: ``D[m, j] = c_m cos(pi (2j + 1) m / 2T)``, ``c_0 = sqrt(1/T)``, else ``sqrt(2/T)``."""
    m = torch.arange(T, dtype=torch.float64)[:, None]
    j = torch.arange(T, dtype=torch.float64)[None, :]
    c = torch.full((T, 1), math.sqrt(2 / T), dtype=torch.float64)
    c[0, 0] = math.sqrt(1 / T)
    return c * torch.cos(math.pi * (2 * j + 1) * m / (2 * T))


def transform(tokens: torch.Tensor, keep: float, route: str) -> torch.Tensor:
    """``[B, T, C]`` non-class tokens -> ``[B, T', C]`` float16-rounded, in ``tokens``' dtype."""
    B, T, C = tokens.shape
    kept = math.ceil(T * keep)
    if route == "fft":
        rows = tokens.float().permute(2, 0, 1).reshape(C * B, T)  # channel-major rows, tokens last
        out = fft_idct(fft_dct(rows)[:, :kept]).reshape(C, B, kept).permute(1, 2, 0)
    elif route == "matrix":
        forward = cosine_matrix(T)[:kept]  # [T', T]
        inverse = cosine_matrix(kept).T  # [T', T'] DCT-III of length T'
        out = inverse @ (forward @ tokens.double())
    else:
        raise ValueError(route)
    return out.half().to(tokens.dtype)


def _attention(block, x):
    attn = block.attn
    y = block.norm1(x)
    B, N, C = y.shape
    H = attn.num_heads
    qkv = (y @ attn.qkv.weight.T + attn.qkv.bias).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    P = ((q @ k.transpose(-1, -2)) * (C // H) ** -0.5).softmax(dim=-1)
    return attn.proj((P @ v).transpose(1, 2).reshape(B, N, C))


def dct_forward(model, images: torch.Tensor, keep: float, route: str = "fft", dtype=torch.float32):
    """``model`` (an unpatched timm DeiT) reduced by DCT at ``keep``; ``dtype`` of the blocks
    (the transform's own precision is ``route``'s)."""
    m = copy.deepcopy(model).to(dtype).eval()
    tokens = []
    with torch.no_grad():
        x = m._pos_embed(m.patch_embed(images.to(dtype)))
        for block in m.blocks:
            x = x + _attention(block, x)
            x = x + block.mlp(block.norm2(x))
            if keep < 1:
                x = torch.cat([x[:, :1], transform(x[:, 1:], keep, route)], dim=1)
            tokens.append(x.shape[1])
        logits = m.head(m.norm(x)[:, 0])
    return DctOutput(logits, tokens)
