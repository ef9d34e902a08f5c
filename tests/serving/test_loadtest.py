"""The load generator against a stub server (FastAPI + uvicorn on a free loopback port).

The stub stands in for the serving app: it sleeps ``sleep_ms`` from the body, answers 500 when
the body says ``fail``, and ``/broken/recommend`` always fails. Assertions are on counts and
orderings with wide margins, never on tight timings, so a busy 2-core machine cannot flake them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from recsys.config import load_settings
from recsys.serving.loadtest import (
    LoadtestResult,
    check_loopback,
    endpoint_urls,
    find_max_rate,
    recommend_bodies,
    register,
    run_loadtest,
    wait_for_health,
)
from streaming.broker import free_port


def _stub_app() -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"ready": True, "snapshot_id": "s1", "snapshot_age_ms": 1.0,
                "policies": ["stub"], "detail": "ok"}

    @app.post("/recommend")
    async def recommend(request: Request) -> JSONResponse:
        body = await request.json()
        await asyncio.sleep(body.get("sleep_ms", 0) / 1000)
        if body.get("fail"):
            return JSONResponse({"detail": "marked to fail"}, status_code=500)
        return JSONResponse({"items": [1, 2, 3], "user_id": body.get("user_id")})

    @app.post("/broken/recommend")
    async def broken() -> JSONResponse:
        return JSONResponse({"detail": "always fails"}, status_code=500)

    return app


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """Base URL of the stub, served from a background thread for the whole module."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(_stub_app(), log_level="warning", access_log=False, lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "stub server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        sock.close()




# -- the generator -------------------------------------------------------------------------------


def test_fixed_rate_counts_every_outcome_exactly(server: str) -> None:
    result = run_loadtest(f"{server}/recommend", rate=100, duration_s=2.0,
                          make_body=lambda i: {"user_id": f"u{i}", "fail": i % 10 == 0})
    assert result.requests == 200 and result.skipped == 0 and result.errors == {}
    assert result.count_class(2) == 180
    assert result.count_class(5) == 20
    assert result.status_counts == {200: 180, 500: 20}
    # on schedule: sends in order, spread over the window, achieved close to (never above) target
    assert np.all(np.diff(result.scheduled) > 0)
    assert 0.5 * 100 < result.achieved_rate <= 100 + 1e-9
    assert result.sent.min() >= 0 and result.sent.max() < 2.0 + 1.0
    assert np.all(result.service_latency > 0)


def test_warmup_requests_are_sent_but_not_measured(server: str) -> None:
    seen: list[int] = []
    result = run_loadtest(f"{server}/recommend", rate=50, duration_s=1.0, warmup_s=0.5,
                          make_body=lambda i: seen.append(i) or {"user_id": "u"})
    assert len(seen) == 75 and result.requests == 50
    assert result.scheduled.min() >= -1e-9


def test_intended_latency_counts_the_time_the_client_fell_behind(server: str) -> None:
    def body(i: int) -> dict[str, Any]:
        if i == 5:
            time.sleep(0.3)  # the client stalls: later sends go out late
        return {"user_id": "u", "sleep_ms": 30}

    result = run_loadtest(f"{server}/recommend", rate=50, duration_s=0.6, make_body=body)
    assert result.count_class(2) == 30
    assert np.all(result.intended_latency >= result.service_latency)
    assert np.all(result.service_latency >= 0.025)  # the server's sleep is inside service time
    lag = result.intended_latency - result.service_latency
    assert lag.max() >= 0.15  # the stall shows up in intended latency only
    assert result.percentiles("intended")["max"] >= result.percentiles("service")["max"]


def test_requests_beyond_max_in_flight_are_skipped_and_counted(server: str) -> None:
    result = run_loadtest(f"{server}/recommend", rate=100, duration_s=1.0, max_in_flight=1,
                          make_body=lambda i: {"user_id": "u", "sleep_ms": 100})
    assert result.skipped > 50
    assert result.requests + result.skipped == 100
    assert result.count_class(2) == result.requests
    assert result.problems()  # a run with skips did not keep up
    assert "skipped" in result.table()


