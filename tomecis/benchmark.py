"""Throughput and FLOPs of one model at a list of token-reduction settings (method and amount).

Throughput is the model alone: random input ``[batch, 3, H, W]`` already on the
device, eval mode, no grad, warm-up passes, then timed passes with the device
synchronised; the median of the timed passes is reported, with batch, autocast
dtype and device beside it. GFLOPs per image count every matrix product (the
attention's ``q k^T`` and ``P v`` included) at the token counts the merging
leaves, from ``torch.utils.flop_counter.FlopCounterMode`` with the CPU attention
kernel counted too (stock torch skips it).

    python -m tomecis.benchmark --model deit_small --r 0,8-16 --batch-size 128 --device cuda --amp fp16
    python -m tomecis.benchmark --model deit_small --method tomecis,tome,pitome,tofu,evit --r 13 --keep 0.7,0.9

Every method is timed at each amount it takes of those given (``--r`` for tomecis, tome, pitome, tofu;
``--keep`` for all five), in turns with the unpatched model; the table adds the FLOP ratio (unpatched
GFLOPs / GFLOPs) and the speed-up divided by it, which says how much of the saved compute became speed.
A speed-up is the median of the per-round ratios (round i of the setting against round i of the unpatched
model) with its 95% order-statistics interval (``tomecis.speedup``): ``1.52x [1.49, 1.55]``.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode

from clipattern import parsed_or_exit, run_or_report

from .device import AMP_DTYPES, autocast, device_name, resolve_device, synchronize  # noqa: F401 - re-exported for now
from .graphs import GraphSet, capture_forward, cuda_graphs_available
from .models import create_model, resolve_model_name
from .names import UNREDUCED, amount_label, amounts_taken, method_spec, methods_help, parse_keep_values
from .patch import patch, set_reduction
from .schedule import parse_r_values
from .speedup import LEVEL, SpeedupInterval, min_rounds, rounds_for_half_width, speedup_interval

# --------------------------------------------------------------------------- measuring


def input_shape(model: nn.Module) -> tuple:
    """``(3, H, W)`` from the model's pretrained config (timm's data config)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "input_size" in cfg:
        return tuple(cfg["input_size"])
    h, w = model.patch_embed.img_size
    return (3, h, w)


def measure_throughput(
    model: nn.Module,
    batch_size: int,
    device: torch.device,
    amp: str = "none",
    warmup: int = 3,
    runs: int = 10,
    cuda_graphs: bool = False,
) -> float:
    """Median images/s of ``runs`` timed forward passes on random input already on ``device``."""
    timings = time_in_turns([lambda: model], batch_size, device, amp, warmup, runs, cuda_graphs)
    return img_per_s(batch_size, timings.seconds[0])


Setting = Callable[[], nn.Module]  # puts a model in the state to time (e.g. sets its r) and returns it


@dataclass
class Timings:
    """What ``time_in_turns`` measured: seconds ``[setting][run]``, and per setting whether its passes
    were CUDA-graph replays and, if a capture failed, why (that setting was then timed eagerly)."""

    seconds: List[List[float]]
    cuda_graphs: List[bool]
    graph_errors: List[Optional[str]]


