"""Hand-made results for the report's tests: points rows and per-image predictions in the columns
``orchestrator.results.ResultsDir`` hands the report (identity: model, method, r, keep, amp,
infer_batch_size, weights, device, dataset; ``point_file`` ties a point to its predictions)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pandas as pd

TINY, SMALL = "deit_tiny_patch16_224", "deit_small_patch16_224"
SHORT = {TINY: "deit_tiny", SMALL: "deit_small"}
FINGERPRINT = "0123456789abcdef"
N_CLASSES = 10


def correctness(n: int, right: Sequence[int]) -> List[bool]:
    """``n`` images, right exactly at the indices in ``right``."""
    wanted = set(right)
    return [i in wanted for i in range(n)]


class Frames:
    """Points and predictions built point by point; image i (key ``img{i:05d}``) has class i % 10."""

    def __init__(self) -> None:
        self.rows: List[Dict] = []
        self.preds: List[pd.DataFrame] = []

    def add(
        self,
        model: str,
        method: str,
        correct: Sequence[bool],
        r: Optional[int] = None,
        keep: Optional[float] = None,
        speed: Optional[float] = 100.0,
        gflops: Optional[float] = None,
        amp: str = "none",
        batch_size: int = 128,
        fingerprint: str = FINGERPRINT,
        device: Optional[str] = "cpu (2 threads)",
        weights: Optional[str] = "pretrained",
        graphs: Optional[bool] = False,
        minute: int = 0,
        with_predictions: bool = True,
        speedup: Optional[Tuple[float, float, float]] = None,
        matched: Optional[Tuple[str, float, float]] = None,
        planned: Optional[str] = None,
    ) -> "Frames":
        """One point; ``gflops`` defaults to one falling with the amount (4.6 unreduced); ``speedup``:
        (speed-up, low, high) as a sweep writes them (without: a row from before those columns); ``matched``:
        ``(matched_to, the reference's value, the point's)`` of a point ``--match`` found (the columns
        are absent otherwise, as in results written before them)."""
        if method == "none":
            r, keep = 0, None
        n = len(correct)
        amount = f"keep{keep:g}" if keep is not None else f"r{r}"
        stem = f"{model}-{method}-{amount}-{amp}-{batch_size}-{weights}-{device}-{fingerprint}-{minute}"
        reduction = (r or 0) / 16 if keep is None else (1 - keep) * 2
        self.rows.append(
            dict(
                model=model,
                short_name=SHORT.get(model, model),
                method=method,
                r=r,
                keep=keep,
                top1=100.0 * sum(correct) / n,
                top5=100.0,
                n_images=n,
                n_failed=0,
                infer_samples_per_sec=speed,
                infer_batch_size=batch_size,
                eval_samples_per_sec=50.0,
                gflops=gflops if gflops is not None else round(4.6 * (1 - 0.5 * reduction), 4),
                tokens_out=int(197 * (1 - 0.8 * reduction)),
                amp=amp,
                weights=weights,
                device=device,
                dataset=fingerprint,
                cuda_graphs=graphs,
                finished=dt.datetime(2026, 1, 1, 0, minute, tzinfo=dt.timezone.utc),
                point_file=stem,
            )
        )
        if speedup is not None:
            self.rows[-1].update(zip(("speedup", "speedup_low", "speedup_high"), speedup))
        if matched is not None:
            self.rows[-1].update(zip(("matched_to", "matched_reference_value", "matched_value"), matched))
        if planned is not None:  # the sweep's plan of the model (JSON, ``sweep.planned_json``)
            self.rows[-1]["planned"] = planned
        if with_predictions:
            labels = [i % N_CLASSES for i in range(n)]
            self.preds.append(
                pd.DataFrame(
                    dict(
                        key=[f"img{i:05d}" for i in range(n)],
                        label=labels,
                        pred=[lab if ok else (lab + 1) % N_CLASSES for lab, ok in zip(labels, correct)],
                        correct=list(correct),
                        point_file=stem,
                    )
                )
            )
        return self

    @property
    def points(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows)
        frame["r"] = frame["r"].astype("Int64").astype(float)  # as parquet hands a nullable int to pandas
        frame["keep"] = frame["keep"].astype(float)
        return frame

    @property
    def predictions(self) -> pd.DataFrame:
        columns = ["key", "label", "pred", "correct", "point_file"]
        return pd.concat(self.preds, ignore_index=True) if self.preds else pd.DataFrame(columns=columns)

    def write(self, out: Path) -> Path:
        """The frames as a results directory: ``points/<point_file>.parquet``, ``predictions/<point_file>.parquet``."""
        (out / "points").mkdir(parents=True, exist_ok=True)
        (out / "predictions").mkdir(parents=True, exist_ok=True)
        points = self.points
        for stem, row in points.groupby("point_file"):
            row.drop(columns="point_file").to_parquet(out / "points" / f"{stem}.parquet", index=False)
        for stem, preds in self.predictions.groupby("point_file"):
            preds.drop(columns="point_file").to_parquet(out / "predictions" / f"{stem}.parquet", index=False)
        return out


def section(markdown: str, heading_start: str) -> str:
    """The text from the first heading containing ``heading_start`` to the next heading of its level or above."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#") and heading_start in line)
    level = len(lines[start]) - len(lines[start].lstrip("#"))
    end = next(
        (
            i
            for i in range(start + 1, len(lines))
            if lines[i].startswith("#") and len(lines[i]) - len(lines[i].lstrip("#")) <= level
        ),
        len(lines),
    )
    return "\n".join(lines[start:end])


