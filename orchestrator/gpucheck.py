"""One command that proves the GPU path and measures it: ``python -m orchestrator.gpucheck --out gpu-report/``.

On a machine with CUDA, in a few minutes on one GPU, it runs and writes into ``gpu-report/report.md``
(rewritten after every step, so an interrupted run still leaves what it measured) and ``results.json``:

1. ``tests/test_cuda.py``: CUDA against CPU logits, autocast finiteness, r = 0 against timm, SDPA against
   the explicit attention matrix, a GPU-actor sweep against a CPU-actor sweep;
2. ``tomecis.benchmark`` for each model at each r (fp16, batch 256, with ``--explicit``): speed-up over
   unpatched timm next to the FLOP ratio, and fused / explicit;
3. a sweep with GPU actors on shards of ``../shared/assets`` (or ``--data``): eval img/s (data path
   included) against infer img/s (model alone) per point;
4. ``shards.bench`` at several loader-worker counts, so that the data path's share is visible;

and checks the figures against the targets below. Without CUDA it says so in one line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from tomecis.cli import parsed_or_exit
from tomecis.schedule import parse_r_values

from .grid import parse_models

REPO = Path(__file__).resolve().parents[1]
# the 500 sample photos: beside the checkout (../shared), or inside it (shared/, as a device copy carries it)
SAMPLE_PLACES = (
    REPO.parent / "shared" / "assets" / "imagenet-sample",
    REPO / "shared" / "assets" / "imagenet-sample",
)

TARGETS = {
    "speedup_vs_flops": 0.9,  # r = 13 speed-up over unpatched timm >= 0.9 x the FLOP ratio
    "fused_vs_explicit": 1.3,  # fused >= 1.3 x explicit at r = 13, DeiT-S, fp16
    "grid_efficiency": 0.85,  # the pass's wall time <= the grid's summed model-alone time / 0.85
}


@dataclass
class GpuCheckConfig:
    """What to run; parsed once from the command line."""

    out: str = "gpu-report"
    data: Optional[str] = None  # shards; default: written from ../shared/assets/imagenet-sample
    checkpoint_dir: Optional[str] = None  # default: random weights (timing and agreement, not accuracy)
    device: str = "cuda"
    models: List[str] = field(default_factory=lambda: ["deit_tiny_patch16_224", "deit_small_patch16_224"])
    r_values: List[int] = field(default_factory=lambda: [0, 8, 13, 16])
    amp: str = "fp16"
    bench_batch_size: int = 256
    sweep_batch_size: int = 128
    runs: int = 20
    warmup: int = 5
    read_workers: List[int] = field(default_factory=lambda: sorted({2, 4, 8, os.cpu_count() or 1}))
    run_tests: bool = True
    repeat: int = 20  # copies of the 500 sample photos in the default shards (10,000 images)


@dataclass
class Report:
    """The report as it grows: Markdown sections, the figures, and each target's verdict."""

    out: Path
    sections: List[str] = field(default_factory=list)
    figures: Dict[str, object] = field(default_factory=dict)
    verdicts: List[str] = field(default_factory=list)

    def add(self, title: str, body: str, **figures) -> None:
        self.sections.append(f"## {title}\n\n{body.strip()}\n")
        self.figures.update(figures)
        self.write()

    def check(self, what: str, measured: float, target: float) -> None:
        verdict = "PASS" if measured >= target else "FAIL"
        self.verdicts.append(f"| {what} | {measured:.2f} | >= {target:.2f} | {verdict} |")
        self.write()

    @property
    def all_passed(self) -> bool:
        """No step failed, the CUDA tests (when run) passed, and every target was met."""
        steps_failed = any(s.split("\n", 1)[0].endswith(": FAILED") for s in self.sections)
        return (
            not steps_failed
            and self.figures.get("tests_passed", True)
            and not any(v.endswith("FAIL |") for v in self.verdicts)
        )

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        targets = [
            "## Targets",
            "",
            "| check | measured | target | verdict |",
            "|---|--:|--:|---|",
            *self.verdicts,
            "",
        ]
        text = (
            "# GPU check\n\n"
            + "\n".join(self.sections)
            + ("\n" + "\n".join(targets) if self.verdicts else "")
        )
        (self.out / "report.md").write_text(text)
        (self.out / "results.json").write_text(json.dumps(self.figures, indent=2, default=str))


# --------------------------------------------------------------------------- the steps


