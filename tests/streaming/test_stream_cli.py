"""``recsys stream`` and ``recsys checkpoints`` as a user runs them; what can be checked before
Kafka and Ray start is reported in one line (exit status 2) without starting them."""

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
    assert main(["checkpoints", "list", "--uri", str(tmp_path / "none")]) == 0
    assert "no complete checkpoint" in capsys.readouterr().out


def test_checkpoints_show_of_a_missing_id_says_which_ids_there_are(tmp_path, capsys) -> None:
    uri = _checkpoints(tmp_path)
    assert main(["checkpoints", "show", "nope", "--uri", uri]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"recsys checkpoints: no checkpoint 'nope' in {uri}; it holds "
                            "ckpt-000000000000 .. ckpt-000000000001 (`recsys checkpoints list`), "
                            "or pass --uri\n")
    empty = str(tmp_path / "none")
    assert main(["checkpoints", "show", "nope", "--uri", empty]) == 2
    assert capsys.readouterr().err == (f"recsys checkpoints: no checkpoint 'nope' in {empty}; it "
                                       "holds none (`recsys stream` writes them), or pass --uri\n")
    assert main(["checkpoints", "restore", "--uri", empty]) == 1
    assert capsys.readouterr().err.startswith(
        f"recsys checkpoints: no complete checkpoint in {empty}; `recsys stream` writes them")


@pytest.mark.integration
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


@pytest.mark.usefixtures("services_never_started")
def test_stream_reports_a_graph_file_it_cannot_read(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "graph.npz"
    code = main(["stream", "--set", "stream.layout=graph", "--set", f"stream.graph_file={missing}"])
    assert code == 2
    assert capsys.readouterr().err.startswith("recsys stream: cannot build the statistics: ")


class _Pipeline:
    """What the status line reads of a pipeline, with a reader being replaced."""

    checkpoint_age_s = 12.0
    recoveries = 2
    registrar = None

    def lag(self) -> int:
        from streaming.supervisor import ActorsFailed

        raise ActorsFailed(["learner-0"], "missed the deadline", method="positions")

    def health(self) -> dict:
        return {"state": "recovering", "recoveries": 2, "failed_recoveries": 1,
                "deadline_kills": 1, "stuck_readers": 0, "kafka_outage_s": 0.0,
                "kafka_outage_budget_s": 600.0}


def test_the_status_line_shows_the_supervisor_and_survives_a_reader_being_replaced() -> None:
    import time

    from streaming.stream_cli import _status

    line = _status(_Pipeline(), 1234.0, time.monotonic())
    assert "1,234 events/s | lag         ? | checkpoint 12s ago | recoveries 2" in line
    assert line.endswith("| RECOVERING · failed recoveries 1 · deadline kills 1")
