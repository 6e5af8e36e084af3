"""Read throughput of the shard pipeline: decode + the model's eval transform, no model.

    python -m shards.bench DATA [--model deit_tiny_patch16_224] [--batch-size 128] [--workers 0,2,4] [--passes 2]

Prints, per DataLoader worker count, the images read, the seconds taken and img/s (the best of
``--passes`` passes over the data: the first pass also pays for the page cache). Set it beside the
sweep's ``infer_samples_per_sec`` to see whether the data path or the model limits an actor.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from clipattern import parsed_or_exit, run_or_report

from .read import ReadStats, iter_batches
from .shardset import DataSpecError
from .spec import resolve_data
from .transforms import eval_transform


@dataclass(frozen=True)
class ReadBenchConfig:
    data: str | None
    model: str = "deit_tiny_patch16_224"
    batch_size: int = 128
    workers: tuple[int, ...] = (0, 2)
    passes: int = 2


@dataclass(frozen=True)
class ReadBenchRow:
    workers: int
    images: int
    failed: int
    seconds: float  # best pass

    @property
    def img_per_s(self) -> float:
        return self.images / self.seconds


def time_one_pass(shards, transform, batch_size: int, workers: int) -> tuple[ReadStats, float]:
    """Read every shard once; returns the stream's counts and the wall seconds it took."""
    stats = ReadStats()
    start = time.perf_counter()
    for _ in iter_batches(shards, transform, batch_size, num_workers=workers, stats=stats):
        pass
    return stats, time.perf_counter() - start


def run_read_bench(cfg: ReadBenchConfig) -> list[ReadBenchRow]:
    shards = resolve_data(cfg.data).shards
    transform = eval_transform(cfg.model)
    rows = []
    for workers in cfg.workers:
        timings = [time_one_pass(shards, transform, cfg.batch_size, workers) for _ in range(cfg.passes)]
        stats, seconds = min(timings, key=lambda t: t[1])
        rows.append(ReadBenchRow(workers, stats.n_images, stats.n_failed, seconds))
    return rows


def format_rows(rows: Sequence[ReadBenchRow], cfg: ReadBenchConfig) -> str:
    lines = [
        f"shard read + eval transform for {cfg.model}, batch {cfg.batch_size}, best of {cfg.passes} pass(es)",
        "| loader workers | images | failed | seconds | img/s |",
        "|--:|--:|--:|--:|--:|",
    ]
    lines += [
        f"| {r.workers} | {r.images} | {r.failed} | {r.seconds:.2f} | {r.img_per_s:.1f} |" for r in rows
    ]
    return "\n".join(lines)


def parse_workers(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(item) for item in text.split(","))
    except ValueError:
        raise ValueError(f"expected comma-separated worker counts like 0,2,4, got {text!r}") from None
    if not values or min(values) < 0:
        raise ValueError(f"worker counts must be >= 0, got {text!r}")
    return values


def config_from_args(argv: Sequence[str] | None = None) -> ReadBenchConfig:
    p = argparse.ArgumentParser(prog="python -m shards.bench", description=__doc__.splitlines()[0])
    p.add_argument(
        "data",
        nargs="?",
        help="shards: directory with manifest, brace pattern, list or URLs (default $TOMECIS_DATA)",
    )
    p.add_argument(
        "--model",
        default="deit_tiny_patch16_224",
        help="timm name whose eval transform to apply (default %(default)s)",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", default="0,2", help="DataLoader worker counts to try (default %(default)s)")
    p.add_argument("--passes", type=int, default=2, help="passes per worker count; the fastest is reported")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.passes < 1:
        p.error("--batch-size and --passes must be >= 1")
    return ReadBenchConfig(
        **{**vars(args), "workers": parsed_or_exit(p, "--workers", parse_workers, args.workers)}
    )


def main(argv: Sequence[str] | None = None) -> int:
    cfg = config_from_args(argv)
    return run_or_report(lambda: _run_and_print(cfg), (DataSpecError, ValueError))


def _run_and_print(cfg: ReadBenchConfig) -> int:
    print(format_rows(run_read_bench(cfg), cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
