"""One command that proves the GPU path and measures it: ``python -m orchestrator.gpucheck --out gpu-report/``.

On a machine with CUDA, in a few minutes on one GPU (under 8 on an H100/H200), it runs and writes into
``gpu-report/report.md`` (rewritten after every step, so an interrupted run still leaves what it measured) and
``results.json``, printing the seconds each step took:

1. ``tomecis.benchmark`` for each model at each r (fp16, batch 256, with ``--explicit``), as CUDA-graph
   replays and eagerly, side by side: speed-up over unpatched timm next to the FLOP ratio, fused /
   explicit, ATen ops per forward (the first figures, within a minute or two; targets on the graphed ones);
2. the decode pass on shards written from a folder of photos (``--photos``, default ../shared/assets), or
   ``--data``: eval img/s (data path included) against infer img/s (model alone) per point, and the grid
   efficiency. Without Ray it runs the evaluator in-process (the actor's own code: ``Evaluator`` and
   ``evaluate_shards``, with the loader workers a GPU actor would get on this machine); with Ray, a sweep
   on GPU actors (``--evaluator`` chooses; ``both`` shows the two side by side);
3. ``shards.bench`` at several loader-worker counts, so that the data path's share is visible;
4. ``tests/test_cuda.py``: CUDA against CPU logits, autocast finiteness, r = 0 against timm, SDPA against
   the explicit attention matrix, a GPU-actor sweep against a CPU-actor sweep (skipped without Ray);

and checks the figures against the targets below. Without CUDA it says so in one line and exits 2.
Nothing is fetched: ``--wheels DIR`` installs the pure-Python wheels a stock PyTorch image lacks
(webdataset, braceexpand) from DIR, offline, into the report folder.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from clipattern import parsed_or_exit
from tomecis.schedule import parse_r_values

from .grid import parse_models

REPO = Path(__file__).resolve().parents[1]
# the 500 sample photos: beside the checkout (../shared), or inside it (shared/, as a device copy carries it)
SAMPLE_PLACES = (
    REPO.parent / "shared" / "assets" / "imagenet-sample",
    REPO / "shared" / "assets" / "imagenet-sample",
)
PHOTOS_LIMIT = (
    250  # photos read from the folder (about 27 MB of ImageNet JPEGs): enough to time the data path
)
GPU_IMAGES = 10_000  # on a GPU the photos are repeated up to this many images, so that the pass lasts seconds
SHARD_SIZE = 250  # images a shard: 40 shards of 10,000, more than a GPU actor's loader workers
EVALUATORS = ("auto", "in-process", "ray", "both")

TARGETS = {
    "speedup_vs_flops": 0.9,  # r = 13 speed-up over unpatched timm >= 0.9 x the FLOP ratio
    "fused_vs_explicit": 1.3,  # fused >= 1.3 x explicit at r = 13, DeiT-S, fp16
    "grid_efficiency": 0.85,  # the pass's wall time <= the grid's summed model-alone time / 0.85
}


@dataclass
class GpuCheckConfig:
    """What to run; parsed once from the command line."""

    out: str = "gpu-report"
    data: Optional[str] = None  # shards; default: written from the photos
    photos: Optional[str] = None  # <synset>/<name>.JPEG folder; default: ../shared/assets/imagenet-sample
    photos_limit: int = PHOTOS_LIMIT  # the first N photos (sorted by path)
    repeat: Optional[int] = None  # copies of each photo in the shards; default: GPU_IMAGES (CPU: 1)
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
    evaluator: str = "auto"  # auto: Ray's GPU actors where Ray is installed, else in-process
    run_tests: bool = True
    tests_timeout: float = 240.0
    wheels: Optional[str] = None  # folder of wheels to install offline before anything needs them


@dataclass
class Report:
    """The report as it grows: Markdown sections, the figures, each target's verdict and each step's time."""

    out: Path
    sections: List[str] = field(default_factory=list)
    figures: Dict[str, object] = field(default_factory=dict)
    verdicts: List[str] = field(default_factory=list)
    steps: List[str] = field(default_factory=list)

    def add(self, title: str, body: str, **figures) -> None:
        self.sections.append(f"## {title}\n\n{body.strip()}\n")
        self.figures.update(figures)
        self.write()

    def check(self, what: str, measured: float, target: float) -> None:
        verdict = "PASS" if measured >= target else "FAIL"
        self.verdicts.append(f"| {what} | {measured:.2f} | >= {target:.2f} | {verdict} |")
        self.write()

    def timed(self, name: str, seconds: float, outcome: str) -> None:
        self.figures.setdefault("seconds", {})[name] = round(seconds, 1)
        self.steps.append(f"| {name} | {seconds:.1f} | {outcome} |")
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
        parts = ["# GPU check\n", *self.sections]
        if self.verdicts:
            parts.append(
                "## Targets\n\n| check | measured | target | verdict |\n|---|--:|--:|---|\n"
                + "\n".join(self.verdicts)
                + "\n"
            )
        if self.steps:
            total = sum(self.figures.get("seconds", {}).values())
            parts.append(
                "## Steps\n\n| step | seconds | outcome |\n|---|--:|---|\n"
                + "\n".join(self.steps)
                + f"\n\n{total:.0f} s in the steps so far\n"
            )
        (self.out / "report.md").write_text("\n".join(parts))
        (self.out / "results.json").write_text(json.dumps(self.figures, indent=2, default=str))


# --------------------------------------------------------------------------- what this machine has


def ray_version() -> Optional[str]:
    """Ray's version, or None where it cannot be imported (a stock PyTorch image has none)."""
    try:
        import ray
    except ImportError:
        return None
    return ray.__version__


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_section(cfg: GpuCheckConfig, wheels: Sequence[str] = ()) -> str:
    device = torch.device(cfg.device)
    ray = ray_version()
    lines = [
        f"- Python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"timm {_version('timm')}, webdataset {_version('webdataset')}, {os.cpu_count()} CPU cores",
        f"- Ray {ray}" if ray else "- Ray: not installed (the decode pass runs the evaluator in-process)",
    ]
    if wheels:
        lines.append(f"- installed offline from --wheels {cfg.wheels}: {', '.join(wheels)}")
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


