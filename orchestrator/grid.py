"""Parse ``--models``, ``--mode`` and ``--r`` into (model, mode, r) grid points. No I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Tuple, Union

from tomecis.names import AMP_NAMES, MODES, merge_mode, short_name
from tomecis.schedule import parse_r_values

AMPS = AMP_NAMES  # "none", "fp16", "bf16": one list, in tomecis.names
DEVICE_KINDS = ("cpu", "cuda")


@dataclass(frozen=True)
class GridPoint:
    """One (model, r) evaluation, with what makes results comparable: mode, amp, batch size, the
    weights (``random``, ``pretrained`` or ``ckpt_<sha256 prefix>``) and the device kind (cpu, cuda)."""

    model: str  # timm name
    r: int
    mode: str = "tomecis"
    amp: str = "none"
    batch_size: int = 128
    weights: str = "pretrained"
    device: str = "cpu"

    @property
    def short_name(self) -> str:
        return short_name(self.model)

    @property
    def key(self) -> Tuple[str, str, int]:
        """``(model, mode, r)``: what the evaluator runs the point under."""
        return self.model, self.mode, self.r

    def file_stem(self, fingerprint: str) -> str:
        """A file name that identifies the point, its weights, device kind and dataset (a rerun finds it again)."""
        return (
            f"{self.short_name}-{self.mode}-r{self.r}-{self.amp}-bs{self.batch_size}"
            f"-{self.weights}-{self.device}-{fingerprint}"
        )


def parse_models(text: str) -> List[str]:
    """``"deit_tiny,deit_small"`` -> timm names, in order, without duplicates; unknown names raise."""
    from tomecis.models import resolve_model_name  # timm's registry: imported only to parse names

    names: List[str] = []
    for item in str(text).split(","):
        if not item.strip():
            raise ValueError(f"empty model name in --models {text!r}; separate names with single commas")
        name = resolve_model_name(item)
        if name not in names:
            names.append(name)
    return names


def parse_modes(text: str) -> List[str]:
    """``"tomecis,tome"`` -> ``["tomecis", "tome"]``, in order, without duplicates; unknown modes raise."""
    modes: List[str] = []
    for item in str(text).split(","):
        mode = item.strip()
        try:
            merge_mode(mode)
        except ValueError as err:
            raise ValueError(f"{err} (comma-separated, in {text!r})") from None
        if mode not in modes:
            modes.append(mode)
    return modes


def build_grid(
    models: Sequence[str],
    r_values: Sequence[int],
    modes: Union[str, Sequence[str]] = "tomecis",
    amp: str = "none",
    batch_size: int = 128,
    weights: Optional[Mapping[str, str]] = None,
    device: str = "cpu",
) -> List[GridPoint]:
    """Every (model, mode, r), models outermost, then modes; ``weights`` maps a model to its weights tag
    (default pretrained)."""
    modes = [modes] if isinstance(modes, str) else list(modes)
    for mode in modes:
        merge_mode(mode)  # an unknown name raises, listing the modes
    if amp not in AMPS:
        raise ValueError(f"--amp must be one of {AMPS}, got {amp!r}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if device not in DEVICE_KINDS:
        raise ValueError(f"device kind must be one of {DEVICE_KINDS}, got {device!r}")
    tags = dict(weights or {})
    return [
        GridPoint(model, r, mode, amp, batch_size, tags.get(model, "pretrained"), device)
        for model in models
        for mode in modes
        for r in r_values
    ]


__all__ = [
    "AMPS",
    "DEVICE_KINDS",
    "MODES",
    "GridPoint",
    "build_grid",
    "parse_models",
    "parse_modes",
    "parse_r_values",
]
