"""DCT token reduction as the PiToMe harness runs it on a DeiT (``hchautran/PiToMe`` ``algo/dct``).

With keep ratio ``k`` every block, at its **end** (after the MLP residual), sets the class token aside and
takes its ``T = N - 1`` other tokens, in their current order, as ``C`` signals of length ``T`` (one per
channel): the orthonormal DCT-II of length ``T``, the lowest ``T' = ceil(T * k)`` coefficients (in double),
the orthonormal inverse of length ``T'`` (``tomecis.dct``, Makhoul's FFT route in float32 as the code
computes it), then every value rounded to float16 and back. Output ``[class, t'_0 ... t'_{T'-1}]``. The
transform runs in every block whenever ``k < 1``, also where ``T' = T`` (it then only rounds through float16);
``k = 1`` is the unreduced model. Attention and MLP are plain (no sizes, no proportional attention).

Departures of the code from the paper, kept (``../shared/METHODS.md``, "dct"):

* **D1** every block's non-class tokens are rounded to float16 (explicitly: on every device and under every
  autocast setting), losing precision, at every keep below 1;
* **D2** the truncated orthonormal inverse multiplies the mean token by ``sqrt(T / T')``; nothing corrects it;
* **D3** the reduction sits after the MLP, not between attention and MLP.

Source tracing (``trace_source``): every output token mixes all input tokens, so no partition is exact. The
map we keep is the resampling's footprint: a length-``T'`` inverse of the lowest ``T'`` coefficients
resamples the token sequence at ``T'`` evenly spaced points, and output token ``j`` holds the input tokens
``i`` (non-class, 0-based) with ``floor(i * T' / T) = j`` (each at least one, a partition, so
``tomecis.visualize`` draws it). It says where an output token sits, not what it is made of.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .. import dct as D
from .. import merge as M
from ..names import Method
from . import BlockView, TokenState


def kept_tokens(tokens: int, keep: float) -> int:
    """``T' = ceil(T * k)`` in double, ``T = tokens - 1`` (the class token set aside)."""
    return math.ceil((tokens - 1) * keep)


def count(tokens: int, index: int, depth: int, r: int, keep: Optional[float]) -> int:
    """``T - T'`` tokens removed by every block (0 where ``T' = T``: the transform still runs, D1)."""
    if keep is None:
        return 0
    return tokens - 1 - kept_tokens(tokens, keep)


def footprint(tokens: int, kept: int, device: torch.device) -> torch.Tensor:
    """``[kept, tokens]`` 0/1 float32: row ``j`` marks the input tokens ``i`` with ``floor(i * kept / tokens)
    = j`` (the source map of one transform, see the module docstring)."""
    owner = torch.div(torch.arange(tokens, device=device) * kept, tokens, rounding_mode="floor")  # [tokens]
    rows = torch.arange(kept, device=device).unsqueeze(1)  # [kept, 1]
    return (rows == owner.unsqueeze(0)).float()


def reduce(method: Method, view: BlockView, state: TokenState) -> torch.Tensor:
    """``[B, N, C] -> [B, 1 + T', C]`` at the end of a block: the class token, then the non-class tokens
    truncated in the DCT domain and rounded through float16 (D1, D2)."""
    x = view.x
    tokens = x.shape[1] - 1  # T
    kept = tokens - view.count  # T'
    with M.autocast_off(x.device):
        mixed = D.truncate(x.narrow(1, 1, tokens), kept)  # [B, T', C] float32
    rounded = mixed.to(torch.float16).to(x.dtype)  # D1
    if state.source is not None:
        src = state.source  # [B, N, N0]
        moved = footprint(tokens, kept, src.device) @ src.narrow(1, 1, tokens)  # [B, T', N0]
        state.source = torch.cat([src.narrow(1, 0, 1), moved], dim=1)
    return torch.cat([x.narrow(1, 0, 1), rounded], dim=1)
