"""tomecis.benchmark: FLOP counting, token counts, the table and the CLI."""

import re

import pytest
import timm
import torch
from conftest import tiny_vit

import tomecis
from tomecis import benchmark as bm
from tomecis import names

CPU = torch.device("cpu")


def test_flop_count_matches_timm_published_deit_small():
    model = timm.create_model("deit_small_patch16_224").eval()
    gflops = bm.count_gflops(model, CPU)
    assert abs(gflops - 2 * 4.6) / (2 * 4.6) < 0.01  # timm: 4.6 GMACs; the CPU attention kernel is counted
    patched = tomecis.patch(model, r=0)
    assert bm.count_gflops(patched, CPU) == gflops


def test_flops_and_tokens_fall_with_r():
    model = tomecis.patch(timm.create_model("deit_tiny_patch16_224").eval(), r=0)
    previous = None
    for r in (0, 8, 16):
        model.r = r
        gflops, tokens = bm.count_gflops(model, CPU), bm.tokens_left(model, CPU)
        if previous is not None:
            assert gflops < previous[0] and tokens < previous[1]
        previous = (gflops, tokens)
    assert previous[1] == 11  # 197 tokens, 16 per block, the last block clamped


def test_throughput_is_positive_and_amp_is_accepted():
    model = tiny_vit()
    assert bm.measure_throughput(model, 4, CPU, amp="bf16", warmup=1, runs=2) > 0


def test_run_benchmark_rows_and_table():
    cfg = bm.BenchmarkConfig(
        model="deit_tiny",
        r_values=[0, 8],
        keep_values=[0.9],
        methods=["tomecis", "evit"],
        batch_size=2,
        device="cpu",
        warmup=1,
        runs=2,
        explicit=True,
    )
    rows = bm.run_benchmark(
        cfg, model=tiny_vit(img_size=224, patch_size=16, depth=12, num_heads=3, embed_dim=48)
    )
    assert [(row.method, row.r, row.keep) for row in rows] == [
        ("tomecis", 0, None),
        ("tomecis", 8, None),
        ("tomecis", None, 0.9),
        ("evit", None, 0.9),
    ]
    assert [row.tokens_out for row in rows] == [197, 197 - 8 * 12, 59, 148]
    assert all(row.img_per_s > 0 and row.explicit_img_per_s > 0 for row in rows)
    table = bm.format_table(rows)
    head = "| method | amount | img/s | speed-up | GFLOPs | FLOP ratio | speed-up / FLOP ratio | tokens left | aten ops | CUDA graphs |"
    assert head in table
    assert all(row.aten_ops > 0 and not row.cuda_graphs for row in rows)
    assert rows[1].aten_ops > rows[0].aten_ops  # merging blocks dispatch more than timm's blocks
    assert [
        tuple(cell.strip() for cell in line.split("|")[1:3])
        for line in table.splitlines()
        if line.startswith("| ") and "img/s" not in line
    ] == [("tomecis", "r0"), ("tomecis", "r8"), ("tomecis", "keep0.9"), ("evit", "keep0.9")]
    assert all(row.unpatched_early > 0 and row.unpatched_late > 0 for row in rows)
    assert all(row.interval.rounds == 2 and not row.interval.has_interval for row in rows)  # too few rounds
    assert "no interval: 95% needs at least 6 --runs" in table
    assert rows[0].flop_ratio == pytest.approx(1.0) and rows[3].flop_ratio > 1.1  # r = 0 is timm's forward


def row(early: float, late: float, speed: float = 120.0) -> bm.BenchmarkRow:
    return bm.BenchmarkRow(
        model="m",
        r=8,
        method="tomecis",
        img_per_s=speed,
        unpatched_img_per_s=(early + late) / 2,
        unpatched_early=early,
        unpatched_late=late,
        gflops=1.0,
        tokens_out=101,
        batch_size=32,
        amp="none",
        device="cpu",
        unpatched_gflops=1.5,
    )


