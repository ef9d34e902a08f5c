"""``recsys stream`` and ``recsys checkpoints`` as a user runs them."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from recsys.bandits import DenseStats
from recsys.checkpoint import Checkpoint, CheckpointStore
from recsys.cli import main

pytestmark = pytest.mark.integration


def _checkpoints(tmp_path) -> str:
    store = CheckpointStore(tmp_path / "ckpt", keep=5)
    for seed in range(2):
        stats = DenseStats.empty(np.arange(4), 2)
        stats.learn(np.random.default_rng(seed).normal(size=(5, 2)), [0, 1, 2, 3, 0], [1.0] * 5)
        store.write(Checkpoint(stats={"shard-0": stats}, offsets={("t", 0): 10 + seed},
                               cluster_id="c1", partitions={"t": 1}))
    return str(tmp_path / "ckpt")


def test_checkpoints_list_show_and_restore(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    uri = _checkpoints(tmp_path)
    assert main(["checkpoints", "list", "--uri", uri]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == ["ckpt-000000000000", "ckpt-000000000001"]
    assert "cluster c1" in listed[0] and "1 partitions at 10 records" in listed[0]
    assert main(["checkpoints", "show", "--uri", uri]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["checkpoint_id"] == "ckpt-000000000001" and shown["offsets"] == {"t[0]": 11}
    assert main(["checkpoints", "restore", "ckpt-000000000000", "--uri", uri]) == 0
    assert "copied as ckpt-000000000002" in capsys.readouterr().out
    newest = CheckpointStore(uri).latest()
    assert newest is not None and newest.offsets == {("t", 0): 10}
    assert main(["checkpoints", "show", "ckpt-000000000099", "--uri", uri]) == 1
    assert "not a complete checkpoint" in capsys.readouterr().out
    assert main(["checkpoints", "list", "--uri", str(tmp_path / "none")]) == 0
    assert "no complete checkpoint" in capsys.readouterr().out


def test_stream_runs_shows_its_status_and_checkpoints_on_exit(tmp_path) -> None:
    """A real run: embedded broker, local Ray, the pipeline, a status line, a checkpoint."""
    result = subprocess.run(
        [sys.executable, "-m", "recsys.cli", "--data-dir", str(tmp_path / "state"), "stream",
         "--duration", "3", "--status-interval", "0.5", "--metrics-port", "0",
         "--set", "stream.n_items=200"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"events/s \| lag +0 \| checkpoint", result.stdout)
    assert "resuming from the beginning" in result.stdout
    assert re.search(r"metrics http://127\.0\.0\.1:\d+/metrics", result.stdout)
    where = re.search(r"checkpoints (\S+)", result.stdout)
    assert where is not None
    assert CheckpointStore(where.group(1)).list() == ["ckpt-000000000000"]


def test_stream_reports_a_graph_file_it_cannot_read(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "graph.npz"
    code = main(["stream", "--set", "stream.layout=graph", "--set", f"stream.graph_file={missing}"])
    assert code == 2
    assert "cannot build the statistics" in capsys.readouterr().err
