"""The shared transport against a stub server: JSON posts with 503 retries, and health waits."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from recsys.client.http import JsonClient, Reply, wait_for_health
from tests.client.stub_server import closed_port, serve_app

CALLS: Counter[str] = Counter()


def _stub_app() -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        CALLS["health"] += 1
        return {"ready": True, "snapshot_id": "s1"}

    @app.get("/unready/health")
    async def unready() -> JSONResponse:
        CALLS["unready"] += 1
        return JSONResponse({"ready": False, "detail": "loading"}, status_code=503)

    @app.get("/loading/health")
    async def loading() -> dict[str, Any]:
        CALLS["loading"] += 1
        return {"ready": CALLS["loading"] > 2, "detail": "loading"}

    @app.post("/echo")
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse(await request.json(), status_code=202)

    @app.post("/busy/{n}")
    async def busy(n: int, request: Request) -> JSONResponse:
        CALLS[f"busy/{n}"] += 1
        if CALLS[f"busy/{n}"] <= n:
            return JSONResponse({"detail": "shedding"}, status_code=503)
        return JSONResponse({"served": True})

    @app.post("/reject")
    async def reject() -> JSONResponse:
        return JSONResponse({"detail": "bad body"}, status_code=422)

    return app


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve_app(_stub_app()) as url:
        yield url


def post(client: JsonClient, path: str, payload: Any) -> Reply:
    async def go() -> Reply:
        try:
            return await client.post_json(path, payload)
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_a_2xx_answer_comes_back_decoded(server: str) -> None:
    reply = post(JsonClient(server + "/"), "/echo", [{"a": 1}])
    assert reply == Reply("202", [{"a": 1}]) and reply.ok


def test_503_is_retried_until_served_and_the_retries_are_counted(server: str) -> None:
    reply = post(JsonClient(server, backoff_s=0.0), "/busy/2", {})
    assert reply.ok and reply.body == {"served": True} and reply.retries_503 == 2
    assert CALLS["busy/2"] == 3


def test_503_beyond_the_retry_budget_is_a_failed_reply(server: str) -> None:
    reply = post(JsonClient(server, backoff_s=0.0, max_retries_503=1), "/busy/5", {})
    assert not reply.ok and reply.status == "503" and reply.retries_503 == 1
    assert reply.error == 'POST /busy/5 -> 503: {"detail":"shedding"}'
    assert CALLS["busy/5"] == 2


def test_other_failures_are_replies_not_exceptions(server: str) -> None:
    rejected = post(JsonClient(server), "/reject", {})
    assert (rejected.status, rejected.retries_503) == ("422", 0) and "bad body" in rejected.error
    refused = post(JsonClient(f"http://127.0.0.1:{closed_port()}", timeout_s=2.0), "/x", {})
    assert refused.status == "transport" and refused.error.startswith("POST /x -> Client")


def test_backoff_doubles_honours_retry_after_and_is_capped() -> None:
    client = JsonClient("http://127.0.0.1:1", backoff_s=0.1, max_backoff_s=1.0)
    assert [client.backoff(a, None) for a in range(5)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])
    assert client.backoff(0, "0.5") == pytest.approx(0.5)
    assert client.backoff(2, "0.1") == pytest.approx(0.4)  # never shorter than the exponential
    assert client.backoff(0, "Wed, 21 Oct 2015 07:28:00 GMT") == pytest.approx(0.1)
    assert client.backoff(0, "60") == 1.0


@pytest.mark.parametrize("kwargs", [{"max_connections": 0}, {"max_retries_503": -1},
                                    {"backoff_s": -0.1}, {"timeout_s": 0},
                                    {"max_connections": 1.5}])
def test_bad_client_arguments_are_refused(kwargs: dict[str, Any]) -> None:
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=rf"^{name}: expected"):
        JsonClient("http://127.0.0.1:1", **kwargs)


def test_wait_for_health_returns_the_body_once_ready(server: str) -> None:
    assert wait_for_health(f"{server}/health", timeout_s=5)["snapshot_id"] == "s1"
    body = wait_for_health(f"{server}/loading/health", timeout_s=10, interval_s=0.01)
    assert body["ready"] is True and CALLS["loading"] == 3


def test_wait_for_health_gives_up_by_itself_and_says_why(server: str) -> None:
    with pytest.raises(TimeoutError, match=r"did not become healthy within 0.5s \(last: HTTP 503"):
        wait_for_health(f"{server}/unready/health", timeout_s=0.5, interval_s=0.1)
    # a bounded loop: one poll per interval within the deadline, at most
    assert 1 <= CALLS["unready"] <= 0.5 / 0.1 + 1
    with pytest.raises(TimeoutError, match=r"ConnectionRefusedError|URLError"):
        wait_for_health(f"http://127.0.0.1:{closed_port()}/health", timeout_s=0.2,
                        interval_s=0.05)
