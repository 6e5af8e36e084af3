"""tomecis.device: device choice, autocast by name, device names (CPU here; the CUDA side in test_cuda)."""

import contextlib

import pytest
import torch

from tomecis import benchmark, device


def test_amp_names_are_the_ones_everything_accepts():
    assert list(device.AMP_DTYPES) == ["none", "fp16", "bf16"]
    assert device.AMP_DTYPES["fp16"] is torch.float16 and device.AMP_DTYPES["bf16"] is torch.bfloat16


def test_autocast_by_name():
    cpu = torch.device("cpu")
    assert isinstance(device.autocast(cpu, "none"), contextlib.nullcontext)
    with device.autocast(cpu, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype is torch.bfloat16
    with pytest.raises(ValueError, match=r"amp must be one of \['none', 'fp16', 'bf16'\], got 'fp32'"):
        device.autocast(cpu, "fp32")


def test_resolve_device_and_its_name():
    assert device.resolve_device("cpu") == torch.device("cpu")
    assert device.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert device.device_name(torch.device("cpu")) == f"cpu ({torch.get_num_threads()} threads)"
    device.synchronize(torch.device("cpu"))  # a no-op off CUDA
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA device"):
            device.resolve_device("cuda")


def test_benchmark_still_offers_the_device_helpers():
    for name in ("AMP_DTYPES", "autocast", "device_name", "resolve_device", "synchronize"):
        assert getattr(benchmark, name) is getattr(device, name)
