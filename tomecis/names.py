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

import importlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

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

# Where in a block a method reduces: before the attention (on the block's input; MCTF), between the
# attention residual and the MLP (ToMe and most others), or after the MLP residual (DCT).
STAGES = ("before_attn", "after_attn", "after_mlp")

# What a reducing block computes for its method beside the attention output (``tomecis.methods.BlockView``):
# "keys"     the keys averaged over heads, [B, N, D] (always given; listed for completeness)
# "score"    the class importance score, [B, N, 1] float32 (ToMeCIS)
# "cls_attn" the class token's post-softmax attention row averaged over heads, [B, N] float32 (EViT)
# "attn"     the full post-softmax attention map, [B, H, N, N] (explicit attention; MCTF)
NEEDS = ("keys", "score", "cls_attn", "attn")

# When a method's attention adds ``log s`` of the token sizes (proportional attention):
# "no"        never;
# "reducing"  in the blocks that reduce, once sizes exist (ToMe: a block that removes nothing runs timm's code);
# "always"    in every block once sizes exist (ATC, MCTF, DiffRate).
PROP_ATTN = ("no", "reducing", "always")

# A function a declaration names: the object itself, or ``"package.module:attribute"`` imported on first
# use (the built-in methods name theirs so, which keeps this table importable without torch).
FunctionRef = Union[Callable[..., Any], str]


def resolve_ref(ref: Optional[FunctionRef], what: str) -> Optional[Callable[..., Any]]:
    """The function ``ref`` names (``"module:attr"`` imported now), or None; a bad reference raises
    ``ValueError`` naming ``what`` and the reference."""
    if ref is None or callable(ref):
        return ref
    module_name, _, attribute = str(ref).partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{what}: {ref!r} is not a function or a 'package.module:function' reference")
    try:
        target = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{what}: cannot import {ref!r} ({err})") from err
    if not callable(target):
        raise ValueError(f"{what}: {ref!r} is {type(target).__name__}, not a function")
    return target


@dataclass(frozen=True)
class Method:
    """The declaration of one token-reduction method, built-in or a researcher's own.

    A patched block asks ``count`` how many tokens it removes; where that is 0 (and the method does not
    ``reduce_at_zero``) it runs timm's own code, else it computes what ``needs`` lists and calls ``reduce``
    at ``stage`` (``tomecis.methods`` documents the signatures and ``BlockView``):

    * ``count(T, index, depth, r, keep) -> int``: tokens block ``index`` of ``depth`` removes from its ``T``
      input tokens (class token included), given the per-block ``r`` of the model's schedule and the keep
      ratio (one of them is set, as the method takes it; ``keep`` None means ``r`` is the amount);
    * ``reduce(method, view, state) -> x``: ``[B, N, C] -> [B, N - count, C]`` (EViT: one fused token added
      back), the class token first and untouched, updating ``state.size`` / ``state.source`` where the
      method tracks them;
    * ``check(r, keep, depth, patches)``: optional; raises ``ValueError`` for an amount the method cannot
      take on a model of ``depth`` blocks and ``patches`` patch tokens (name the method, the amount and the
      valid range).
    """

    name: str
    amounts: Tuple[
        str, ...
    ]  # the amount kinds it takes, of AMOUNTS ("r", "keep"); () for the unreduced model
    summary: str  # one line for help texts and reports
    count: Optional[FunctionRef] = None  # tokens a block removes (see above); None for the unreduced model
    reduce: Optional[FunctionRef] = None  # the reduction (see above)
    stage: str = "after_attn"  # where in the block it reduces, of STAGES
    needs: FrozenSet[str] = frozenset()  # what the block computes for it, of NEEDS
    prop_attn: str = "no"  # proportional attention, of PROP_ATTN
    reduce_at_zero: bool = False  # call ``reduce`` also where ``count`` is 0, whenever the amount reduces
    check: Optional[FunctionRef] = None  # refuses amounts the method cannot take (see above)
    distill_token: bool = False  # runs on models with a distillation token (kept second, never reduced)
    weight: Optional[TokenWeight] = None  # ToMe-style merges: per-token weights of the average
    source: str = ""  # whose code the method follows
    origin: str = "builtin"  # where the declaration came from: builtin, a distribution, a module path

    def __post_init__(self) -> None:
        problems = []
        if not self.name or not isinstance(self.name, str):
            problems.append(f"name must be a non-empty string, got {self.name!r}")
        if not set(self.amounts) <= set(AMOUNTS):
            problems.append(f"amounts {self.amounts!r} must be of {AMOUNTS}")
        if self.stage not in STAGES:
            problems.append(f"stage {self.stage!r} must be one of {STAGES}")
        if not set(self.needs) <= set(NEEDS):
            problems.append(f"needs {sorted(self.needs)} must be of {NEEDS}")
        if self.prop_attn not in PROP_ATTN:
            problems.append(f"prop_attn {self.prop_attn!r} must be one of {PROP_ATTN}")
        if self.amounts and (self.count is None or self.reduce is None):
            problems.append("a method that takes an amount needs count and reduce")
        if problems:
            raise ValueError(f"method declaration {self.name!r}: " + "; ".join(problems))
        object.__setattr__(self, "needs", frozenset(self.needs))

    def takes(self, amount: str) -> bool:
        return amount in self.amounts

    @property
    def needs_score(self) -> bool:
        return "score" in self.needs

    @property
    def needs_cls_attn(self) -> bool:
        return "cls_attn" in self.needs

    def functions(self) -> Tuple[Callable[..., Any], Callable[..., Any], Optional[Callable[..., Any]]]:
        """``(count, reduce, check)`` as functions, importing the references (``ValueError`` naming the
        method where one cannot be imported)."""
        what = f"method {self.name!r}"
        return (
            resolve_ref(self.count, f"{what} count"),
            resolve_ref(self.reduce, f"{what} reduce"),
            resolve_ref(self.check, f"{what} check"),
        )


