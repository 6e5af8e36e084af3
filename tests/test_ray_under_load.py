"""tests/ray_under_load.py: runs pytest N times beside CPU burners, reports each run, and ends its burners."""

from __future__ import annotations

import os
import re

import ray_under_load


def _burner_pids(text: str) -> list:
    return [int(pid) for pid in re.search(r"\(pids ([\d, ]+)\)", text).group(1).split(", ")]


def test_each_run_is_reported_and_the_burners_end(tmp_path, capsys):
    (tmp_path / "test_fine.py").write_text("def test_one():\n    assert True\n\ndef test_two():\n    pass\n")
    argv = ["--runs", "2", "--burners", "2", "--marker", "not slow", "--logs", str(tmp_path / "logs")]
    assert ray_under_load.main([*argv, "--", str(tmp_path / "test_fine.py")]) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"^run  \d  ok +2 passed   0 failed", out, re.M)) == 2, out
    assert "2/2 runs passed with 2 burner(s)" in out
    for pid in _burner_pids(out):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"burner {pid} still runs")
    assert not list((tmp_path / "logs").glob("*.log"))  # a passing run's output is not kept


def test_a_failing_run_names_the_test_and_keeps_its_output(tmp_path, capsys):
    (tmp_path / "test_bad.py").write_text(
        "def test_good():\n    pass\n\ndef test_broken():\n    assert 1 == 2\n"
    )
    argv = ["--runs", "1", "--burners", "0", "--marker", "not slow", "--logs", str(tmp_path / "logs")]
    assert ray_under_load.main([*argv, "--", str(tmp_path / "test_bad.py")]) == 1
    out = capsys.readouterr().out
    assert "FAIL    1 passed   1 failed" in out and "failed: test_bad::test_broken" in out, out
    assert "0/1 runs passed" in out
    assert "assert 1 == 2" in (tmp_path / "logs" / "run01.log").read_text()
