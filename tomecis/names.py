"""Names every room shares, importable without torch or timm: the token-reduction methods, autocast
settings, short model names. Reading results (``orchestrator.report``) needs these and nothing heavier.

The methods are one table (``METHODS``). A method declares which amounts it takes (``r``: tokens removed
per block; ``keep``: the per-block keep ratio), whether its blocks need the class importance score or the
class token's attention, whether it applies proportional attention, and, for the ToMe-style merges, how
merged tokens are weighted. ``tomecis.patch`` looks the method up and runs its reduction
(``tomecis/methods/<name>.py``); the sweep checks names and amounts with ``method_spec`` and
``check_amount``; the report compares every method against the unreduced model, ``UNREDUCED``. A new
method is one more ``Method`` here, one module in ``tomecis/methods/`` (and their tests).

A point's amount is ``(r, keep)``: ``r`` an int and ``keep`` None for the methods reduced by ``--r``,
``r`` None and ``keep`` a float in (0, 1) for ``--keep``; the unreduced model is ``("none", 0, None)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

# (score [B, N, 1] or None, size [B, N, 1]) -> weights [B, N, 1], or None to weight by size itself
TokenWeight = Callable[[Optional[Any], Any], Optional[Any]]


def class_importance_weight(score, size):
    """ToMeCIS: merged tokens are averaged weighted by their class importance score."""
    return score


def size_weight(score, size):
    """ToMe: merged tokens are averaged weighted by their size (None: the merge weights by size exactly,
    sizes being at least 1 need no clamp)."""
    return None


AMOUNTS = ("r", "keep")  # the amount kinds: tokens removed per block, per-block keep ratio


@dataclass(frozen=True)
class Method:
    """One token-reduction method: what it takes and what its reducing blocks need."""

    name: str
    amounts: Tuple[
        str, ...
    ]  # the amount kinds it takes, of AMOUNTS ("r", "keep"); () for the unreduced model
    summary: str  # one line for help texts and reports
    needs_score: bool = False  # the block computes the class importance score (ToMeCIS)
    needs_cls_attn: bool = (
        False  # the block needs the class token's attention row, averaged over heads (EViT)
    )
    prop_attn: bool = (
        False  # attention adds log(size) once tokens have merged (ToMe's proportional attention)
    )
    weight: Optional[TokenWeight] = None  # ToMe-style merges: per-token weights of the average
    source: str = ""  # whose code the method follows

    def takes(self, amount: str) -> bool:
        return amount in self.amounts


UNREDUCED = "none"  # the unreduced model: one baseline point per model, whatever methods are swept

METHODS: Dict[str, Method] = {
    m.name: m
    for m in (
        Method(UNREDUCED, (), "the unreduced model (timm's own blocks)"),
        Method(
            "tomecis",
            ("r", "keep"),
            "bipartite merge on keys, class-importance-weighted average, proportional attention (ToMeCIS)",
            needs_score=True,
            prop_attn=True,
            weight=class_importance_weight,
            source="SPEC.md (Seol et al., IECON 2023)",
        ),
        Method(
            "tome",
            ("r", "keep"),
            "bipartite merge on keys, size-weighted average, proportional attention (ToMe)",
            prop_attn=True,
            weight=size_weight,
            source="facebookresearch/ToMe",
        ),
        Method(
            "pitome",
            ("r", "keep"),
            "energy-ordered merge, protected high-energy tokens, size-weighted average (PiToMe)",
            source="hchautran/PiToMe algo/pitome",
        ),
        Method(
            "tofu",
            ("r", "keep"),
            "bipartite matching on keys: prune in the first half, norm-preserving merge after (ToFu)",
            source="hchautran/PiToMe algo/tofu",
        ),
        Method(
            "evit",
            ("keep",),
            "keep the tokens the class token attends to most, fuse the rest, at three blocks (EViT)",
            needs_cls_attn=True,
            source="youweiliang/evit",
        ),
    )
}
METHOD_NAMES: Tuple[str, ...] = tuple(METHODS)
REDUCING_METHODS: Tuple[str, ...] = tuple(n for n in METHODS if n != UNREDUCED)


def method_spec(name: str) -> Method:
    """The method called ``name``; an unknown name raises ``ValueError`` listing the methods."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHOD_NAMES)}") from None


