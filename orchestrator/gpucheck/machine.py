"""What this machine has: Python, torch, CUDA, timm, webdataset, Ray (or none), the GPU, /dev/shm."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
from pathlib import Path
from typing import Optional, Sequence

import torch

from .config import GpuCheckConfig


def ray_version() -> Optional[str]:
    """Ray's version, or None where it cannot be imported (a stock PyTorch image has none)."""
    try:
        import ray
    except ImportError:
        return None
    return ray.__version__


def package_version(package: str) -> str:
    """The installed version of ``package``, or ``not installed``."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_section(cfg: GpuCheckConfig, wheels: Sequence[str] = ()) -> str:
    """The report's "Machine" lines: versions, cores, Ray or not, wheels installed, the GPU, /dev/shm."""
    device = torch.device(cfg.device)
    ray = ray_version()
    lines = [
        f"- Python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"timm {package_version('timm')}, webdataset {package_version('webdataset')}, "
        f"{os.cpu_count()} CPU cores",
        f"- Ray {ray}" if ray else "- Ray: not installed (the decode pass runs the evaluator in-process)",
    ]
    if wheels:
        lines.append(f"- installed offline from --wheels {cfg.wheels}: {', '.join(wheels)}")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(
            f"- {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}"
        )
    else:
        lines.append("- no GPU: this run is on the CPU (a rehearsal of the report, not a GPU proof)")
    if Path("/dev/shm").exists():  # DataLoader workers hand their batches over through it
        lines.append(f"- /dev/shm: {shutil.disk_usage('/dev/shm').free / 2**30:.1f} GiB free")
    return "\n".join(lines)
