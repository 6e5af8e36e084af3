"""Sweep (model, method, amount) grid points over a Ray cluster into Parquet results.

    python -m orchestrator.sweep --models deit_tiny,deit_small --method tomecis,tome,evit --r 8-16 --keep 0.7,0.9 --data shards/ --out results/

Flow: parse the grid (every model's unreduced baseline, and each method at every amount it takes:
``--r`` and/or ``--keep``; a method given none stops here) -> resolve the shards (once) -> skip points
already in ``--out`` -> join or start Ray (``cluster``) -> plan actors from each node's resources
(``placement``) -> group the models by eval transform into decode passes -> pass by pass: each work item
(a few shards) is decoded once and run at every (model, method, amount) of the pass still to do, outcomes
accepted once per item (``pool``) -> each model timed alone on random input at each of its points -> per
point, counts checked against the manifest and the row + predictions written (``points``, ``results``;
before the next pass starts, so a later failure keeps them) -> a table per model, a line per method and
amount (``tables``), and how many images were decoded for how many points.

Each accepted item is written to its pass's spool (``spool``) before it counts, so a rerun after the
driver died evaluates only the items still missing; Ctrl-C stops the actors, keeps the spool and prints
the command that resumes. Every retried item gets a line (which actor, Ray's reason, which item).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import ray
import torch
from tqdm import tqdm

import shards
import tomecis
from clipattern import parsed_or_exit, run_or_report
from tomecis import names
from tomecis.models import find_checkpoint, max_r
from tomecis.names import methods_help

from . import tables
from .calibrate import MATCH_BY, Calibration, CalibrationStore, MatchTarget, add_matched
from .cluster import connect
from .errors import SweepError, WorkFailed
from .grid import (
    AMPS,
    Amount,
    GridPoint,
    MethodPlan,
    build_grid,
    describe_grid,
    merge_amounts,
    parse_amounts_flag,
    parse_keep_spec,
    parse_methods,
    parse_models,
    parse_r_values,
    plan_methods,
    sweep_methods,
)
from .gridfile import apply_to_parser, file_amounts, read_grid_file
from .lease import ResultsLease
from .matched import parse_reference
from .placement import ActorPlan, alive_nodes, plan_actors
from .points import describe_decode_failures, point_row
from .pool import EvaluatorPool, group_shards
from .prepare import (
    Selection,
    group_by_transform,
    pass_name,
    plan_passes,
    select_shards,
    shards_per_item,
    ship_weights,
    weights_for,
)
from .results import ResultsDir
from .spool import Spool, SpoolRecord, disjoint_in_order, pass_key
from .work import DecodePass, EvaluatorConfig


@dataclass
class SweepConfig:
    """Everything a sweep needs, parsed once from the command line."""

    models: List[str]
    r_values: List[int] = field(default_factory=list)  # --r, for the methods that take it
    keep_values: List[float] = field(default_factory=list)  # --keep, for the methods that take it
    data: Optional[str] = None
    out: str = "results"
    batch_size: int = 128
    device: str = "auto"
    amp: str = "none"
    methods: List[str] = field(default_factory=lambda: ["tomecis"])
    checkpoint_dir: Optional[str] = None
    random_weights: bool = False
    limit: Optional[int] = None
    address: str = "auto"
    bench: bool = True
    cuda_graphs: bool = True  # on CUDA, evaluate and time CUDA-graph replays (False: eager forwards)
    bench_runs: int = 20  # paired timing rounds: from 6 on, each speed-up gets a 95% interval
    bench_warmup: int = 3
    force: bool = False
    force_unlock: bool = False  # take the results folder's lease even from a live holder
    num_actors: Optional[int] = None
    cpus_per_actor: Optional[float] = None
    loader_workers: Optional[int] = None
    max_retries: int = 3
    actor_start_timeout: float = 900.0
    allow_decode_failures: bool = False
    progress: bool = True
    dry_run: bool = False  # print the grid and its decode passes, then stop (no data read, no Ray)
    method_amounts: Dict[str, List[Amount]] = field(default_factory=dict)  # --amounts / --grid's [methods]
    match: Optional[MatchTarget] = None  # --match METHOD:AMOUNT with --match-by
    list_methods: bool = False  # print the methods found and where they came from, then stop

    def method_plans(self) -> List[MethodPlan]:
        """Each method with the amounts it takes (``grid.plan_methods``: a method of ``method_amounts``
        at its own); ``ValueError`` naming a method given no amount it takes."""
        return plan_methods(self.methods, self.r_values, self.keep_values, self.method_amounts)

    def table_methods(self) -> List[str]:
        """The sweep's methods (those of ``--amounts`` and the ``--match`` reference's included)."""
        methods = sweep_methods(self.methods, self.method_amounts)
        return methods + [self.match.method] if self.match and self.match.method not in methods else methods

    def grid(
        self, dataset: str, weights: Optional[Dict[str, str]] = None, device: str = "cpu"
    ) -> List[GridPoint]:
        return build_grid(
            self.models,
            self.r_values,
            self.methods,
            self.amp,
            self.batch_size,
            weights,
            device,
            dataset=dataset,
            keep_values=self.keep_values,
            method_amounts=self.method_amounts,
        )


@dataclass
class SweepSummary:
    written: List[str] = field(default_factory=list)
    skipped: List[GridPoint] = field(default_factory=list)
    failed: Dict[GridPoint, str] = field(default_factory=dict)
    decode_failures: Dict[str, List[shards.DecodeFailure]] = field(
        default_factory=dict
    )  # model -> images not scored
    actors_replaced: int = 0
    retries: int = 0  # times a work item went back to the queue (its actor died, its task raised, ...)
    decoded_images: int = 0  # images (and failed samples) decoded by this run, over every decode pass
    resumed_images: int = 0  # images (and failed samples) of items an earlier run left in a spool
    decode_passes: int = 0
    points_evaluated: int = 0
    paused: str = ""  # what Ctrl-C kept (the pass, its shards done, its spool)
    table: str = ""


class SweepPaused(Exception):
    """Ctrl-C: the actors are stopped, every finished work item is in its pass's spool; the message
    says what was kept."""


# --------------------------------------------------------------------------- Ray


def make_plan(cfg: SweepConfig) -> ActorPlan:
    """The actors for this sweep, sized to the cluster's alive nodes (``placement.plan_actors``)."""
    return plan_actors(alive_nodes(), cfg.device, cfg.num_actors, cfg.cpus_per_actor, cfg.loader_workers)


