"""Names every room shares, importable without torch or timm: the merge modes, autocast settings, short
model names. Reading results (``orchestrator.report``) needs these and nothing heavier.

The merge modes are one table. A mode declares whether a block must compute the class importance score
and how merged tokens are weighted; ``tomecis.patch`` looks the mode up and does what it says, the sweep
checks names with ``merge_mode``, and the report compares every mode against ``BASELINE_MODE``. A new
mode is one more ``MergeMode`` here (and its test).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

# (score [B, N, 1] or None, size [B, N, 1]) -> weights [B, N, 1], or None to weight by size itself
TokenWeight = Callable[[Optional[Any], Any], Optional[Any]]


def class_importance_weight(score, size):
    """ToMeCIS: merged tokens are averaged weighted by their class importance score."""
    return score


def size_weight(score, size):
    """ToMe: merged tokens are averaged weighted by their size (None: the merge weights by size exactly,
    sizes being at least 1 need no clamp)."""
    return None


@dataclass(frozen=True)
class MergeMode:
    """How one merge mode averages the tokens it merges."""

    name: str
    needs_score: bool  # the block computes the class importance score (the class row of attention)
    weight: TokenWeight  # per-token weights of the average, from the score and the sizes
    summary: str  # one line for help texts and reports


MERGE_MODES: Dict[str, MergeMode] = {
    mode.name: mode
    for mode in (
        MergeMode("tomecis", True, class_importance_weight, "class-importance-weighted average (ToMeCIS)"),
        MergeMode("tome", False, size_weight, "size-weighted average (ToMe)"),
    )
}
MODES: Tuple[str, ...] = tuple(MERGE_MODES)
BASELINE_MODE = "tome"  # what every other mode is compared against


def merge_mode(name: str) -> MergeMode:
    """The mode called ``name``; an unknown name raises ``ValueError`` listing the modes."""
    try:
        return MERGE_MODES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown mode {name!r}; choose from {', '.join(MODES)}") from None


def modes_help() -> str:
    """``tomecis (class-importance-weighted average (ToMeCIS)), tome (...)`` for ``--mode`` help texts."""
    return ", ".join(f"{m.name} ({m.summary})" for m in MERGE_MODES.values())


AMP_NAMES: Tuple[str, ...] = (
    "none",
    "fp16",
    "bf16",
)  # autocast settings (tomecis.device maps them to dtypes)

SHORT_NAMES: Dict[str, str] = {
    "deit_tiny": "deit_tiny_patch16_224",
    "deit_small": "deit_small_patch16_224",
    "deit_base": "deit_base_patch16_224",
    "deit_tiny_distilled": "deit_tiny_distilled_patch16_224",
    "deit_small_distilled": "deit_small_distilled_patch16_224",
    "deit_base_distilled": "deit_base_distilled_patch16_224",
}


def short_name(timm_name: str) -> str:
    """The short name of a timm DeiT name, or the timm name itself."""
    for short, full in SHORT_NAMES.items():
        if full == timm_name:
            return short
    return timm_name
