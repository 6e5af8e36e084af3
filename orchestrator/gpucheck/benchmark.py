"""Step 1: ``tomecis.benchmark`` of each model at each point, CUDA-graph replays (with the explicit
formulation beside them) and eager forwards side by side, random input on the device; its table and the
speed targets."""

from __future__ import annotations

from typing import List, Sequence

from .config import TARGETS, CheckPoint, GpuCheckConfig, methods_of
from .report import Report


def benchmark_model(cfg: GpuCheckConfig, model: str, points: Sequence[CheckPoint]) -> List[dict]:
    """``tomecis.benchmark`` of one model at its points, twice: CUDA-graph replays (with the explicit
    formulation beside them) and eager forwards, unpatched timm timed the same way in each. One dict per
    point; the targets read the graphed figures, the eager ones show what the host's launches cost."""
    from tomecis.benchmark import BenchmarkConfig, run_benchmark

    def bench(method: str, amounts: List[int], cuda_graphs: bool, explicit: bool):
        return run_benchmark(
            BenchmarkConfig(
                model=model,
                r_values=amounts,
                batch_size=cfg.bench_batch_size,
                device=cfg.device,
                amp=cfg.amp,
                mode=method,
                warmup=cfg.warmup,
                runs=cfg.runs,
                explicit=explicit,
                cuda_graphs=cuda_graphs,
            )
        )

    rows = []
    for method, amounts in methods_of(points, model).items():
        graphed, eager = bench(method, amounts, True, True), bench(method, amounts, False, False)
        gflops0 = next((r.gflops for r in graphed if r.r == 0), graphed[0].gflops)
        rows += [_row(method, row, slow, gflops0) for row, slow in zip(graphed, eager)]
    return rows


def _row(method: str, row, slow, gflops0: float) -> dict:
    return dict(
        model=row.model,
        method=method,
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


def benchmark_table(rows: Sequence[dict]) -> str:
    """Graphed and eager img/s side by side per point; speed-ups over unpatched timm timed the same way."""
    head = (
        "| model | method | r | graphed img/s | eager img/s | graphed / eager | speed-up graphed "
        "| speed-up eager | FLOP ratio | graphed speed-up / FLOP ratio | GFLOPs | tokens | aten ops "
        "| explicit img/s | fused / explicit |"
    )
    lines = [head, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        graphed = f"{r['img_per_s']:.0f}" + ("" if r["cuda_graphs"] else " (eager: no graphs)")
        lines.append(
            f"| {r['model']} | {r['method']} | {r['r']} | {graphed} | {r['eager_img_per_s']:.0f} | "
            f"{r['img_per_s'] / r['eager_img_per_s']:.2f}x | {r['speedup']:.2f}x | {r['eager_speedup']:.2f}x | "
            f"{r['flop_ratio']:.2f}x | {r['speedup'] / r['flop_ratio']:.2f} | {r['gflops']:.2f} | "
            f"{r['tokens_out']} | {r['aten_ops']} | {r['explicit_img_per_s']:.0f} | {r['fused_vs_explicit']:.2f}x |"
        )
    errors = [
        f"- {r['model']} {r['method']} r={r['r']}: capture failed, timed eagerly: {r['graph_error']}"
        for r in rows
        if r["graph_error"]
    ]
    return "\n".join(lines + ([""] + errors if errors else []))


def check_benchmark(report: Report, rows: Sequence[dict]) -> None:
    """The speed targets at r = 13: speed-up against the FLOP ratio; fused against explicit for DeiT-S."""
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