# --------------------------------------------------------------------------- the sweep


@dataclass
class SweepRun:
    """What every step of one sweep's evaluation shares (passed down instead of loose arguments)."""

    cfg: SweepConfig
    selection: Selection
    results: ResultsDir
    summary: SweepSummary
    bar: tqdm
    session: str = field(default_factory=lambda: uuid.uuid4().hex)  # marks the spool records of this run
    matched: Dict[GridPoint, Calibration] = field(default_factory=dict)  # --match's points
    planned: Dict[str, str] = field(default_factory=dict)  # model -> planned_json of the grid


def run_sweep(
    cfg: SweepConfig, selection: Optional[Selection] = None, command: Optional[str] = None
) -> SweepSummary:
    """``_run_sweep`` holding the lease on ``cfg.out`` (``lease``): taken before anything is evaluated or
    Ray starts (``LeaseHeld`` naming the holder when another sweep writes there), released however it ends.
    ``command``: what the lease record says runs (default: this process's command line)."""
    with ResultsLease(cfg.out, command=command, force=cfg.force_unlock):
        return _run_sweep(cfg, selection)


def _run_sweep(cfg: SweepConfig, selection: Optional[Selection] = None) -> SweepSummary:
    """Evaluate every grid point not yet in ``cfg.out``; raises ``SweepError`` if any point fails.

    Ray starts only when there is work, or with ``--device auto`` (the device kind, part of the
    results' key, then depends on the cluster's GPUs). A method given no amount it takes raises
    ``ValueError`` before anything else; a flag a method does not take gets one line on stderr."""
    for note in filter(None, (plan.skip_note() for plan in cfg.method_plans())):
        print(note, file=sys.stderr)
    selection = selection or selection_of(shards.resolve_data(cfg.data), cfg.limit)
    weights = weights_for(cfg.models, cfg.checkpoint_dir, cfg.random_weights)
    results = ResultsDir(cfg.out)
    summary = SweepSummary()
    started_ray, plan = False, None
    try:
        if cfg.device == "auto":  # the device kind is part of every point's key: ask the cluster first
            started_ray = connect(cfg.address)
            plan = make_plan(cfg)
        grid = cfg.grid(
            selection.fingerprint, {m: w.tag for m, w in weights.items()}, plan.device if plan else cfg.device
        )
        matched: Dict[GridPoint, Calibration] = {}
        if cfg.match is not None:  # before the decode pass: the matched points are ordinary points of it
            if cfg.match.by == "speed" and plan is None:
                started_ray, plan = connect(cfg.address), make_plan(cfg)
            grid, matched = match_points(cfg, grid, plan, results=results)
        todo = []
        for point in grid:
            (todo if cfg.force or not results.is_done(point) else summary.skipped).append(point)
        print(
            f"grid: {len(grid)} point(s), {len(summary.skipped)} already in {cfg.out}\n{describe_grid(grid)}",
            file=sys.stderr,
        )
        _mark_done_points(results, summary.skipped, matched)
        if todo:
            if plan is None:
                started_ray, plan = connect(cfg.address), make_plan(cfg)
            passes = plan_passes(todo, ship_weights(weights))
            run = SweepRun(
                cfg, selection, results, summary, None, matched=matched, planned=planned_json(grid)
            )
            _evaluate(run, plan, passes, todo)
    except KeyboardInterrupt:
        raise SweepPaused(summary.paused or "no work item had finished") from None
    finally:
        if started_ray:
            ray.shutdown()
    done = results.read_points_of(grid).to_pandas()
    summary.table = tables.sweep_tables(
        done,
        [p.model for p in grid],
        selection.fingerprint,
        cfg.table_methods(),
        cfg.amp,
        cfg.batch_size,
        planned_amounts(grid),
    )
    if summary.failed:
        lines = "\n".join(f"  {p.label}: {why}" for p, why in summary.failed.items())
        left_out = describe_decode_failures(summary.decode_failures, cfg.out)
        raise SweepError(
            f"{len(summary.failed)} grid point(s) not written:\n{lines}"
            + (f"\n{left_out}" if left_out else "")
        )
    return summary


