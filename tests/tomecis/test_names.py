"""tomecis.names: the method table is the one place a method is declared, and it imports without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import REPO, tiny_vit

import tomecis
from tomecis import names


def test_every_method_of_the_table_runs_at_each_amount_it_takes_and_unknown_names_are_refused():
    model = tomecis.patch(tiny_vit(depth=4), r=8)
    x = torch.randn(2, 3, 64, 64)
    for name, method in names.METHODS.items():
        amounts = [{"r": 2}, {"keep": 0.7}] if method.amounts else [{}]
        for amount in amounts:
            if amount and not method.takes(next(iter(amount))):
                with pytest.raises(ValueError, match=f"method '{name}' takes"):
                    tomecis.set_reduction(model, name, **amount)
                continue
            tomecis.set_reduction(model, name, **amount)
            with torch.inference_mode():
                assert torch.isfinite(model(x)).all(), (name, amount)
            reduced = model.merge_state.tokens[-1] < 65  # 64 patches + the class token
            assert reduced == (name != names.UNREDUCED), (name, amount, model.merge_state.tokens)
    for name in names.REDUCING_METHODS:  # every declaration's functions import and are callable
        count, reduce, _ = names.method_spec(name).functions()
        assert callable(count) and callable(reduce), name
    for bad in ("dtc", None):
        with pytest.raises(ValueError, match="unknown method .*; choose from none, tomecis, tome, pitome"):
            names.method_spec(bad)
        with pytest.raises(ValueError, match="unknown method"):
            model.method = bad


def test_amounts_are_checked_with_the_method_and_its_flags_named():
    names.check_amount("evit", None, 0.7)
    names.check_amount("pitome", 8, None)
    names.check_amount("none", 0, None)
    for args, message in [
        (("evit", 13, None), "method 'evit' takes --keep, not --r"),
        (("tome", 8, 0.9), "exactly one amount"),
        (("tome", None, None), "exactly one amount"),
        (("tofu", None, 1.5), r"keep must lie in \(0, 1\]"),
        (("tofu", -1, None), "r must be an integer >= 0"),
        (("none", 8, None), "takes no amount"),
    ]:
        with pytest.raises(ValueError, match=message):
            names.check_amount(*args)
    assert names.amount_label(13, None) == "r13" and names.amount_label(None, 0.9) == "keep0.9"
    assert names.is_unreduced(0, None) and names.is_unreduced(None, 1.0) and not names.is_unreduced(None, 0.9)
    assert names.parse_keep_values("0.7, 0.9,0.7") == [0.7, 0.9]
    for bad in ("", "0", "1.2", "x"):
        with pytest.raises(ValueError, match="keep"):
            names.parse_keep_values(bad)


def test_a_model_refuses_a_forward_with_an_amount_its_method_does_not_take():
    model = tomecis.patch(tiny_vit(depth=4), r=4)
    model.method = "evit"  # the method alone: r stays 4, which EViT does not take
    with pytest.raises(ValueError, match="method 'evit' takes keep, but the model has r set"):
        model(torch.randn(1, 3, 64, 64))


def test_a_method_added_to_the_table_is_run_by_the_patch(monkeypatch):
    """What another merge costs: one entry in each table. Uniform weights (every merged token counts
    alike) differ from both ToMe (size) and ToMeCIS (score) and need no score."""
    uniform = names.Method(
        "uniform",
        ("r",),
        "plain mean",
        count="tomecis.methods.tome:count",
        reduce="tomecis.methods.tome:reduce",
        prop_attn="reducing",
        weight=lambda score, size: torch.ones_like(size),
    )
    monkeypatch.setitem(names.METHODS, "uniform", uniform)
    model = tomecis.patch(tiny_vit(), r=8, method="uniform")
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        logits = {
            method: model(x)
            for method in ("uniform", "tome", "tomecis")
            if not setattr(model, "method", method)
        }
    assert not torch.allclose(logits["uniform"], logits["tome"])
    assert not torch.allclose(logits["uniform"], logits["tomecis"])


def test_names_and_the_report_import_without_torch_timm_or_ray():
    code = (
        "import sys, tomecis.names, clipattern, orchestrator.report; "
        "print(sorted(m for m in ('torch', 'timm', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_tomecis_patch_stays_the_function_after_the_submodule_is_imported():
    code = "from tomecis.patch import MergeState; import tomecis; print(callable(tomecis.patch))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True", out.stderr