def install_wheels(folder: Path, target: Path) -> List[str]:
    """The wheels in ``folder`` whose distribution this Python lacks, installed offline (``pip install
    --no-index --no-deps --target``) into ``target``, which goes first on ``sys.path`` and ``PYTHONPATH`` so
    that loader workers and the tests' subprocess see it too. Returns the wheels installed (none when
    everything is there already, e.g. from an earlier run into the same folder)."""
    wheels = sorted(Path(folder).glob("*.whl"))
    if not wheels:
        raise FileNotFoundError(f"no .whl file in {folder}")
    _put_first_on_path(target)
    missing = [w for w in wheels if _version(w.name.split("-")[0]) == "not installed"]
    if missing:
        command = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile"]
        command += ["--disable-pip-version-check", "--quiet", "--upgrade", "--target", str(target)]
        done = subprocess.run(command + [str(w) for w in missing], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(
                f"pip could not install {', '.join(w.name for w in missing)}: {done.stderr[-2000:]}"
            )
        _put_first_on_path(target)
    return [w.name for w in missing]


def _put_first_on_path(target: Path) -> None:
    if not target.is_dir():
        return
    where = str(target.resolve())
    if where not in sys.path:
        sys.path.insert(0, where)
    others = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != where]
    os.environ["PYTHONPATH"] = os.pathsep.join([where, *others])
    importlib.invalidate_caches()


# --------------------------------------------------------------------------- the steps


def run_cuda_tests(timeout: float = 240.0) -> tuple:
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
    """``tomecis.benchmark`` of one model at every r, twice: CUDA-graph replays (with the explicit
    formulation beside them) and eager forwards, unpatched timm timed the same way in each. One dict per
    r; the targets read the graphed figures, the eager ones show what the host's launches cost."""
    from tomecis.benchmark import BenchmarkConfig, run_benchmark

    def bench(cuda_graphs: bool, explicit: bool):
        return run_benchmark(
            BenchmarkConfig(
                model=model,
                r_values=cfg.r_values,
                batch_size=cfg.bench_batch_size,
                device=cfg.device,
                amp=cfg.amp,
                warmup=cfg.warmup,
                runs=cfg.runs,
                explicit=explicit,
                cuda_graphs=cuda_graphs,
            )
        )

    graphed, eager = bench(True, True), bench(False, False)
    gflops0 = next((r.gflops for r in graphed if r.r == 0), graphed[0].gflops)
    return [
        dict(
            model=row.model,
            r=row.r,
            img_per_s=row.img_per_s,
            unpatched_img_per_s=row.unpatched_img_per_s,
            speedup=row.speedup,
            cuda_graphs=row.cuda_graphs and row.unpatched_cuda_graphs,
            graph_error=row.graph_error,
            eager_img_per_s=slow.img_per_s,
            eager_speedup=slow.speedup,
            aten_ops=row.aten_ops,
            flop_ratio=gflops0 / row.gflops,
            gflops=row.gflops,
            tokens_out=row.tokens_out,
            explicit_img_per_s=row.explicit_img_per_s,
            fused_vs_explicit=row.img_per_s / row.explicit_img_per_s,
        )
        for row, slow in zip(graphed, eager)
    ]