def machine_section(cfg: GpuCheckConfig) -> str:
    device = torch.device(cfg.device)
    lines = [f"- torch {torch.__version__}, CUDA {torch.version.cuda}, {os.cpu_count()} CPU cores"]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(
            f"- {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}"
        )
    else:
        lines.append("- no GPU: this run is on the CPU (a rehearsal of the report, not a GPU proof)")
    if Path("/dev/shm").exists():  # DataLoader workers hand their batches over through it
        lines.append(f"- /dev/shm: {shutil.disk_usage('/dev/shm').free / 2**30:.1f} GiB free")
    return "\n".join(lines)


def run_cuda_tests(timeout: float = 420.0) -> tuple:
    """``pytest tests/test_cuda.py`` in a subprocess; returns (passed?, its summary lines)."""
    test_file = REPO / "tests" / "test_cuda.py"
    if not test_file.exists():
        return False, f"{test_file} not found: run gpucheck from a checkout of the repository"
    command = [sys.executable, "-m", "pytest", str(test_file), "-q", "-rA", "-p", "no:cacheprovider"]
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"tests/test_cuda.py did not finish within {timeout:.0f}s"
    lines = [
        line
        for line in done.stdout.splitlines()
        if line.startswith(("PASSED", "FAILED", "SKIPPED", "ERROR")) or " passed" in line or " failed" in line
    ]
    return done.returncode == 0, "\n".join(lines[-40:]) or done.stdout[-3000:] + done.stderr[-2000:]


def benchmark_model(cfg: GpuCheckConfig, model: str) -> List[dict]:
    """``tomecis.benchmark`` of one model at every r, with the explicit formulation: one dict per r."""
    from tomecis.benchmark import BenchmarkConfig, run_benchmark

    rows = run_benchmark(
        BenchmarkConfig(
            model=model,
            r_values=cfg.r_values,
            batch_size=cfg.bench_batch_size,
            device=cfg.device,
            amp=cfg.amp,
            warmup=cfg.warmup,
            runs=cfg.runs,
            explicit=True,
        )
    )
    gflops0 = next(r.gflops for r in rows if r.r == 0) if any(r.r == 0 for r in rows) else rows[0].gflops
    return [
        dict(
            model=row.model,
            r=row.r,
            img_per_s=row.img_per_s,
            unpatched_img_per_s=row.unpatched_img_per_s,
            speedup=row.speedup,
            flop_ratio=gflops0 / row.gflops,
            gflops=row.gflops,
            tokens_out=row.tokens_out,
            explicit_img_per_s=row.explicit_img_per_s,
            fused_vs_explicit=row.img_per_s / row.explicit_img_per_s,
        )
        for row in rows
    ]


def benchmark_table(rows: Sequence[dict]) -> str:
    head = "| model | r | img/s | speed-up | FLOP ratio | speed-up / FLOP ratio | GFLOPs | tokens | explicit img/s | fused / explicit |"
    lines = [head, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['r']} | {r['img_per_s']:.0f} | {r['speedup']:.2f}x | {r['flop_ratio']:.2f}x | "
            f"{r['speedup'] / r['flop_ratio']:.2f} | {r['gflops']:.2f} | {r['tokens_out']} | {r['explicit_img_per_s']:.0f} | "
            f"{r['fused_vs_explicit']:.2f}x |"
        )
    return "\n".join(lines)


def sample_shards(cfg: GpuCheckConfig) -> Optional[str]:
    """``--data``, else shards written once into the report folder from ../shared/assets/imagenet-sample:
    the 500 real photos ``cfg.repeat`` times over (keys ``<file stem>_copyNN``), so that the data path
    runs long enough to be timed against a GPU; 250 images a shard, so that every loader worker has one."""
    if cfg.data:
        return cfg.data
    sample_images = next((place for place in SAMPLE_PLACES if place.exists()), None)
    if sample_images is None:
        return None
    from shards.synsets import synset_index
    from shards.testing import write_manifest_for, write_raw_shard

    target = Path(cfg.out) / f"shards-x{cfg.repeat}"
    if (target / "manifest.json").exists():
        return str(target)
    photos = [
        (p.stem, p.read_bytes(), synset_index(p.parent.name, where=str(p)))
        for p in sorted(sample_images.glob("*/*.JPEG"))
    ]
    samples = sorted(
        (f"{stem}_copy{k:02d}", data, label) for k in range(cfg.repeat) for stem, data, label in photos
    )
    records = [
        write_raw_shard(target / f"sample-x{cfg.repeat}-{i // 250:06d}.tar", samples[i : i + 250])
        for i in range(0, len(samples), 250)
    ]
    write_manifest_for(target, records)
    return str(target)


