"""The command line: flags -> ``GpuCheckConfig``, the check run, the report printed; exit 0 when every
step passed and every target was met, 1 otherwise, 2 without CUDA (one line saying so)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from clipattern import parsed_or_exit
from tomecis.names import amount_label, methods_help, parse_keep_values
from tomecis.schedule import parse_r_values

from ..grid import parse_methods, parse_models
from .check import run_check
from .config import AGREE_IMAGES, DEFAULT_AMOUNTS, EVALUATORS, GPU_IMAGES, PHOTOS_LIMIT, GpuCheckConfig
from .install import install_wheels
from .weights import choose_weights

DESCRIPTION = (
    "One command that proves the GPU path and measures it: python -m orchestrator.gpucheck --out gpu-report/"
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orchestrator.gpucheck", description=DESCRIPTION)
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
    weights = p.add_mutually_exclusive_group()
    weights.add_argument(
        "--checkpoint-dir",
        help="weights for the decode pass: DIR/<timm name>.pth for every model (default: the checkpoint found "
        "in .weights/, ../shared/assets/weights or shared/assets/weights; random where none is)",
    )
    weights.add_argument(
        "--random-weights",
        action="store_true",
        help="random weights for every model: speed and agreement only, no accuracy verdict",
    )
    p.add_argument(
        "--agree-images",
        metavar="N",
        type=int,
        default=AGREE_IMAGES,
        help="images run again on the CPU in fp32 and compared with the device run image by image "
        "(default %(default)s; 0 skips it)",
    )
    p.add_argument(
        "--models", default="deit_tiny,deit_small", help="short or timm names (default %(default)s)"
    )
    defaults = ", ".join(f"{m} {amount_label(*a)}" for m, a in DEFAULT_AMOUNTS.items())
    p.add_argument(
        "--methods",
        "--method",
        default=",".join(DEFAULT_AMOUNTS),
        help="token-reduction methods to check, each beside the unreduced baseline (always checked; "
        f"'none' alone: the baseline only). Default: all, {defaults}. Methods: {methods_help()}",
    )
    p.add_argument(
        "--r",
        dest="r_values",
        metavar="R",
        help="r values (tokens removed per block, e.g. 0,13 or 8-16) replacing the default amounts of the "
        "methods that take r; r = 0 is the baseline. A method that takes neither given flag (evit with --r "
        "alone) runs at its default amount, with a line saying so",
    )
    p.add_argument(
        "--keep",
        dest="keep_values",
        metavar="K",
        help="keep ratios (e.g. 0.7,0.9) replacing the default amounts of the methods that take keep; a "
        "method whose default is r takes them where no --r is given",
    )
    p.add_argument(
        "--all-amounts",
        action="store_true",
        help="every method at every r and keep value it takes (those given, else all the defaults), "
        "instead of one kind each",
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
        methods=parsed_or_exit(parser, "--methods", parse_methods, args.methods),
    )
    if args.r_values is not None:
        parsed["r_values"] = parsed_or_exit(parser, "--r", parse_r_values, args.r_values)
    if args.keep_values is not None:
        parsed["keep_values"] = parsed_or_exit(parser, "--keep", parse_keep_values, args.keep_values)
    if min(args.runs, args.bench_batch_size, args.photos_limit, args.repeat or 1) < 1:
        parser.error("--runs, --batch-size, --photos-limit and --repeat must be >= 1")
    if args.agree_images < 0:
        parser.error("--agree-images must be >= 0 (0 skips the CPU fp32 comparison)")
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
            f"gpucheck: torch {torch.__version__} sees no CUDA device here; run it on a machine with a GPU "
            "(nvidia-smi lists it)",
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
    try:
        weights = choose_weights(cfg)
    except (OSError, ValueError) as err:  # a missing checkpoint: said before anything runs
        print(f"gpucheck: {err}", file=sys.stderr)
        return 1
    report = run_check(cfg, say=lambda s: print(s, file=sys.stderr), wheels=installed, weights=weights)
    report.figures["total_seconds"] = round(time.monotonic() - start, 1)
    report.write()
    print((Path(cfg.out) / "report.md").read_text())
    print(f"gpucheck: {report.figures['total_seconds']:.0f}s in all", file=sys.stderr)
    return 0 if report.all_passed else 1
