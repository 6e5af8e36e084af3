"""Parse ``--models``, ``--method``, ``--r``, ``--keep`` and per-method ``--amounts`` into grid points, and say
what makes a point's identity (``IDENTITY``: the columns every results file of the point carries, and its file
name). No I/O (``gridfile`` reads a TOML grid into the same amounts).

Amounts per method: ``--amounts evit=keep:0.5-0.9:0.1`` gives EViT its own keep ratios; a method named so
joins the sweep and runs at those amounts only, while the other methods keep the ``--r`` / ``--keep`` rule.

A point is one model at one (method, amount): ``r`` (tokens removed per block) for a method that takes
``--r``, ``keep`` (per-block keep ratio) for one that takes ``--keep``, the other one None. The unreduced
model is one point per model, ``("none", r=0, keep=None)`` (``tomecis.names.UNREDUCED``), in every grid
however many methods are swept; an r of 0 or a keep of 1 asked for any method is that point.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from tomecis.names import (
    AMOUNTS,
    AMP_NAMES,
    BUILTIN_ORIGIN,
    METHOD_NAMES,
    UNREDUCED,
    amount_label,
    amounts_taken,
    check_amount,
    is_unreduced,
    method_spec,
    short_name,
)
from tomecis.schedule import parse_r_values

AMPS = AMP_NAMES  # "none", "fp16", "bf16": one list, in tomecis.names
DEVICE_KINDS = ("cpu", "cuda")

Amount = Tuple[Optional[int], Optional[float]]  # (r, keep): exactly one of them set
BASELINE_AMOUNT: Amount = (0, None)

# The columns that make a point's identity, in the order its files hold them, each with the GridPoint field
# it comes from. Points rows, predictions and failures carry them (``GridPoint.identity``); the Parquet
# types follow the fields' types (``results``); a rerun skips a point whose file name (``file_stem``) exists.
IDENTITY_FIELDS: Dict[str, str] = {
    "model": "model",
    "method": "method",
    "r": "r",
    "keep": "keep",
    "amp": "amp",
    "infer_batch_size": "batch_size",
    "weights": "weights",
    "device": "device",  # the point knows the kind (cpu, cuda); its files hold the exact device name
    "dataset": "dataset",
    "method_source": "method_source",  # builtin, "<distribution> <version>" or "<module file> sha256:<hex>"
}
IDENTITY = tuple(IDENTITY_FIELDS)
KEY_COLUMNS = ("model", "method", "r", "keep", "method_source")  # one model at one method and amount
SETTING_COLUMNS = tuple(c for c in IDENTITY if c not in KEY_COLUMNS)  # rows of one setting can be compared


@dataclass(frozen=True)
class GridPoint:
    """One (model, method, amount) evaluation, with what makes results comparable: amp, batch size, the
    weights (``random``, ``pretrained`` or ``ckpt_<sha256 prefix>``), the device kind (cpu, cuda) and
    the dataset (the fingerprint of the shards evaluated). ``r`` is set for the methods reduced by
    ``--r`` (0 for the unreduced model), ``keep`` for those reduced by ``--keep``. ``method_source`` says
    which code the method was (``builtin``, a distribution and its version, a module file and its hash),
    so that a changed method's results are neither mixed with nor skipped as the old one's."""

    model: str  # timm name
    r: Optional[int]
    method: str = "tomecis"
    amp: str = "none"
    batch_size: int = 128
    weights: str = "pretrained"
    device: str = "cpu"
    keep: Optional[float] = None
    dataset: str = field(kw_only=True)  # the shards' fingerprint (``shards.ShardSet.fingerprint``)
    method_source: str = field(
        default=BUILTIN_ORIGIN, kw_only=True
    )  # the method's origin (``Method.origin``)

    @property
    def short_name(self) -> str:
        return short_name(self.model)

    @property
    def key(self) -> Tuple[str, str, Optional[int], Optional[float]]:
        """``(model, method, r, keep)``: what the evaluator runs the point under (``work.PointKey``)."""
        return self.model, self.method, self.r, self.keep

    @property
    def amount(self) -> str:
        """``r13``, ``keep0.9``: the amount as file names and tables write it."""
        return amount_label(self.r, self.keep)

    @property
    def label(self) -> str:
        """``deit_tiny evit keep0.7``: the point in a line a person reads."""
        return f"{self.short_name} {self.method} {self.amount}"

    def identity(self, device_name: Optional[str] = None) -> Dict[str, object]:
        """``IDENTITY`` column -> this point's value, in order. ``device`` is the kind unless
        ``device_name`` (the exact device that evaluated the point, what its files' ``device`` column
        holds) is given."""
        values = {column: getattr(self, name) for column, name in IDENTITY_FIELDS.items()}
        if device_name is not None:
            values["device"] = device_name
        return values

    def file_stem(self) -> str:
        """A file name that identifies the point, its weights, device kind and dataset (a rerun finds it
        again): ``deit_tiny-tomecis-r8-...`` (the names r points have always had), ``deit_tiny-evit-keep0.7-...``,
        the baseline ``deit_tiny-none-r0-...``; a method not built in ends with ``-src`` and 10 hex of a
        sha256 of its ``method_source``."""
        stem = (
            f"{self.short_name}-{self.method}-{self.amount}-{self.amp}-bs{self.batch_size}"
            f"-{self.weights}-{self.device}-{self.dataset}"
        )
        if self.method_source == BUILTIN_ORIGIN:
            return stem
        return f"{stem}-src{hashlib.sha256(self.method_source.encode()).hexdigest()[:10]}"


# --------------------------------------------------------------------------- parsing


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


def parse_methods(text: str) -> List[str]:
    """``"tomecis,evit"`` -> ``["tomecis", "evit"]``, in order, without duplicates; unknown methods raise.
    A method of an installed package is named as built-in ones are; an import path
    (``mypkg.l2prune:METHOD``) gives its method's name (``l2prune``), which finds it from then on."""
    methods: List[str] = []
    for item in str(text).split(","):
        try:
            method = method_spec(item.strip()).name
        except ValueError as err:
            raise ValueError(f"{err} (comma-separated, in {text!r})") from None
        if method not in methods:
            methods.append(method)
    return methods