def run_sweep_step(cfg: GpuCheckConfig, data: str) -> List[dict]:
    """A sweep of the models at every r on GPU actors (a local Ray started for it); one dict per point."""
    import pandas as pd

    from .sweep import SweepConfig, run_sweep

    out = Path(cfg.out) / "results"
    sweep_cfg = SweepConfig(
        models=list(cfg.models),
        r_values=cfg.r_values,
        data=data,
        out=str(out),
        batch_size=cfg.sweep_batch_size,
        device=cfg.device,
        amp=cfg.amp,
        checkpoint_dir=cfg.checkpoint_dir,
        random_weights=cfg.checkpoint_dir is None,
        address="local",
        bench_runs=cfg.runs,
        bench_warmup=cfg.warmup,
        force=True,
        progress=False,
    )
    summary = run_sweep(sweep_cfg)
    points = pd.concat([pd.read_parquet(path) for path in summary.written])  # this run's points only
    return points[
        [
            "short_name",
            "mode",
            "r",
            "top1",
            "n_images",
            "infer_samples_per_sec",
            "eval_samples_per_sec",
            "started",
            "finished",
            "device",
        ]
    ].to_dict("records")


def grid_efficiency(points: Sequence[dict]) -> float:
    """Summed model-alone time of the grid over the pass's wall time: 1.0 means the data path cost nothing."""
    alone = sum(p["n_images"] / p["infer_samples_per_sec"] for p in points)
    wall = (max(p["finished"] for p in points) - min(p["started"] for p in points)).total_seconds()
    return alone / wall if wall > 0 else float("nan")


