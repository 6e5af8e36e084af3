"""Run the Ray tests several times in a row with CPU-burning processes beside them; one line per run.

    python tests/ray_under_load.py --runs 10 --burners 1

Not part of CI: it takes ``--runs`` times as long as the Ray tests (``pytest -m ray``). It is how the suite's
timing assumptions are checked: a test that passes on a quiet machine but fails when a core is taken away has a
race in it (a result and an event whose order the test assumed), and the fix is to remove the assumption, not to
retry or sleep longer. Each burner is a Python process spinning on one core; the script ends exactly the processes
it started, by their pids, also on Ctrl-C. A failing run's pytest output is kept in ``--logs``.

Anything after ``--`` goes to pytest, e.g. ``-- -k resume`` for one file's tests.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class LoadConfig:
    runs: int = 10
    burners: int = 1
    marker: str = "ray"
    logs: Path = Path(tempfile.gettempdir()) / "ray_under_load"
    pytest_args: Sequence[str] = ()


@dataclass
class RunResult:
    index: int
    seconds: float
    tests: int
    failed: List[str] = field(default_factory=list)
    skipped: int = 0
    load: float = 0.0

    @property
    def passed(self) -> int:
        return self.tests - len(self.failed) - self.skipped


def start_burners(count: int) -> List[subprocess.Popen]:
    """``count`` processes that each keep one core busy until ended."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def stop_burners(burners: List[subprocess.Popen]) -> None:
    """End the burners this script started, by their pids, and reap them."""
    for proc in burners:
        proc.terminate()
    for proc in burners:
        proc.wait(timeout=10)


def read_junit(xml_path: Path) -> tuple:
    """(tests, failing test ids, skipped) from a pytest ``--junitxml`` file."""
    root = ET.parse(xml_path).getroot()
    tests, failed, skipped = 0, [], 0
    for case in root.iter("testcase"):
        tests += 1
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname')}::{case.get('name')}")
        elif case.find("skipped") is not None:
            skipped += 1
    return tests, failed, skipped


def run_once(index: int, config: LoadConfig) -> RunResult:
    """One ``pytest -m <marker>`` run; its output is kept in ``config.logs`` when anything failed."""
    config.logs.mkdir(parents=True, exist_ok=True)
    xml_path = config.logs / f"run{index:02d}.xml"
    log_path = config.logs / f"run{index:02d}.log"
    command = [sys.executable, "-m", "pytest", "-m", config.marker, "-q", "-p", "no:cacheprovider"]
    command += [f"--junitxml={xml_path}", *config.pytest_args]
    start = time.monotonic()
    with open(log_path, "w") as log:
        subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - start
    if not xml_path.exists():
        return RunResult(
            index, seconds, 0, [f"pytest wrote no report; see {log_path}"], load=os.getloadavg()[0]
        )
    tests, failed, skipped = read_junit(xml_path)
    if not failed:
        log_path.unlink()
    return RunResult(index, seconds, tests, failed, skipped, os.getloadavg()[0])


def describe(result: RunResult) -> str:
    verdict = "ok  " if not result.failed and result.tests else "FAIL"
    line = (
        f"run {result.index:2d}  {verdict}  {result.passed:3d} passed  {len(result.failed):2d} failed  "
        f"{result.skipped:2d} skipped  {result.seconds:6.0f} s  load {result.load:5.1f}"
    )
    return line + "".join(f"\n          failed: {name}" for name in result.failed)


def run_under_load(config: LoadConfig) -> List[RunResult]:
    burners = start_burners(config.burners)
    print(
        f"{config.burners} CPU burner(s) (pids {', '.join(str(b.pid) for b in burners) or '-'}) on {os.cpu_count()} cores;"
        f" pytest -m {config.marker} {' '.join(config.pytest_args)}".rstrip(),
        flush=True,
    )
    results = []
    try:
        for index in range(1, config.runs + 1):
            results.append(run_once(index, config))
            print(describe(results[-1]), flush=True)
    finally:
        stop_burners(burners)
    return results


def summary(results: List[RunResult], config: LoadConfig) -> str:
    good = sum(1 for r in results if not r.failed and r.tests)
    text = f"{good}/{len(results)} runs passed with {config.burners} burner(s)"
    if good < len(results):
        text += f"; failing runs' output is in {config.logs}"
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=LoadConfig.runs, help="runs in a row (default 10)")
    parser.add_argument(
        "--burners", type=int, default=LoadConfig.burners, help="CPU-burning processes (default 1)"
    )
    parser.add_argument("--marker", default=LoadConfig.marker, help="pytest marker expression (default: ray)")
    parser.add_argument(
        "--logs", type=Path, default=LoadConfig.logs, help="where failing runs' output is kept"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = build_parser().parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.runs < 1 or args.burners < 0:
        print("error: --runs must be at least 1 and --burners at least 0", file=sys.stderr)
        return 2
    config = LoadConfig(args.runs, args.burners, args.marker, args.logs, tuple(extra))
    results = run_under_load(config)
    print(summary(results, config))
    return 0 if all(not r.failed and r.tests for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