def methods_help() -> str:
    """``tomecis (...; --r, --keep), tome (...)`` for ``--method`` help texts."""
    return "; ".join(
        f"{m.name} ({m.summary}; {', '.join('--' + a for a in m.amounts)})"
        for m in METHODS.values()
        if m.amounts
    )


def check_amount(name: str, r: Optional[int], keep: Optional[float]) -> None:
    """Raise ``ValueError`` naming the method and the flags it takes unless ``(r, keep)`` is one amount it
    takes: exactly one of ``r`` (an int >= 0) and ``keep`` (a float in (0, 1]) is set, and the method
    takes that kind; the unreduced model takes ``(0, None)`` only."""
    method = method_spec(name)
    if name == UNREDUCED:
        if (r not in (0, None)) or keep not in (None, 1.0):
            raise ValueError(
                f"method {UNREDUCED!r} is the unreduced model: it takes no amount (got r={r}, keep={keep})"
            )
        return
    if (r is None) == (keep is None):
        raise ValueError(f"method {name!r} needs exactly one amount, r or keep (got r={r}, keep={keep})")
    kind = "r" if r is not None else "keep"
    if not method.takes(kind):
        raise ValueError(
            f"method {name!r} takes {' or '.join('--' + a for a in method.amounts)}, not --{kind}"
        )
    if r is not None and (isinstance(r, bool) or int(r) != r or r < 0):
        raise ValueError(f"r must be an integer >= 0, got {r!r}")
    if keep is not None and not (0.0 < float(keep) <= 1.0 and math.isfinite(float(keep))):
        raise ValueError(f"keep must lie in (0, 1], got {keep!r}")


def is_unreduced(r: Optional[int], keep: Optional[float]) -> bool:
    """Whether an amount reduces nothing: ``r = 0`` or ``keep = 1``."""
    return (r is not None and r == 0) or (keep is not None and float(keep) >= 1.0)


def amount_label(r: Optional[int], keep: Optional[float]) -> str:
    """``r13``, ``keep0.9``: an amount as file names and tables write it."""
    if keep is not None:
        return f"keep{float(keep):g}"
    return f"r{r}"


Amount = Tuple[Optional[int], Optional[float]]  # (r, keep)


def amounts_taken(
    name: str, r_values: Sequence[int], keep_values: Sequence[float]
) -> Tuple[List[Amount], Tuple[str, ...]]:
    """What method ``name`` takes of the amounts given: every ``(r, None)`` and ``(None, keep)`` of the
    kinds it takes (r values first), and the flags (``--r``, ``--keep``) given that it does not take.
    An empty list means the method was given no amount it takes (callers say so, naming it)."""
    method = method_spec(name)
    given = {"r": [(int(r), None) for r in r_values], "keep": [(None, float(k)) for k in keep_values]}
    taken = [amount for kind in AMOUNTS if method.takes(kind) for amount in given[kind]]
    skipped = tuple(f"--{kind}" for kind in AMOUNTS if given[kind] and not method.takes(kind))
    return taken, skipped


def parse_keep_values(text: str) -> list:
    """``"0.7,0.9"`` -> ``[0.7, 0.9]``, first-seen order, duplicates dropped; each in (0, 1]."""
    values: list = []
    items = [item.strip() for item in str(text).split(",")]
    if not any(items):
        raise ValueError("keep values are empty; give ratios such as 0.7,0.9")
    for item in items:
        try:
            value = float(item)
        except ValueError:
            raise ValueError(
                f"cannot read keep ratio {item!r}: give numbers in (0, 1], e.g. 0.7,0.9"
            ) from None
        if not (0.0 < value <= 1.0):
            raise ValueError(f"keep ratio {item!r} must lie in (0, 1]")
        if value not in values:
            values.append(value)
    return values


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