KEEP_DECIMALS = 6  # keep ratios from a range are rounded to this many decimals (0.5-0.9:0.1 gives 0.8, not 0.8000000000000002)
_KEEP_RANGE = re.compile(r"^([0-9.]+)-([0-9.]+):([0-9.]+)$")


def parse_keep_spec(text: str) -> List[float]:
    """``"0.7,0.9"`` -> ``[0.7, 0.9]``; ``"0.5-0.9:0.1"`` -> ``[0.5, 0.6, 0.7, 0.8, 0.9]`` (inclusive, each
    ``low + i * step`` rounded to ``KEEP_DECIMALS``); items may mix. First-seen order, duplicates dropped,
    each in (0, 1]; a malformed item raises ``ValueError`` naming it."""
    items = [item.strip() for item in str(text).split(",")]
    if not any(items):
        raise ValueError("keep values are empty; give ratios such as 0.7,0.9 or 0.5-0.9:0.1")
    values: List[float] = []
    for item in items:
        for value in _keep_item(item):
            if not (0.0 < value <= 1.0):
                culprit = repr(item) if _KEEP_RANGE.match(item) is None else f"{value:g} (from {item!r})"
                raise ValueError(f"keep ratio {culprit} must lie in (0, 1]")
            if value not in values:
                values.append(value)
    return values


def _keep_item(item: str) -> List[float]:
    """One item of a keep spec: a ratio, or an inclusive range ``LOW-HIGH:STEP``."""
    match = _KEEP_RANGE.match(item)
    try:
        if match is None:
            return [float(item)]
        low, high, step = (float(g) for g in match.groups())
    except ValueError:
        raise ValueError(
            f"cannot read keep item {item!r}: give a ratio (0.7) or an inclusive range LOW-HIGH:STEP (0.5-0.9:0.1)"
        ) from None
    if step <= 0 or high < low:
        raise ValueError(f"keep range {item!r} needs LOW <= HIGH and a STEP > 0, e.g. 0.5-0.9:0.1")
    steps = math.floor((high - low) / step + 1e-9)  # the steps that fit, counted once, not accumulated
    return [round(low + i * step, KEEP_DECIMALS) for i in range(steps + 1)]


