"""shards.bench: the read-throughput script counts what it reads and rejects bad arguments."""

import pytest
from shards_testing import tiny_dataset, write_tiny_shards

from shards import bench


def test_bench_reads_every_image_once_per_worker_count(tmp_path, capsys):
    write_tiny_shards(tmp_path, tiny_dataset(n_images=12), shard_size=5)
    assert (
        bench.main([str(tmp_path / "shards"), "--workers", "0,2", "--batch-size", "4", "--passes", "1"]) == 0
    )
    out = capsys.readouterr().out
    rows = [
        line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and "workers" not in line
    ]
    assert [(int(r[0]), int(r[1]), int(r[2])) for r in rows] == [(0, 12, 0), (2, 12, 0)]
    assert all(float(r[4]) > 0 for r in rows)


def test_bench_errors_name_the_culprit(tmp_path, capsys):
    assert bench.main([str(tmp_path / "nowhere")]) == 1
    assert "nowhere" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main([str(tmp_path), "--workers", "0,x"])
    assert "--workers" in capsys.readouterr().err
