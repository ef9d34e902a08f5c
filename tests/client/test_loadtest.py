"""The load generator, the rate sweep and ``recsys loadtest`` against a stub server.

The stub stands in for the serving app: it sleeps ``sleep_ms`` from the body, answers 500 when
the body says ``fail``, and ``/broken/recommend`` always fails. Assertions are on behaviour that
does not depend on the machine's speed: counts of requests scheduled, sent, answered and failed,
the schedule itself, and lower bounds that sleeps in the stub or the client guarantee. Achieved
rates and latency figures are measured by ``tests/benchmarks/bench_serving.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import math
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from recsys.client.load import LoadtestResult, run_loadtest
from recsys.client.loadtest import endpoint_urls, recommend_bodies, register
from recsys.client.sweep import SweepResult, find_max_rate, sweep_rates
from recsys.commands import run_command
from recsys.config import load_settings
from tests.client.stub_server import closed_port, serve_app


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
    with serve_app(_stub_app()) as url:
        yield url


def result_of(status: list[int], *, sent: list[float] | None = None, latency_s: float = 0.01,
              skipped: int = 0, rate: float = 10.0, duration_s: float = 1.0) -> LoadtestResult:
    """A result built by hand: request ``i`` scheduled at ``i / rate``, sent on time unless
    ``sent`` says otherwise, answered after ``latency_s`` (status 0: no answer)."""
    codes = np.asarray(status, dtype=np.int32)
    scheduled = np.arange(codes.size) / rate
    sent_at = scheduled if sent is None else np.asarray(sent, dtype=float)
    service = np.where(codes > 0, latency_s, np.nan)
    return LoadtestResult("http://127.0.0.1:1/recommend", rate, duration_s, 0.0, scheduled,
                          sent_at, service, sent_at - scheduled + service, codes,
                          errors={"timeout": int((codes == 0).sum())} if (codes == 0).any()
                          else {}, skipped=skipped)


# -- the generator -------------------------------------------------------------------------------


def test_every_scheduled_request_is_sent_once_and_every_outcome_counted(server: str) -> None:
    result = run_loadtest(f"{server}/recommend", rate=100, duration_s=1.0,
                          make_body=lambda i: {"user_id": f"u{i}", "fail": i % 10 == 0})
    # 100 requests never reach max_in_flight (256): none can be skipped, whatever the speed
    assert result.requests == 100 and result.skipped == 0 and result.errors == {}
    assert result.status_counts == {200: 90, 500: 10}
    assert (result.count_class(2), result.count_class(5), result.count_class(4)) == (90, 10, 0)
    # open loop: request i is due at i / rate from the window start, whatever the answers did
    assert np.allclose(result.scheduled, np.arange(100) / 100)
    assert np.all(result.sent >= result.scheduled - 1e-3)  # never sent before it is due
    assert np.all(result.intended_latency >= result.service_latency)
    assert np.all(result.service_latency > 0)


def test_warmup_requests_are_sent_but_not_measured(server: str) -> None:
    seen: list[int] = []
    result = run_loadtest(f"{server}/recommend", rate=50, duration_s=1.0, warmup_s=0.5,
                          make_body=lambda i: seen.append(i) or {"user_id": "u"})
    assert seen == list(range(75)) and result.requests == 50
    assert np.allclose(result.scheduled, np.arange(50) / 50)  # the window starts after warmup


def test_intended_latency_counts_the_time_the_client_fell_behind(server: str) -> None:
    stall_s = 0.3

    def body(i: int) -> dict[str, Any]:
        if i == 5:
            time.sleep(stall_s)  # the client stalls: request 5 and later go out late
        return {"user_id": "u", "sleep_ms": 30}

    result = run_loadtest(f"{server}/recommend", rate=50, duration_s=0.6, make_body=body)
    assert result.count_class(2) == 30
    assert np.all(result.service_latency >= 0.025)  # the server's sleep is inside service time
    lag = result.intended_latency - result.service_latency
    # request 5 is due 0.1 s in; its body is built no earlier than request 4 (0.08 s) and takes
    # the stall, so it goes out at least 0.28 s late; the stall never shows in service time
    assert lag[5] >= stall_s - 0.02 - 1e-3
    assert np.allclose(lag, result.sent - result.scheduled)


def test_requests_beyond_max_in_flight_are_skipped_and_counted(server: str) -> None:
    result = run_loadtest(f"{server}/recommend", rate=100, duration_s=1.0, max_in_flight=1,
                          make_body=lambda i: {"user_id": "u", "sleep_ms": 100})
    # one at a time and each answer takes >= 100 ms: at most 11 of the 100 due can go out
    assert result.requests + result.skipped == 100
    assert 1 <= result.requests <= 11 and result.skipped >= 89
    assert result.count_class(2) == result.requests
    assert "skipped" in " ".join(result.problems())
    assert f"skipped {result.skipped}" in result.table()


def test_transport_errors_are_counted_by_type(server: str) -> None:
    refused = run_loadtest(f"http://127.0.0.1:{closed_port()}/recommend", rate=20,
                           duration_s=0.5, make_body=lambda i: {"user_id": "u"}, timeout_s=2.0)
    assert refused.requests == 10 and refused.transport_errors == 10
    assert list(refused.errors) == ["ClientConnectorError"]
    assert refused.count_class(2) == 0 and np.all(refused.status == 0)
    assert np.all(np.isnan(refused.service_latency))
    assert all(math.isnan(v) for v in refused.percentiles().values())

    slow = run_loadtest(f"{server}/recommend", rate=10, duration_s=0.5, timeout_s=0.2,
                        make_body=lambda i: {"user_id": "u", "sleep_ms": 1000})
    assert slow.errors == {"timeout": 5} and slow.requests == 5


def test_a_failing_body_builder_stops_the_run(server: str) -> None:
    def body(i: int) -> dict[str, Any]:
        if i == 3:
            raise KeyError("no such user")
        return {"user_id": "u", "sleep_ms": 5_000}

    with pytest.raises(KeyError, match="no such user"):
        run_loadtest(f"{server}/recommend", rate=50, duration_s=1.0, make_body=body,
                     timeout_s=10.0)


@pytest.mark.parametrize("kwargs", [{"rate": 0}, {"duration_s": -1}, {"max_in_flight": 0},
                                    {"timeout_s": math.nan}, {"warmup_s": -1},
                                    {"rate": 1e9, "duration_s": 60}])
def test_bad_parameters_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=": expected"):
        run_loadtest("http://127.0.0.1:1/", make_body=lambda i: {},
                     **({"rate": 10, "duration_s": 1.0} | kwargs))


def test_endpoint_urls() -> None:
    assert endpoint_urls("http://127.0.0.1:9") == ("http://127.0.0.1:9/recommend",
                                                   "http://127.0.0.1:9/health")
    assert endpoint_urls("http://[::1]:9/v2/recommend") == ("http://[::1]:9/v2/recommend",
                                                            "http://[::1]:9/health")


# -- the result ----------------------------------------------------------------------------------


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
    result = result_of([], skipped=10)
    assert "skipped 10" in result.table()
    json.dumps(result.to_dict(), allow_nan=False)
    assert result.save_plot(tmp_path / "empty.png").exists()


def test_percentiles_are_observed_samples() -> None:
    result = result_of([200] * 4 + [0])
    result.service_latency[:4] = [0.001, 0.002, 0.003, 0.004]
    # the sample at or above each rank (p50 of 1..4 ms is 3 ms), over answered requests only
    assert result.percentiles("service") == pytest.approx(
        {"p50": 3.0, "p90": 4.0, "p99": 4.0, "p99.9": 4.0, "max": 4.0})
    with pytest.raises(ValueError, match="kind"):
        result.percentiles("total")


def test_problems_name_every_reason_a_run_did_not_keep_up() -> None:
    assert result_of([200] * 10).problems(p99_limit_ms=50) == []
    assert result_of([200] * 9 + [503]).problems() == ["1 5xx"]
    assert result_of([200] * 9 + [0]).problems() == ["1 transport errors"]
    assert result_of([200] * 10, skipped=2).problems() == ["2 skipped"]
    late = result_of([200] * 10, sent=list(np.arange(10) / 10 + 0.5))  # last sent at 1.4 s
    assert late.achieved_rate == pytest.approx(10 / 1.5)
    assert late.problems() == ["achieved 7/s < 90% of target"]
    assert result_of([200] * 10, latency_s=0.08).problems(p99_limit_ms=50) == [
        "intended p99 80.0 ms > 50 ms"]
    assert "intended p99 nan ms" in result_of([0] * 3).problems(p99_limit_ms=50)[-1]


# -- sweep ---------------------------------------------------------------------------------------


def test_sweep_rates() -> None:
    assert sweep_rates(10, 40, factor=2) == [10, 20, 40]
    assert sweep_rates(10, 45, step=10) == [10, 20, 30, 40]
    assert sweep_rates(25, 60) == [25, 37.5, 56.25]
    assert sweep_rates(5, 5) == [5]
    for kwargs in ({"factor": 1.0}, {"step": 0}):
        with pytest.raises(ValueError, match=": expected"):
            sweep_rates(10, 40, **kwargs)
    for start, top in ((0, 10), (20, 10), (math.inf, math.inf)):
        with pytest.raises(ValueError, match=": expected"):
            sweep_rates(start, top)


def test_sweep_stops_at_the_first_rate_that_does_not_keep_up(server: str,
                                                            tmp_path: Path) -> None:
    seen: list[LoadtestResult] = []
    failing = find_max_rate(f"{server}/recommend", lambda i: {"user_id": "u", "fail": True},
                            start_rate=10, step=10, duration_s=0.5, warmup_s=0,
                            p99_limit_ms=5_000, max_rate=40, on_result=seen.append)
    assert [r.target_rate for r in failing.results] == [10] and seen == failing.results
    assert failing.best_rate is None and failing.results[0].count_class(5) == 5
    assert "FAIL: 5 5xx" in failing.table() and "max rate that kept up: none" in failing.table()
    json.dumps(failing.to_dict(), allow_nan=False)
    assert failing.save_plot(tmp_path / "sweep.png").exists()


def test_sweep_table_reports_the_best_rate() -> None:
    sweep = SweepResult([result_of([200] * 10), result_of([200] * 19 + [500], rate=20)],
                        best_rate=10.0, p99_limit_ms=50)
    table = sweep.table()
    assert "max rate that kept up: 10.0/s" in table
    assert table.count(" ok") == 1 and "FAIL: 1 5xx" in table
    assert sweep.to_dict()["best_rate"] == 10.0


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
        with pytest.raises(ValueError, match=rf"^{next(iter(bad))}: expected"):
            recommend_bodies(**({"n_users": 10, "dim": 4, "k": 3, "seed": 0} | bad))


# -- CLI -----------------------------------------------------------------------------------------


def run_cli(argv: list[str], data_dir: Path) -> int:
    parser = argparse.ArgumentParser(prog="recsys")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["loadtest", *argv])
    args.settings = load_settings(config_file=None, cli={"data_dir": str(data_dir)})
    return run_command(args)


def test_the_declared_entry_point_is_this_command() -> None:
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    commands = tomllib.loads(pyproject.read_text())["project"]["entry-points"]["recsys.commands"]
    module, _, name = commands["loadtest"].partition(":")
    assert getattr(importlib.import_module(module), name) is register


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


def test_cli_sweep_returns_1_when_no_rate_keeps_up(server: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rc = run_cli(["--url", f"{server}/broken/recommend", "--sweep", "--rate", "10",
                  "--duration", "0.5", "--max-rate", "40", "--no-context",
                  "--json", str(tmp_path / "sweep.json")], tmp_path)
    assert rc == 1 and "max rate that kept up: none" in capsys.readouterr().out
    assert json.loads((tmp_path / "sweep.json").read_text())["best_rate"] is None


@pytest.mark.parametrize("argv", [["--url", "http://example.com"], ["--rate", "0"],
                                  ["--duration", "-1"], ["--k", "0"], ["--users", "0"],
                                  ["--dim", "0"], ["--sweep", "--factor", "1"],
                                  ["--sweep", "--max-rate", "1"]])
def test_cli_returns_2_on_bad_arguments(argv: list[str], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["--url", "http://127.0.0.1:1", *argv], tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith("recsys loadtest: ") and "Traceback" not in err


def test_cli_returns_1_when_the_server_is_not_up(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    rc = run_cli(["--url", f"http://127.0.0.1:{closed_port()}", "--health-timeout", "0.3"],
                 tmp_path)
    assert rc == 1 and "did not become healthy" in capsys.readouterr().err