def time_in_turns(
    settings: Sequence[Setting],
    batch_size: int,
    device: torch.device,
    amp: str = "none",
    warmup: int = 3,
    runs: int = 10,
    cuda_graphs: bool = False,
) -> Timings:
    """Seconds of each timed forward pass of each setting, on random input already on ``device``.

    Every setting gets ``warmup`` untimed passes, then the timed passes go in turns: pass i of every
    setting before pass i + 1 of any. A machine whose speed drifts during the measurement (clocks,
    neighbours on a shared host) then slows every setting alike instead of favouring whichever
    happened to run in a fast spell. With ``cuda_graphs`` on a CUDA device each setting is captured
    once (``tomecis.graphs``) and its timed passes are replays; a setting whose capture fails is timed
    eagerly and says why in ``graph_errors``."""
    x = torch.randn(batch_size, *input_shape(settings[0]()), device=device)
    graphs = GraphSet(x, amp, warmup) if cuda_graphs and cuda_graphs_available(device) else None
    if graphs is not None:
        graphs.load(x)
    seconds: List[List[float]] = [[] for _ in settings]
    with torch.inference_mode():
        errors = [capture_forward(graphs, i, setting()) for i, setting in enumerate(settings)]
        graphed = [graphs is not None and i in graphs for i in range(len(settings))]
        passes = [
            _timed_pass(graphs if g else None, i, setting, x)
            for i, (g, setting) in enumerate(zip(graphed, settings))
        ]
        with autocast(device, amp):
            for g, setting in zip(graphed, settings):
                for _ in range(0 if g else warmup):  # a captured setting was warmed up before its capture
                    setting()(x)
            synchronize(device)
            for _ in range(runs):
                for i, run_pass in enumerate(passes):
                    start = time.perf_counter()
                    run_pass()
                    synchronize(device)
                    seconds[i].append(time.perf_counter() - start)
    return Timings(seconds, graphed, errors)


def _timed_pass(
    graphs: Optional[GraphSet], index: int, setting: Setting, x: torch.Tensor
) -> Callable[[], None]:
    """One forward of a setting: a replay of its graph (``graphs``: where it was captured), else the model
    itself on ``x``."""
    if graphs is not None:
        return lambda: graphs.replay(index)
    return lambda: setting()(x)


def img_per_s(batch_size: int, seconds: Sequence[float]) -> float:
    """Images/s of the median pass."""
    return batch_size / statistics.median(seconds)


def with_r(model: nn.Module, r) -> Setting:
    """A setting that times a patched ``model`` at ``r``."""

    def setting() -> nn.Module:
        model.r = r
        return model

    return setting


def with_reduction(
    model: nn.Module, method: str, r: Optional[int] = None, keep: Optional[float] = None
) -> Setting:
    """A setting that times a patched ``model`` with ``method`` at ``r`` or ``keep``."""

    def setting() -> nn.Module:
        return set_reduction(model, method, r=r, keep=keep)

    return setting


MethodAmount = Tuple[str, Optional[int], Optional[float]]  # (method, r, keep)


def amounts_of(
    methods: Sequence[str], r_values: Sequence[int], keep_values: Sequence[float], defaults: bool = False
) -> List[MethodAmount]:
    """Every (method, r, keep) the methods take of the amounts given (``tomecis.names.amounts_taken``:
    methods in order, r values before keep ratios), or with ``defaults`` each method at its declared
    default amount (``Method.default``); the unreduced model once, at r = 0.
    A method given no amount it takes raises ``ValueError`` naming it and the flags it takes."""
    out: List[MethodAmount] = []
    for name in methods:
        if name == UNREDUCED:
            out.append((name, 0, None))
            continue
        if defaults:
            out.append((name, *method_spec(name).default()))
            continue
        taken, _ = amounts_taken(name, r_values, keep_values)
        if not taken:
            flags = " or ".join("--" + a for a in method_spec(name).amounts)
            raise ValueError(f"method {name!r} takes {flags}, and none was given")
        out += [(name, r, keep) for r, keep in taken]
    return out


def skipped_pairs(methods: Sequence[str], r_values: Sequence[int], keep_values: Sequence[float]) -> List[str]:
    """One line per method given an amount kind it does not take (those pairs are skipped)."""
    lines = []
    for name in methods:
        unused = amounts_taken(name, r_values, keep_values)[1]
        if unused and name != UNREDUCED:
            takes = " or ".join("--" + a for a in method_spec(name).amounts)
            lines.append(f"{name} takes {takes}: skipping its {' and '.join(unused)} values")
    return lines


