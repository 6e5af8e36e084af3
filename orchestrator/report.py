"""Tables from the results directory (pandas in, text out). Knows nothing of Ray or models."""
from __future__ import annotations

from typing import Iterable, List, Optional

import pandas as pd


def model_table(points: pd.DataFrame) -> str:
    """One model's points in the paper's format: r | top-1 | top-5 | img/s | speed-up | Δ top-1 | GFLOPs | tokens.

    ``img/s`` is ``infer_samples_per_sec`` (the model alone); speed-up and Δ top-1 are
    against the r = 0 row when present."""
    points = points.sort_values("r")
    base = points[points["r"] == 0]
    base_top1 = base["top1"].iloc[0] if len(base) else None
    base_speed = base["infer_samples_per_sec"].iloc[0] if len(base) else None
    lines = ["| r | top-1 | top-5 | img/s | speed-up | Δ top-1 | eval img/s | GFLOPs | tokens |", "|" + "--:|" * 9]
    for row in points.itertuples():
        speed = row.infer_samples_per_sec
        cells = [
            str(row.r),
            f"{row.top1:.2f}",
            f"{row.top5:.2f}",
            _num(speed, "{:.1f}"),
            _num(speed / base_speed if _ok(speed) and _ok(base_speed) else None, "{:.2f}x"),
            _num(row.top1 - base_top1 if base_top1 is not None else None, "{:+.2f}"),
            _num(row.eval_samples_per_sec, "{:.1f}"),
            f"{row.gflops:.2f}",
            str(row.tokens_out),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_tables(
    points: pd.DataFrame, models: Iterable[str], dataset: str, mode: str, amp: str, batch_size: int
) -> str:
    """A table per model for the points of one sweep's settings (all rows, this run's and earlier ones)."""
    if points.empty:
        return "(no results)"
    chosen = points[(points["dataset"] == dataset) & (points["mode"] == mode) & (points["amp"] == amp) & (points["infer_batch_size"] == batch_size)]
    blocks: List[str] = []
    for model in dict.fromkeys(models):
        rows = chosen[chosen["model"] == model]
        if rows.empty:
            continue
        first = rows.iloc[0]
        head = f"{first['short_name']} ({model}), {mode}, amp {amp}, batch {batch_size}, {first['device']}, {int(first['n_images'])} images"
        blocks.append(head + "\n" + model_table(rows))
    return "\n\n".join(blocks) if blocks else "(no results for these settings)"


def _ok(value: Optional[float]) -> bool:
    return value is not None and not pd.isna(value)


def _num(value: Optional[float], fmt: str) -> str:
    return fmt.format(value) if _ok(value) else "—"
