"""The CUDA path: the patched model on a GPU against the CPU, autocast, SDPA vs explicit attention, and a
GPU-actor sweep against a CPU-actor sweep. Skipped, with the reason, where torch sees no CUDA device;
``python -m orchestrator.gpucheck`` runs this file on a GPU machine and puts its outcome in the report.

Tolerances: fp32 with TF32 switched off (matmul and cuDNN) must match the CPU's logits to 1e-3 absolute
on at least 99% of the images (a merge decision can flip on a near-tie between two similarities, which
then moves that image's logits further), with top-1 equal on at least 99% of them; r = 0 must equal
unpatched timm exactly (same kernels, same order); SDPA and the explicit attention matrix agree to 1e-4.
"""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import timm
import torch
from conftest import DEIT_TINY_WEIGHTS, MODEL_FACTORIES, SHARED_ASSETS, randomize, tiny_vit

import tomecis

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none here)"
)

R_VALUES = [0, 8, 13, 16]
CUDA = torch.device("cuda")


@pytest.fixture
def strict_fp32():
    """fp32 really in fp32: TF32 off for matmuls and convolutions while the test runs."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def model_and_images(sample_photos_or_none):
    """Real DeiT-Tiny weights on the 500 photos when ../shared/assets has them, else a random-weight
    DeiT-Tiny (peaked, so that top-1 is not a coin toss) on random images."""
    if sample_photos_or_none is not None and DEIT_TINY_WEIGHTS.exists():
        images, _ = sample_photos_or_none
        return tomecis.create_model("deit_tiny", checkpoint=DEIT_TINY_WEIGHTS), images[:256]
    torch.manual_seed(0)
    return MODEL_FACTORIES["deit_tiny"](), torch.randn(64, 3, 224, 224)


@pytest.fixture
def photos(request):
    if (SHARED_ASSETS / "imagenet-sample").exists():
        return request.getfixturevalue("sample_photos")
    return None


def logits_on(model, images, device, batch=64):
    with torch.inference_mode():
        return torch.cat(
            [model(images[i : i + batch].to(device)).float().cpu() for i in range(0, len(images), batch)]
        )


# every method at one amount of each kind it takes (issue #25), beside ToMeCIS at the paper's r
METHOD_AMOUNTS = [("tomecis", {"r": r}) for r in R_VALUES] + [
    ("tome", {"r": 13}),
    ("tomecis", {"keep": 0.9}),
    ("pitome", {"keep": 0.9}),
    ("pitome", {"r": 13}),
    ("tofu", {"keep": 0.9}),
    ("tofu", {"r": 13}),
    ("evit", {"keep": 0.7}),
    ("atc", {"keep": 0.7}),
    ("dct", {"keep": 0.9}),
    ("diffrate", {"keep": 0.9}),
    ("mctf", {"r": 8}),
    ("mctf", {"r": 16}),
]


@pytest.mark.parametrize("method, amount", METHOD_AMOUNTS, ids=lambda v: str(v))
def test_cuda_fp32_matches_the_cpu(photos, strict_fp32, method, amount):
    base, images = model_and_images(photos)
    cpu_model = tomecis.set_reduction(tomecis.patch(copy.deepcopy(base)), method, **amount)
    gpu_model = tomecis.set_reduction(tomecis.patch(copy.deepcopy(base)), method, **amount).to(CUDA)
    on_cpu, on_gpu = logits_on(cpu_model, images, "cpu"), logits_on(gpu_model, images, CUDA)
    close = ((on_cpu - on_gpu).abs().amax(dim=-1) <= 1e-3).float().mean().item()
    same_top1 = (on_cpu.argmax(-1) == on_gpu.argmax(-1)).float().mean().item()
    assert close >= 0.99, f"{method} {amount}: only {close:.1%} of the images within 1e-3"
    assert same_top1 >= 0.99, f"{method} {amount}: top-1 agrees on {same_top1:.1%}"
    if amount == {"r": 0}:
        torch.testing.assert_close(on_gpu, on_cpu, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_autocast_on_cuda_is_finite_at_r16_even_with_tiny_value_norms(dtype):
    model = tomecis.patch(MODEL_FACTORIES["deit_small"](), r=16).to(CUDA)
    x = torch.randn(8, 3, 224, 224, device=CUDA)
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
        assert torch.isfinite(model(x)).all()
    tiny = tomecis.patch(tiny_vit(), r=16).to(CUDA)
    with torch.no_grad():
        for block in tiny.blocks:
            c = block.attn.qkv.out_features // 3
            block.attn.qkv.weight[2 * c :] *= 1e-30
            block.attn.qkv.bias[2 * c :] *= 1e-30
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
        assert torch.isfinite(tiny(torch.randn(8, 3, 64, 64, device=CUDA))).all()


@pytest.mark.parametrize("amp", [None, torch.float16])
def test_r0_equals_unpatched_timm_on_cuda(amp):
    base = MODEL_FACTORIES["deit_small"]().to(CUDA)
    patched = tomecis.patch(copy.deepcopy(base), r=0)
    x = torch.randn(16, 3, 224, 224, device=CUDA)
    with torch.inference_mode(), torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
        assert torch.equal(base(x), patched(x))


@pytest.mark.parametrize("mode", ["tomecis", "tome"])
@pytest.mark.parametrize("r", [8, 13, 16])
def test_sdpa_equals_explicit_attention_on_cuda(strict_fp32, mode, r):
    base = MODEL_FACTORIES["deit_tiny_distilled"]().to(CUDA)
    x = torch.randn(8, 3, 224, 224, device=CUDA)
    fused = tomecis.patch(copy.deepcopy(base), r=r, mode=mode)
    explicit = tomecis.patch(copy.deepcopy(base), r=r, mode=mode, attention="explicit")
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), explicit(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_gpu_actor_sweep_equals_a_cpu_actor_sweep(tmp_path):
    """The same tiny shards and checkpoint, once on GPU actors and once on CPU actors: the same images,
    the same top-1 (up to near-ties; TF32 is on in the actors as in any user's run), the same counts."""
    ray = pytest.importorskip(
        "ray", reason="needs Ray for GPU actors (not installed here; gpucheck runs the evaluator in-process)"
    )

    from shards_testing import tiny_dataset, write_tiny_shards

    from orchestrator import sweep

    write_tiny_shards(tmp_path, tiny_dataset(n_images=40, n_classes=4), shard_size=8)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save(
        {"model": randomize(timm.create_model("deit_tiny_patch16_224"), 1).state_dict()},
        ckpt / "deit_tiny_patch16_224.pth",
    )
    frames = {}
    for device in ("cuda", "cpu"):
        ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False)
        try:
            sweep.run_sweep(
                sweep.SweepConfig(
                    models=["deit_tiny_patch16_224"],
                    r_values=[0, 8, 16],
                    keep_values=[0.9],
                    methods=["tomecis", "tome", "evit"],
                    data=str(tmp_path / "shards"),
                    out=str(tmp_path / device),
                    batch_size=16,
                    checkpoint_dir=str(ckpt),
                    device=device,
                    num_actors=1,
                    cpus_per_actor=2 if device == "cpu" else 1,
                    bench=False,
                    progress=False,
                )
            )
        finally:
            ray.shutdown()
        frames[device] = (
            pd.read_parquet(tmp_path / device / "predictions")
            .sort_values(["method", "r", "keep", "key"])
            .reset_index(drop=True)
        )
    gpu, cpu = frames["cuda"], frames["cpu"]
    assert (
        len(gpu)
        == len(cpu)
        == 40 * 8  # the baseline, tomecis and tome at r 8, 16 and keep 0.9, evit keep 0.9
        and (gpu["key"] == cpu["key"]).all()
        and (gpu["label"] == cpu["label"]).all()
    )
    assert (gpu["pred"] == cpu["pred"]).mean() >= 0.97
    assert set(gpu["device"]) != set(cpu["device"])