def planned_amounts(grid: Sequence[GridPoint]) -> Dict[str, Dict[str, List[Amount]]]:
    """Model -> method -> the amounts the grid plans for it (the baseline left out): what the final
    table calls missing when a point is not written."""
    planned: Dict[str, Dict[str, List[Amount]]] = {}
    for point in grid:
        if point.method != "none":
            planned.setdefault(point.model, {}).setdefault(point.method, []).append((point.r, point.keep))
    return planned


def planned_json(grid: Sequence[GridPoint]) -> Dict[str, str]:
    """Model -> ``planned_amounts`` as the points rows' ``planned`` column holds it:
    ``{"tome": [[8, null], [16, null]], "evit": [[null, 0.7]]}`` (the report reads it back with
    ``tables.planned_of``: with per-method amounts no method is expected to have another's)."""
    return {model: json.dumps(methods) for model, methods in planned_amounts(grid).items()}


def match_points(
    cfg: SweepConfig,
    grid: List[GridPoint],
    plan: Optional[ActorPlan],
    say=lambda line: print(line, file=sys.stderr),
    results: Optional[ResultsDir] = None,
) -> Tuple[List[GridPoint], Dict[GridPoint, Calibration]]:
    """``--match``: every other reducing method of the sweep calibrated to the reference, per model
    (``orchestrator.matching``: by GFLOPs here, by speed in a Ray task shaped like one of ``plan``'s
    actors, kept in ``results`` for reruns), one line each to ``say``; returns the grid with the reference
    and the matched points, and point -> its calibration."""
    from . import matching  # torch and the models: only a sweep that matches needs them

    methods = matching.methods_to_match(cfg.method_plans(), cfg.match)
    if cfg.match.by == "gflops":
        found = [c for model in cfg.models for c in matching.calibrate_here(model, methods, cfg.match)]
        for calibration in found:
            say(calibration.line())
    else:
        found = _matched_by_speed(cfg, methods, plan, results or ResultsDir(cfg.out), say)
    return add_matched(grid, (cfg.match.method, cfg.match.amount), found)


def _matched_by_speed(
    cfg: SweepConfig, methods, plan: ActorPlan, results: ResultsDir, say
) -> List[Calibration]:
    """Speed calibrations of every (model, method): those an earlier run into ``results`` kept for this
    setting (``CalibrationStore``; ``--force`` times them again), the others timed now and kept."""
    from . import matching

    store = CalibrationStore.of(results, cfg.match, plan.device, cfg.batch_size, cfg.amp, cfg.cuda_graphs)
    kept = {} if cfg.force else store.load()
    todo: Dict[Tuple, List[str]] = {}  # the methods still to time -> the models that lack them
    for model in cfg.models:
        lacking = tuple(m for m in methods if (model, m[0]) not in kept)
        if lacking:
            todo.setdefault(lacking, []).append(model)
    timed: Dict[Tuple[str, str], Calibration] = {}
    config = EvaluatorConfig(cfg.device, cfg.amp, cfg.batch_size, cfg.cuda_graphs)
    timing = matching.Timing(config, cfg.bench_runs, cfg.bench_warmup)
    for lacking, models in todo.items():
        say(
            f"match: timing {len(lacking)} method(s) of {', '.join(models)} against {cfg.match.label} in turns "
            f"({cfg.bench_runs} rounds per step, batch {cfg.batch_size}, where the actors run): minutes per method"
        )
        found = matching.calibrate_on_cluster(plan, models, list(lacking), cfg.match, timing)
        store.save(found)
        timed.update(((c.model, c.method), c) for c in found)
    calibrations = []
    for model in cfg.models:
        for method, _ in methods:
            if (model, method) in timed:
                calibrations.append(timed[(model, method)])
                say(timed[(model, method)].line())
            else:
                calibrations.append(kept[(model, method)])
                earlier = f"timed by an earlier run, kept in {store.path}; --force times again"
                say(f"{kept[(model, method)].line()} ({earlier})")
    return calibrations


def _mark_done_points(
    results: ResultsDir, done: Sequence[GridPoint], matched: Dict[GridPoint, Calibration]
) -> None:
    """A point ``--match`` found that an earlier run already wrote: its row now says it was matched."""
    for point in done:
        if point in matched:
            results.update_point_row(point, matched[point].columns())


