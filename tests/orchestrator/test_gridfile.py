"""Amounts per method: ``--amounts``, keep ranges and ``--grid FILE.toml`` give the same grid, the command
line overrides the file, and every mistake is named (file, key, value) before anything runs."""

from __future__ import annotations

import re

import pytest

from orchestrator import sweep
from orchestrator.grid import build_grid, parse_amounts_flag, parse_keep_spec

ISSUE_FILE = """\
models = ["deit_tiny", "deit_small"]
[methods]
tomecis = { r = "8-16" }
tome    = { r = [8, 13, 16] }
pitome  = { keep = [0.9, 0.925, 0.95, 0.975] }
evit    = { keep = "0.5-0.9:0.1" }
"""
ISSUE_FLAGS = [
    "--models",
    "deit_tiny,deit_small",
    "--amounts",
    "tomecis=r:8-16",
    "--amounts",
    "tome=r:8,13,16",
    "--amounts",
    "pitome=keep:0.9,0.925,0.95,0.975",
    "--amounts",
    "evit=keep:0.5-0.9:0.1",
]


def grid_file(tmp_path, text: str):
    path = tmp_path / "g.toml"
    path.write_text(text)
    return str(path)


def keys(cfg: sweep.SweepConfig) -> list:
    return [(p.short_name, p.method, p.r, p.keep) for p in cfg.grid(dataset="d")]


def test_keep_ranges_are_inclusive_and_exact():
    assert parse_keep_spec("0.5-0.9:0.1") == [0.5, 0.6, 0.7, 0.8, 0.9]
    assert parse_keep_spec("0.9-0.975:0.025") == [0.9, 0.925, 0.95, 0.975]
    assert parse_keep_spec("0.7,0.5-0.6:0.05,0.7") == [0.7, 0.5, 0.55, 0.6]
    assert parse_keep_spec("0.5-0.95:0.1") == [0.5, 0.6, 0.7, 0.8, 0.9]  # the steps that fit
    for bad, says in [
        ("0.9-0.5:0.1", "LOW <= HIGH"),
        ("0.5-0.9", "cannot read keep item"),
        ("0.5-1.5:0.5", "1.5"),
    ]:
        with pytest.raises(ValueError, match=re.escape(says)):
            parse_keep_spec(bad)


def test_an_amounts_flag_names_itself_in_every_error():
    assert parse_amounts_flag("evit=keep:0.5-0.7:0.1") == ("evit", [(None, 0.5), (None, 0.6), (None, 0.7)])
    assert parse_amounts_flag("tome=r:8-12:2") == ("tome", [(8, None), (10, None), (12, None)])
    for text, says in [
        ("evit:keep=0.5", "is not METHOD=KIND:SPEC"),
        ("evit=r:8", "evit=r:8: evit takes keep, not r"),
        ("tomy=r:8", "tomy=r:8: unknown method 'tomy'"),
        ("tome=keep:x", "cannot read keep item 'x'"),
        ("tome=size:8", "amount kind 'size' is neither r nor keep"),
    ]:
        with pytest.raises(ValueError, match=re.escape(says)):
            parse_amounts_flag(text)


def test_the_issues_file_and_the_equivalent_flags_give_the_same_grid_and_identities(tmp_path):
    from_file = sweep.config_from_args(["--grid", grid_file(tmp_path, ISSUE_FILE)])
    from_flags = sweep.config_from_args(ISSUE_FLAGS)
    assert from_file.method_amounts == from_flags.method_amounts
    assert from_file.methods == from_flags.methods == []  # only the methods given amounts
    file_grid, flag_grid = from_file.grid(dataset="d"), from_flags.grid(dataset="d")
    assert file_grid == flag_grid
    assert [p.file_stem() for p in file_grid] == [p.file_stem() for p in flag_grid]
    assert [p.identity() for p in file_grid] == [p.identity() for p in flag_grid]
    deit_tiny = [k for k in keys(from_file) if k[0] == "deit_tiny"]
    assert deit_tiny == [
        ("deit_tiny", "none", 0, None),
        *[("deit_tiny", "tomecis", r, None) for r in range(8, 17)],
        *[("deit_tiny", "tome", r, None) for r in (8, 13, 16)],
        *[("deit_tiny", "pitome", None, k) for k in (0.9, 0.925, 0.95, 0.975)],
        *[("deit_tiny", "evit", None, k) for k in (0.5, 0.6, 0.7, 0.8, 0.9)],
    ]
    assert len(file_grid) == 2 * len(deit_tiny)


