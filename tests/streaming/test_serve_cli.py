"""``recsys serve`` as a user runs it: embedded Kafka, local Ray, the pipeline and the app; it
prints where it serves and where the stream's metrics are, answers requests, and stops cleanly and
quietly after ``--duration``. A taken port is one line before anything starts."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import pytest
import requests

from recsys.cli import main
from streaming.broker import free_port

NOISE = ("failed to shut down", "Token authentication is enabled",
         "Connecting to existing Serve app", "Traceback")


@pytest.mark.integration
def test_serve_answers_requests_exposes_stream_metrics_and_stops_quietly(tmp_path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RECSYS_"))}
    # --duration counts from the banner, printed once /health answers: 12 s leave the few
    # requests below ample time on a loaded machine (the whole of it is waited out every run)
    server = subprocess.Popen(
        [sys.executable, "-m", "recsys.cli", "--data-dir", str(tmp_path / "state"),
         "--set", "stream.n_items=50", "--set", "stream.dim=4", "serve", "--port", str(port),
         "--duration", "12", "--no-lake"],
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
        assert server.stdout is not None
        banner = server.stdout.readline() + server.stdout.readline()
        served = requests.post(f"{url}/recommend", timeout=10, json={
            "user_id": "u1", "context": {"dense": [0.1, 0.2, 0.3, 0.4]}, "k": 3}).json()
        assert len(served["items"]) == 3 and served["policy"] in ("diag_lin_ts", "uniform")
        bad = requests.post(f"{url}/recommend", timeout=10, json={"user_id": "u1", "k": 3})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "context"]
        stream_metrics = re.search(r"stream metrics (http://127\.0\.0\.1:\d+/metrics)", banner)
        assert stream_metrics, banner
        exposition = requests.get(stream_metrics.group(1), timeout=10).text
        assert "recsys_stream_consumer_lag_records" in exposition
        out, err = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0, banner + out + err
    assert re.search(rf"recsys serve: {re.escape(url)} +\(docs {re.escape(url)}/docs", banner)
    assert "\r" not in out  # not a terminal: plain status lines
    assert not [line for line in err.splitlines() if any(n in line for n in NOISE)], err


@pytest.mark.usefixtures("services_never_started")
def test_serve_says_which_port_is_taken_before_starting_anything(capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and f"got {port}, already in use" in err and "--port" in err


def test_serve_reports_a_graph_file_it_cannot_read(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "graph.npz"
    code = main(["serve", "--port", str(free_port()), "--set", "stream.layout=graph",
                 "--set", f"stream.graph_file={missing}"])
    assert code == 2
    assert "cannot build the statistics" in capsys.readouterr().err


@pytest.mark.usefixtures("services_never_started")
def test_serve_reports_a_user_feature_table_it_cannot_read_before_starting(tmp_path, capsys
                                                                            ) -> None:
    missing = tmp_path / "users.parquet"
    code = main(["--set", f"serve.user_features_uri={missing}", "serve", "--port",
                 str(free_port())])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith("recsys serve: serve.user_features_uri: expected a Parquet table")
    assert str(missing) in err and "write_user_features" in err
