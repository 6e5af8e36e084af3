"""Parse ``--models``, ``--mode`` and ``--r`` into (model, mode, r) grid points, and say what makes a point's
identity (``IDENTITY``: the columns every results file of the point carries, and its file name). No I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from tomecis.names import AMP_NAMES, MODES, merge_mode, short_name
from tomecis.schedule import parse_r_values

AMPS = AMP_NAMES  # "none", "fp16", "bf16": one list, in tomecis.names
DEVICE_KINDS = ("cpu", "cuda")

# The columns that make a point's identity, in the order its files hold them, each with the GridPoint field
# it comes from. Points rows, predictions and failures carry them (``GridPoint.identity``); the Parquet
# types follow the fields' types (``results``); a rerun skips a point whose file name (``file_stem``) exists.
IDENTITY_FIELDS: Dict[str, str] = {
    "model": "model",
    "mode": "mode",
    "r": "r",
    "amp": "amp",
    "infer_batch_size": "batch_size",
    "weights": "weights",
    "device": "device",  # the point knows the kind (cpu, cuda); its files hold the exact device name
    "dataset": "dataset",
}
IDENTITY = tuple(IDENTITY_FIELDS)
KEY_COLUMNS = ("model", "mode", "r")  # a line of a table: one model in one mode, at each r
SETTING_COLUMNS = tuple(c for c in IDENTITY if c not in KEY_COLUMNS)  # rows of one setting can be compared


@dataclass(frozen=True)
class GridPoint:
    """One (model, r) evaluation, with what makes results comparable: mode, amp, batch size, the
    weights (``random``, ``pretrained`` or ``ckpt_<sha256 prefix>``), the device kind (cpu, cuda) and
    the dataset (the fingerprint of the shards evaluated)."""

    model: str  # timm name
    r: int
    mode: str = "tomecis"
    amp: str = "none"
    batch_size: int = 128
    weights: str = "pretrained"
    device: str = "cpu"
    dataset: str = field(kw_only=True)  # the shards' fingerprint (``shards.ShardSet.fingerprint``)

    @property
    def short_name(self) -> str:
        return short_name(self.model)

    @property
    def key(self) -> Tuple[str, str, int]:
        """``(model, mode, r)``: what the evaluator runs the point under."""
        return self.model, self.mode, self.r

    def identity(self, device_name: Optional[str] = None) -> Dict[str, object]:
        """``IDENTITY`` column -> this point's value, in order. ``device`` is the kind unless
        ``device_name`` (the exact device that evaluated the point, what its files' ``device`` column
        holds) is given."""
        values = {column: getattr(self, name) for column, name in IDENTITY_FIELDS.items()}
        if device_name is not None:
            values["device"] = device_name
        return values

    def file_stem(self) -> str:
        """A file name that identifies the point, its weights, device kind and dataset (a rerun finds it again)."""
        return (
            f"{self.short_name}-{self.mode}-r{self.r}-{self.amp}-bs{self.batch_size}"
            f"-{self.weights}-{self.device}-{self.dataset}"
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
    *,
    dataset: str,
) -> List[GridPoint]:
    """Every (model, mode, r) on ``dataset`` (the shards' fingerprint), models outermost, then modes;
    ``weights`` maps a model to its weights tag (default pretrained)."""
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
        GridPoint(model, r, mode, amp, batch_size, tags.get(model, "pretrained"), device, dataset=dataset)
        for model in models
        for mode in modes
        for r in r_values
    ]


__all__ = [
    "AMPS",
    "DEVICE_KINDS",
    "IDENTITY",
    "IDENTITY_FIELDS",
    "KEY_COLUMNS",
    "MODES",
    "SETTING_COLUMNS",
    "GridPoint",
    "build_grid",
    "parse_models",
    "parse_modes",
    "parse_r_values",
]
