"""Orthonormal DCT-II and its inverse (DCT-III) along the last axis, by Makhoul's FFT construction.

Pure tensor functions, no model knowledge. They follow the route the PiToMe harness's ``algo/dct/merge.py``
takes (METHODS.md, "dct", "Precision"), operation by operation in float32/complex64, because the DCT method
rounds its output to float16 and a different float32 route (a matrix product, a real-arithmetic form)
turns float32 rounding differences into occasional one-ulp float16 differences:

* forward, length ``T``: ``v = [t_0, t_2, t_4, ..., odd-indexed reversed]``, ``V = FFT(v)``, angles
  ``theta_m = (-m * pi) / (2T)`` in float32, ``R = Re V cos(theta) - Im V sin(theta)``, ``R_0 / (2 sqrt T)``,
  ``R_m / (2 sqrt(T / 2))``, ``X = 2 R``;
* inverse, length ``n``: ``Y = X / 2``, ``Y_0 * 2 sqrt n``, ``Y_m * 2 sqrt(n / 2)``, angles
  ``phi_m = m pi / (2n)`` in float32, ``U = Y + i [0, -Y_{n-1}, ..., -Y_1]`` rotated by ``phi``,
  ``u = Re IFFT(.)``, ``t_{2j} = u_j``, ``t_{2j+1} = u_{n-1-j}``.

Scalars enter as Python numbers exactly where the harness uses them, so each device rounds them as the
harness does there. The only shapes are the token counts (ints): the functions trace whole under
``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import math

import torch


def dct2_ortho(t: torch.Tensor) -> torch.Tensor:
    """Orthonormal DCT-II along the last axis: ``[..., T]`` float32 -> ``[..., T]`` float32."""
    T = t.shape[-1]
    v = torch.cat([t[..., ::2], t[..., 1::2].flip(-1)], dim=-1)  # [..., T] even, then odd reversed
    spectrum = torch.fft.fft(v, dim=-1)  # [..., T] complex64
    theta = -torch.arange(T, dtype=t.dtype, device=t.device) * math.pi / (2 * T)  # [T] float32
    rotated = spectrum.real * theta.cos() - spectrum.imag * theta.sin()  # [..., T]
    scaled = torch.cat(
        [rotated[..., :1] / (math.sqrt(T) * 2), rotated[..., 1:] / (math.sqrt(T / 2) * 2)], dim=-1
    )
    return 2 * scaled


def idct2_ortho(coefficients: torch.Tensor) -> torch.Tensor:
    """Orthonormal inverse of :func:`dct2_ortho` (a DCT-III) of the last axis's length ``n``:
    ``[..., n]`` float32 -> ``[..., n]`` float32."""
    n = coefficients.shape[-1]
    half = coefficients / 2
    y = torch.cat([half[..., :1] * (math.sqrt(n) * 2), half[..., 1:] * (math.sqrt(n / 2) * 2)], dim=-1)
    phi = torch.arange(n, dtype=y.dtype, device=y.device) * math.pi / (2 * n)  # [n] float32
    cos, sin = phi.cos(), phi.sin()
    imag = torch.cat([y[..., :1] * 0, -y.flip(-1)[..., :-1]], dim=-1)  # [0, -y_{n-1}, ..., -y_1]
    w = torch.complex(y * cos - imag * sin, y * sin + imag * cos)  # [..., n] complex64
    u = torch.fft.ifft(w, dim=-1).real  # [..., n]
    return u.index_select(-1, interleave_index(n, y.device))


def interleave_index(n: int, device: torch.device) -> torch.Tensor:
    """``[n]`` long: output ``2j`` reads ``j``, output ``2j + 1`` reads ``n - 1 - j`` (Makhoul's reordering
    undone), built on ``device`` from ``arange`` (no host copy, so it captures in a CUDA graph)."""
    j = torch.arange(n, device=device)
    half = torch.div(j, 2, rounding_mode="floor")
    return torch.where(j % 2 == 0, half, n - 1 - half)


def truncate(t: torch.Tensor, kept: int) -> torch.Tensor:
    """The lowest ``kept`` orthonormal DCT-II coefficients of length ``T`` along the token axis, brought back
    by the orthonormal inverse of length ``kept`` (the amplitude ``sqrt(T / kept)`` left uncorrected, as the
    harness does), in float32: ``[B, T, C]`` -> ``[B, kept, C]``."""
    signal = t.float().transpose(1, 2)  # [B, C, T]: one transform per image and channel
    coefficients = dct2_ortho(signal).narrow(-1, 0, kept)  # [B, C, kept]
    return idct2_ortho(coefficients).transpose(1, 2)  # [B, kept, C]