def test_transport_errors_are_counted_by_type(server: str) -> None:
    refused = run_loadtest(f"http://127.0.0.1:{free_port()}/recommend", rate=20, duration_s=0.5,
                           make_body=lambda i: {"user_id": "u"}, timeout_s=2.0)
    assert refused.requests == 10 and refused.transport_errors == 10
    assert refused.count_class(2) == 0 and np.all(refused.status == 0)
    assert np.all(np.isnan(refused.service_latency))
    assert all(math.isnan(v) for v in refused.percentiles().values())

    slow = run_loadtest(f"{server}/recommend", rate=10, duration_s=0.5, timeout_s=0.2,
                        make_body=lambda i: {"user_id": "u", "sleep_ms": 1000})
    assert slow.errors == {"timeout": 5}


@pytest.mark.parametrize("url", [
    "http://example.com/recommend", "http://10.0.0.1:8000", "https://8.8.8.8/",
    "http://[::2]:80/", "http://localhost.example.com/", "ftp://127.0.0.1/", "http:///x",
])
def test_non_loopback_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"loopback|http|host"):
        check_loopback(url)
    with pytest.raises(ValueError):
        run_loadtest(url, rate=1, duration_s=1, make_body=lambda i: {})


@pytest.mark.parametrize("url", ["http://localhost:1/", "http://127.4.5.6:80/x",
                                 "http://[::1]:8000", "https://LOCALHOST/"])
def test_loopback_urls_pass(url: str) -> None:
    assert check_loopback(url) == url


def test_endpoint_urls() -> None:
    assert endpoint_urls("http://127.0.0.1:9") == ("http://127.0.0.1:9/recommend",
                                                   "http://127.0.0.1:9/health")
    assert endpoint_urls("http://[::1]:9/v2/recommend") == ("http://[::1]:9/v2/recommend",
                                                            "http://[::1]:9/health")


@pytest.mark.parametrize("kwargs", [{"rate": 0}, {"duration_s": -1}, {"max_in_flight": 0},
                                    {"timeout_s": math.nan}, {"rate": 1e9, "duration_s": 60}])
def test_bad_parameters_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        run_loadtest("http://127.0.0.1:1/", make_body=lambda i: {},
                     **({"rate": 10, "duration_s": 1.0} | kwargs))


