"""Step 5: ``shards.bench``'s pass (decode + eval transform, no model) at several loader-worker counts,
over the first whole shards holding ``READ_IMAGES`` images (one shard per worker at 16 workers; the
whole decode pass's 10,000 would cost a minute at 2 workers), so that the data path's share of the decode
pass is visible beside each model's own speed."""

from __future__ import annotations

from typing import Dict, List, Sequence

from .config import SHARD_SIZE, GpuCheckConfig

READ_IMAGES = 16 * SHARD_SIZE  # 4,000 images: 16 shards


def read_bench(cfg: GpuCheckConfig, data: str) -> List[dict]:
    """Decode + eval transform img/s at each loader-worker count (no model), one pass each over the first
    whole shards holding ``READ_IMAGES`` images (all of them where the shards have no counts)."""
    import shards
    from shards.bench import time_one_pass
    from shards.transforms import eval_transform

    from ..prepare import select_shards

    shardset = shards.resolve_data(data)
    counted = all(s.n_samples is not None for s in shardset.shards)
    chosen = select_shards(shardset, READ_IMAGES if counted else None)[0]
    transform = eval_transform("deit_tiny_patch16_224")  # every DeiT's: 224 px, bicubic, crop 0.875
    rows = []
    for workers in cfg.read_workers:
        stats, seconds = time_one_pass(chosen, transform, cfg.sweep_batch_size, workers)
        rows.append(
            dict(workers=workers, images=stats.n_images, seconds=seconds, img_per_s=stats.n_images / seconds)
        )
    return rows


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
