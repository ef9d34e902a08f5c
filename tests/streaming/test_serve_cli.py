"""``recsys serve`` as a user runs it: embedded Kafka, local Ray, the pipeline and the app; it
prints where it serves, answers requests, and stops cleanly after ``--duration``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import requests

from recsys.cli import main
from streaming.broker import free_port


def test_serve_answers_requests_and_stops_after_its_duration(tmp_path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RECSYS_"))}
    server = subprocess.Popen(
        [sys.executable, "-m", "recsys.cli", "--data-dir", str(tmp_path / "state"),
         "--set", "stream.n_items=50", "--set", "stream.dim=4", "--set", f"serve.port={port}",
         "serve", "--duration", "25", "--no-lake"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.communicate()
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or no replica behind it
                pass
            assert time.monotonic() < deadline, "recsys serve never became healthy"
            time.sleep(0.5)
        served = requests.post(f"{url}/recommend", timeout=10, json={
            "user_id": "u1", "context": {"dense": [0.1, 0.2, 0.3, 0.4]}, "k": 3}).json()
        assert len(served["items"]) == 3 and served["policy"] in ("diag_lin_ts", "uniform")
        bad = requests.post(f"{url}/recommend", timeout=10, json={"user_id": "u1", "k": 3})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "context"]
        out, err = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0, out + err
    assert re.search(rf"recsys serve: {re.escape(url)} +\(docs {re.escape(url)}/docs", out)


def test_serve_reports_a_graph_file_it_cannot_read(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "graph.npz"
    code = main(["serve", "--set", "stream.layout=graph", "--set", f"stream.graph_file={missing}"])
    assert code == 2
    assert "cannot build the statistics" in capsys.readouterr().err
