"""Methods of one's own (#30): found through entry points and import paths, run like built-in ones, and
checked block by block so that a malformed one fails with an error naming it, the block and what was wrong."""

from __future__ import annotations

import copy
import hashlib
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import REPO, tiny_vit
from plugin_testing import BREAKS, malformed_module, readme_example, write_package

import tomecis
from orchestrator import sweep
from orchestrator.grid import GridPoint, build_grid
from orchestrator.results import ResultsDir
from tomecis import names


def l2prune_by_hand(model, images: torch.Tensor, r: int) -> torch.Tensor:
    """The README's l2prune written out on timm's own blocks: ``images [B, 3, H, W]`` -> logits."""
    x = model.patch_drop(model.pos_drop(model._pos_embed(model.patch_embed(images))))
    for block in model.blocks:
        x = x + block.attn(block.norm1(x))
        drop = max(0, min(r, x.shape[1] - 2))
        others = x[:, 1:]
        order = torch.argsort(others.norm(dim=-1), dim=1, descending=True)[:, : others.shape[1] - drop]
        kept = torch.sort(order, dim=1).values
        x = torch.cat([x[:, :1], torch.stack([o[k] for o, k in zip(others, kept)])], dim=1)
        x = x + block.mlp(block.norm2(x))
    return model.forward_head(model.norm(x))


def test_the_readme_example_runs_as_printed_and_prunes_by_l2_norm(tmp_path, monkeypatch):
    (tmp_path / "readme_l2prune.py").write_text(readme_example())
    assert len(readme_example().splitlines()) < 40
    monkeypatch.syspath_prepend(str(tmp_path))
    method = names.method_spec("readme_l2prune:METHOD")
    digest = hashlib.sha256((tmp_path / "readme_l2prune.py").read_bytes()).hexdigest()[:12]
    assert method.name == "l2prune" and method.origin.endswith(f"readme_l2prune.py sha256:{digest}")
    assert names.method_spec("l2prune") is method  # its name finds it from now on, in this process
    plain = tiny_vit(depth=4).double()
    model = tomecis.patch(copy.deepcopy(plain))
    tomecis.set_reduction(model, "l2prune", r=8)
    images = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    with torch.inference_mode():
        logits = model(images)
        expected = l2prune_by_hand(plain, images, 8)
    assert model.merge_state.tokens == [57, 49, 41, 33]
    torch.testing.assert_close(logits, expected, rtol=1e-9, atol=1e-9)


def test_entry_points_are_found_listed_and_named_by_their_distribution(tmp_path, monkeypatch):
    root = write_package(
        tmp_path,
        "epkg",
        {"l2": readme_example().replace('name="l2prune"', 'name="l2ep"'), "bad": "X = 3\n"},
        dist="epkg-dist-0.3",
        entry_points={"l2ep": "epkg.l2:METHOD", "notamethod": "epkg.bad:X", "gone": "epkg.missing:METHOD"},
    )
    monkeypatch.syspath_prepend(str(root))
    method = names.method_spec("l2ep")
    assert method.origin == "epkg-dist 0.3" and names.ref_of("l2ep") == "l2ep=epkg.l2:METHOD"
    table = sweep.list_methods()
    rows = {line.split()[0]: line for line in table.splitlines()}
    assert "epkg-dist 0.3" in rows["l2ep"] and "builtin" in rows["tomecis"]
    assert "NOT LOADED" in rows["gone"] and "cannot import module 'epkg.missing'" in rows["gone"]
    assert "is a int, not a tomecis.Method" in rows["notamethod"]
    with pytest.raises(ValueError, match="cannot import module 'epkg.missing'"):
        names.method_spec("gone")
    with pytest.raises(ValueError, match="unknown method 'nope'; choose from none, .*l2ep.*pyproject.toml"):
        names.method_spec("nope")
    grid = build_grid(["m"], [4], ["tomecis", "l2ep"], dataset="d")
    assert [p.method_source for p in grid] == ["builtin", "builtin", "epkg-dist 0.3"]


def test_clashes_and_mismatched_names_are_refused(tmp_path, monkeypatch):
    source = readme_example()
    root = write_package(
        tmp_path,
        "clash",
        {"tome_again": source.replace('name="l2prune"', 'name="tome"'), "other": source},
        dist="clash-1.0",
        entry_points={"wrongname": "clash.other:METHOD"},
    )
    monkeypatch.syspath_prepend(str(root))
    with pytest.raises(ValueError, match="its name 'tome' is a built-in method's"):
        names.method_spec("clash.tome_again:METHOD")
    with pytest.raises(ValueError, match="is called 'l2prune'; name the entry point as the method"):
        names.method_spec("wrongname")


@pytest.mark.parametrize("kind", sorted(BREAKS))
def test_a_malformed_method_raises_naming_itself_the_block_and_what_was_wrong(tmp_path, monkeypatch, kind):
    (tmp_path / f"broken_{kind}.py").write_text(malformed_module(f"broken_{kind}", kind))
    monkeypatch.syspath_prepend(str(tmp_path))
    name = names.method_spec(f"broken_{kind}:METHOD").name
    model = tomecis.patch(tiny_vit(depth=4))
    tomecis.set_reduction(model, name, r=4)
    assert model.merge_state.checked
    with pytest.raises(
        names.MethodError, match=rf"method '{name}' \(.*broken_{kind}.py sha256:\w+\), block 2: "
    ):
        with torch.inference_mode():
            model(torch.randn(2, 3, 64, 64))
    with pytest.raises(names.MethodError, match=BREAKS[kind]):
        with torch.inference_mode():
            model(torch.randn(2, 3, 64, 64))