def benchmark_table(rows: Sequence[dict]) -> str:
    """Graphed and eager img/s side by side per r; speed-ups over unpatched timm timed the same way."""
    head = (
        "| model | r | graphed img/s | eager img/s | graphed / eager | speed-up graphed | speed-up eager "
        "| FLOP ratio | graphed speed-up / FLOP ratio | GFLOPs | tokens | aten ops | explicit img/s "
        "| fused / explicit |"
    )
    lines = [head, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        graphed = f"{r['img_per_s']:.0f}" + ("" if r["cuda_graphs"] else " (eager: no graphs)")
        lines.append(
            f"| {r['model']} | {r['r']} | {graphed} | {r['eager_img_per_s']:.0f} | "
            f"{r['img_per_s'] / r['eager_img_per_s']:.2f}x | {r['speedup']:.2f}x | {r['eager_speedup']:.2f}x | "
            f"{r['flop_ratio']:.2f}x | {r['speedup'] / r['flop_ratio']:.2f} | {r['gflops']:.2f} | {r['tokens_out']} | "
            f"{r['aten_ops']} | {r['explicit_img_per_s']:.0f} | {r['fused_vs_explicit']:.2f}x |"
        )
    errors = [
        f"- {r['model']} r={r['r']}: capture failed, timed eagerly: {r['graph_error']}"
        for r in rows
        if r["graph_error"]
    ]
    return "\n".join(lines + ([""] + errors if errors else []))


def photo_folder(cfg: GpuCheckConfig) -> Path:
    """``--photos``, else the first of ``SAMPLE_PLACES`` that exists; neither is an error naming them."""
    if cfg.photos:
        if not Path(cfg.photos).is_dir():
            raise FileNotFoundError(f"--photos {cfg.photos}: no such folder")
        return Path(cfg.photos)
    found = next((place for place in SAMPLE_PLACES if place.exists()), None)
    if found is None:
        places = " or ".join(str(p) for p in SAMPLE_PLACES)
        raise FileNotFoundError(
            f"no --data, no --photos, and no sample photos at {places} to write shards from"
        )
    return found


def list_photos(folder: Path, limit: Optional[int]) -> List[Path]:
    """The ``<synset>/<name>.JPEG`` files of an ImageFolder tree, sorted by path, the first ``limit``."""
    from shards.sources import is_image_name  # the names shards.write takes for ImageNet photos

    photos = sorted(p for p in folder.glob("*/*") if is_image_name(p.name) and p.is_file())
    if not photos:
        raise FileNotFoundError(
            f"no photos in {folder}: it must hold <synset>/<name>.JPEG files (ImageFolder)"
        )
    return photos[:limit] if limit else photos


def sample_shards(cfg: GpuCheckConfig) -> str:
    """``--data``, else shards written once into the report folder from the photos (the first
    ``photos_limit`` of them, ``repeat`` times over, keys ``<file stem>_copyNN``), so that the data path runs
    long enough to be timed against a GPU; 250 images a shard, so that every loader worker has one."""
    if cfg.data:
        return cfg.data
    from shards.synsets import synset_index
    from shards.write import write_manifest_for, write_raw_shard

    files = list_photos(photo_folder(cfg), cfg.photos_limit)
    repeat = cfg.repeat or max(1, math.ceil(GPU_IMAGES / len(files)))
    which = hashlib.sha256("\n".join(f"{p.parent.name}/{p.name}" for p in files).encode()).hexdigest()[:8]
    target = Path(cfg.out) / f"shards-{len(files)}x{repeat}-{which}"
    if (target / "manifest.json").exists():
        return str(target)
    photos = [(p.stem, p.read_bytes(), synset_index(p.parent.name, where=str(p))) for p in files]
    width = max(2, len(str(repeat - 1)))
    samples = sorted(
        (f"{stem}_copy{k:0{width}d}", data, label) for k in range(repeat) for stem, data, label in photos
    )
    records = [
        write_raw_shard(target / f"sample-{i // SHARD_SIZE:06d}.tar", samples[i : i + SHARD_SIZE])
        for i in range(0, len(samples), SHARD_SIZE)
    ]
    write_manifest_for(target, records)
    return str(target)


POINT_FIELDS = [
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
    "cuda_graphs",  # where the point rows carry it (the CUDA-graph runner)
]


def _point_fields(rows) -> List[dict]:
    return [{k: row[k] for k in POINT_FIELDS if k in row} for row in rows]


def evaluators_to_run(choice: str, has_ray: bool) -> List[str]:
    """``auto``: Ray's GPU actors where Ray is installed, else the in-process evaluator."""
    if choice == "auto":
        return ["ray"] if has_ray else ["in-process"]
    return ["in-process", "ray"] if choice == "both" else [choice]


def local_actor_shape(device: str):
    """What ``placement`` would give one actor on this machine: torch threads and loader workers (a GPU
    actor: one worker per CPU but one, which feeds the GPU; a CPU actor: up to 4 threads, no workers)."""
    from .placement import NodeResources, plan_actors
    from .work import ActorShape

    gpus = torch.cuda.device_count() if device == "cuda" else 0
    node = NodeResources("local", "localhost", float(os.cpu_count() or 1), float(gpus))
    slot = plan_actors([node], device).slots[0]
    return ActorShape(threads=slot.threads, loader_workers=slot.loader_workers)


def run_inprocess_step(cfg: GpuCheckConfig, data: str) -> List[dict]:
    """The decode pass without Ray: the actor's body (``Evaluator``: its models, warm-up, ``evaluate_shards``
    with loader workers, pinned memory and CUDA events; its model-alone timing) called in this process over
    every shard, and each point's row assembled as the sweep does (``points.point_row``)."""
    import shards

    from .evaluator import Evaluator
    from .grid import build_grid
    from .points import point_row
    from .prepare import plan_passes, select_shards, weights_for
    from .work import EvaluatorConfig, Weights

    chosen, total, fingerprint = select_shards(shards.resolve_data(data), None)
    weights = {
        model: Weights("checkpoint", w.name, [Path(w.data_ref[0]).read_bytes()], w.digest)
        if w.source == "checkpoint"
        else w
        for model, w in weights_for(cfg.models, cfg.checkpoint_dir, cfg.checkpoint_dir is None).items()
    }
    tags = {model: w.tag for model, w in weights.items()}
    grid = build_grid(
        cfg.models,
        cfg.r_values,
        "tomecis",
        cfg.amp,
        cfg.sweep_batch_size,
        tags,
        cfg.device,
        dataset=fingerprint,
    )
    threads = torch.get_num_threads()  # the evaluator sets its own, as an actor does; given back after
    try:
        evaluator = Evaluator(
            EvaluatorConfig(device=cfg.device, amp=cfg.amp, batch_size=cfg.sweep_batch_size),
            local_actor_shape(cfg.device),
        )
        rows = []
        for decode_pass in plan_passes(grid, weights):
            outcome = evaluator.evaluate(decode_pass, chosen)
            if outcome.model_errors:
                raise RuntimeError("; ".join(outcome.model_errors.values()))
            for task in decode_pass.tasks:
                profile = evaluator.profile(decode_pass, task, True, cfg.runs, cfg.warmup)
                for point in grid:
                    if (point.model, point.mode) == (task.model, task.mode):
                        rows.append(point_row(point, [outcome], profile, total, False)[0])
    finally:
        torch.set_num_threads(threads)
    return _point_fields(rows)


def run_sweep_step(cfg: GpuCheckConfig, data: str) -> List[dict]:
    """A sweep of the models at every r on GPU actors (a local Ray started for it); one dict per point."""
    if ray_version() is None:
        raise RuntimeError(
            "Ray is not installed here; --evaluator in-process runs the same decode pass without it"
        )
    from .results import ResultsDir
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
    points = ResultsDir(str(out)).read_point_files(summary.written)  # this run's points only
    return _point_fields(points.to_pandas().to_dict("records"))


def grid_efficiency(points: Sequence[dict]) -> float:
    """Summed model-alone time of the grid over the pass's wall time: 1.0 means the data path cost nothing."""
    alone = sum(p["n_images"] / p["infer_samples_per_sec"] for p in points)
    wall = (max(p["finished"] for p in points) - min(p["started"] for p in points)).total_seconds()
    return alone / wall if wall > 0 else float("nan")


def sweep_table(points: Sequence[dict]) -> str:
    graphs = any("cuda_graphs" in p for p in points)
    lines = [
        "| model | mode | r | top-1 | images | infer img/s | eval img/s | eval / infer |"
        + (" CUDA graphs |" if graphs else ""),
        "|---|---|--:|--:|--:|--:|--:|--:|" + ("---|" if graphs else ""),
    ]
    for p in points:
        lines.append(
            f"| {p['short_name']} | {p['mode']} | {p['r']} | {p['top1']:.2f} | {p['n_images']} | {p['infer_samples_per_sec']:.0f} | "
            f"{p['eval_samples_per_sec']:.0f} | {p['eval_samples_per_sec'] / p['infer_samples_per_sec']:.2f} |"
            + (f" {p.get('cuda_graphs')} |" if graphs else "")
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


def run_check(cfg: GpuCheckConfig, say: Callable[[str], None] = print, wheels: Sequence[str] = ()) -> Report:
    """Every step in turn, the quick benchmark first; a step that fails is reported as failed and the next
    one still runs. Each step's seconds are printed and kept in the report."""
    report = Report(Path(cfg.out))
    report.add("Machine", machine_section(cfg, wheels))
    bench_rows: List[dict] = []
    for model in cfg.models:
        bench_rows += _step(report, f"benchmark {model}", lambda: benchmark_model(cfg, model), say) or []
    if bench_rows:
        report.add(
            f"Benchmark ({cfg.amp}, batch {cfg.bench_batch_size}, random input on the device)",
            benchmark_table(bench_rows),
            benchmark=bench_rows,
        )
        _check_benchmark(report, bench_rows)
    data = _step(report, "shards", lambda: sample_shards(cfg), say)
    if data is not None:
        for evaluator in evaluators_to_run(cfg.evaluator, ray_version() is not None):
            _decode_pass(report, cfg, data, evaluator, say)
        reads = _step(report, "shards.bench", lambda: read_bench(cfg, data), say)
        if reads:
            rates = {r["model"]: r["unpatched_img_per_s"] for r in bench_rows if r["r"] == 0}
            report.add(
                "Data path (shards.bench: decode + eval transform, no model)",
                read_table(reads, rates),
                read_bench=reads,
            )
    if cfg.run_tests:
        result = _step(report, "tests/test_cuda.py", lambda: run_cuda_tests(cfg.tests_timeout), say)
        if result is not None:
            passed, summary = result
            report.add(
                "tests/test_cuda.py",
                f"{'passed' if passed else 'FAILED'}\n\n```\n{summary}\n```",
                tests_passed=passed,
            )
    return report


def _decode_pass(report: Report, cfg: GpuCheckConfig, data: str, evaluator: str, say) -> None:
    """One decode pass over the shards, by the in-process evaluator or by Ray's actors, with its table,
    grid efficiency and target."""
    if evaluator == "in-process":
        shape = local_actor_shape(cfg.device)
        how = (
            f"in-process evaluator (no Ray: the actor's code in this process, {shape.loader_workers} loader "
            f"workers, {shape.threads} torch threads"
            + (", pinned memory, CUDA events)" if cfg.device == "cuda" else ")")
        )
        points = _step(report, "decode pass, in-process", lambda: run_inprocess_step(cfg, data), say)
    else:
        how = f"sweep on {cfg.device} actors (Ray {ray_version()})"
        points = _step(report, "decode pass, Ray actors", lambda: run_sweep_step(cfg, data), say)
    if not points:
        return
    efficiency = grid_efficiency(points)
    report.figures.setdefault("decode_pass", {})[evaluator] = dict(points=points, grid_efficiency=efficiency)
    report.add(
        f"Decode pass: {how}, on {data}",
        sweep_table(points) + "\n\ngrid efficiency (summed model-alone time / pass wall time): "
        f"{efficiency:.2f}",
    )
    report.check(
        f"grid ({evaluator}): summed infer time / eval wall time", efficiency, TARGETS["grid_efficiency"]
    )


def _step(report: Report, name: str, step: Callable[[], object], say: Callable[[str], None] = print):
    say(f"gpucheck: {name} ...")
    start = time.monotonic()
    try:
        result = step()
    except Exception as err:  # noqa: BLE001 - the report says what failed and the other steps still run
        seconds = time.monotonic() - start
        say(f"gpucheck: {name}: FAILED after {seconds:.1f}s: {type(err).__name__}: {err}")
        report.add(f"{name}: FAILED", f"```\n{type(err).__name__}: {err}\n```")
        report.timed(name, seconds, "FAILED")
        return None
    seconds = time.monotonic() - start
    say(f"gpucheck: {name}: {seconds:.1f}s")
    report.timed(name, seconds, "done")
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
        "--data", help="shards for the decode pass and shards.bench (default: written from --photos)"
    )
    p.add_argument(
        "--photos",
        metavar="DIR",
        help="an ImageFolder tree (<synset>/<name>.JPEG) to write the shards from "
        "(default: ../shared/assets/imagenet-sample, or shared/assets/imagenet-sample in the checkout)",
    )
    p.add_argument(
        "--photos-limit",
        metavar="N",
        type=int,
        default=PHOTOS_LIMIT,
        help="use the first N photos, sorted by path (default %(default)s)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        help=f"copies of each photo in the shards (default: enough for {GPU_IMAGES} images; 1 with --device cpu)",
    )
    p.add_argument(
        "--wheels",
        metavar="DIR",
        help="install the .whl files of DIR that this Python lacks, offline, into OUT/site-packages first",
    )
    p.add_argument(
        "--evaluator",
        choices=EVALUATORS,
        default="auto",
        help="the decode pass: in-process, on Ray's actors, or both (default auto: Ray's where installed)",
    )
    p.add_argument("--checkpoint-dir", help="weights for the decode pass (default: random weights)")
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
        help="benchmark batch (the decode pass uses 128)",
    )
    p.add_argument("--no-tests", dest="run_tests", action="store_false", help="skip tests/test_cuda.py")
    p.add_argument(
        "--tests-timeout",
        type=float,
        default=240.0,
        help="seconds for tests/test_cuda.py (default %(default)s)",
    )
    return p