def test_table_json_and_plot(server: str, tmp_path: Path) -> None:
    result = run_loadtest(f"{server}/recommend", rate=50, duration_s=1.0,
                          make_body=lambda i: {"user_id": "u", "fail": i == 3, "sleep_ms": 2})
    table = result.table()
    for word in ("target 50.0/s", "achieved", "2xx 49", "5xx 1", "skipped 0", "p99.9",
                 "service", "intended"):
        assert word in table
    summary = json.loads(json.dumps(result.to_dict(samples=True), allow_nan=False))
    assert summary["5xx"] == 1 and summary["requests"] == 50
    assert set(summary["intended_ms"]) == {"p50", "p90", "p99", "p99.9", "max"}
    assert len(summary["samples"]["status"]) == 50
    pct = result.percentiles()
    assert pct["p50"] <= pct["p90"] <= pct["p99"] <= pct["p99.9"] <= pct["max"]
    path = result.save_plot(tmp_path / "sub" / "lt.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_an_empty_result_still_renders(tmp_path: Path) -> None:
    empty = np.array([])
    result = LoadtestResult("http://127.0.0.1:1/recommend", 10.0, 1.0, 0.0, empty, empty, empty,
                            empty, np.array([], dtype=np.int32), skipped=10)
    assert "skipped 10" in result.table()
    json.dumps(result.to_dict(), allow_nan=False)
    assert result.save_plot(tmp_path / "empty.png").exists()


def test_sweep_stops_at_the_first_rate_over_the_limit(server: str, tmp_path: Path) -> None:
    def body(i: int) -> dict[str, Any]:
        return {"user_id": "u", "sleep_ms": 20}

    passing = find_max_rate(f"{server}/recommend", body, start_rate=10, factor=2,
                            duration_s=0.5, warmup_s=0, p99_limit_ms=5_000, max_rate=40)
    assert [r.target_rate for r in passing.results] == [10, 20, 40]
    assert passing.best_rate == 40

    failing = find_max_rate(f"{server}/recommend", body, start_rate=10, step=10,
                            duration_s=0.5, warmup_s=0, p99_limit_ms=1, max_rate=40)
    assert len(failing.results) == 1 and failing.best_rate is None
    assert "FAIL" in failing.table()
    json.dumps(failing.to_dict(), allow_nan=False)
    assert failing.save_plot(tmp_path / "sweep.png").exists()


# -- bodies --------------------------------------------------------------------------------------


def test_recommend_bodies_follow_the_schema() -> None:
    from recsys.serving.schemas import RecommendRequest

    make = recommend_bodies(n_users=50, dim=8, k=5, seed=3, policy="uniform")
    bodies = [make(i) for i in range(200)]
    for body in bodies[:20]:
        RecommendRequest.model_validate(body)
        assert body["k"] == 5 and body["policy"] == "uniform" and len(body["context"]["dense"]) == 8
    assert {b["user_id"] for b in bodies} <= {f"u{n}" for n in range(50)}
    assert len({b["user_id"] for b in bodies}) > 10
    assert make(7) == recommend_bodies(50, 8, 5, 3, "uniform")(7)  # deterministic in (seed, i)
    same_user = [b for b in bodies if b["user_id"] == bodies[0]["user_id"]]
    assert all(b["context"] == same_user[0]["context"] for b in same_user)

    bare = recommend_bodies(n_users=10, dim=None, k=3, seed=0)(0)
    assert "context" not in bare and "policy" not in bare
    RecommendRequest.model_validate(bare)
    for bad in ({"n_users": 0}, {"dim": 0}, {"k": 0}, {"k": 10**6}):
        with pytest.raises(ValueError):
            recommend_bodies(**({"n_users": 10, "dim": 4, "k": 3, "seed": 0} | bad))


# -- health and CLI ------------------------------------------------------------------------------


def test_wait_for_health(server: str) -> None:
    assert wait_for_health(f"{server}/health", timeout_s=5)["ready"] is True
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="did not become healthy"):
        wait_for_health(f"http://127.0.0.1:{free_port()}/health", timeout_s=0.5,
                        interval_s=0.1)
    assert time.monotonic() - started < 10


def run_cli(argv: list[str], data_dir: Path) -> int:
    parser = argparse.ArgumentParser(prog="recsys")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["loadtest", *argv])
    args.settings = load_settings(config_file=None, cli={"data_dir": str(data_dir)})
    return args.func(args)


def test_cli_ok_run_writes_table_plot_and_json(server: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    rc = run_cli(["--url", server, "--rate", "40", "--duration", "0.5", "--dim", "4",
                  "--users", "20", "--json", str(tmp_path / "out.json")], tmp_path)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "healthy" in out and "2xx 20" in out and "p99" in out
    assert (tmp_path / "loadtest.png").exists()
    assert f"plot: {tmp_path / 'loadtest.png'}" in out
    assert json.loads((tmp_path / "out.json").read_text())["2xx"] == 20


def test_cli_returns_1_on_5xx(server: str, tmp_path: Path) -> None:
    rc = run_cli(["--url", f"{server}/broken/recommend", "--rate", "20", "--duration", "0.5",
                  "--no-context", "--plot", str(tmp_path / "p.png")], tmp_path)
    assert rc == 1
    assert (tmp_path / "p.png").exists()


@pytest.mark.parametrize("argv", [["--url", "http://example.com"], ["--rate", "0"],
                                  ["--duration", "-1"], ["--k", "0"], ["--users", "0"],
                                  ["--dim", "0"], ["--sweep", "--factor", "1"]])
def test_cli_returns_2_on_bad_arguments(argv: list[str], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["--url", "http://127.0.0.1:1", *argv], tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith("recsys loadtest: ") and "Traceback" not in err


def test_cli_returns_1_when_the_server_is_not_up(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    rc = run_cli(["--url", f"http://127.0.0.1:{free_port()}", "--health-timeout", "0.3"],
                 tmp_path)
    assert rc == 1 and "did not become healthy" in capsys.readouterr().err
