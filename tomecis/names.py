"""Names every room shares, importable without torch or timm: the token-reduction methods, autocast
settings, short model names. Reading results (``orchestrator.report``) needs these and nothing heavier.

A method is one declaration, ``Method``: its name, which amounts it takes (``r``: tokens removed per
block; ``keep``: the per-block keep ratio), where in the block it reduces (``stage``), what its blocks need
from the attention (``needs``), where proportional attention applies (``prop_attn``), and its ``count``
and ``reduce`` functions (``tomecis.methods`` gives their signatures and shapes). The built-in methods are
the table ``METHODS``; their functions are named as ``"module:function"`` references, imported on first
use, so that this module stays light. ``tomecis.patch`` runs any declared method; the sweep checks names
and amounts with ``method_spec`` and ``check_amount``; the report compares every method against the
unreduced model, ``UNREDUCED``. A new built-in method is one more ``Method`` here and one module in
``tomecis/methods/`` (and their tests); a
researcher's own method is the same ``Method`` in their own package, found by ``method_spec`` through an
entry point or an import path (``find_method``).

A point's amount is ``(r, keep)``: ``r`` an int and ``keep`` None for the methods reduced by ``--r``,
``r`` None and ``keep`` a float in (0, 1) for ``--keep``; the unreduced model is ``("none", 0, None)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import math
import sys
from dataclasses import dataclass
from pathlib import Path
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

BUILTIN_ORIGIN = "builtin"  # the origin of the methods of METHODS (a point's ``method_source``)


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
      ratio (one of them is set, as the method takes it; ``keep`` None means ``r`` is the amount); a
      ``count`` with a parameter named ``patches`` is also given the model's patch count ``P`` (for
      counts relative to ``P`` rather than to ``T``, e.g. ATC's);
    * ``reduce(method, view, state) -> x``: ``[B, N, C] -> [B, N - count, C]`` (EViT: one fused token added
      back), the class token first and untouched, updating ``state.size`` / ``state.source`` where the
      method tracks them;
    * ``check(r, keep, depth, patches)``: optional; raises ``ValueError`` for an amount the method cannot
      take on a model of ``depth`` blocks and ``patches`` patch tokens (name the method, the amount and the
      valid range).

    A researcher's own method is declared the same way (``from tomecis import Method, BlockView``) and
    found by ``method_spec`` through an entry point or an import path, which set its ``origin``. Being
    foreign, every block checks it (``tomecis.patch.check_reduction``): ``count`` must give an int in
    ``[0, N - prefix tokens]`` and ``reduce`` exactly ``[B, N - count, C]`` of its input's dtype and
    device, the class (and distillation) token first and unchanged, no NaN or inf from finite input;
    else ``MethodError`` names the method, its origin, the block and what was wrong.
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
    origin: str = BUILTIN_ORIGIN  # where the declaration came from: builtin, a distribution, a module path
    default_amount: Optional[Tuple[Optional[int], Optional[float]]] = (
        None  # (r, keep) its check/benchmark uses
    )

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
        if self.default_amount is not None:
            r, keep = self.default_amount
            kind = "keep" if keep is not None else "r"
            if (r is None) == (keep is None) or kind not in self.amounts:
                problems.append(
                    f"default_amount {self.default_amount!r} must be one (r, keep) amount it takes"
                )
        if problems:
            raise ValueError(f"method declaration {self.name!r}: " + "; ".join(problems))
        object.__setattr__(self, "needs", frozenset(self.needs))

    def takes(self, amount: str) -> bool:
        return amount in self.amounts

    def default(self) -> Tuple[Optional[int], Optional[float]]:
        """The amount it is checked and benchmarked at when none is given: its ``default_amount``, else
        r = 13 or keep 0.9, by the first kind it takes (a method of your own that declares none)."""
        if self.default_amount is not None:
            return self.default_amount
        return (13, None) if self.amounts[0] == "r" else (None, 0.9)

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
            default_amount=(13, None),
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
            default_amount=(13, None),
            source="facebookresearch/ToMe",
        ),
        _builtin(
            "pitome",
            "pitome",
            amounts=("r", "keep"),
            summary="energy-ordered merge, protected high-energy tokens, size-weighted average (PiToMe)",
            needs=frozenset({"keys"}),
            default_amount=(None, 0.9),
            source="hchautran/PiToMe algo/pitome",
        ),
        _builtin(
            "tofu",
            "tofu",
            amounts=("r", "keep"),
            summary="bipartite matching on keys: prune in the first half, norm-preserving merge after (ToFu)",
            needs=frozenset({"keys"}),
            default_amount=(None, 0.9),
            source="hchautran/PiToMe algo/tofu",
        ),
        _builtin(
            "evit",
            "evit",
            amounts=("keep",),
            summary="keep the tokens the class token attends to most, fuse the rest, at three blocks (EViT)",
            needs=frozenset({"cls_attn"}),
            default_amount=(None, 0.7),
            source="youweiliang/evit",
        ),
        _builtin(
            "atc",
            "atc",
            amounts=("keep",),
            summary="complete-linkage clustering of the keys at three blocks, size-weighted cluster means (ATC)",
            needs=frozenset({"keys"}),
            prop_attn="always",
            default_amount=(None, 0.7),
            source="JoakimHaurum/ATC",
        ),
        _builtin(
            "dct",
            "dct",
            amounts=("keep",),
            summary="keep the lowest DCT-II coefficients along the tokens after each MLP, float16-rounded (DCT)",
            stage="after_mlp",
            reduce_at_zero=True,
            default_amount=(None, 0.9),
            source="hchautran/PiToMe algo/dct",
        ),
        _builtin(
            "diffrate",
            "diffrate",
            amounts=("keep",),
            summary="sort by class attention, prune, merge into the most similar kept token, fixed-ratio schedule (DiffRate)",
            needs=frozenset({"cls_attn"}),
            prop_attn="always",
            reduce_at_zero=True,
            check="tomecis.methods.diffrate:check",
            default_amount=(None, 0.9),
            source="hchautran/PiToMe algo/DiffRate",
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
            default_amount=(16, None),
            source="mlvlab/MCTF",
        ),
    )
}
METHOD_NAMES: Tuple[str, ...] = tuple(METHODS)  # the built-in methods; method_spec finds others too
REDUCING_METHODS: Tuple[str, ...] = tuple(n for n in METHODS if n != UNREDUCED)


def method_spec(name: str) -> Method:
    """The method called ``name``: a built-in one (``METHODS``), else one an installed package declares
    under the entry-point group ``tomecis.methods``, else the one an import path ``package.module:ATTR``
    names (``find_method``). An unknown name raises ``ValueError`` listing the methods and saying how
    to add one; a module that cannot be imported, an object that is no ``Method`` or a found method with
    a built-in's name raise ``ValueError`` naming them."""
    if isinstance(name, str) and name in METHODS:
        return METHODS[name]
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHOD_NAMES)}")
    return find_method(name)