def config_from_args(argv: Optional[Sequence[str]] = None) -> GpuCheckConfig:
    """Parse the arguments (``clipattern``'s pattern: each ``dest`` is a GpuCheckConfig field)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    parsed = dict(
        models=parsed_or_exit(parser, "--models", parse_models, args.models),
        r_values=parsed_or_exit(parser, "--r", parse_r_values, args.r_values),
    )
    if min(args.runs, args.bench_batch_size, args.photos_limit, args.repeat or 1) < 1:
        parser.error("--runs, --batch-size, --photos-limit and --repeat must be >= 1")
    cfg = GpuCheckConfig(**{**vars(args), **parsed})
    if cfg.device == "cpu":  # a rehearsal: small, in fp32 (CPU autocast is slow and not what is measured)
        cfg.amp, cfg.warmup, cfg.read_workers = "none", 1, [0, 1]  # tiny data: 0 and 1 worker suffice
        cfg.sweep_batch_size = min(cfg.sweep_batch_size, cfg.bench_batch_size)
        cfg.repeat = cfg.repeat or 1
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
    installed: List[str] = []
    if cfg.wheels:
        try:
            installed = install_wheels(Path(cfg.wheels), Path(cfg.out) / "site-packages")
        except (OSError, RuntimeError) as err:
            print(f"gpucheck: --wheels {cfg.wheels}: {err}", file=sys.stderr)
            return 1
    report = run_check(cfg, say=lambda s: print(s, file=sys.stderr), wheels=installed)
    report.figures["total_seconds"] = round(time.monotonic() - start, 1)
    report.write()
    print((Path(cfg.out) / "report.md").read_text())
    print(f"gpucheck: {report.figures['total_seconds']:.0f}s in all", file=sys.stderr)
    return 0 if report.all_passed else 1


if __name__ == "__main__":
    sys.exit(main())
