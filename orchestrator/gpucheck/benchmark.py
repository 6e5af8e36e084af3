"""Step 1: ``tomecis.benchmark`` of each model at each point, CUDA-graph replays (with the explicit
formulation beside them) and eager forwards side by side, random input on the device; its table and the
speed targets."""

from __future__ import annotations

from typing import List, Sequence

from .config import TARGETS, CheckPoint, GpuCheckConfig
from .plan import benchmark_groups
from .report import Report


def benchmark_model(cfg: GpuCheckConfig, model: str, points: Sequence[CheckPoint]) -> List[dict]:
    """``tomecis.benchmark`` of one model at its points, twice: CUDA-graph replays (with the explicit
    formulation beside them) and eager forwards, unpatched timm timed the same way in each. The methods
    checked at the same amounts share a run (``plan.benchmark_groups``), the baseline with the first.
    One dict per point, in the order of ``points``; the targets read the graphed figures, the eager ones
    show what the host's launches cost (on a CPU, where nothing is graphed, one run gives both)."""
    from tomecis.benchmark import BenchmarkConfig, run_benchmark

    def bench(group: dict, cuda_graphs: bool, explicit: bool):
        return run_benchmark(
            BenchmarkConfig(
                model=model,
                r_values=list(group["r_values"]),
                keep_values=list(group["keep_values"]),
                methods=list(group["methods"]),
                batch_size=cfg.bench_batch_size,
                device=cfg.device,
                amp=cfg.amp,
                warmup=cfg.warmup,
                runs=cfg.runs,
                explicit=explicit,
                cuda_graphs=cuda_graphs,
            )
        )

    wanted = {p.key for p in points if p.model == model}
    rows = {}
    for group in benchmark_groups(points, model):
        graphed = bench(group, True, True)
        # on a CPU nothing is graphed: the graphed run's forwards were eager, and serve both columns
        eager = bench(group, False, False) if cfg.device == "cuda" else graphed
        for row, slow in zip(graphed, eager):
            key = (model, row.method, row.r, row.keep)
            if key in wanted:  # amounts_of pairs every method with every amount of its kinds: keep ours
                rows[key] = _row(row, slow)
    return [rows[p.key] for p in points if p.key in rows]


def _row(row, slow) -> dict:
    return dict(
        model=row.model,
        method=row.method,
        r=row.r,
        keep=row.keep,
        amount=row.amount,
        img_per_s=row.img_per_s,
        unpatched_img_per_s=row.unpatched_img_per_s,
        speedup=row.speedup,
        cuda_graphs=row.cuda_graphs and row.unpatched_cuda_graphs,
        graph_error=row.graph_error,
        eager_img_per_s=slow.img_per_s,
        eager_speedup=slow.speedup,
        aten_ops=row.aten_ops,
        flop_ratio=row.flop_ratio,
        gflops=row.gflops,
        tokens_out=row.tokens_out,
        explicit_img_per_s=row.explicit_img_per_s,
        fused_vs_explicit=row.img_per_s / row.explicit_img_per_s,
    )


def benchmark_table(rows: Sequence[dict]) -> str:
    """Graphed and eager img/s side by side per point; speed-ups over unpatched timm timed the same way."""
    head = (
        "| model | method | amount | graphed img/s | eager img/s | graphed / eager | speed-up graphed "
        "| speed-up eager | FLOP ratio | graphed speed-up / FLOP ratio | GFLOPs | tokens | aten ops "
        "| explicit img/s | fused / explicit |"
    )
    lines = [head, "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        graphed = f"{r['img_per_s']:.0f}" + ("" if r["cuda_graphs"] else " (eager: no graphs)")
        lines.append(
            f"| {r['model']} | {r['method']} | {r['amount']} | {graphed} | {r['eager_img_per_s']:.0f} | "
            f"{r['img_per_s'] / r['eager_img_per_s']:.2f}x | {r['speedup']:.2f}x | {r['eager_speedup']:.2f}x | "
            f"{r['flop_ratio']:.2f}x | {r['speedup'] / r['flop_ratio']:.2f} | {r['gflops']:.2f} | "
            f"{r['tokens_out']} | {r['aten_ops']} | {r['explicit_img_per_s']:.0f} | {r['fused_vs_explicit']:.2f}x |"
        )
    errors = [
        f"- {r['model']} {r['method']} {r['amount']}: capture failed, timed eagerly: {r['graph_error']}"
        for r in rows
        if r["graph_error"]
    ]
    return "\n".join(lines + ([""] + errors if errors else []))


def check_benchmark(report: Report, rows: Sequence[dict]) -> None:
    """The speed targets: every reduced point's speed-up against its FLOP ratio; fused against explicit
    for ToMeCIS at r = 13 on DeiT-S (the attention kernel's own target)."""
    for row in rows:
        if row["method"] == "none":
            continue
        report.check(
            f"{row['model']} {row['method']} {row['amount']} speed-up / FLOP ratio",
            row["speedup"] / row["flop_ratio"],
            TARGETS["speedup_vs_flops"],
        )
        if "small" in row["model"] and (row["method"], row["r"]) == ("tomecis", 13):
            report.check(
                f"{row['model']} tomecis r13 fused / explicit",
                row["fused_vs_explicit"],
                TARGETS["fused_vs_explicit"],
            )
