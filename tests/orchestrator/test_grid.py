"""orchestrator.grid: --models, --method, --r and --keep into (model, method, r, keep) grid points."""

from __future__ import annotations

import pytest

from orchestrator.grid import (
    GridPoint,
    build_grid,
    describe_grid,
    parse_methods,
    parse_models,
    plan_methods,
)


def keys(grid):
    return [(p.model, p.method, p.r, p.keep) for p in grid]


def test_grid_is_models_then_the_baseline_then_methods_then_r():
    grid = build_grid(
        ["a_model", "b_model"], [0, 8], ["tomecis", "tome"], weights={"b_model": "random"}, dataset="f1"
    )
    assert keys(grid) == [
        ("a_model", "none", 0, None),  # r = 0 asked for two methods is the one baseline
        ("a_model", "tomecis", 8, None),
        ("a_model", "tome", 8, None),
        ("b_model", "none", 0, None),
        ("b_model", "tomecis", 8, None),
        ("b_model", "tome", 8, None),
    ]
    assert {p.weights for p in grid if p.model == "b_model"} == {"random"}
    assert build_grid(["a_model"], [13], "tome", dataset="f1")[1].key == ("a_model", "tome", 13, None)


def test_the_issues_grid_has_one_baseline_per_model_and_keep_points_for_every_method():
    """--method tomecis,tome,pitome,tofu,evit --r 8-16 --keep 0.7,0.9: per model 1 baseline,
    four methods x (9 r + 2 keep), evit x 2 keep (it takes no --r)."""
    methods = ["tomecis", "tome", "pitome", "tofu", "evit"]
    grid = build_grid(["a", "b"], list(range(8, 17)), methods, dataset="f", keep_values=[0.7, 0.9])
    assert len(grid) == 2 * (1 + 4 * 11 + 2)
    for model in ("a", "b"):
        mine = [p for p in grid if p.model == model]
        assert [p.key for p in mine if p.method == "none"] == [(model, "none", 0, None)]
        for method in methods[:4]:
            amounts = [(p.r, p.keep) for p in mine if p.method == method]
            assert amounts == [(r, None) for r in range(8, 17)] + [(None, 0.7), (None, 0.9)]
        assert [(p.r, p.keep) for p in mine if p.method == "evit"] == [(None, 0.7), (None, 0.9)]
    assert len({p.file_stem() for p in grid}) == len(grid)
    assert describe_grid(grid).splitlines()[0] == (
        "  a: 47 point(s): none r0 (baseline); tomecis r8-r16, keep0.7, keep0.9 (11); tome r8-r16, keep0.7, "
        "keep0.9 (11); pitome r8-r16, keep0.7, keep0.9 (11); tofu r8-r16, keep0.7, keep0.9 (11); "
        "evit keep0.7, keep0.9 (2)"
    )


def test_keep_one_is_the_baseline_and_a_flag_a_method_does_not_take_is_skipped_once():
    plans = plan_methods(["evit", "tome", "none"], [0, 8], [1.0, 0.5])
    assert [(p.method, p.amounts) for p in plans] == [
        ("evit", ((None, 0.5),)),
        ("tome", ((8, None), (None, 0.5))),
        ("none", ()),
    ]
    assert [p.skip_note() for p in plans] == ["evit: --r skipped (evit takes --keep only)", "", ""]
    grid = build_grid(["m"], [0, 8], ["evit", "tome"], dataset="f", keep_values=[1.0, 0.5])
    assert keys(grid) == [
        ("m", "none", 0, None),
        ("m", "evit", None, 0.5),
        ("m", "tome", 8, None),
        ("m", "tome", None, 0.5),
    ]


@pytest.mark.parametrize(
    "methods, r_values, keep_values, message",
    [
        (["evit"], [8], [], "--method evit takes --keep, and none was given: add --keep"),
        (["tomecis", "evit"], [8, 13], [], "--method evit takes --keep"),
        (["tome"], [], [], "--method tome takes --r or --keep, and none was given"),
    ],
)
def test_a_method_given_no_amount_it_takes_is_an_error_naming_it_and_its_flags(
    methods, r_values, keep_values, message
):
    with pytest.raises(ValueError, match=message):
        plan_methods(methods, r_values, keep_values)
    with pytest.raises(ValueError, match=message):
        build_grid(["m"], r_values, methods, dataset="f", keep_values=keep_values)


def test_file_stems_keep_the_r_points_names_and_write_keep_points_and_the_baseline():
    point = GridPoint(
        "deit_tiny_patch16_224",
        13,
        method="tome",
        amp="fp16",
        batch_size=256,
        weights="ckpt_0123456789ab",
        device="cuda",
        dataset="f1",
    )
    assert point.file_stem() == "deit_tiny-tome-r13-fp16-bs256-ckpt_0123456789ab-cuda-f1"
    keep = GridPoint("deit_tiny_patch16_224", None, method="evit", keep=0.7, dataset="f1")
    assert keep.file_stem() == "deit_tiny-evit-keep0.7-none-bs128-pretrained-cpu-f1"
    assert keep.label == "deit_tiny evit keep0.7"
    baseline = build_grid(["deit_tiny_patch16_224"], [8], dataset="f1")[0]
    assert baseline.file_stem() == "deit_tiny-none-r0-none-bs128-pretrained-cpu-f1"


def test_methods_and_models_are_parsed_in_order_without_duplicates():
    assert parse_methods("tome, evit,tome") == ["tome", "evit"]
    assert parse_models("deit_small,deit_tiny,deit_small") == [
        "deit_small_patch16_224",
        "deit_tiny_patch16_224",
    ]
    with pytest.raises(ValueError, match="unknown method 'evitt'"):
        parse_methods("tomecis,evitt")
    with pytest.raises(ValueError, match="unknown method 'evitt'; choose from none, tomecis"):
        build_grid(["a_model"], [0], ["tomecis", "evitt"], dataset="f1")


def test_identity_is_one_list_of_columns_that_every_results_file_carries():
    from orchestrator.grid import IDENTITY, SETTING_COLUMNS
    from orchestrator.results import FAILURE_SCHEMA, POINT_SCHEMA, PREDICTION_SCHEMA

    point = GridPoint("deit_tiny_patch16_224", 8, method="tome", batch_size=64, device="cuda", dataset="f1")
    assert point.identity() == {
        "model": "deit_tiny_patch16_224",
        "method": "tome",
        "r": 8,
        "keep": None,
        "amp": "none",
        "infer_batch_size": 64,
        "weights": "pretrained",
        "device": "cuda",
        "dataset": "f1",
        "method_source": "builtin",
    }
    assert point.identity("NVIDIA H200")["device"] == "NVIDIA H200"  # the files hold the device's name
    assert tuple(point.identity()) == IDENTITY
    assert PREDICTION_SCHEMA.names[-len(IDENTITY) :] == list(IDENTITY)
    assert FAILURE_SCHEMA.names == ["shard", "key", "error", *IDENTITY]
    assert set(IDENTITY) <= set(POINT_SCHEMA.names)
    assert str(POINT_SCHEMA.field("keep").type) == "double" and str(POINT_SCHEMA.field("r").type) == "int32"
    assert set(SETTING_COLUMNS) == {"dataset", "amp", "infer_batch_size", "device", "weights"}
    with pytest.raises(TypeError):
        GridPoint("deit_tiny_patch16_224", 8)  # a point without its dataset is no point