def sweep_table(points: Sequence[dict]) -> str:
    lines = [
        "| model | mode | r | top-1 | images | infer img/s | eval img/s | eval / infer |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for p in points:
        lines.append(
            f"| {p['short_name']} | {p['mode']} | {p['r']} | {p['top1']:.2f} | {p['n_images']} | {p['infer_samples_per_sec']:.0f} | "
            f"{p['eval_samples_per_sec']:.0f} | {p['eval_samples_per_sec'] / p['infer_samples_per_sec']:.2f} |"
        )
    return "\n".join(lines)


def read_bench(cfg: GpuCheckConfig, data: str) -> List[dict]:
    """``shards.bench``: decode + eval transform img/s at each loader-worker count (no model)."""
    from shards.bench import ReadBenchConfig, run_read_bench

    rows = run_read_bench(
        ReadBenchConfig(data=data, batch_size=cfg.sweep_batch_size, workers=tuple(cfg.read_workers), passes=1)
    )
    return [dict(workers=r.workers, images=r.images, seconds=r.seconds, img_per_s=r.img_per_s) for r in rows]


def read_table(rows: Sequence[dict], model_rates: Dict[str, float]) -> str:
    lines = ["| loader workers | images | seconds | img/s |", "|--:|--:|--:|--:|"]
    lines += [f"| {r['workers']} | {r['images']} | {r['seconds']:.2f} | {r['img_per_s']:.0f} |" for r in rows]
    best = max(rows, key=lambda r: r["img_per_s"])
    for model, rate in model_rates.items():
        lines.append(
            f"\n{model} alone at r = 0 runs {rate:.0f} img/s: the best data path here ({best['workers']} workers, "
            f"{best['img_per_s']:.0f} img/s) is {best['img_per_s'] / rate:.2f}x of it."
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- the command


def run_check(cfg: GpuCheckConfig, say: Callable[[str], None] = print) -> Report:
    """Every step in turn; a step that fails is reported as failed and the next one still runs."""
    report = Report(Path(cfg.out))
    report.add("Machine", machine_section(cfg))
    if cfg.run_tests:
        say("gpucheck: tests/test_cuda.py")
        passed, summary = run_cuda_tests()
        report.add(
            "tests/test_cuda.py",
            f"{'passed' if passed else 'FAILED'}\n\n```\n{summary}\n```",
            tests_passed=passed,
        )
    bench_rows: List[dict] = []
    for model in cfg.models:
        say(f"gpucheck: benchmark {model}")
        bench_rows += _step(report, f"benchmark {model}", lambda: benchmark_model(cfg, model)) or []
    if bench_rows:
        report.add(
            f"Benchmark ({cfg.amp}, batch {cfg.bench_batch_size}, random input on the device)",
            benchmark_table(bench_rows),
            benchmark=bench_rows,
        )
        _check_benchmark(report, bench_rows)
    data = sample_shards(cfg)
    if data is None:
        places = " or ".join(str(p) for p in SAMPLE_PLACES)
        report.add("sweep: FAILED", f"no --data, and no sample photos at {places} to write shards from")
        return report
    say(f"gpucheck: sweep on {data}")
    points = _step(report, "sweep", lambda: run_sweep_step(cfg, data))
    if points:
        efficiency = grid_efficiency(points)
        report.add(
            f"Sweep on {data} ({cfg.device} actors)",
            sweep_table(points) + f"\n\ngrid efficiency (summed model-alone time / pass wall time): "
            f"{efficiency:.2f}",
            sweep=points,
            grid_efficiency=efficiency,
        )
        report.check("grid: summed infer time / eval wall time", efficiency, TARGETS["grid_efficiency"])
    say("gpucheck: shards.bench")
    reads = _step(report, "shards.bench", lambda: read_bench(cfg, data))
    if reads:
        rates = {r["model"]: r["unpatched_img_per_s"] for r in bench_rows if r["r"] == 0}
        report.add(
            "Data path (shards.bench: decode + eval transform, no model)",
            read_table(reads, rates),
            read_bench=reads,
        )
    return report


def _step(report: Report, name: str, step: Callable[[], object]):
    start = time.monotonic()
    try:
        result = step()
    except Exception as err:  # noqa: BLE001 - the report says what failed and the other steps still run
        report.add(f"{name}: FAILED", f"```\n{type(err).__name__}: {err}\n```")
        return None
    report.figures.setdefault("seconds", {})[name] = round(time.monotonic() - start, 1)
    return result


def _check_benchmark(report: Report, rows: Sequence[dict]) -> None:
    for row in rows:
        if row["r"] == 13:
            report.check(
                f"{row['model']} r=13 speed-up / FLOP ratio",
                row["speedup"] / row["flop_ratio"],
                TARGETS["speedup_vs_flops"],
            )
            if "small" in row["model"]:
                report.check(
                    f"{row['model']} r=13 fused / explicit",
                    row["fused_vs_explicit"],
                    TARGETS["fused_vs_explicit"],
                )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orchestrator.gpucheck", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--out", default="gpu-report", help="folder for report.md and results.json (default %(default)s)"
    )
    p.add_argument(
        "--data", help="shards for the sweep and shards.bench (default: written from ../shared/assets)"
    )
    p.add_argument("--checkpoint-dir", help="weights for the sweep (default: random weights)")
    p.add_argument(
        "--models", default="deit_tiny,deit_small", help="short or timm names (default %(default)s)"
    )
    p.add_argument(
        "--r", dest="r_values", metavar="R", default="0,8,13,16", help="r values (default %(default)s)"
    )
    p.add_argument("--runs", type=int, default=20, help="timed passes per setting")
    p.add_argument(
        "--device",
        default="cuda",
        choices=["cuda", "cpu"],
        help="cpu: a rehearsal of the report without a GPU",
    )
    p.add_argument(
        "--batch-size",
        dest="bench_batch_size",
        type=int,
        default=256,
        help="benchmark batch (the sweep uses 128)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=20,
        help="copies of the 500 sample photos in the default shards (default %(default)s)",
    )
    p.add_argument("--no-tests", dest="run_tests", action="store_false", help="skip tests/test_cuda.py")
    return p


def config_from_args(argv: Optional[Sequence[str]] = None) -> GpuCheckConfig:
    """Parse the arguments (``tomecis.cli``'s pattern: each ``dest`` is a GpuCheckConfig field)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    parsed = dict(
        models=parsed_or_exit(parser, "--models", parse_models, args.models),
        r_values=parsed_or_exit(parser, "--r", parse_r_values, args.r_values),
    )
    if args.runs < 1 or args.bench_batch_size < 1 or args.repeat < 1:
        parser.error("--runs, --batch-size and --repeat must be >= 1")
    cfg = GpuCheckConfig(**{**vars(args), **parsed})
    if cfg.device == "cpu":  # a rehearsal: small, in fp32 (CPU autocast is slow and not what is measured)
        cfg.amp, cfg.warmup, cfg.read_workers = "none", 1, [0, 1]  # tiny data: 0 and 1 worker suffice
        cfg.sweep_batch_size = min(cfg.sweep_batch_size, cfg.bench_batch_size)
    return cfg


def main(argv: Optional[Sequence[str]] = None) -> int:
    cfg = config_from_args(argv)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        print(
            f"gpucheck: torch {torch.__version__} sees no CUDA device here; run it on a machine with a GPU (nvidia-smi lists it)",
            file=sys.stderr,
        )
        return 2
    start = time.monotonic()
    report = run_check(cfg, say=lambda s: print(s, file=sys.stderr))
    report.figures["total_seconds"] = round(time.monotonic() - start, 1)
    report.write()
    print((Path(cfg.out) / "report.md").read_text())
    return 0 if report.all_passed else 1


if __name__ == "__main__":
    sys.exit(main())
