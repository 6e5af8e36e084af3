"""orchestrator.gpucheck.weights: the real checkpoint where one is found, random weights only by choice
or said loudly, a named checkpoint folder that lacks a model's file an error naming it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from orchestrator.gpucheck import WEIGHT_PLACES, GpuCheckConfig, choose_weights, config_from_args
from orchestrator.gpucheck.config import REPO
from orchestrator.gpucheck.weights import weights_head

MODEL = "deit_tiny_patch16_224"


def fake_checkpoint(folder: Path, name: str = MODEL, suffix: str = ".pth") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}{suffix}"
    path.write_bytes(b"not really weights, but bytes with a digest: " + name.encode())
    return path


def test_the_first_place_holding_the_checkpoint_wins_and_its_digest_is_said(tmp_path):
    first, second = tmp_path / "checkout" / ".weights", tmp_path / "shared" / "weights"
    found = fake_checkpoint(second)
    fake_checkpoint(tmp_path / "later")
    chosen = choose_weights(GpuCheckConfig(models=[MODEL]), places=(first, second, tmp_path / "later"))
    weights = chosen[MODEL]
    assert weights.real and weights.path == found
    assert weights.digest == hashlib.sha256(found.read_bytes()).hexdigest()
    assert weights_head(chosen)[:2] == [
        "Weights:",
        f"- {MODEL}: {found} (sha256 {weights.digest[:12]}, found by default)",
    ]
    assert weights.work_weights().tag == f"ckpt_{weights.digest[:12]}"


def test_a_model_without_a_checkpoint_anywhere_runs_random_and_its_line_says_where_to_put_one(tmp_path):
    fake_checkpoint(tmp_path / "w")
    cfg = GpuCheckConfig(models=[MODEL, "deit_small_patch16_224"])
    chosen = choose_weights(cfg, places=(tmp_path / "missing", tmp_path / "w"))
    assert chosen[MODEL].real and not chosen["deit_small_patch16_224"].real
    line = chosen["deit_small_patch16_224"].line()
    assert line.startswith("- deit_small_patch16_224: random weights (no deit_small_patch16_224.pth in ")
    assert str(tmp_path / "missing") in line and "--checkpoint-dir" in line and "--random-weights" in line
    assert chosen["deit_small_patch16_224"].work_weights().tag == "random"


def test_random_weights_are_an_explicit_choice_even_where_a_checkpoint_lies(tmp_path):
    fake_checkpoint(tmp_path / "w")
    chosen = choose_weights(GpuCheckConfig(models=[MODEL], random_weights=True), places=(tmp_path / "w",))
    assert not chosen[MODEL].real and chosen[MODEL].line() == f"- {MODEL}: random weights (--random-weights)"


def test_checkpoint_dir_must_hold_every_model(tmp_path):
    path = fake_checkpoint(tmp_path / "ckpts", suffix=".safetensors")
    chosen = choose_weights(GpuCheckConfig(models=[MODEL], checkpoint_dir=str(tmp_path / "ckpts")), places=())
    assert chosen[MODEL].path == path and "--checkpoint-dir" in chosen[MODEL].line()
    cfg = GpuCheckConfig(models=[MODEL, "deit_small_patch16_224"], checkpoint_dir=str(tmp_path / "ckpts"))
    with pytest.raises(FileNotFoundError, match="no checkpoint for model deit_small_patch16_224 in .*ckpts"):
        choose_weights(cfg, places=())
    with pytest.raises(FileNotFoundError, match="--checkpoint-dir .*nowhere: no such folder"):
        choose_weights(GpuCheckConfig(models=[MODEL], checkpoint_dir=str(tmp_path / "nowhere")))


def test_the_flags_random_weights_and_checkpoint_dir_exclude_each_other(capsys):
    assert config_from_args(["--random-weights"]).random_weights
    with pytest.raises(SystemExit):
        config_from_args(["--random-weights", "--checkpoint-dir", "x"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_the_default_places_are_the_checkout_and_the_shared_assets_beside_or_inside_it():
    assert WEIGHT_PLACES == (
        REPO / ".weights",
        REPO.parent / "shared" / "assets" / "weights",
        REPO / "shared" / "assets" / "weights",
    )


@pytest.mark.assets
def test_the_shared_deit_tiny_checkpoint_is_found_by_default():
    from conftest import DEIT_TINY_WEIGHTS, require_assets

    require_assets(DEIT_TINY_WEIGHTS)
    weights = choose_weights(GpuCheckConfig(models=[MODEL]))[MODEL]
    assert weights.path is not None and weights.path.resolve() == DEIT_TINY_WEIGHTS.resolve()
