"""Step 5: ``shards.bench`` at several loader-worker counts (decode + eval transform, no model), so that
the data path's share of the decode pass is visible beside each model's own speed."""

from __future__ import annotations

from typing import Dict, List, Sequence

from .config import GpuCheckConfig


def read_bench(cfg: GpuCheckConfig, data: str) -> List[dict]:
    """``shards.bench``: decode + eval transform img/s at each loader-worker count (no model)."""
    from shards.bench import ReadBenchConfig, run_read_bench

    rows = run_read_bench(
        ReadBenchConfig(data=data, batch_size=cfg.sweep_batch_size, workers=tuple(cfg.read_workers), passes=1)
    )
    return [dict(workers=r.workers, images=r.images, seconds=r.seconds, img_per_s=r.img_per_s) for r in rows]


def read_table(rows: Sequence[dict], model_rates: Dict[str, float]) -> str:
    """img/s per worker count, and the best of them against each model alone at r = 0."""
    lines = ["| loader workers | images | seconds | img/s |", "|--:|--:|--:|--:|"]
    lines += [f"| {r['workers']} | {r['images']} | {r['seconds']:.2f} | {r['img_per_s']:.0f} |" for r in rows]
    best = max(rows, key=lambda r: r["img_per_s"])
    for model, rate in model_rates.items():
        lines.append(
            f"\n{model} alone at r = 0 runs {rate:.0f} img/s: the best data path here ({best['workers']} workers, "
            f"{best['img_per_s']:.0f} img/s) is {best['img_per_s'] / rate:.2f}x of it."
        )
    return "\n".join(lines)
