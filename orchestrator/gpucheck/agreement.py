"""Step 4: the device run against a CPU fp32 run of the same images, image by image.

The first ``--agree-images`` photos (with ``--data``: its first whole shards holding that many) go through
the same evaluator on this machine's CPU, in fp32, at every point; each photo's top-1 there is compared with
its top-1 in the decode pass (its first copy, where the photos are repeated). Targets: at least 99.5% of the
images agree at the baseline (the unreduced model, method ``none``) and 99% at every other point, for the autocast setting the device ran. A model on
random weights gets its figures but no verdict (near-tied random logits say nothing about precision)."""

from __future__ import annotations

import os
import time
from typing import Dict, List, Sequence, Tuple

from .config import TARGETS, CheckPoint, GpuCheckConfig
from .decode import PassResult, evaluate_in_process
from .photos import photo_key, reference_shards
from .report import Report
from .weights import ModelWeights


def run_cpu_reference(
    cfg: GpuCheckConfig, points: Sequence[CheckPoint], weights: Dict[str, ModelWeights]
) -> Tuple[PassResult, float]:
    """Predictions of every point on the reference images, CPU, fp32, all cores; and its seconds."""
    from ..work import ActorShape

    data = reference_shards(cfg)
    start = time.monotonic()
    result = evaluate_in_process(
        data,
        points,
        weights,
        "cpu",
        "none",
        cfg.sweep_batch_size,
        ActorShape(threads=os.cpu_count() or 1, loader_workers=0),
        limit=cfg.agree_images if cfg.data else None,
    )
    return result, time.monotonic() - start


def agreement(device: Dict[str, int], cpu: Dict[str, int]) -> Tuple[float, int]:
    """(% of the CPU run's photos whose device top-1 equals the CPU top-1, photos compared). Keys are
    matched by photo (``<stem>_copyNN`` -> ``<stem>``), each photo once: its first copy on either side.
    A CPU photo the device run lacks is an error: the two runs must have read the same images."""
    first_device = _first_copy(device)
    first_cpu = _first_copy(cpu)
    missing = sorted(set(first_cpu) - set(first_device))
    if missing:
        raise ValueError(
            f"{len(missing)} image(s) of the CPU run are not in the device run (e.g. {missing[0]}): "
            "the CPU reference must read a subset of the decode pass's images"
        )
    if not first_cpu:
        raise ValueError("the CPU run predicted no image: --agree-images must be >= 1")
    same = sum(first_device[photo] == top1 for photo, top1 in first_cpu.items())
    return 100.0 * same / len(first_cpu), len(first_cpu)


def _first_copy(top1: Dict[str, int]) -> Dict[str, int]:
    chosen: Dict[str, int] = {}
    for key in sorted(top1):
        chosen.setdefault(photo_key(key), top1[key])
    return chosen


def agreement_rows(
    points: Sequence[CheckPoint], device: PassResult, cpu: PassResult, weights: Dict[str, ModelWeights]
) -> List[dict]:
    """Per point: device top-1 (all its images), CPU fp32 top-1 (the reference images), agreement."""
    rows = []
    for p in points:
        key = p.key
        if key not in device.top1 or key not in cpu.top1:
            raise ValueError(f"{p.model} {p.method} {p.amount}: no predictions from the device or CPU run")
        agree, n = agreement(device.top1[key], cpu.top1[key])
        rows.append(
            dict(
                model=p.model,
                method=p.method,
                r=p.r,
                keep=p.keep,
                amount=p.amount,
                unreduced=p.unreduced,
                device_top1=_top1(device.top1[key], device.labels),
                device_images=len(device.top1[key]),
                cpu_top1=_top1(cpu.top1[key], cpu.labels),
                agreement=agree,
                images=n,
                disagree=round(n * (100.0 - agree) / 100.0),
                real_weights=weights[p.model].real,
            )
        )
    return rows


def _top1(top1: Dict[str, int], labels: Dict[str, int]) -> float:
    return 100.0 * sum(pred == labels[key] for key, pred in top1.items()) / max(1, len(top1))


def agreement_table(rows: Sequence[dict], amp: str, device: str, seconds: float) -> str:
    """One line per point, then how many images the CPU ran and how long it took."""
    lines = [
        f"| model | method | amount | top-1 {device} ({amp}) | images | top-1 CPU fp32 | agreement | of images "
        "| differ |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['method']} | {r['amount']} | {r['device_top1']:.2f} | {r['device_images']} | "
            f"{r['cpu_top1']:.2f} | {r['agreement']:.2f}% | {r['images']} | {r['disagree']} |"
            + ("" if r["real_weights"] else " (random weights: no verdict)")
        )
    n = max((r["images"] for r in rows), default=0)
    lines.append(
        f"\nCPU fp32 reference: {n} images at {len(rows)} point(s), {seconds:.1f} s on this machine's CPU."
    )
    lines += [
        f"agreement {r['model']} {r['method']} {r['amount']}: {r['agreement']:.2f}% of {r['images']} images "
        f"({device} {amp} vs CPU fp32)"
        for r in rows
    ]
    return "\n".join(lines)


def check_agreement(report: Report, rows: Sequence[dict], amp: str) -> None:
    """A verdict row per point with real weights: 99.5% at the baseline, 99% elsewhere."""
    for r in rows:
        if r["real_weights"]:
            target = TARGETS["agreement_unreduced" if r["unreduced"] else "agreement_reduced"]
            report.check(
                f"{r['model']} {r['method']} {r['amount']} ({amp}): top-1 agreement with CPU fp32, "
                f"{r['images']} images",
                r["agreement"],
                target,
                "%",
            )