def _evaluate(run: SweepRun, plan: ActorPlan, passes: List[DecodePass], todo: List[GridPoint]) -> None:
    """Pass by pass: evaluate every shard once for all the pass's points, profile, write its points;
    a pass (or a model of it) whose work fails is recorded in ``summary.failed`` and the rest still runs."""
    cfg, chosen = run.cfg, run.selection.shards
    print(plan.describe() + _shortage_note(plan, len(chosen)), file=sys.stderr)
    n_total = sum(s.n_samples or 0 for s in chosen) * len(passes) or None
    run.bar = tqdm(
        total=n_total, unit="img", desc=f"sweep {len(todo)} points", disable=not cfg.progress, file=sys.stderr
    )
    evaluator_config = EvaluatorConfig(
        device=cfg.device,
        amp=cfg.amp,
        batch_size=cfg.batch_size,
        cuda_graphs=cfg.cuda_graphs,
        **methods_to_ship(cfg.methods),
    )
    pool = EvaluatorPool(
        evaluator_config,
        plan,
        max_retries=cfg.max_retries,
        start_timeout=cfg.actor_start_timeout,
        on_wait=_wait_reporter(run.bar, cfg.progress),
        on_retry=_say,
    )
    size = shards_per_item(plan, len(chosen))
    try:
        for decode_pass in passes:
            _evaluate_pass(run, pool, decode_pass, size, [p for p in todo if p.model in decode_pass.weights])
    finally:
        run.bar.close()
        run.summary.actors_replaced = pool.replaced
        run.summary.retries = pool.retries
        pool.shutdown()


def methods_to_ship(methods: Sequence[str]) -> Dict[str, tuple]:
    """What every actor needs of the methods not built in: ``methods``, the references it loads (an
    installed entry point by name, an import path as given), and ``py_modules``, the import-path methods'
    files or package directories, which Ray's ``runtime_env`` ships to nodes that lack them."""
    refs = names.shipped_refs(methods)
    return dict(methods=refs, py_modules=names.module_paths(refs))


def _say(line: str) -> None:
    """One line on stderr above the progress bar (an actor died, an item retried, a spool resumed)."""
    tqdm.write(line, file=sys.stderr)


def _evaluate_pass(
    run: SweepRun, pool: EvaluatorPool, decode_pass: DecodePass, size: int, points: List[GridPoint]
) -> None:
    """One decode pass's points, written as soon as its shards are in and its models are profiled (a
    later failure, or Ctrl-C, keeps them; a rerun skips them). Items an earlier run left in the pass's
    spool are taken from there; the others, in groups of ``size`` shards, are evaluated and spooled."""
    spool = Spool(
        run.results,
        "+".join(dict.fromkeys(p.short_name for p in points)),
        pass_key(points),
        run.session,
    )
    records = _resume(run, spool, decode_pass)
    covered = {url for record in records for url in record.urls}
    remaining = [s for s in run.selection.shards if s.url not in covered]
    items = [(decode_pass.name, group) for group in group_shards(remaining, size)]

    def accept(outcome) -> None:  # on disk before it counts
        urls = tuple(outcome.shards)
        record = SpoolRecord(urls, outcome, run.session, pool.attempts.get((decode_pass.name, urls), 0))
        records.append(record)  # before the put: Ctrl-C amid it is settled by what is on disk (below)
        spool.put(urls, outcome, record.retries)
        run.bar.update(len(outcome.keys) + outcome.n_failed)

    try:
        pool.evaluate(items, decode_pass, accept)
        records = disjoint_in_order(records, [s.url for s in run.selection.shards])
        healthy = _drop_broken_models(decode_pass, [r.outcome for r in records], points, run.summary)
        # the bar stands still while the actor times the pass's points: say what it does meanwhile
        run.bar.set_postfix_str(_profile_note(run.cfg, healthy), refresh=True)
        profiles = (
            pool.profile(healthy, run.cfg.bench, run.cfg.bench_runs, run.cfg.bench_warmup)
            if healthy.tasks
            else {}
        )
    except WorkFailed as err:
        for point in points:
            run.summary.failed.setdefault(point, str(err))
        return
    except KeyboardInterrupt:
        if records and records[-1].session == run.session and not spool.holds(records[-1].urls):
            records.pop()  # Ctrl-C came while its file was being written: not kept, so not counted
        done = sum(len(r.urls) for r in records)
        run.summary.paused = f"{decode_pass.name}: {done} of {len(run.selection.shards)} shard(s) evaluated, kept in {spool.uri}"
        raise
    _count_decoding(run.summary, records, run.session)
    if _write_points(run, points, records, profiles):
        spool.delete()  # its points are written: a rerun has other points to do, hence another spool


def _resume(run: SweepRun, spool: Spool, decode_pass: DecodePass) -> List[SpoolRecord]:
    """The records an earlier run of these points left in ``spool`` (disjoint, of this selection's
    shards), with a line saying how much was resumed and where from."""
    urls = [s.url for s in run.selection.shards]
    records = disjoint_in_order(spool.load(decode_pass.point_keys, _say), urls)
    if records:
        n_shards = sum(len(r.urls) for r in records)
        n_images = sum(len(r.outcome.keys) + r.outcome.n_failed for r in records)
        _say(
            f"resume: {decode_pass.name}: {n_shards} of {len(urls)} shard(s) ({n_images:,} images) were "
            f"evaluated by an earlier run, kept in {spool.uri}; evaluating the other {len(urls) - n_shards}"
        )
        run.bar.update(n_images)
    return records