def parse_amount_spec(method: str, kind: str, spec: str, where: str) -> List[Amount]:
    """The amounts ``spec`` gives ``method`` of ``kind`` (``r``: as ``--r`` reads it; ``keep``: as
    ``parse_keep_spec``), as ``(r, None)`` / ``(None, keep)``. ``where`` names the source in errors
    (``--amounts evit=keep:0.5-0.9:0.1``, ``g.toml: methods.evit.keep = "0.5-0.9:0.1"``): an unknown
    method, a kind the method does not take and a malformed spec raise ``ValueError`` starting with it."""
    try:
        taken = method_spec(method).amounts
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    if method == UNREDUCED:
        raise ValueError(
            f"{where}: {UNREDUCED!r} is the unreduced model, in every grid once; it takes no amount"
        )
    if kind not in AMOUNTS:
        raise ValueError(f"{where}: amount kind {kind!r} is neither r nor keep")
    if kind not in taken:
        raise ValueError(f"{where}: {method} takes {' or '.join(taken)}, not {kind}")
    try:
        if kind == "r":
            return [(r, None) for r in parse_r_values(spec)]
        return [(None, keep) for keep in parse_keep_spec(spec)]
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def parse_amounts_flag(text: str) -> Tuple[str, List[Amount]]:
    """``--amounts METHOD=KIND:SPEC``: ``"evit=keep:0.5-0.9:0.1"`` -> ``("evit", [(None, 0.5), ...])``."""
    method, eq, rest = str(text).partition("=")
    kind, colon, spec = rest.partition(":")
    if not (eq and colon and method.strip() and spec.strip()):
        raise ValueError(
            f"--amounts {text!r} is not METHOD=KIND:SPEC (e.g. evit=keep:0.5-0.9:0.1 or tomecis=r:8-16)"
        )
    method = method.strip()
    return method, parse_amount_spec(method, kind.strip(), spec.strip(), str(text))


def merge_amounts(entries: Sequence[Tuple[str, Sequence[Amount]]]) -> Dict[str, List[Amount]]:
    """Method -> its amounts, entries for one method together (r and keep from two entries, say), in
    first-seen order without duplicates."""
    merged: Dict[str, List[Amount]] = {}
    for method, amounts in entries:
        mine = merged.setdefault(method, [])
        mine.extend(a for a in amounts if a not in mine)
    return merged


def sweep_methods(
    methods: Sequence[str], method_amounts: Optional[Mapping[str, Sequence[Amount]]]
) -> List[str]:
    """``methods``, then every method given its own amounts that is not among them yet (it joins the sweep)."""
    return list(methods) + [m for m in (method_amounts or {}) if m not in methods]


# --------------------------------------------------------------------------- which amounts each method gets


@dataclass(frozen=True)
class MethodPlan:
    """What one method of ``--method`` is run at: the amounts of the kinds it takes (those that reduce
    nothing left out: they are the baseline), and the flags given that it does not take."""

    method: str
    amounts: Tuple[Amount, ...]
    skipped: Tuple[str, ...] = ()  # "--r", "--keep": given, but not taken by this method

    def skip_note(self) -> str:
        """One line saying which flags this method skips and which it takes ("" when it skips none)."""
        if not self.skipped:
            return ""
        takes = " and ".join("--" + a for a in method_spec(self.method).amounts)
        return f"{self.method}: {' and '.join(self.skipped)} skipped ({self.method} takes {takes} only)"


def plan_methods(
    methods: Sequence[str],
    r_values: Sequence[int] = (),
    keep_values: Sequence[float] = (),
    method_amounts: Optional[Mapping[str, Sequence[Amount]]] = None,
) -> List[MethodPlan]:
    """Each method with every amount it takes among ``r_values`` and ``keep_values``, or, for a method of
    ``method_amounts`` (which joins ``methods`` if absent), its own amounts only; a method given no
    amount it takes raises ``ValueError`` naming it and the flags it takes. ``none`` (the unreduced
    model, in every grid anyway) takes no amount and gets none."""
    plans = []
    own = dict(method_amounts or {})
    for method in sweep_methods(methods, own):
        spec = method_spec(method)
        if method == UNREDUCED:
            plans.append(MethodPlan(method, ()))
            continue
        if method in own:
            for r, keep in own[method]:
                check_amount(method, r, keep)
            plans.append(MethodPlan(method, tuple(a for a in own[method] if not is_unreduced(*a))))
            continue
        taken, skipped = amounts_taken(method, r_values, keep_values)
        if not taken:
            flags = " or ".join("--" + a for a in spec.amounts)
            raise ValueError(
                f"--method {method} takes {flags}, and none was given: add {flags} (e.g. "
                f"{_example(spec.amounts)}) or drop {method} from --method"
            )
        amounts = [a for a in taken if not is_unreduced(*a)]
        plans.append(MethodPlan(method, tuple(amounts), skipped))
    return plans