def _sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _fft_flops(input_shape, dim, *args, **kwargs) -> int:
    """``5 n log2 n`` real operations per complex FFT of length ``n`` (the usual count; ``dim`` the
    transformed axes), for every such transform in the batch of ``input_shape``."""
    n = math.prod(input_shape[d] for d in dim)
    return int(5 * (math.prod(input_shape) // max(n, 1)) * n * math.log2(max(n, 2)))


def _flop_mapping() -> dict:
    """Formulas for kernels the stock counter misses: the CPU flash attention kernel, and the FFTs (the
    ``dct`` method's transforms; half the count for a real input's one-sided transform is not claimed:
    the harness's ``fft`` of a real signal computes both halves)."""
    mapping = {}
    cpu_kernel = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_kernel is not None:
        mapping[cpu_kernel] = _sdpa_flops
    for name in ("_fft_r2c", "_fft_c2c", "_fft_c2r"):
        mapping[getattr(torch.ops.aten, name)] = _fft_flops
    return mapping


def count_gflops(model: nn.Module, device: torch.device) -> float:
    """GFLOPs (multiply-adds count 2) of one image through ``model``, every matrix product counted."""
    x = torch.randn(1, *input_shape(model), device=device)
    counter = flop_counter.FlopCounterMode(display=False, custom_mapping=_flop_mapping())
    with counter, torch.no_grad():  # not inference_mode: torch 2.1's counter sees no op under it (counts 0)
        model(x)
    return counter.get_total_flops() / 1e9


def tokens_left(model: nn.Module, device: torch.device) -> int:
    """Tokens leaving the last block (after one forward of a single image)."""
    state = getattr(model, "merge_state", None)
    if state is None or not state.tokens:
        with torch.inference_mode():
            model(torch.randn(1, *input_shape(model), device=device))
        state = getattr(model, "merge_state", None)
    if state is not None and state.tokens:
        return state.tokens[-1]
    return model.patch_embed.num_patches + model.num_prefix_tokens


class _OpCounter(TorchDispatchMode):
    """Counts every ATen operator call that reaches the dispatcher (views and no-op casts included)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_aten_ops(model: nn.Module, device: torch.device, batch_size: int = 2) -> int:
    """ATen operators one eager forward of ``model`` dispatches on a small batch ``[batch_size, 3, H, W]``:
    the host's share of the work, each a Python-to-C++ call and most a kernel launch on a GPU."""
    x = torch.randn(batch_size, *input_shape(model), device=device)
    counter = _OpCounter()
    with torch.inference_mode(), counter:
        model(x)
    return counter.count


# --------------------------------------------------------------------------- one model, many r


@dataclass
class BenchmarkConfig:
    """What to benchmark; parsed once from the command line (or built by the sweep)."""

    model: str
    r_values: List[int] = field(default_factory=lambda: [0])
    batch_size: int = 128
    device: str = "auto"
    amp: str = "none"
    methods: List[str] = field(default_factory=lambda: ["tomecis"])
    keep_values: List[float] = field(default_factory=list)
    warmup: int = 3
    runs: int = 20  # paired rounds: 20 give a 95% speed-up interval between the 6th and 15th ratio
    pretrained: bool = False
    checkpoint: Optional[str] = None
    explicit: bool = False  # also time the full-attention-matrix formulation at every setting
    cuda_graphs: bool = True  # on CUDA, time CUDA-graph replays (False: eager forwards)
    default_amounts: bool = False  # every method at its declared default amount (not r_values/keep_values)


@dataclass
class BenchmarkRow:
    model: str
    r: Optional[int]  # tokens per block, or None for a keep setting
    method: str
    img_per_s: float
    unpatched_img_per_s: float  # the unpatched timm model, timed in turns with the patched one
    unpatched_early: float  # its median over the first half of the passes ...
    unpatched_late: float  # ... and over the second half: a gap shows the machine drifted
    gflops: float
    tokens_out: int
    batch_size: int
    amp: str
    device: str
    explicit_img_per_s: Optional[float] = None
    aten_ops: int = 0  # ATen operators one eager forward dispatches (batch 2)
    cuda_graphs: bool = False  # this setting was timed as CUDA-graph replays
    unpatched_cuda_graphs: bool = False  # the unpatched model too
    graph_error: Optional[str] = None  # why this setting's capture failed (then timed eagerly)
    keep: Optional[float] = None  # the keep ratio, or None for an r setting
    unpatched_gflops: float = 0.0  # the unpatched model's GFLOPs
    interval: Optional[SpeedupInterval] = None  # the speed-up from the paired rounds, with its interval

    @property
    def mode(self) -> str:
        """The method's old name."""
        return self.method

    @property
    def amount(self) -> str:
        return amount_label(self.r, self.keep)

    @property
    def speedup(self) -> float:
        """Over the unpatched timm model: the median of the per-round ratios (``interval``), or the ratio of
        the two img/s where the rounds were not kept."""
        if self.interval is not None:
            return self.interval.speedup
        return self.img_per_s / self.unpatched_img_per_s

    @property
    def speedup_text(self) -> str:
        """``1.52x [1.49, 1.55]`` (``1.52x`` without an interval)."""
        return self.interval.text() if self.interval is not None else f"{self.speedup:.2f}x"

    @property
    def flop_ratio(self) -> float:
        """Unpatched GFLOPs over this setting's: the speed-up that the saved compute alone would give."""
        return self.unpatched_gflops / self.gflops if self.gflops else float("nan")

    @property
    def speedup_per_flop_ratio(self) -> float:
        """The measured speed-up over the FLOP ratio: 1 when every saved FLOP became speed."""
        return self.speedup / self.flop_ratio

    @property
    def drift(self) -> float:
        """Relative change of the unpatched model's img/s from the early passes to the late ones."""
        return abs(self.unpatched_late - self.unpatched_early) / self.unpatched_img_per_s


DRIFT_WARNING = 0.05  # unpatched timings further apart than this make the speed-ups doubtful


def run_benchmark(
    cfg: BenchmarkConfig, model: Optional[nn.Module] = None, progress: Callable[[str], None] = lambda s: None
) -> List[BenchmarkRow]:
    """Time the unpatched model and the patched one at every (method, amount) of ``cfg`` (and the
    explicit formulation, if asked), all in turns (``time_in_turns``), so drift affects them alike.

    The unpatched model's median over the first and over the second half of its passes are kept
    (``unpatched_early`` / ``unpatched_late``): a gap between them shows the machine drifted."""
    device = resolve_device(cfg.device)
    amounts = amounts_of(
        cfg.methods, cfg.r_values, cfg.keep_values, cfg.default_amounts
    )  # bad ones raise here
    if model is None:
        model = create_model(cfg.model, pretrained=cfg.pretrained, checkpoint=cfg.checkpoint)
    model = model.to(device).eval()
    patched = patch(copy.deepcopy(model), r=0)
    explicit = patch(copy.deepcopy(model), r=0, attention="explicit") if cfg.explicit else None
    settings: List[Setting] = [lambda: model] + [with_reduction(patched, *a) for a in amounts]
    if explicit is not None:
        settings += [with_reduction(explicit, *a) for a in amounts]

    progress("warm-up")
    time_in_turns(
        settings[:1], cfg.batch_size, device, cfg.amp, cfg.warmup, 1
    )  # allocator and kernel warm-up
    progress(f"timing {len(settings)} settings in turns")
    timings = time_in_turns(settings, cfg.batch_size, device, cfg.amp, cfg.warmup, cfg.runs, cfg.cuda_graphs)
    times, n = timings.seconds, len(amounts)
    unpatched, fused, explicit_times = times[0], times[1 : 1 + n], times[1 + n :]
    half = max(1, len(unpatched) // 2)
    unpatched_gflops = count_gflops(model, device)
    rows = []
    for i, (method, r, keep) in enumerate(amounts):
        progress(f"counting {method} {amount_label(r, keep)}")
        set_reduction(patched, method, r=r, keep=keep)
        rows.append(
            BenchmarkRow(
                model=resolve_model_name(cfg.model),
                r=r,
                method=method,
                img_per_s=img_per_s(cfg.batch_size, fused[i]),
                unpatched_img_per_s=img_per_s(cfg.batch_size, unpatched),
                unpatched_early=img_per_s(cfg.batch_size, unpatched[:half]),
                unpatched_late=img_per_s(cfg.batch_size, unpatched[-half:]),
                gflops=count_gflops(patched, device),
                tokens_out=tokens_left(patched, device),
                batch_size=cfg.batch_size,
                amp=cfg.amp,
                device=device_name(device),
                explicit_img_per_s=img_per_s(cfg.batch_size, explicit_times[i]) if explicit_times else None,
                aten_ops=count_aten_ops(patched, device),
                cuda_graphs=timings.cuda_graphs[1 + i],
                unpatched_cuda_graphs=timings.cuda_graphs[0],
                graph_error=timings.graph_errors[1 + i],
                keep=keep,
                unpatched_gflops=unpatched_gflops,
                interval=speedup_interval(fused[i], unpatched),
            )
        )
    return rows


def format_table(rows: Sequence[BenchmarkRow]) -> str:
    """A Markdown table a person can read at a glance."""
    if not rows:
        return "(no rows)"
    with_explicit = any(row.explicit_img_per_s is not None for row in rows)
    head = ["method", "amount", "img/s", "speed-up", "GFLOPs", "FLOP ratio", "speed-up / FLOP ratio"]
    head += ["tokens left", "aten ops", "CUDA graphs"]
    if with_explicit:
        head += ["explicit img/s", "fused / explicit"]
    first = rows[0]
    lines = [
        f"{first.model}, batch {first.batch_size}, amp {first.amp}, {first.device}",
        f"unpatched timm: {first.unpatched_img_per_s:.1f} img/s (early passes: {first.unpatched_early:.1f}, late passes: {first.unpatched_late:.1f}; "
        f"all settings timed in turns; {'CUDA-graph replays' if first.unpatched_cuda_graphs else 'eager'})",
    ]
    lines += [
        f"warning: {row.method} {row.amount} ran eagerly: capture failed: {row.graph_error}"
        for row in rows
        if row.graph_error
    ]
    if first.drift > DRIFT_WARNING:
        lines.append(
            f"warning: the unpatched model's early and late passes differ by {first.drift:.0%}: the machine drifted; compare settings of this table only, or rerun on a quiet machine"
        )
    lines += [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("--:" for _ in head) + "|",
    ]
    note = interval_note(rows)
    for row in rows:
        cells = [
            row.method,
            row.amount,
            f"{row.img_per_s:.1f}",
            row.speedup_text,
            f"{row.gflops:.2f}",
            f"{row.flop_ratio:.2f}x",
            f"{row.speedup_per_flop_ratio:.2f}",
            str(row.tokens_out),
            str(row.aten_ops),
            "yes" if row.cuda_graphs else "no",
        ]
        if with_explicit:
            e = row.explicit_img_per_s
            cells += [f"{e:.1f}", f"{row.img_per_s / e:.2f}x"] if e else ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ([note] if note else []))


def interval_note(rows: Sequence[BenchmarkRow], half_width: float = 0.01) -> str:
    """One line under the table: how the speed-up intervals were made, how much the per-round ratios
    scatter, and the rounds an interval of ``±half_width`` would need (``tomecis.speedup``)."""
    intervals = [row.interval for row in rows if row.interval is not None]
    if not intervals:
        return ""
    n = intervals[0].rounds
    if not all(i.has_interval for i in intervals):
        return f"speed-up: median of {n} per-round ratios; no interval: {LEVEL:.0%} needs at least {min_rounds()} --runs"
    widest = max(intervals, key=lambda i: (i.high - i.low) / i.speedup)
    spread = max(i.spread for i in intervals)
    return (
        f"speed-up [{LEVEL:.0%} interval]: median of {n} per-round paired ratios with its order-statistics "
        f"interval (distribution-free, covers {intervals[0].coverage:.1%}); the widest is "
        f"±{(widest.high - widest.low) / widest.speedup / 2:.1%}; the ratios scatter by up to {spread:.1%} a round, "
        f"so ±{half_width:.0%} would take ~{rounds_for_half_width(half_width, spread)} --runs"
    )


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tomecis.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", default="deit_small", help="short name (deit_tiny, deit_small, deit_base) or timm name"
    )
    p.add_argument(
        "--r",
        dest="r_values",
        metavar="R",
        default=None,
        help="r values, for the methods that take r: 0,8-16 or 8-16:2 (default 0,8-16 unless --keep is given)",
    )
    p.add_argument(
        "--keep",
        dest="keep_values",
        metavar="K",
        default="",
        help="per-block keep ratios, for the methods that take keep: 0.7,0.9",
    )
    p.add_argument(
        "--default-amounts",
        action="store_true",
        help="every method at its declared default amount (tomecis/tome r13, mctf r16, evit/atc keep 0.7, "
        "pitome/tofu/dct/diffrate keep 0.9), with the unreduced model; instead of --r and --keep",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", default="none", choices=list(AMP_DTYPES))
    p.add_argument(
        "--method",
        "--mode",
        dest="methods",
        default="tomecis",
        help=f"methods, comma-separated, from: {methods_help()} (default %(default)s)",
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed passes per setting")
    p.add_argument(
        "--runs",
        type=int,
        default=20,
        help="timed rounds, every setting once per round (median reported, with a 95%% interval from 6 rounds on; default %(default)s)",
    )
    p.add_argument(
        "--pretrained", action="store_true", help="timm's published weights (needs the Hugging Face Hub)"
    )
    p.add_argument("--checkpoint", help="local .pth / .safetensors weights")
    p.add_argument("--explicit", action="store_true", help="also time the full-attention-matrix formulation")
    p.add_argument(
        "--no-cuda-graphs",
        dest="cuda_graphs",
        action="store_false",
        help="on CUDA, time eager forwards instead of CUDA-graph replays (eager img/s on a fast GPU measures the host)",
    )
    return p


def config_from_args(argv: Optional[Sequence[str]] = None) -> BenchmarkConfig:
    """Parse and check the arguments (``clipattern``'s pattern: each ``dest`` is a BenchmarkConfig field)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.default_amounts:
        if args.r_values is not None or args.keep_values:
            parser.error("--default-amounts sets every method's amount: give it without --r and --keep")
        args.r_values = ""
        if UNREDUCED not in args.methods.split(","):
            args.methods = f"{UNREDUCED},{args.methods}"
    if args.r_values is None:
        args.r_values = "" if args.keep_values else "0,8-16"
    r_values = parsed_or_exit(parser, "--r", parse_r_values, args.r_values) if args.r_values else []
    keep_values = (
        parsed_or_exit(parser, "--keep", parse_keep_values, args.keep_values) if args.keep_values else []
    )
    methods = parsed_or_exit(parser, "--method", parse_methods, args.methods)
    parsed_or_exit(
        parser, "--method", lambda m: amounts_of(m, r_values, keep_values, args.default_amounts), methods
    )
    parsed_or_exit(parser, "--model", resolve_model_name, args.model)
    if args.batch_size < 1 or args.runs < 1 or args.warmup < 0:
        parser.error("--batch-size and --runs must be >= 1, --warmup >= 0")
    for line in [] if args.default_amounts else skipped_pairs(methods, r_values, keep_values):
        print(line, file=sys.stderr)
    return BenchmarkConfig(
        **{**vars(args), "r_values": r_values, "keep_values": keep_values, "methods": methods}
    )


def parse_methods(text: str) -> List[str]:
    """``"tomecis,evit"`` -> names in order without duplicates; an unknown name raises, listing the methods."""
    out: List[str] = []
    for item in str(text).split(","):
        name = method_spec(item.strip()).name
        if name not in out:
            out.append(name)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    cfg = config_from_args(argv)
    return run_or_report(lambda: _run_and_print(cfg), (ValueError, FileNotFoundError))


def _run_and_print(cfg: BenchmarkConfig) -> int:
    from tqdm import tqdm

    n = len(amounts_of(cfg.methods, cfg.r_values, cfg.keep_values, cfg.default_amounts))
    bar = tqdm(total=n + 2, desc=f"benchmark {cfg.model}", file=sys.stderr)

    def progress(what: str) -> None:
        bar.set_postfix_str(what)
        bar.update(0 if what == "warm-up" else 1)

    try:
        rows = run_benchmark(cfg, progress=progress)
    finally:
        bar.close()
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
