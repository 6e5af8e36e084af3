"""orchestrator.grid: --models, --mode and --r into (model, mode, r) grid points."""

from __future__ import annotations

import pytest

from orchestrator.grid import GridPoint, build_grid, parse_models, parse_modes


def test_grid_is_models_then_modes_then_r():
    grid = build_grid(
        ["a_model", "b_model"], [0, 8], ["tomecis", "tome"], weights={"b_model": "random"}, dataset="f1"
    )
    assert [(p.model, p.mode, p.r) for p in grid] == [
        ("a_model", "tomecis", 0),
        ("a_model", "tomecis", 8),
        ("a_model", "tome", 0),
        ("a_model", "tome", 8),
        ("b_model", "tomecis", 0),
        ("b_model", "tomecis", 8),
        ("b_model", "tome", 0),
        ("b_model", "tome", 8),
    ]
    assert {p.weights for p in grid if p.model == "b_model"} == {"random"}
    assert build_grid(["a_model"], [13], "tome", dataset="f1")[0].key == ("a_model", "tome", 13)


def test_file_stem_keeps_mode_and_everything_that_makes_a_run():
    point = GridPoint(
        "deit_tiny_patch16_224",
        13,
        mode="tome",
        amp="fp16",
        batch_size=256,
        weights="ckpt_0123456789ab",
        device="cuda",
        dataset="f1",
    )
    assert point.file_stem() == "deit_tiny-tome-r13-fp16-bs256-ckpt_0123456789ab-cuda-f1"


def test_modes_and_models_are_parsed_in_order_without_duplicates():
    assert parse_modes("tome, tomecis,tome") == ["tome", "tomecis"]
    assert parse_models("deit_small,deit_tiny,deit_small") == [
        "deit_small_patch16_224",
        "deit_tiny_patch16_224",
    ]
    with pytest.raises(ValueError, match="unknown mode 'evit'"):
        parse_modes("tomecis,evit")
    with pytest.raises(ValueError, match="unknown mode 'evit'; choose from tomecis, tome"):
        build_grid(["a_model"], [0], ["tomecis", "evit"], dataset="f1")


def test_identity_is_one_list_of_columns_that_every_results_file_carries():
    from orchestrator.grid import IDENTITY, SETTING_COLUMNS
    from orchestrator.results import FAILURE_SCHEMA, POINT_SCHEMA, PREDICTION_SCHEMA

    point = GridPoint("deit_tiny_patch16_224", 8, mode="tome", batch_size=64, device="cuda", dataset="f1")
    assert point.identity() == {
        "model": "deit_tiny_patch16_224",
        "mode": "tome",
        "r": 8,
        "amp": "none",
        "infer_batch_size": 64,
        "weights": "pretrained",
        "device": "cuda",
        "dataset": "f1",
    }
    assert point.identity("NVIDIA H200")["device"] == "NVIDIA H200"  # the files hold the device's name
    assert tuple(point.identity()) == IDENTITY
    assert PREDICTION_SCHEMA.names[-len(IDENTITY) :] == list(IDENTITY)
    assert FAILURE_SCHEMA.names == ["shard", "key", "error", *IDENTITY]
    assert set(IDENTITY) <= set(POINT_SCHEMA.names)
    assert set(SETTING_COLUMNS) == {"dataset", "amp", "infer_batch_size", "device", "weights"}
    with pytest.raises(TypeError):
        GridPoint("deit_tiny_patch16_224", 8)  # a point without its dataset is no point
