"""The sweep on timm's WebDataset layout: read in place (local folder, and over a stand-in Hub as the default data
when HF_TOKEN is set), with n_images exactly the _info.json counts. Local Ray, 2 CPUs, random-weight DeiT-Tiny."""

from __future__ import annotations

import pandas as pd
import pytest
import ray
from shards_testing import serve_hub, tiny_dataset, write_timm_wds

from orchestrator import sweep
from shards.spec import resolve_data

pytestmark = [pytest.mark.slow, pytest.mark.ray]

MODEL = "deit_tiny_patch16_224"
REPO = "timm/imagenet-1k-wds"
TOKEN = "hf_standin_token_for_tests"
N_IMAGES = 14


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """14 tiny images as timm's layout (shards of 5, 5, 4) on a stand-in Hub that wants TOKEN; HF_ENDPOINT and
    HF_TOKEN are set before Ray starts, so its workers (the sweep's actors) inherit them."""
    root = tmp_path_factory.mktemp("timm-sweep")
    write_timm_wds(root / "wds", tiny_dataset(n_images=N_IMAGES, n_classes=4), shard_size=5)
    with pytest.MonkeyPatch.context() as env, serve_hub({REPO: root / "wds"}, token=TOKEN) as stand_in:
        env.setenv("HF_ENDPOINT", stand_in.endpoint)
        env.setenv("HF_TOKEN", TOKEN)
        env.delenv("TOMECIS_DATA", raising=False)
        ray.init(address="local", num_cpus=2, include_dashboard=False)
        try:
            yield root / "wds", stand_in
        finally:
            ray.shutdown()


def config(out, **overrides) -> sweep.SweepConfig:
    base = dict(
        models=[MODEL],
        r_values=[0, 8],
        data=None,
        out=str(out),
        batch_size=4,
        random_weights=True,
        num_actors=2,
        cpus_per_actor=1,
        bench=False,
        progress=False,
    )
    base.update(overrides)
    return sweep.SweepConfig(**base)


def test_sweep_with_no_data_streams_timm_layout_from_the_hub_with_exact_counts(hub, tmp_path, capsys):
    folder, stand_in = hub
    summary = sweep.run_sweep(config(tmp_path / "out"))
    assert len(summary.written) == 2
    points = pd.read_parquet(tmp_path / "out" / "points")
    assert points["n_images"].tolist() == [N_IMAGES] * 2 and (points["n_failed"] == 0).all()
    assert set(points["dataset"]) == {resolve_data(folder).fingerprint}  # the _info.json's, wherever it lies
    predictions = pd.read_parquet(tmp_path / "out" / "predictions")
    assert sorted(predictions[predictions["r"] == 0]["key"]) == [
        f"ILSVRC2012_val_{i:08d}" for i in range(1, N_IMAGES + 1)
    ]
    first_line = capsys.readouterr().err.splitlines()[0]
    assert first_line.startswith(
        f"data: no --data and no $TOMECIS_DATA, $HF_TOKEN is set: streaming {N_IMAGES} images"
    )
    shard_requests = [request for request in stand_in.requests if request.path.endswith(".tar")]
    assert len(shard_requests) >= 3 and {request.authorization for request in shard_requests} == {
        f"Bearer {TOKEN}"
    }


def test_sweep_on_a_local_timm_folder_counts_exactly_also_with_limit(hub, tmp_path):
    folder, _ = hub
    sweep.run_sweep(config(tmp_path / "out", data=str(folder), r_values=[0], limit=6))
    points = pd.read_parquet(tmp_path / "out" / "points")
    assert points["n_images"].tolist() == [10]  # the first whole shards holding at least 6 images: 5 + 5