def table_rows(text: str, key_cells: int = 1) -> Dict[str, List[str]]:
    """Markdown table rows of ``text`` (header and rule lines skipped) keyed by their first ``key_cells``
    cells joined with a space; the first row of a key wins."""
    rows: Dict[str, List[str]] = {}
    lines = [line for line in text.splitlines() if line.startswith("|")]
    for i, line in enumerate(lines):
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if line.startswith("|-") or following.startswith("|-"):
            continue  # a rule, or the header above it
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.setdefault(" ".join(cells[:key_cells]), cells)
    return rows


# DeiT-Ti on 500 photos as a sweep gives it (figures of that order): five methods at r 8, 13, 16 and keep 0.9,
# 0.7, keep 0.7 collapsing the r-style methods; (top-1, speed-up) per point, each speed-up with a ±3% interval.
REALISTIC_TINY = {
    ("none", 0, None): (74.0, 1.0),
    ("tomecis", 8, None): (73.4, 1.27),
    ("tomecis", 13, None): (72.6, 1.56),
    ("tomecis", 16, None): (71.0, 1.78),
    ("tomecis", None, 0.9): (73.0, 1.45),
    ("tomecis", None, 0.7): (25.2, 4.3),
    ("tome", 8, None): (73.2, 1.31),
    ("tome", 13, None): (72.2, 1.62),
    ("tome", 16, None): (70.4, 1.86),
    ("tome", None, 0.9): (72.8, 1.5),
    ("tome", None, 0.7): (24.6, 4.5),
    ("pitome", 8, None): (73.6, 1.2),
    ("pitome", 13, None): (72.8, 1.47),
    ("pitome", 16, None): (71.6, 1.66),
    ("pitome", None, 0.9): (73.2, 1.38),
    ("pitome", None, 0.7): (27.0, 3.9),
    ("tofu", 8, None): (73.4, 1.24),
    ("tofu", 13, None): (72.4, 1.52),
    ("tofu", 16, None): (70.8, 1.73),
    ("tofu", None, 0.9): (72.8, 1.41),
    ("tofu", None, 0.7): (26.0, 4.1),
    ("evit", None, 0.9): (73.0, 1.25),
    ("evit", None, 0.7): (66.8, 1.95),
}


def realistic_tiny_frames(matched: bool = True) -> Frames:
    """``REALISTIC_TINY`` as frames (500 images; GFLOPs 2.5 / speed-up); with ``matched``, a ``matched_to``
    column naming tome r13 and evit keep0.7 as matched to tomecis r13 (null elsewhere)."""
    f = Frames()
    for (method, r, keep), (top1, speedup) in REALISTIC_TINY.items():
        spread = 0.0 if method == "none" else 0.03 * speedup
        f.add(
            TINY, method, correctness(500, range(round(5 * top1))), r=r, keep=keep, speed=400.0 * speedup,
            gflops=round(2.5 / speedup, 3), speedup=(speedup, speedup - spread, speedup + spread),
        )  # fmt: skip
        if matched:
            chosen = (method, r, keep) in {("tome", 13, None), ("evit", None, 0.7)}
            f.rows[-1]["matched_to"] = "tomecis:r13 by speed" if chosen else None
    return f