# --------------------------------------------------------------------------- CUDA-graph replay (issue #19)
#
# Tolerances: a replay runs the kernels the capture recorded, which are the eager forward's kernels, so
# logits agree to 1e-4 (fp32, TF32 off) or 1e-2 (fp16 autocast) on at least 99% of the images and top-1
# on at least 99% (scatter_add's atomics sum in any order, which can flip a merge decision on a near-tie).

GRAPH_MODELS = ["deit_tiny", "deit_small"]


def graphed_and_eager(model, x, amp):
    from tomecis.device import autocast
    from tomecis.graphs import GraphSet

    graphs = GraphSet(x, amp)
    graphs.load(x)
    with torch.inference_mode():
        graphs.capture("forward", lambda inp: model(inp).float())
        model.merge_state.reset()
        replayed = graphs.replay("forward").clone()
        with autocast(CUDA, amp):
            eager = model(x).float()
    return replayed, eager


def headline_amounts(method):
    """ToMe and ToMeCIS at the paper's r values; the other methods at r 13 (MCTF also 16), keep 0.7 and 0.9, as taken."""
    if method in ("tomecis", "tome"):
        return [{"r": r} for r in R_VALUES] + [{"keep": 0.9}]
    takes = tomecis.METHODS[method].takes
    r = [{"r": 13}] + ([{"r": 16}] if method == "mctf" else []) if takes("r") else []
    return r + ([{"keep": 0.7}, {"keep": 0.9}] if takes("keep") else [])