def _count_decoding(summary: SweepSummary, records: List[SpoolRecord], session: str) -> None:
    """Images this run decoded for the pass, and those its spool gave (decoded by an earlier run)."""
    for record in records:
        n = len(record.outcome.keys) + record.outcome.n_failed
        if record.session == session:
            summary.decoded_images += n
        else:
            summary.resumed_images += n
    summary.decode_passes += 1


def _write_points(run: SweepRun, points: List[GridPoint], records: List[SpoolRecord], profiles) -> bool:
    """Each point's row, predictions and failures from the pass's records (in shard order); a point
    that does not add up goes to ``summary.failed``. True when any point was written."""
    summary = run.summary
    outcomes = [r.outcome for r in records]  # the same for every point of the pass
    retries = sum(1 for r in records if r.retries)  # items of the pass that were retried
    resumed = len({r.session for r in records}) > 1  # the pass ran in more than one driver
    written = False
    for point in points:
        if point in summary.failed:
            continue
        try:
            row, predictions, failures = point_row(
                point,
                outcomes,
                profiles[point.model],
                run.selection.total,
                run.cfg.allow_decode_failures,
                retries=retries,
                resumed=resumed,
                dataset_title=run.selection.title,
                matched=run.matched[point].columns() if point in run.matched else None,
                planned=run.planned.get(point.model),
            )
        except SweepError as err:
            summary.failed[point] = str(err)
            continue
        if row["graph_error"]:
            print(f"warning: {point.label} ran eagerly: {row['graph_error']}")
        summary.written.append(run.results.write_point(point, row, predictions, failures))
        summary.points_evaluated += 1
        written = True
        if len(failures):
            summary.decode_failures[point.model] = [f for o in outcomes for f in o.failures]
    return written


def _profile_note(cfg: SweepConfig, decode_pass: DecodePass) -> str:
    """What the profile step after a pass's decoding does: ``timing 22 point(s) in turns, 20 rounds``."""
    n = len(decode_pass.point_keys)
    if not cfg.bench:
        return f"counting GFLOPs of {n} point(s)"
    return f"timing {n} point(s) in turns, {cfg.bench_runs} rounds"


def _drop_broken_models(
    decode_pass: DecodePass, outcomes, points: List[GridPoint], summary: SweepSummary
) -> DecodePass:
    """Models an actor could not build (a bad checkpoint) fail their own points; the pass's other models
    go on. Returns the pass without them."""
    broken = {model: why for o in outcomes for model, why in o.model_errors.items()}
    for point in points:
        if point.model in broken:
            summary.failed[point] = broken[point.model]
    tasks = tuple(t for t in decode_pass.tasks if t.model not in broken)
    return DecodePass(
        decode_pass.name, {m: w for m, w in decode_pass.weights.items() if m not in broken}, tasks
    )


def _shortage_note(plan: ActorPlan, n_shards: int) -> str:
    """A warning when the data has fewer shards than the plan has loader workers (each shard is read by
    one worker, so the extra workers idle)."""
    workers = sum(max(1, s.loader_workers) for s in plan.slots)
    if n_shards >= workers:
        return ""
    return (
        f"\nnote: {n_shards} shard(s) for {workers} loader worker(s): each shard is read by one worker, so "
        f"{workers - n_shards} will idle; write smaller shards (python -m shards.write --shard-size N) to use them all"
    )


def _wait_reporter(bar: tqdm, progress: bool):
    """One line that updates while actors wait for resources (started / waiting / for how long): the
    progress bar's postfix, redrawn only when the text changes; without a bar, a line every 30 s."""
    shown = {"text": "", "printed_at": -30.0}

    def report_wait(started: int, waiting: int, seconds: float) -> None:
        if waiting and seconds < 5:  # actors take a few seconds to start: only a longer wait is news
            return
        text = (
            f"actors: {started} started, {waiting} waiting for resources for {seconds:.0f}s"
            if waiting
            else ""
        )
        if text == shown["text"]:
            return
        shown["text"] = text
        if progress:
            bar.set_postfix_str(text, refresh=True)
        elif text and seconds - shown["printed_at"] >= 30:
            shown["printed_at"] = seconds
            print(text, file=sys.stderr)

    return report_wait


def describe_decoding(summary: SweepSummary) -> str:
    """``decoded 50,000 images once for 40 points`` (or in how many passes, when the eval transforms differ)."""
    if not summary.decode_passes:
        return ""
    points = summary.points_evaluated
    resumed = (
        f" ({summary.resumed_images:,} more came from the spool of an earlier run)"
        if summary.resumed_images
        else ""
    )
    if summary.decode_passes == 1:
        return f"decoded {summary.decoded_images:,} images once for {points} point(s){resumed}"
    return (
        f"decoded {summary.decoded_images:,} images in {summary.decode_passes} passes (one per eval "
        f"transform) for {points} point(s){resumed}"
    )