def test_methods_without_amounts_keep_the_r_and_keep_rule():
    cfg = sweep.config_from_args(
        ["--models", "deit_tiny", "--method", "tomecis,tome", "--r", "8", "--amounts", "evit=keep:0.6,0.8"]
    )
    assert [k[1:] for k in keys(cfg)] == [
        ("none", 0, None),
        ("tomecis", 8, None),
        ("tome", 8, None),
        ("evit", None, 0.6),
        ("evit", None, 0.8),
    ]
    assert keys(cfg)[1:] == [
        (p.short_name, p.method, p.r, p.keep)
        for p in build_grid(
            ["deit_tiny_patch16_224"],
            [8],
            ["tomecis", "tome"],
            dataset="d",
            method_amounts={"evit": [(None, 0.6), (None, 0.8)]},
        )[1:]
    ]


def test_the_command_line_overrides_the_file(tmp_path):
    path = grid_file(tmp_path, ISSUE_FILE + "")
    text = ISSUE_FILE.replace("[methods]", 'batch_size = 16\namp = "bf16"\nbench = false\nr = [4]\n[methods]')
    path = grid_file(tmp_path, text)
    cfg = sweep.config_from_args(["--grid", path, "--batch-size", "8", "--amounts", "evit=keep:0.75"])
    assert (cfg.batch_size, cfg.amp, cfg.bench, cfg.r_values) == (8, "bf16", False, [4])
    assert cfg.method_amounts["evit"] == [
        (None, 0.75)
    ]  # the command line's amounts for evit replace the file's
    assert cfg.method_amounts["tome"] == [(8, None), (13, None), (16, None)]
    cfg = sweep.config_from_args(["--grid", path, "--models", "deit_small", "--bench"])
    assert cfg.models == ["deit_small_patch16_224"] and cfg.bench and cfg.batch_size == 16


@pytest.mark.parametrize(
    "text, says",
    [
        ('models = ["deit_tiny"]\nbatchsize = 8\n', "batchsize = 8: unknown key; a grid file takes"),
        (
            'models = ["deit_tiny"]\n[methods]\nevit = { r = "8-16" }\n',
            "methods.evit.r = '8-16': evit takes keep, not r",
        ),
        (
            'models = ["deit_tiny"]\n[methods]\ntome = { r = "8-x" }\n',
            "methods.tome.r = '8-x': cannot read r item",
        ),
        (
            'models = ["deit_tiny"]\n[methods]\ntome = { r = [8, "a"] }\n',
            "methods.tome.r = [8, 'a']: give a spec",
        ),
        (
            'models = ["deit_tiny"]\n[methods]\ntomy = { r = 8 }\n',
            "methods.tomy.r = 8: unknown method 'tomy'",
        ),
        (
            'models = ["deit_tiny"]\n[methods]\ntome = { size = 8 }\n',
            "methods.tome.size = 8: amount kind 'size'",
        ),
        ('models = ["deit_tiny"]\namp = "fp8"\n', "amp = 'fp8': choose from none, fp16, bf16"),
        ('models = ["deit_tiny"]\nforce = "yes"\n', "force = 'yes': force is a switch"),
        ('models = ["deit_tiny"\n', "not valid TOML"),
    ],
)
def test_a_bad_file_is_named_with_its_key_and_value_before_anything_runs(tmp_path, capsys, text, says):
    path = grid_file(tmp_path, text)
    with pytest.raises(SystemExit):
        sweep.config_from_args(["--grid", path])
    err = capsys.readouterr().err
    assert path in err and says in err, err


def test_a_missing_grid_file_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sweep.config_from_args(["--grid", str(tmp_path / "nope.toml")])
    assert "nope.toml: no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_dry_run_prints_the_matched_amounts_by_gflops_within_two_percent(tmp_path, capsys):
    """No data, no Ray, no timing: the token counts alone give each method's matched amount."""
    path = grid_file(tmp_path, ISSUE_FILE.replace('"deit_tiny", "deit_small"', '"deit_tiny"'))
    assert sweep.main(["--grid", path, "--match", "tomecis:r13", "--match-by", "gflops", "--dry-run"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("match: ")]
    assert [line.split()[2] for line in lines] == ["tome", "pitome", "evit"]
    for line in lines:
        gap = float(re.search(r"\(([-+]\d+\.\d)%\)", line).group(1))
        assert abs(gap) <= 2.0 or "cannot reach" in line, line
    assert "tome r13 by gflops" in out  # planned already: marked, not added
    assert (
        "grid: 24 point(s)" in out
    )  # 22 of the file (tomecis r13, the reference, among them), pitome +1, evit +1