def test_built_in_methods_are_not_checked():
    model = tomecis.patch(tiny_vit(depth=4))
    for name in names.REDUCING_METHODS:
        r, keep = names.METHODS[name].default()  # mctf takes r only
        tomecis.set_reduction(model, name, r=r, keep=keep)
        assert not model.merge_state.checked, name


def test_method_source_is_part_of_a_points_identity_and_old_files_read_as_builtin(tmp_path):
    builtin = GridPoint("deit_tiny_patch16_224", 8, "tome", dataset="d")
    mine = GridPoint("deit_tiny_patch16_224", 8, "l2prune", dataset="d", method_source="mypkg 0.1")
    newer = GridPoint("deit_tiny_patch16_224", 8, "l2prune", dataset="d", method_source="mypkg 0.2")
    assert builtin.file_stem().endswith("-d") and builtin.identity()["method_source"] == "builtin"
    assert mine.file_stem() != newer.file_stem() and "-src" in mine.file_stem()
    results = ResultsDir(tmp_path)
    (tmp_path / "points").mkdir()
    old = pa.table({"model": ["deit_tiny_patch16_224"], "mode": ["tome"], "r": [8], "top1": [70.0]})
    pq.write_table(old, tmp_path / "points" / "old.parquet")
    assert results.read_points().column("method_source").to_pylist() == ["builtin"]
    assert results.read_point_rows()["method_source"].tolist() == ["builtin"]


def test_finding_methods_imports_no_torch(tmp_path):
    """``tomecis.names`` lists and looks up methods without torch (a results reader needs no more)."""
    write_package(
        tmp_path, "lazypkg", {"m": "X = 1\n"}, dist="lazypkg-1.0", entry_points={"lazy": "lazypkg.m:X"}
    )
    code = (
        "import sys; from tomecis import names; "
        "assert [ep.name for ep in names.entry_points()] == ['lazy']; names.method_spec('tome'); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path)


def test_gpucheck_runs_a_method_of_ones_own_at_a_default_amount(tmp_path, monkeypatch):
    from orchestrator.gpucheck.config import GpuCheckConfig, method_amounts

    (tmp_path / "gpu_l2prune.py").write_text(readme_example().replace('name="l2prune"', 'name="l2gpu"'))
    monkeypatch.syspath_prepend(str(tmp_path))
    name = names.method_spec("gpu_l2prune:METHOD").name
    plan, _ = method_amounts(GpuCheckConfig(models=["a"], methods=["tome", name]))
    assert plan[name] == [(13, None)]
    plan, _ = method_amounts(GpuCheckConfig(models=["a"], methods=[name], r_values=[4, 8]))
    assert plan[name] == [(4, None), (8, None)]


def test_every_command_takes_a_method_of_ones_own_by_import_path_and_by_name(tmp_path, monkeypatch):
    from orchestrator import report
    from tomecis import benchmark, visualize

    (tmp_path / "cli_l2prune.py").write_text(readme_example().replace('name="l2prune"', 'name="l2cli"'))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert benchmark.parse_methods("tome,cli_l2prune:METHOD") == ["tome", "l2cli"]
    assert report.parse_methods("cli_l2prune:METHOD,l2cli,evit") == ["l2cli", "evit"]
    assert sweep.config_from_args(
        ["--models", "deit_tiny", "--method", "cli_l2prune:METHOD", "--r", "8"]
    ).methods == ["l2cli"]
    cfg = visualize.config_from_args(
        ["x.jpg", "--method", "cli_l2prune:METHOD", "--r", "8", "--random-weights"]
    )
    assert cfg.method == "l2cli"
    with pytest.raises(SystemExit):
        visualize.config_from_args(
            ["x.jpg", "--method", "cli_l2prune:METHOD", "--keep", "0.7", "--random-weights"]
        )


def test_source_maps_of_a_method_of_ones_own(tmp_path, monkeypatch):
    """The README's method keeps ``state.source`` in step (``tomecis.visualize`` draws it); one that does
    not is told so, by name."""
    (tmp_path / "src_l2prune.py").write_text(readme_example().replace('name="l2prune"', 'name="l2src"'))
    (tmp_path / "src_untracked.py").write_text(malformed_module("untracked", "none"))
    monkeypatch.syspath_prepend(str(tmp_path))
    model = tomecis.patch(tiny_vit(depth=4), trace_source=True)
    tomecis.set_reduction(model, names.method_spec("src_l2prune:METHOD").name, r=8)
    with torch.inference_mode():
        model(torch.randn(2, 3, 64, 64))
    source = model.merge_state.source  # [B, N, N0]: each kept token is one of the 65 it started as
    assert source.shape == (2, 33, 65) and (source.sum(-1) == 1).all() and (source[:, 0, 0] == 1).all()
    tomecis.set_reduction(model, names.method_spec("src_untracked:METHOD").name, r=8)
    with pytest.raises(names.MethodError, match="block 0: state.source has 65 rows for 57 tokens"):
        with torch.inference_mode():
            model(torch.randn(2, 3, 64, 64))