def describe_retries(summary: SweepSummary) -> str:
    """``retries: none``, or how many work items went back to the queue and actors were replaced (the
    ``retry:`` lines above say which and why)."""
    if not summary.retries and not summary.actors_replaced:
        return "retries: none"
    return (
        f"retries: {summary.retries} work item(s) went back to the queue, {summary.actors_replaced} "
        "actor(s) replaced (the retry: lines above say which and why)"
    )


def resume_command(argv: Sequence[str]) -> str:
    """The command line that resumes this sweep (the same one: finished items come from the spool)."""
    return shlex.join(["python", "-m", "orchestrator.sweep", *argv])


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orchestrator.sweep", description=__doc__.split("\n\n")[0])
    _add_grid_arguments(p)
    _add_run_arguments(p)
    return p


def _add_grid_arguments(p: argparse.ArgumentParser) -> None:
    """What to evaluate: models, methods and their amounts, data, weights, and where the results go."""
    p.add_argument("--models", help="comma-separated: deit_tiny,deit_small or timm names (required)")
    p.add_argument(
        "--list-methods",
        action="store_true",
        help="print every method found (built in, installed packages' entry points, import paths given to "
        "--method) and where each came from, then stop",
    )
    p.add_argument(
        "--method",
        "--mode",
        dest="methods",
        metavar="METHOD[,METHOD]",
        default=None,
        help=f"token-reduction methods, comma-separated, each run at every amount it takes of --r and --keep "
        f"(every model's unreduced baseline is always in the grid, once): {methods_help()} (default tomecis, or none beside those of --amounts)",
    )
    p.add_argument(
        "--r",
        dest="r_values",
        metavar="R",
        help="tokens removed per block, for the methods that take --r: 8-16, 13, 8-16:2 (0 is the baseline)",
    )
    p.add_argument(
        "--keep",
        dest="keep_values",
        metavar="RATIO",
        help="per-block keep ratios, for the methods that take --keep: 0.7,0.9 or 0.5-0.9:0.1 (1 is the baseline)",
    )
    p.add_argument(
        "--amounts",
        action="append",
        default=[],
        metavar="METHOD=KIND:SPEC",
        help="a method's own amounts (repeatable): evit=keep:0.5-0.9:0.1, tomecis=r:8-16, pitome=keep:0.9,0.95; "
        "the method joins the sweep at these amounts only (the others keep --r / --keep)",
    )
    p.add_argument(
        "--grid",
        metavar="FILE.toml",
        help="models, [methods] with their r / keep, and any option by name (batch_size = 64); the command line overrides the file",
    )
    p.add_argument(
        "--match",
        metavar="METHOD:AMOUNT",
        help="a reference such as tomecis:r13: every other method of the sweep gets, per model, the amount nearest "
        "its speed (or GFLOPs, --match-by), found before the decode pass and evaluated as one more point",
    )
    p.add_argument(
        "--match-by",
        default="speed",
        choices=list(MATCH_BY),
        help="speed: img/s timed in turns with the reference on an actor's device; gflops: from the token counts (default %(default)s)",
    )
    p.add_argument(
        "--data",
        help=f"shards: a directory with manifest.json or _info.json, a brace pattern, a list or URLs (s3://, gs://, http(s)://, hf://), or imagenetv2 (also imagenetv2-threshold0.7, imagenetv2-top-images: public, downloaded and written as shards once) (default ${shards.spec.TOMECIS_DATA_ENV}, else hf://datasets/timm/imagenet-1k-wds when $HF_TOKEN is set, else imagenetv2)",
    )
    p.add_argument(
        "--out", default="results", help="results directory or URI (s3://...) (default %(default)s)"
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cuda", "cpu"],
        help="auto: GPU actors when the cluster has GPUs, else CPU actors",
    )
    p.add_argument("--amp", default="none", choices=list(AMPS))
    weights = p.add_mutually_exclusive_group()
    weights.add_argument(
        "--checkpoint-dir", help="directory of <timm model name>.pth|.safetensors (offline clusters)"
    )
    weights.add_argument(
        "--random-weights", action="store_true", help="random initialisation (smoke tests, timing only)"
    )
    p.add_argument("--limit", type=int, help="only the first whole shards holding at least N images")


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    """How to run it: cluster, devices, placement, timing, retries, progress."""
    p.add_argument(
        "--address", default="auto", help="auto (join a running cluster, else start one here), local, or ADDR"
    )
    p.add_argument(
        "--bench",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time the model alone on random input",
    )
    p.add_argument(
        "--bench-runs",
        type=int,
        default=20,
        help="timed rounds, every point of a model once per round, its baseline too: the speed-up is the median "
        "per-round ratio with a 95%% interval (needs >= 6; default %(default)s)",
    )
    p.add_argument(
        "--no-cuda-graphs",
        dest="cuda_graphs",
        action="store_false",
        help="on CUDA, evaluate and time eager forwards instead of CUDA-graph replays (eager img/s on a fast GPU measures the host's kernel launches)",
    )
    p.add_argument("--force", action="store_true", help="recompute points already in --out")
    p.add_argument(
        "--force-unlock",
        action="store_true",
        help="take --out's lease (_lease.json) even when another sweep seems to hold it (only when you know it is gone)",
    )
    p.add_argument(
        "--num-actors",
        type=int,
        help="actors to start (default: one per GPU of each node, else as many CPU actors as the nodes hold); more than the nodes hold asks Ray's autoscaler for nodes (GPU or CPU actors alike)",
    )
    p.add_argument(
        "--cpus-per-actor",
        type=float,
        help="CPUs each actor reserves (default: a GPU actor takes its node's CPUs / GPUs, a CPU actor up to 4)",
    )
    p.add_argument(
        "--loader-workers",
        type=int,
        help="DataLoader workers per actor (default: a GPU actor one per CPU it reserves but one, a CPU actor none)",
    )
    p.add_argument(
        "--max-retries", type=int, default=3, help="retries of a work item whose actor died or failed"
    )
    p.add_argument(
        "--actor-start-timeout",
        type=float,
        default=900.0,
        help="seconds to wait for actors to be placed (autoscaling) (default %(default)s)",
    )
    p.add_argument(
        "--allow-decode-failures",
        action="store_true",
        help="score the decodable images when some fail (n_failed is recorded)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the grid (points per model and method) and its decode passes, then stop: no data is read, Ray does not start",
    )


