"""orchestrator.matching on a tiny ViT: which methods are matched at which kind, and GFLOPs matching from
the token counts (the amount found gives the reference's GFLOPs within 2%, or is the nearest end)."""

from __future__ import annotations

import torch
from conftest import tiny_vit

import tomecis
from orchestrator.calibrate import TOLERANCE, MatchTarget
from orchestrator.grid import plan_methods
from orchestrator.matching import calibrate_model, methods_to_match


def test_every_other_reducing_method_is_matched_at_the_kind_it_is_swept_at():
    plans = plan_methods(
        ["none", "tomecis", "tome", "pitome"], [8], [], {"evit": [(None, 0.7)], "tofu": [(None, 0.9)]}
    )
    target = MatchTarget("tomecis", (13, None), "gflops")
    assert methods_to_match(plans, target) == [
        ("tome", "r"),
        ("pitome", "r"),
        ("evit", "keep"),
        ("tofu", "keep"),
    ]


def test_gflops_matching_finds_the_reference_s_token_counts():
    model = tomecis.patch(tiny_vit(), r=0)
    target = MatchTarget("tomecis", (4, None), "gflops")
    found = calibrate_model(
        model, "tiny", [("tome", "r"), ("tome", "keep"), ("evit", "keep")], target, torch.device("cpu")
    )
    tome_r, tome_keep, evit = found
    assert tome_r.amount == (4, None) and tome_r.reached  # tome merges as many tokens as tomecis at each r
    for calibration in found:
        assert calibration.matched_to == "tomecis:r4 by gflops"
        assert abs(calibration.gap) <= TOLERANCE or not calibration.reachable, calibration.line()
    for calibration in (tome_keep, evit):  # of the keeps giving the same token counts, the larger
        assert tokens(model, calibration.method, calibration.amount[1]) != tokens(
            model, calibration.method, round(calibration.amount[1] + 0.005, 6)
        )


def tokens(model, method: str, keep: float) -> list:
    """Per-block token counts of one forward at ``keep``."""
    tomecis.set_reduction(model, method, keep=keep)
    with torch.inference_mode():
        model(torch.randn(1, 3, 64, 64))
    return list(model.merge_state.tokens)


def test_calibration_searches_only_amounts_a_method_takes_and_that_reduce_something():
    """DiffRate refuses keep <= 0.5 (its check), and ATC below keep 1/P has no cluster to make at any stage
    (the unreduced model, which would break the bisection's order): on DeiT-Tiny's architecture both
    still reach ToMeCIS r13's GFLOPs within the tolerance."""
    import timm

    model = tomecis.patch(timm.create_model("deit_tiny_patch16_224").eval(), r=0)
    target = MatchTarget("tomecis", (13, None), "gflops")
    atc, diffrate = calibrate_model(
        model, "deit_tiny", [("atc", "keep"), ("diffrate", "keep")], target, torch.device("cpu")
    )
    for calibration in (atc, diffrate):
        assert calibration.reached and abs(calibration.gap) <= TOLERANCE, calibration.line()
    assert diffrate.amount[1] > 0.5 and 0.1 < atc.amount[1] < 0.9
