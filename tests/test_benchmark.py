"""tomecis.benchmark: FLOP counting, token counts, the table and the CLI."""
import timm
import torch

import tomecis
from tomecis import benchmark as bm
from conftest import tiny_vit

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
    cfg = bm.BenchmarkConfig(model="deit_tiny", r_values=[0, 8], batch_size=2, device="cpu", warmup=1, runs=2, explicit=True)
    rows = bm.run_benchmark(cfg, model=tiny_vit(img_size=224, patch_size=16, depth=12, num_heads=3, embed_dim=48))
    assert [row.r for row in rows] == [0, 8]
    assert rows[0].tokens_out == 197 and rows[1].tokens_out == 197 - 8 * 12
    assert all(row.img_per_s > 0 and row.explicit_img_per_s > 0 for row in rows)
    table = bm.format_table(rows)
    assert "| r | img/s | speed-up | GFLOPs | tokens left |" in table
    assert table.count("\n") == 4


def test_cli_prints_the_table(capsys):
    assert bm.main(["--model", "deit_tiny", "--r", "0,16", "--batch-size", "2", "--device", "cpu", "--runs", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "deit_tiny_patch16_224 (tomecis)" in out
    assert "| 16 |" in out and "| 11 |" in out


def test_cli_rejects_bad_arguments(capsys):
    import pytest

    for argv, message in ((["--r", "8-"], "cannot read r item"), (["--model", "deit_tinny"], "did you mean")):
        with pytest.raises(SystemExit):
            bm.main(argv)
        assert message in capsys.readouterr().err