def config_from_args(argv: Optional[Sequence[str]] = None) -> SweepConfig:
    """Parse and validate everything before any Ray work; errors name the argument (``clipattern``'s pattern).
    A ``--grid`` file's options become the parser's defaults (the command line overrides them)."""
    parser = build_parser()
    grid_path = _grid_path(argv)
    grid_file = None
    if grid_path is not None:
        grid_file = parsed_or_exit(parser, "--grid", read_grid_file, grid_path)
        parsed_or_exit(
            parser, "--grid", lambda g: apply_to_parser(parser, g, reserved=("amounts",)), grid_file
        )
    args = parser.parse_args(argv)
    if args.list_methods:
        return SweepConfig(models=[], methods=[args.methods] if args.methods else [], list_methods=True)
    if not args.models:
        parser.error("the following arguments are required: --models")
    command_line = merge_amounts(
        [parsed_or_exit(parser, "--amounts", parse_amounts_flag, a) for a in args.amounts]
    )
    method_amounts = file_amounts(grid_file, command_line) if grid_file else command_line
    methods = args.methods or ("" if method_amounts else "tomecis")  # --amounts alone: its methods only
    parsed = dict(
        models=parsed_or_exit(parser, "--models", parse_models, args.models),
        methods=parsed_or_exit(parser, "--method", parse_methods, methods) if methods else [],
        r_values=parsed_or_exit(parser, "--r", parse_r_values, args.r_values) if args.r_values else [],
        keep_values=parsed_or_exit(parser, "--keep", parse_keep_spec, args.keep_values)
        if args.keep_values
        else [],
        method_amounts=method_amounts,
        match=parsed_or_exit(parser, "--match", lambda t: _match_target(t, args.match_by), args.match)
        if args.match
        else None,
    )
    for name in ("batch_size", "bench_runs", "limit", "num_actors"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.max_retries < 0:
        parser.error("--max-retries must be >= 0")
    if args.loader_workers is not None and args.loader_workers < 0:
        parser.error(f"--loader-workers must be >= 0, got {args.loader_workers}")
    if args.cpus_per_actor is not None and args.cpus_per_actor <= 0:
        parser.error(f"--cpus-per-actor must be > 0, got {args.cpus_per_actor:g}")
    if args.checkpoint_dir and not Path(args.checkpoint_dir).is_dir():
        parser.error(f"--checkpoint-dir {args.checkpoint_dir} is not a directory")
    options = {k: v for k, v in vars(args).items() if k not in ("amounts", "grid", "match_by")}
    return SweepConfig(**{**options, **parsed})


def _grid_path(argv: Optional[Sequence[str]]) -> Optional[str]:
    """``--grid FILE`` of the command line, read before the rest (its options are the defaults)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--grid")
    known, _ = early.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    return known.grid


def _match_target(text: str, by: str) -> MatchTarget:
    """``--match tomecis:r13`` -> the reference to match every other method to, on ``by``."""
    reference = parse_reference(text)
    return MatchTarget(reference.method, (reference.r, reference.keep), by)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = config_from_args(argv)
    errors = (SweepError, ValueError, FileNotFoundError, shards.ShardReadError, shards.ShardCountError)
    return run_or_report(lambda: _run_and_print(cfg, argv), errors)


def _run_and_print(cfg: SweepConfig, argv: Sequence[str]) -> int:
    """Run the sweep and print its tables and counts; Ctrl-C: say what was kept and how to resume (130).
    With ``--dry-run``, print the plan instead."""
    if cfg.list_methods:
        print(list_methods(cfg.methods))
        return 0
    if cfg.dry_run:
        print(describe_plan(cfg))
        return 0
    try:
        summary = run_sweep(cfg, validate_inputs(cfg), command=resume_command(argv))
    except SweepPaused as paused:
        print(
            f"paused (Ctrl-C): the actors are stopped; {paused}\nresume with: {resume_command(argv)}",
            file=sys.stderr,
        )
        return 130
    print(summary.table)
    left_out = describe_decode_failures(summary.decode_failures, cfg.out)
    if left_out:
        print(f"\n{left_out}")
    decoding = describe_decoding(summary)
    done = f"{len(summary.written)} point(s) written, {len(summary.skipped)} already done, to {cfg.out}"
    print(f"\n{done}" + (f"; {decoding}" if decoding else ""))
    print(describe_retries(summary))
    return 0


def list_methods(method_args: Sequence[str] = ()) -> str:
    """``--list-methods``: a table of every method found, its amounts and where it came from (the import
    paths among ``method_args``, raw ``--method`` texts, listed too)."""
    refs = [m.strip() for text in method_args for m in str(text).split(",") if names.is_import_path(m)]
    return names.methods_table(names.list_methods(refs))


def check_supported(model: str) -> torch.nn.Module:
    """``tomecis.check_supported`` (the model built on the meta device and patched), with the flag named."""
    try:
        return tomecis.check_supported(model)
    except ValueError as err:
        raise ValueError(f"--models: {err}") from err


def check_grid(cfg: SweepConfig) -> List[MethodPlan]:
    """Methods, amounts and models, checked without data or Ray: every method has an amount it takes
    (else ``ValueError`` naming it and its flags), every model can be patched, and every r a method
    will run fits every model. Returns the methods' plans."""
    plans = cfg.method_plans()
    reference = [MethodPlan(cfg.match.method, (cfg.match.amount,))] if cfg.match else []
    r_values = sorted({a[0] for plan in plans + reference for a in plan.amounts if a[0] is not None})
    for model in cfg.models:
        patched = check_supported(model)  # one meta-device build for every check
        limit = max_r(patched)
        too_big = [r for r in r_values if r > limit]
        if too_big:
            raise ValueError(
                f"--r {too_big[0]} is impossible for {model}: a block can merge at most {limit} of its tokens"
            )
        for plan in plans + reference:
            for r, keep in plan.amounts:
                try:  # on the meta device: nothing runs, the method only says whether it takes the model
                    tomecis.set_reduction(patched, plan.method, r=r, keep=keep)
                except ValueError as err:
                    raise ValueError(f"--models {model} with --method {plan.method}: {err}") from None
    return plans


def describe_plan(cfg: SweepConfig) -> str:
    """What a sweep with ``cfg`` evaluates, without data or Ray (``--dry-run``): the lines for flags a
    method skips, the points per model and method, and the decode passes (one decode per image each)."""
    plans = check_grid(cfg)
    grid = cfg.grid(dataset="dry-run")
    groups = group_by_transform(cfg.models)
    lines = [plan.skip_note() for plan in plans if plan.skip_note()]
    if cfg.match is not None and cfg.match.by == "gflops":  # token counts: no timing, no data, no Ray
        grid, _ = match_points(cfg, grid, None, lines.append)
    elif cfg.match is not None:
        grid, _ = add_matched(grid, (cfg.match.method, cfg.match.amount), [])
        lines.append(
            f"match: every other method's amount nearest {cfg.match.label} in speed is timed on an actor before "
            "the decode pass (not in a dry run; --match-by gflops shows matched amounts here)"
        )
    lines.append(
        f"grid: {len(grid)} point(s) in {len(groups)} decode pass(es), each image decoded once per pass"
    )
    for index, models in enumerate(groups, 1):
        count = sum(1 for p in grid if p.model in models)
        lines.append(f"  {pass_name(index, models)}: {count} point(s)")
    lines.append(describe_grid(grid))
    return "\n".join(lines)


def validate_inputs(cfg: SweepConfig) -> Selection:
    """Method, amount, data, weights and r checks that need files or model shapes, done before Ray
    starts; returns the shards to evaluate (resolved once: remote manifests are fetched here only)."""
    check_grid(cfg)
    selection = selection_of(resolve_data_saying_it(cfg.data), cfg.limit)
    if (
        cfg.checkpoint_dir
    ):  # only that each exists: run_sweep hashes them (weights_for), still before Ray starts
        for model in cfg.models:
            find_checkpoint(cfg.checkpoint_dir, model)
    return selection


def resolve_data_saying_it(spec: Optional[str]) -> shards.ShardSet:
    """``shards.resolve_data``, its lines (a download, a named or default set) on stderr as they come; when it
    says nothing, ``data: <description>``: the sweep's first line always says which data it runs on."""
    said: List[str] = []

    def say(line: str) -> None:
        said.append(line)
        print(line, file=sys.stderr, flush=True)

    shardset = shards.resolve_data(spec, announce=say)
    if not said:
        say(f"data: {shardset.description}")
    return shardset


def selection_of(shardset: shards.ShardSet, limit: Optional[int]) -> Selection:
    """The shards to evaluate (``prepare.select_shards``) and what the data is called."""
    return Selection(*select_shards(shardset, limit), title=shardset.title)


if __name__ == "__main__":
    sys.exit(main())