UNREDUCED = "none"  # the unreduced model: one baseline point per model, whatever methods are swept


def _builtin(name: str, module: str, **fields) -> Method:
    return Method(
        name, count=f"tomecis.methods.{module}:count", reduce=f"tomecis.methods.{module}:reduce", **fields
    )


METHODS: Dict[str, Method] = {
    m.name: m
    for m in (
        Method(UNREDUCED, (), "the unreduced model (timm's own blocks)", distill_token=True),
        _builtin(
            "tomecis",
            "tome",
            amounts=("r", "keep"),
            summary="bipartite merge on keys, class-importance-weighted average, proportional attention (ToMeCIS)",
            needs=frozenset({"keys", "score"}),
            prop_attn="reducing",
            distill_token=True,
            weight=class_importance_weight,
            source="SPEC.md (Seol et al., IECON 2023)",
        ),
        _builtin(
            "tome",
            "tome",
            amounts=("r", "keep"),
            summary="bipartite merge on keys, size-weighted average, proportional attention (ToMe)",
            needs=frozenset({"keys"}),
            prop_attn="reducing",
            distill_token=True,
            weight=size_weight,
            source="facebookresearch/ToMe",
        ),
        _builtin(
            "pitome",
            "pitome",
            amounts=("r", "keep"),
            summary="energy-ordered merge, protected high-energy tokens, size-weighted average (PiToMe)",
            needs=frozenset({"keys"}),
            source="hchautran/PiToMe algo/pitome",
        ),
        _builtin(
            "tofu",
            "tofu",
            amounts=("r", "keep"),
            summary="bipartite matching on keys: prune in the first half, norm-preserving merge after (ToFu)",
            needs=frozenset({"keys"}),
            source="hchautran/PiToMe algo/tofu",
        ),
        _builtin(
            "evit",
            "evit",
            amounts=("keep",),
            summary="keep the tokens the class token attends to most, fuse the rest, at three blocks (EViT)",
            needs=frozenset({"cls_attn"}),
            source="youweiliang/evit",
        ),
        _builtin(
            "mctf",
            "mctf",
            amounts=("r",),
            summary="multi-criteria bidirectional merge on the block input before attention, "
            "one-step-ahead attention (MCTF)",
            stage="before_attn",
            needs=frozenset({"attn"}),
            prop_attn="always",
            source="mlvlab/MCTF",
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