def test_table_shows_the_unpatched_timings_and_flags_drift():
    steady = bm.format_table([row(100.0, 102.0)])
    assert "unpatched timm: 101.0 img/s (early passes: 100.0, late passes: 102.0" in steady
    assert "| tomecis | r8 | 120.0 | 1.19x | 1.00 | 1.50x | 0.79 |" in steady and "warning" not in steady
    drifted = bm.format_table([row(100.0, 80.0)])
    assert "warning: the unpatched model's early and late passes differ by 22%" in drifted


def test_settings_are_timed_in_turns():
    """Pass i of every setting runs before pass i + 1 of any, after each setting's warm-up."""
    calls = []

    def setting(name):
        model = tiny_vit()
        model.register_forward_hook(lambda *_: calls.append(name))
        return lambda: model

    timings = bm.time_in_turns([setting("a"), setting("b")], 2, CPU, warmup=2, runs=3, cuda_graphs=True)
    times = timings.seconds
    assert [len(t) for t in times] == [3, 3] and all(s > 0 for t in times for s in t)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert timings.cuda_graphs == [False, False] and timings.graph_errors == [None, None]  # no CUDA here


def test_cli_prints_the_table(capsys):
    assert (
        bm.main(
            [
                "--model",
                "deit_tiny",
                "--r",
                "0,16",
                "--batch-size",
                "2",
                "--device",
                "cpu",
                "--runs",
                "6",
                "--warmup",
                "0",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "deit_tiny_patch16_224, batch 2" in out
    assert "| tomecis | r16 |" in out and "| 11 |" in out
    assert re.search(
        r"\| tomecis \| r16 \| [\d.]+ \| [\d.]+x \[[\d.]+, [\d.]+\] \|", out
    )  # 1.52x [1.49, 1.55]
    assert (
        "median of 6 per-round paired ratios with its order-statistics interval (distribution-free, covers 96.9%)"
        in out
    )


def test_cli_rejects_bad_arguments(capsys):
    for argv, message in (
        (["--r", "8-"], "--r: cannot read r item"),
        (["--r", ","], "--r: r values are empty"),
        (["--model", "deit_tinny"], "did you mean"),
        (["--method", "evit", "--r", "8"], "--method: method 'evit' takes --keep, and none was given"),
        (["--method", "dtc"], "--method: unknown method 'dtc'"),
        (["--keep", "1.5"], "--keep: keep ratio '1.5' must lie in (0, 1]"),
    ):
        with pytest.raises(SystemExit):
            bm.main(argv)
        assert message in capsys.readouterr().err


# ToMe's counts (DeiT-S, 2 images, fp32, r = 13) before the lean merge were 1,227 (tomecis) and 979 (tome);
# issue #19's ceilings for those two. Issue #25: every method at r = 13 (where it takes r) and at keep 0.9
# stays at or under 900. A regression in what a reducing block dispatches fails here, not on a GPU.
# Issue #29: DCT's two transforms per block (FFT route, angles, reorderings: ~62 operators a block) put it at
# 971, DiffRate's sort, prune and merge at 777; ATC's clustering steps (18 operators each) 1,363 at keep 0.9;
# MCTF reduces in 11 blocks with three criteria, two matching steps and a merged [B, H, N, N]
# attention map (three two-step merges per block): 1,678 at r = 13 (timm: 227).
OP_CEILINGS = {
    "tomecis": 800,
    "tome": 700,
    "pitome": 900,
    "tofu": 900,
    "evit": 900,
    "dct": 1000,
    "diffrate": 850,
    "atc": 1400,
    "mctf": 1800,
}


@pytest.mark.parametrize("method", sorted(OP_CEILINGS))
def test_a_reducing_forward_dispatches_few_operators(method):
    model = timm.create_model("deit_small_patch16_224").eval()
    unpatched = bm.count_aten_ops(model, CPU)
    patched = tomecis.patch(model, r=0)
    takes = names.METHODS[method].takes
    amounts = ([{"keep": 0.9}] if takes("keep") else []) + ([{"r": 13}] if takes("r") else [])
    for amount in amounts:
        tomecis.set_reduction(patched, method, **amount)
        count = bm.count_aten_ops(patched, CPU)
        assert count <= OP_CEILINGS[method], (
            f"{method} {amount}: {count} ATen ops (ceiling {OP_CEILINGS[method]})"
        )
    tomecis.set_reduction(patched, method, **({"keep": 1.0} if takes("keep") else {"r": 0}))
    assert bm.count_aten_ops(patched, CPU) == unpatched  # keep 1 / r 0 is timm's own code


def test_atc_default_amount_dispatches_under_its_ceiling():
    """ATC's complete linkage joins one pair per step (18 operators, tests/tomecis/test_linkage.py), over
    ``N - 1 - K`` steps per reducing block: 54 steps at keep 0.9 (196 -> 176 -> 158 -> 142), 129 at its
    default keep 0.7 (196 -> 137 -> 96 -> 67): 1,363 and 2,712 operators per forward (DeiT-S, batch 2)."""
    patched = tomecis.patch(timm.create_model("deit_small_patch16_224").eval(), method="atc", keep=0.7)
    count = bm.count_aten_ops(patched, CPU)
    assert count <= 2750, f"atc keep 0.7: {count} ATen ops (ceiling 2750)"


def test_amounts_of_the_methods_and_the_pairs_skipped():
    amounts = bm.amounts_of(["tomecis", "evit", "none"], [0, 13], [0.9])
    assert amounts == [
        ("tomecis", 0, None),
        ("tomecis", 13, None),
        ("tomecis", None, 0.9),
        ("evit", None, 0.9),
        ("none", 0, None),
    ]
    assert bm.skipped_pairs(["tomecis", "evit"], [13], [0.9]) == [
        "evit takes --keep: skipping its --r values"
    ]
    with pytest.raises(ValueError, match="method 'evit' takes --keep, and none was given"):
        bm.amounts_of(["evit"], [13], [])


def test_cli_no_cuda_graphs_flag_reaches_the_config():
    assert bm.config_from_args([]).cuda_graphs is True
    assert bm.config_from_args(["--no-cuda-graphs"]).cuda_graphs is False


def test_ffts_are_counted_as_5_n_log2_n_per_transform():
    """Issue #29: the dct method's FFTs count in its GFLOPs (about 0.65% of DeiT-S at keep 0.9)."""

    class Spectrum(torch.nn.Module):
        def forward(self, x):  # [1, 3, 8, 16] -> real FFTs of length 16 along the last axis, then an inverse
            return torch.fft.ifft(torch.fft.fft(x.mean(dim=1), dim=-1), dim=-1).real

    model = Spectrum()
    model.pretrained_cfg = {"input_size": (3, 8, 16)}  # what input_shape reads
    flops = bm.count_gflops(model, CPU) * 1e9
    assert flops == 2 * 5 * 8 * 16 * 4  # two transforms of 8 rows of length 16 (log2 16 = 4)


def test_default_amounts_put_every_method_at_its_declared_amount_beside_the_baseline(capsys):
    cfg = bm.config_from_args(["--method", "tomecis,evit,mctf,dct", "--default-amounts"])
    assert cfg.methods == ["none", "tomecis", "evit", "mctf", "dct"] and cfg.default_amounts
    assert bm.amounts_of(cfg.methods, cfg.r_values, cfg.keep_values, cfg.default_amounts) == [
        ("none", 0, None),
        ("tomecis", 13, None),
        ("evit", None, 0.7),
        ("mctf", 16, None),
        ("dct", None, 0.9),
    ]
    with pytest.raises(SystemExit):
        bm.config_from_args(["--default-amounts", "--r", "8"])
    assert "--default-amounts sets every method's amount" in capsys.readouterr().err
