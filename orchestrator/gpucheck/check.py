"""The steps in turn, the quick benchmark first: weights (the report's first lines), machine, benchmark,
shards, decode pass with its CPU fp32 agreement, the data path, the CUDA tests. A step that fails is
reported as failed and the next one still runs; each step's seconds are printed and kept."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from .agreement import agreement_rows, agreement_table, check_agreement, run_cpu_reference
from .benchmark import benchmark_model, benchmark_table, check_benchmark
from .config import TARGETS, CheckPoint, GpuCheckConfig, check_points, method_amounts
from .cudatests import run_cuda_tests
from .decode import (
    PassResult,
    evaluators_to_run,
    grid_efficiency,
    local_actor_shape,
    row_key,
    run_inprocess_step,
    run_sweep_step,
    sweep_table,
)
from .machine import machine_section, ray_version
from .photos import sample_shards
from .plan import plan_lines
from .readpath import read_bench, read_table
from .report import Report, run_step
from .weights import ModelWeights, choose_weights, weights_head


def run_check(
    cfg: GpuCheckConfig,
    say: Callable[[str], None] = print,
    wheels: Sequence[str] = (),
    weights: Optional[Dict[str, ModelWeights]] = None,
) -> Report:
    """Every step of the check into ``cfg.out``; the report says which weights were used first
    (``weights``: as ``choose_weights`` decides, by default)."""
    report = Report(Path(cfg.out))
    weights = weights if weights is not None else choose_weights(cfg)
    report.head = weights_head(weights)
    report.figures["weights"] = {
        m: dict(path=str(w.path) if w.path else None, sha256=w.digest or None, why=w.why)
        for m, w in weights.items()
    }
    report.add("Machine", machine_section(cfg, wheels))
    points = check_points(cfg)
    plan = plan_lines(cfg, points, method_amounts(cfg)[1])
    for line in plan:
        say(f"gpucheck: {line}")
    report.add("Plan", "\n".join(f"- {line.removeprefix('plan: ')}" for line in plan), plan=plan)
    bench_rows: List[dict] = []
    for model in cfg.models:
        bench_rows += (
            run_step(report, f"benchmark {model}", lambda: benchmark_model(cfg, model, points), say) or []
        )
    if bench_rows:
        report.add(
            f"Benchmark ({cfg.amp}, batch {cfg.bench_batch_size}, random input on the device)",
            benchmark_table(bench_rows),
            benchmark=bench_rows,
        )
        check_benchmark(report, bench_rows)
    data = run_step(report, "shards", lambda: sample_shards(cfg), say)
    if data is not None:
        cpu: Dict[str, object] = {}  # the CPU fp32 reference, run once for every evaluator
        for evaluator in evaluators_to_run(cfg.evaluator, ray_version() is not None):
            result = decode_pass(report, cfg, data, evaluator, points, weights, say)
            if result is not None and cfg.agree_images > 0:
                agreement_step(report, cfg, evaluator, points, weights, result, cpu, say)
        reads = run_step(report, "shards.bench", lambda: read_bench(cfg, data), say)
        if reads:
            rates = {r["model"]: r["unpatched_img_per_s"] for r in bench_rows if r["method"] == "none"}
            report.add(
                "Data path (shards.bench: decode + eval transform, no model)",
                read_table(reads, rates),
                read_bench=reads,
            )
    if cfg.run_tests:
        outcome = run_step(report, "tests/test_cuda.py", lambda: run_cuda_tests(cfg.tests_timeout), say)
        if outcome is not None:
            passed, summary = outcome
            report.add(
                "tests/test_cuda.py",
                f"{'passed' if passed else 'FAILED'}\n\n```\n{summary}\n```",
                tests_passed=passed,
            )
    return report


def decode_pass(
    report: Report,
    cfg: GpuCheckConfig,
    data: str,
    evaluator: str,
    points: Sequence[CheckPoint],
    weights: Dict[str, ModelWeights],
    say,
) -> Optional[PassResult]:
    """One decode pass over the shards, by the in-process evaluator or by Ray's actors, with its table,
    grid efficiency and target."""
    if evaluator == "in-process":
        shape = local_actor_shape(cfg.device)
        how = (
            f"in-process evaluator (no Ray: the actor's code in this process, {shape.loader_workers} loader "
            f"workers, {shape.threads} torch threads"
            + (", pinned memory, CUDA events)" if cfg.device == "cuda" else ")")
        )
        step = lambda: run_inprocess_step(cfg, data, points, weights)  # noqa: E731
        result = run_step(report, "decode pass, in-process", step, say)
    else:
        how = f"sweep on {cfg.device} actors (Ray {ray_version()})"
        result = run_step(
            report, "decode pass, Ray actors", lambda: run_sweep_step(cfg, data, points, weights), say
        )
    if not result or not result.points:
        return None
    efficiency = grid_efficiency(result.points)
    report.figures.setdefault("decode_pass", {})[evaluator] = dict(
        points=result.points, grid_efficiency=efficiency
    )
    wanted = {p.key for p in points}
    extra = sum(row_key(row) not in wanted for row in result.points)
    report.add(
        f"Decode pass: {how}, on {data}",
        sweep_table(result.points)
        + "\n\ngrid efficiency (summed model-alone time / pass wall time): "
        + f"{efficiency:.2f}"
        + (
            f"\n\n{extra} of these point(s) the check did not ask for: a sweep runs every method at every "
            "amount given of the kinds it takes; they are timed in the pass, not compared with the CPU"
            if extra
            else ""
        ),
    )
    report.check(
        f"grid ({evaluator}): summed infer time / eval wall time", efficiency, TARGETS["grid_efficiency"]
    )
    return result


def agreement_step(report, cfg, evaluator, points, weights, result: PassResult, cpu: dict, say) -> None:
    """The CPU fp32 reference (run once, kept in ``cpu``) against this evaluator's predictions."""
    if "run" not in cpu:
        cpu["run"] = run_step(
            report, "CPU fp32 reference", lambda: run_cpu_reference(cfg, points, weights), say
        )
    if cpu["run"] is None:
        return
    reference, seconds = cpu["run"]
    rows = run_step(
        report, f"agreement ({evaluator})", lambda: agreement_rows(points, result, reference, weights), say
    )
    if rows is None:
        return
    report.figures.setdefault("agreement", {})[evaluator] = dict(rows=rows, cpu_seconds=round(seconds, 1))
    report.add(
        f"Top-1 and agreement with CPU fp32 ({evaluator})",
        agreement_table(rows, cfg.amp, cfg.device, seconds),
    )
    check_agreement(report, rows, cfg.amp)