def _example(kinds: Sequence[str]) -> str:
    return " or ".join({"r": "--r 8-16", "keep": "--keep 0.7,0.9"}[k] for k in kinds)


def build_grid(
    models: Sequence[str],
    r_values: Sequence[int],
    methods: Union[str, Sequence[str]] = "tomecis",
    amp: str = "none",
    batch_size: int = 128,
    weights: Optional[Mapping[str, str]] = None,
    device: str = "cpu",
    *,
    dataset: str,
    keep_values: Sequence[float] = (),
    method_amounts: Optional[Mapping[str, Sequence[Amount]]] = None,
) -> List[GridPoint]:
    """Every model's baseline (``none``, r = 0) and every (method, amount) of ``plan_methods``, on
    ``dataset`` (the shards' fingerprint): models outermost, then the baseline, then the methods in
    order, each at its r values, then its keep values (a method of ``method_amounts``: its own amounts,
    in their order). ``weights`` maps a model to its weights tag (default pretrained)."""
    methods = [methods] if isinstance(methods, str) else list(methods)
    plans = plan_methods(methods, r_values, keep_values, method_amounts)  # bad names and amounts raise
    if amp not in AMPS:
        raise ValueError(f"--amp must be one of {AMPS}, got {amp!r}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if device not in DEVICE_KINDS:
        raise ValueError(f"device kind must be one of {DEVICE_KINDS}, got {device!r}")
    tags = dict(weights or {})
    keys = [(UNREDUCED, *BASELINE_AMOUNT)] + [(p.method, *a) for p in plans for a in p.amounts]
    sources = {method: method_spec(method).origin for method, _, _ in keys}
    return [
        GridPoint(
            model,
            r,
            method,
            amp,
            batch_size,
            tags.get(model, "pretrained"),
            device,
            keep,
            dataset=dataset,
            method_source=sources[method],
        )
        for model in models
        for method, r, keep in keys
    ]


def describe_grid(grid: Sequence[GridPoint]) -> str:
    """Per model, its points by method: ``deit_tiny: 47 point(s): none r0 (baseline); tomecis r8-r16,
    keep0.7, keep0.9 (11); ...``."""
    lines = []
    for model in dict.fromkeys(p.model for p in grid):
        points = [p for p in grid if p.model == model]
        parts = []
        for method in dict.fromkeys(p.method for p in points):
            mine = [p for p in points if p.method == method]
            what = _amounts_text(mine)
            parts.append(
                f"{method} {what} (baseline)" if method == UNREDUCED else f"{method} {what} ({len(mine)})"
            )
        lines.append(f"  {short_name(model)}: {len(points)} point(s): " + "; ".join(parts))
    return "\n".join(lines)


def _amounts_text(points: Sequence[GridPoint]) -> str:
    """``r8-r16, keep0.7, keep0.9``: runs of consecutive r written as a range."""
    rs = [p.r for p in points if p.keep is None]
    parts, start = [], 0
    for i in range(1, len(rs) + 1):
        if i == len(rs) or rs[i] != rs[i - 1] + 1:
            run = rs[start:i]
            parts += [f"r{run[0]}-r{run[-1]}"] if len(run) > 2 else [f"r{r}" for r in run]
            start = i
    return ", ".join(parts + [p.amount for p in points if p.keep is not None])


__all__ = [
    "AMPS",
    "BASELINE_AMOUNT",
    "DEVICE_KINDS",
    "IDENTITY",
    "IDENTITY_FIELDS",
    "KEY_COLUMNS",
    "METHOD_NAMES",
    "SETTING_COLUMNS",
    "Amount",
    "GridPoint",
    "MethodPlan",
    "build_grid",
    "describe_grid",
    "merge_amounts",
    "parse_amount_spec",
    "parse_amounts_flag",
    "parse_keep_spec",
    "parse_methods",
    "parse_models",
    "parse_r_values",
    "plan_methods",
    "sweep_methods",
]
