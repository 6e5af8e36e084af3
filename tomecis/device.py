"""Devices and autocast: which device to run on, its name, autocast by name, synchronisation.

``AMP_DTYPES`` maps the autocast settings of ``tomecis.names.AMP_NAMES`` (``none``, ``fp16``, ``bf16``),
the one list the benchmark, the sweep and the report accept, to their dtypes.
"""

from __future__ import annotations

import contextlib

import torch

from .names import AMP_NAMES

AMP_DTYPES = dict(zip(AMP_NAMES, (None, torch.float16, torch.bfloat16)))  # name -> autocast dtype


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; an unavailable cuda is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device; use --device cpu or auto")
    return dev


def autocast(device: torch.device, amp: str, cache: bool = True):
    """Autocast context for ``amp`` in {none, fp16, bf16}. ``cache=False`` recasts the weights at every
    use instead of keeping the casts for the context's life (what a CUDA-graph capture needs)."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {list(AMP_DTYPES)}, got {amp!r}")
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    if not cache:
        return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op off CUDA), so that a timer reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """``NVIDIA H100 80GB HBM3`` for a GPU, ``cpu (16 threads)`` for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"