@pytest.mark.parametrize("amp", ["none", "fp16"])
@pytest.mark.parametrize(
    "method", ["tomecis", "tome", "pitome", "tofu", "evit", "atc", "dct", "diffrate", "mctf"]
)
@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_graph_replay_equals_eager_on_the_headline_grid(strict_fp32, name, method, amp):
    base = MODEL_FACTORIES[name]().to(CUDA)
    x = torch.randn(32, 3, 224, 224, device=CUDA)
    atol = 1e-4 if amp == "none" else 1e-2
    for amount in headline_amounts(method):
        model = tomecis.set_reduction(tomecis.patch(copy.deepcopy(base)), method, **amount)
        replayed, eager = graphed_and_eager(model, x, amp)
        close = ((replayed - eager).abs().amax(dim=-1) <= atol).float().mean().item()
        same = (replayed.argmax(-1) == eager.argmax(-1)).float().mean().item()
        assert close >= 0.99 and same >= 0.99, (
            f"{name} {method} {amount} {amp}: {close:.1%} close, {same:.1%} top-1"
        )


@pytest.mark.parametrize("amp", ["none", "fp16"])
def test_a_short_last_batch_is_padded_and_equals_eager(strict_fp32, amp):
    """The PointRunner captured at 64 images runs a batch of 37: padded with zeros, rows dropped."""
    from orchestrator.evaluator import ForwardClock, PointRunner
    from orchestrator.work import Task
    from tomecis.device import autocast

    base = MODEL_FACTORIES["deit_tiny"]()
    models = {"deit_tiny_patch16_224": tomecis.patch(base, r=0).to(CUDA)}
    tasks = [Task("deit_tiny_patch16_224", "none", ((0, None),))]
    tasks += [Task("deit_tiny_patch16_224", m, ((13, None), (None, 0.9))) for m in ("tomecis", "pitome")]
    tasks += [Task("deit_tiny_patch16_224", "evit", ((None, 0.7),))]
    graphed = PointRunner(models, tasks, CUDA, amp, batch_size=64, cuda_graphs=True)
    eager = PointRunner(models, tasks, CUDA, amp, batch_size=64, cuda_graphs=False)
    assert all(graphed.graphed(k) for k in graphed.point_keys) and not graphed.graph_errors
    images = torch.randn(37, 3, 224, 224).pin_memory()
    clock = ForwardClock(CUDA)
    with torch.inference_mode(), autocast(CUDA, amp):
        top5_graphed, widths, _, done_graphed = graphed.queue(images, clock)
        top5_eager, _, _, done_eager = eager.queue(images, clock)
    done_graphed.synchronize(), done_eager.synchronize()
    assert top5_graphed.shape == (37, sum(widths)) == top5_eager.shape
    assert (top5_graphed[:, ::5] == top5_eager[:, ::5]).float().mean().item() >= 0.99  # top-1 per point


def test_fifty_points_capture_within_memory(capsys):
    """The paper grid of one actor: DeiT-Ti and DeiT-S x (the baseline + two methods x nine r), batch 256,
    fp16, one pool; then every other method at two keep ratios on top (issue #25)."""
    from orchestrator.evaluator import PointRunner
    from orchestrator.work import Task

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(CUDA)
    r_values = (8, 9, 10, 11, 12, 13, 14, 15, 16)
    models = {
        "deit_tiny_patch16_224": tomecis.patch(MODEL_FACTORIES["deit_tiny"](), r=0).to(CUDA),
        "deit_small_patch16_224": tomecis.patch(MODEL_FACTORIES["deit_small"](), r=0).to(CUDA),
    }
    tasks = [Task(name, "none", ((0, None),)) for name in models]
    tasks += [
        Task(name, m, tuple((r, None) for r in r_values)) for name in models for m in ("tomecis", "tome")
    ]
    tasks += [
        Task(name, m, ((None, 0.7), (None, 0.9))) for name in models for m in ("pitome", "tofu", "evit")
    ]
    runner = PointRunner(models, tasks, CUDA, "fp16", batch_size=256, cuda_graphs=True)
    peak = torch.cuda.max_memory_allocated(CUDA) / 2**30
    total = torch.cuda.get_device_properties(CUDA).total_memory / 2**30
    n = len(runner.point_keys)
    with capsys.disabled():
        print(f"\n{n} points captured at batch 256, fp16: peak {peak:.2f} GiB allocated of {total:.0f} GiB")
    assert n == 2 * (1 + 18 + 6) and all(runner.graphed(k) for k in runner.point_keys)
    assert peak < 0.5 * total