class MethodError(ValueError):
    """A method's ``count`` or ``reduce`` raised or returned what it must not (wrong shape or dtype, the
    class token moved, NaN); the message names the method, its origin, the block and what was wrong. The
    harness checks the methods that are not built in, and fails their points alone."""


def methods_help() -> str:
    """``tomecis (...; --r, --keep), tome (...)`` for ``--method`` help texts."""
    return (
        "; ".join(
            f"{m.name} ({m.summary}; {', '.join('--' + a for a in m.amounts)})"
            for m in METHODS.values()
            if m.amounts
        )
        + "; or your own, by name or as package.module:METHOD (python -m orchestrator.sweep --list-methods)"
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


# --------------------------------------------------------------------------- methods found outside the table
#
# A researcher's method is one ``Method`` object, found in one of two ways:
# * an installed distribution declares it under the entry-point group ``tomecis.methods``
#   (``[project.entry-points."tomecis.methods"] l2prune = "mypkg.l2prune:METHOD"``): its name is the entry
#   point's, its origin ``"<distribution> <version>"``;
# * an import path ``package.module:ATTRIBUTE`` names it (a module on ``sys.path``: the working directory,
#   ``PYTHONPATH``): its origin is ``"<module file> sha256:<12 hex of the file>"``, and from then on its name
#   finds it too, in this process (``find_method`` registers it).
# ``method_spec`` asks the built-in table first, then ``find_method``. A found method may not take a
# built-in method's name. A loaded method is kept for the life of the process (``REGISTRY``), so a patched
# model's ``set_reduction`` never scans the installed packages again.

ENTRY_POINT_GROUP = "tomecis.methods"

HOW_TO_ADD_A_METHOD = (
    "add one with an entry point in your package's pyproject.toml "
    f'([project.entry-points."{ENTRY_POINT_GROUP}"] NAME = "package.module:METHOD", then pip install it) '
    "or give its import path, package.module:METHOD (on PYTHONPATH or in the working directory); "
    "see README.md, 'Add your own method'"
)


class _Registry:
    """The methods this process has loaded: name -> declaration (origin set), and name -> the reference
    that found it (an import path, or the entry point's name), so that an actor can find it again."""

    def __init__(self) -> None:
        self.methods: Dict[str, Method] = {}
        self.refs: Dict[str, str] = {}

    def add(self, method: Method, ref: str) -> Method:
        known = self.methods.get(method.name)
        if known is not None and known.origin != method.origin:
            raise ValueError(
                f"method {method.name!r} from {ref} ({method.origin}) clashes with the method of that name "
                f"already loaded from {self.refs[method.name]} ({known.origin}); rename one of them"
            )
        self.methods[method.name] = method
        self.refs[method.name] = ref
        return method


REGISTRY = _Registry()  # one per process: what the driver or an actor has loaded


def is_import_path(text: str) -> bool:
    """``mypkg.l2prune:METHOD``, not a bare name (nor an entry point's ``name=module:attr``)."""
    return ":" in str(text) and "=" not in str(text)


def find_method(name: str) -> Method:
    """The method ``name`` names: one loaded already, an import path, or an installed entry point.
    ``ValueError`` where none is found (listing the methods and how to add one), where its module cannot be
    imported (naming it), where the object is no ``Method``, or where it takes a built-in's name."""
    name = str(name).strip()
    if name in REGISTRY.methods:
        return REGISTRY.methods[name]
    if is_import_path(name):
        return load_import_path(name)
    points = [ep for ep in entry_points() if ep.name == name]
    if len(points) > 1:
        owners = ", ".join(_distribution_of(ep) for ep in points)
        raise ValueError(f"method {name!r} is declared by more than one installed distribution ({owners})")
    if points:
        return load_entry_point(points[0])
    raise ValueError(
        f"unknown method {name!r}; choose from {', '.join(known_names())}; or {HOW_TO_ADD_A_METHOD}"
    )


def known_names() -> List[str]:
    """The built-in methods' names, the installed entry points' and those loaded by import path."""
    names = list(METHODS) + [ep.name for ep in entry_points()] + list(REGISTRY.methods)
    return list(dict.fromkeys(names))


def entry_points() -> List[importlib.metadata.EntryPoint]:
    """The installed entry points of the group ``tomecis.methods`` (read from every ``*.dist-info`` on
    ``sys.path`` at each call: a package installed since is found)."""
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def load_entry_point(ep: importlib.metadata.EntryPoint) -> Method:
    """The ``Method`` an entry point names, its origin the distribution's name and version."""
    where = f"entry point {ep.name!r} = {ep.value!r} of {_distribution_of(ep)}"
    method = _checked(_load(ep.value, where), where)
    if method.name != ep.name:
        raise ValueError(
            f"{where}: the Method it names is called {method.name!r}; name the entry point as the method"
        )
    origin = _distribution_of(ep)
    return REGISTRY.add(dataclasses.replace(method, origin=origin), f"{ep.name}={ep.value}")


def load_import_path(ref: str) -> Method:
    """The ``Method`` at ``package.module:ATTRIBUTE``, its origin the module's file and a short sha256 of
    it; registered under its name."""
    module_name, _, attribute = str(ref).partition(":")
    if not module_name or not attribute:
        raise ValueError(f"method {ref!r}: an import path is package.module:ATTRIBUTE")
    method = _checked(_load(ref, f"method {ref!r}"), f"method {ref!r}")
    module = sys.modules[module_name]
    return REGISTRY.add(dataclasses.replace(method, origin=module_origin(module)), ref)


def module_origin(module) -> str:
    """``/path/to/l2prune.py sha256:0123456789ab``: where a module's code is, and which version of it."""
    path = getattr(module, "__file__", None)
    if not path:
        return f"{module.__name__} (no file)"
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
    return f"{Path(path).resolve()} sha256:{digest}"


def _load(ref: str, where: str) -> object:
    """The object ``module:attr`` names; an import that fails raises ``ValueError`` naming the module."""
    module_name, _, attribute = ref.partition(":")
    try:
        target = importlib.import_module(module_name.strip())
    except Exception as err:  # noqa: BLE001 - any error importing a researcher's module is reported, named
        raise ValueError(
            f"{where}: cannot import module {module_name.strip()!r} ({type(err).__name__}: {err}); "
            "is it installed, or on PYTHONPATH / in the working directory?"
        ) from err
    for part in attribute.strip().split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(
                f"{where}: module {module_name.strip()!r} has no attribute {attribute!r}"
            ) from None
    return target


def _checked(method: object, where: str) -> Method:
    """``method`` if it is a ``Method`` whose functions import and whose name is not a built-in's."""
    if not isinstance(method, Method):
        raise ValueError(
            f"{where} is a {type(method).__name__}, not a tomecis.Method; declare it as "
            "METHOD = tomecis.Method(name=..., amounts=(...), summary=..., count=..., reduce=...)"
        )
    if method.name in METHODS:
        raise ValueError(f"{where}: its name {method.name!r} is a built-in method's; give it another name")
    if not method.amounts:
        raise ValueError(f"{where}: method {method.name!r} takes no amount; give amounts=('r',) or ('keep',)")
    method.functions()  # references import now, with the method named, rather than on an actor
    return method


def _distribution_of(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "an unnamed distribution"


# --------------------------------------------------------------------------- what runs where


def ref_of(name: str) -> str:
    """How another process finds the method ``name`` again: a built-in's name, an entry point's
    ``name=module:attr`` (found where its package is installed) or the import path that loaded it here."""
    return REGISTRY.refs.get(name, name)


def shipped_refs(names) -> Tuple[str, ...]:
    """The references an actor must load for the methods ``names`` (none for the built-in ones)."""
    return tuple(ref_of(n) for n in dict.fromkeys(names) if n not in METHODS)


def module_paths(refs) -> Tuple[str, ...]:
    """The files or package directories holding the import-path methods of ``refs`` (for Ray's
    ``runtime_env`` ``py_modules``): a top-level package's directory, or a single module's file."""
    paths = []
    for ref in refs:
        if not is_import_path(ref):
            continue
        top = ref.partition(":")[0].strip().split(".")[0]
        module = importlib.import_module(top)
        if getattr(module, "__path__", None):  # a package (namespace packages too)
            paths.append(str(Path(list(module.__path__)[0]).resolve()))
        elif getattr(module, "__file__", None):
            paths.append(str(Path(module.__file__).resolve()))
    return tuple(dict.fromkeys(paths))


def load_on_actor(refs, where: str) -> str:
    """Load every method of ``refs`` in this process (an actor); "" when all load, else one line naming
    the reference, its module and ``where`` (the node)."""
    for ref in refs:
        name, _, value = ref.partition("=")  # an entry point: name=module:attr
        if value and not any(ep.name == name for ep in entry_points()):
            return (
                f"on {where}: method {name!r} is an entry point of a package (module "
                f"{value.partition(':')[0]!r}, {value}) that is not installed here: install it on every node "
                "(the cluster's setup commands), or give --method as an import path to ship it with the job"
            )
        try:
            find_method(name if value else ref)
        except ValueError as err:
            return f"on {where}: cannot load method {ref!r}: {err}"
    return ""


# --------------------------------------------------------------------------- listing


@dataclasses.dataclass(frozen=True)
class Found:
    """One row of ``--list-methods``: a method, or an entry point that could not be loaded."""

    name: str
    amounts: str
    origin: str
    summary: str
    error: str = ""


def list_methods(extra_refs=()) -> List[Found]:
    """Every method found: the built-in ones, each installed entry point (one that fails to load is a row
    with its error), and those of ``extra_refs`` (import paths) or loaded by import path already."""
    rows = [_row(m) for m in METHODS.values() if m.name != UNREDUCED]
    for ep in entry_points():
        try:
            rows.append(_row(load_entry_point(ep)))
        except ValueError as err:
            rows.append(Found(ep.name, "", _distribution_of(ep), "", str(err)))
    for ref in extra_refs:
        try:
            find_method(ref)
        except ValueError as err:
            rows.append(Found(ref, "", "import path", "", str(err)))
    seen = {r.name for r in rows}
    rows += [_row(m) for n, m in REGISTRY.methods.items() if n not in seen]
    return rows


def _row(method: Method) -> Found:
    return Found(method.name, ",".join(method.amounts), method.origin, method.summary)


def methods_table(rows: List[Found]) -> str:
    """``--list-methods``: name, amounts, where it came from, and its summary (or why it failed to load)."""
    header = Found("method", "amounts", "from", "summary")
    width = [max(len(getattr(r, f)) for r in [header, *rows]) for f in ("name", "amounts", "origin")]
    lines = []
    for r in [header, *rows]:
        text = r.summary if not r.error else f"NOT LOADED: {r.error}"
        lines.append(
            f"{r.name:<{width[0]}}  {r.amounts:<{width[1]}}  {r.origin:<{width[2]}}  {text}".rstrip()
        )
    return "\n".join(lines)
