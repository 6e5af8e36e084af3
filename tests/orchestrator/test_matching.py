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
