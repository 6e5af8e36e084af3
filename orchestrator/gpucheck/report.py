"""The report as it grows (``report.md`` and ``results.json``, rewritten after every step so that an
interrupted run keeps what it measured), its verdict rows, and ``run_step``: one step timed, a failure
reported as failed while the next step still runs."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional


@dataclass
class Report:
    """Markdown sections, the figures, each target's verdict and each step's time; ``head``: the first
    lines under the title (which weights were used)."""

    out: Path
    head: List[str] = field(default_factory=list)
    sections: List[str] = field(default_factory=list)
    figures: Dict[str, object] = field(default_factory=dict)
    verdicts: List[str] = field(default_factory=list)
    steps: List[str] = field(default_factory=list)

    def add(self, title: str, body: str, **figures) -> None:
        self.sections.append(f"## {title}\n\n{body.strip()}\n")
        self.figures.update(figures)
        self.write()

    def check(self, what: str, measured: float, target: float, unit: str = "") -> None:
        verdict = "PASS" if measured >= target else "FAIL"
        self.verdicts.append(f"| {what} | {measured:.2f}{unit} | >= {target:.2f}{unit} | {verdict} |")
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
        parts = ["# GPU check\n", *([("\n".join(self.head) + "\n")] if self.head else []), *self.sections]
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


def run_step(
    report: Report, name: str, step: Callable[[], object], say: Callable[[str], None] = print
) -> Optional[object]:
    """``step()`` timed: its seconds printed and kept; an exception becomes a FAILED section naming it
    (the other steps still run) and the result None."""
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
