"""Token-reduction schedules: how many tokens each block removes.

``resolve_schedule`` turns a model's ``r`` (int, ``(r, inflection)`` or list)
into per-block values; ``parse_r_values`` reads command-line lists such as
``0,8-16`` or ``8-16:2`` into the r values of a sweep.
"""

from __future__ import annotations

import re
from typing import List, Sequence, Tuple, Union

RSpec = Union[int, Tuple[int, float], Sequence[int]]


def resolve_schedule(r: RSpec, num_blocks: int) -> List[int]:
    """Per-block token reductions from an ``r`` spec.

    * ``int``: every block removes ``r``;
    * ``(r, inflection)`` tuple, inflection in [-1, 1]: ToMe's linear schedule over
      ``L`` blocks, ``lo = int(r (1 - inflection))``, ``hi = 2r - lo``, block ``i``
      removing ``int(lo + (hi - lo) i / (L - 1))``;
    * list: explicit per-block values, padded with zeros.
    """
    if isinstance(r, bool):
        raise TypeError(f"r must be an int, an (r, inflection) tuple or a list, not {r!r}")
    if isinstance(r, int):
        _check_non_negative(r, "r")
        return [r] * num_blocks
    if isinstance(r, tuple):
        return _inflection_schedule(r, num_blocks)
    if isinstance(r, Sequence) and not isinstance(r, str):
        values = [int(v) for v in r]
        if len(values) > num_blocks:
            raise ValueError(f"r lists {len(values)} values but the model has {num_blocks} blocks")
        for i, v in enumerate(values):
            _check_non_negative(v, f"r[{i}]")
        return values + [0] * (num_blocks - len(values))
    raise TypeError(f"r must be an int, an (r, inflection) tuple or a list, not {type(r).__name__} {r!r}")


def _inflection_schedule(r: Tuple[int, float], num_blocks: int) -> List[int]:
    if len(r) != 2:
        raise ValueError(f"a tuple r must be (r, inflection), got {r!r}; use a list for per-block values")
    base, inflection = int(r[0]), float(r[1])
    _check_non_negative(base, "r")
    if not -1.0 <= inflection <= 1.0:
        raise ValueError(f"inflection must lie in [-1, 1], got {inflection}")
    lo = int(base * (1 - inflection))
    hi = 2 * base - lo
    if num_blocks == 1:
        return [lo]
    return [int(lo + (hi - lo) * i / (num_blocks - 1)) for i in range(num_blocks)]


def _check_non_negative(value: int, name: str) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def parse_r_values(text: str) -> List[int]:
    """``"0,8-16"`` -> ``[0, 8, 9, ..., 16]``; ``"8-16:2"`` -> ``[8, 10, 12, 14, 16]``; ``"13"`` -> ``[13]``.

    Values keep their first-seen order; duplicates are dropped. Malformed items raise
    ``ValueError`` naming the item (a CLI adds its flag, e.g. ``--r: ``).
    """
    values: List[int] = []
    items = [item.strip() for item in str(text).split(",")]
    if not any(items):
        raise ValueError("r values are empty; give values such as 0,8-16 or 8-16:2")
    for item in items:
        for value in _parse_r_item(item):
            if value not in values:
                values.append(value)
    return values


_R_ITEM = re.compile(r"^(\d+)(?:-(\d+))?(?::(\d+))?$")


def _parse_r_item(item: str) -> List[int]:
    match = _R_ITEM.match(item)
    if match is None:
        raise ValueError(
            f"cannot read r item {item!r}: use N, A-B or A-B:STEP with non-negative integers, e.g. 0,8-16"
        )
    lo = int(match.group(1))
    hi = int(match.group(2)) if match.group(2) is not None else lo
    step = int(match.group(3)) if match.group(3) is not None else 1
    if hi < lo:
        raise ValueError(f"r range {item!r} runs backwards; write it low-high")
    if step < 1:
        raise ValueError(f"r step in {item!r} must be >= 1")
    return list(range(lo, hi + 1, step))
