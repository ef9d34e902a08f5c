"""Who may write: ``serve.auth_token`` checked by ``recsys.serving.auth.RequireToken`` before the
body is read, and replicas' HTTP ports bound where ``serve.replica_host`` says.

The middleware is driven directly as ASGI (a tiny app behind it records whether it ran and
whether anything read the body); then one live stack (real Kafka, Ray Serve behind HAProxy, the
pipeline) with a token configured: 401 without it, 200 with either header, the repo's clients
sending it, health, metrics and the schema open.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
import requests

from recsys.client.http import JsonClient
from recsys.serving.auth import OPEN_PATHS, RequireToken, bind_replica_http
from tests.serving.live import serving_stack

TOKEN = "s3cret-Token_" + "x" * 20


class Inner:
    """The app behind the middleware: answers 200 after reading the body, and remembers."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        self.calls += 1
        if scope["type"] == "http":
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})


def call(app: Any, path: str, headers: dict[str, str] | None = None,
         scope_type: str = "http") -> dict[str, Any]:
    """One request through ``app``: status, headers (lower-case names), body, and whether the
    request's body was read."""
    read: list[bool] = []
    sent: list[dict] = []

    async def receive() -> dict:
        read.append(True)
        return {"type": "http.request", "body": b'{"user_id": "u1"}', "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": scope_type, "method": "POST", "path": path,
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    asyncio.run(app(scope, receive, send))
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return {"status": None if start is None else start["status"],
            "headers": {} if start is None else {k.decode(): v.decode()
                                                 for k, v in start["headers"]},
            "body": body, "read": bool(read), "sent": sent}


def guarded(token: str | None = TOKEN) -> tuple[RequireToken, Inner]:
    inner = Inner()
    return RequireToken(inner, token_of=lambda: token), inner


def test_without_a_configured_token_everything_passes() -> None:
    app, inner = guarded(None)
    assert call(app, "/feedback")["status"] == 200 and inner.calls == 1


@pytest.mark.parametrize("path", ["/recommend", "/feedback", "/admin", "/"])
def test_no_token_is_401_before_the_body_is_read(path: str) -> None:
    app, inner = guarded()
    answer = call(app, path)
    assert answer["status"] == 401 and inner.calls == 0 and not answer["read"]
    assert answer["headers"]["www-authenticate"] == 'Bearer realm="recsys"'
    assert answer["headers"]["content-type"] == "application/json"
    detail = json.loads(answer["body"])["detail"]
    assert detail.startswith("authorization: expected `Authorization: Bearer <token>` or "
                             "`X-API-Key: <token>`") and detail.endswith("got no token")


@pytest.mark.parametrize("headers", [
    {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Bearer {TOKEN[:-1]}"},
    {"X-API-Key": TOKEN.upper()}, {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": "Bearer wrong", "X-API-Key": "also-wrong"},
])
def test_a_wrong_token_is_401_invalid_token_and_never_echoed(headers: dict[str, str]) -> None:
    app, inner = guarded()
    answer = call(app, "/feedback", headers)
    assert answer["status"] == 401 and inner.calls == 0 and not answer["read"]
    sent_a_bearer_or_key = "X-API-Key" in headers or headers["Authorization"].startswith("Bearer")
    if sent_a_bearer_or_key:
        assert answer["headers"]["www-authenticate"] == ('Bearer realm="recsys", '
                                                         'error="invalid_token"')
        assert json.loads(answer["body"])["detail"].endswith("got a token that does not match")
    else:  # a Basic credential is not a bearer token: as if none was sent
        assert json.loads(answer["body"])["detail"].endswith("got no token")
    for value in headers.values():
        assert value.split()[-1].encode() not in answer["body"]


@pytest.mark.parametrize("headers", [
    {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": f"bearer   {TOKEN}  "},
    {"X-API-Key": TOKEN}, {"Authorization": "Bearer wrong", "X-API-Key": TOKEN},
])
def test_the_token_in_either_header_passes(headers: dict[str, str]) -> None:
    app, inner = guarded()
    answer = call(app, "/recommend", headers)
    assert answer["status"] == 200 and inner.calls == 1 and answer["read"]


@pytest.mark.parametrize("path", sorted(OPEN_PATHS))
def test_health_metrics_and_the_docs_are_open(path: str) -> None:
    app, inner = guarded()
    assert call(app, path)["status"] == 200 and inner.calls == 1


def test_other_scopes() -> None:
    app, inner = guarded()
    assert call(app, "", scope_type="lifespan")["sent"] == [] and inner.calls == 1
    closed = call(app, "/ws", scope_type="websocket")
    assert closed["sent"] == [{"type": "websocket.close", "code": 1008}] and inner.calls == 1
    call(app, "/ws", {"X-API-Key": TOKEN}, scope_type="websocket")
    assert inner.calls == 2


def test_a_changed_token_is_used_at_once_and_the_token_is_never_logged(caplog) -> None:
    current = {"token": TOKEN}
    inner = Inner()
    app = RequireToken(inner, token_of=lambda: current["token"])
    with caplog.at_level(logging.DEBUG):
        assert call(app, "/feedback", {"X-API-Key": TOKEN})["status"] == 200
        current["token"] = "another-token"
        assert call(app, "/feedback", {"X-API-Key": TOKEN})["status"] == 401
        assert call(app, "/feedback", {"X-API-Key": "another-token"})["status"] == 200
    assert TOKEN not in caplog.text and "another-token" not in caplog.text


def test_replica_http_binds_replica_host_when_it_differs_from_the_ingress(monkeypatch) -> None:
    from ray.serve._private import replica as ray_replica
    from ray.serve.config import HTTPOptions

    seen: list[str] = []

    async def start(app: Any, options: HTTPOptions, *, event_loop: Any = None,
                    enable_so_reuseport: bool = False) -> str:
        seen.append(options.host)
        return "started"

    monkeypatch.setattr(ray_replica, "start_asgi_http_server", start)
    assert bind_replica_http("127.0.0.1", "127.0.0.1") is False
    assert ray_replica.start_asgi_http_server is start  # Ray's own behaviour: untouched
    assert bind_replica_http("127.0.0.1", "0.0.0.0") is True
    options = HTTPOptions(host="0.0.0.0", port=30001)
    assert asyncio.run(ray_replica.start_asgi_http_server(None, options, event_loop=None)) \
        == "started"
    assert seen == ["127.0.0.1"] and options.host == "0.0.0.0"
    bind_replica_http("::1", "0.0.0.0")  # wraps Ray's function, not the previous wrapper
    asyncio.run(ray_replica.start_asgi_http_server(None, options, event_loop=None))
    assert seen == ["127.0.0.1", "::1"]

    monkeypatch.delattr(ray_replica, "start_asgi_http_server")
    with pytest.raises(RuntimeError, match=r"^serve\.replica_host: expected a Ray Serve whose"):
        bind_replica_http("127.0.0.1", "0.0.0.0")


def test_the_clients_send_the_token_they_are_given() -> None:
    """run_loadtest, wait_until_served and JsonClient against the middleware in a real HTTP
    server (uvicorn): with the token every request passes, without it every one is a 401."""
    from fastapi import FastAPI

    from recsys.client.freshness import wait_until_served
    from recsys.client.load import run_loadtest
    from tests.client.stub_server import serve_app

    stub = FastAPI()

    @stub.post("/recommend")
    async def recommend() -> dict:
        return {"request_id": "r", "items": [0], "scores": [0.0]}

    stub.add_middleware(RequireToken, token_of=lambda: TOKEN)
    with serve_app(stub) as url:
        body = {"user_id": "u"}
        passed = run_loadtest(f"{url}/recommend", 50, 0.2, lambda i: body, token=TOKEN)
        assert passed.status.tolist() == [200] * passed.status.size and passed.status.size
        refused = run_loadtest(f"{url}/recommend", 50, 0.2, lambda i: body)
        assert refused.status.tolist() == [401] * refused.status.size and refused.status.size
        wait_until_served(url, 0, [0.0], policy="p", timeout_s=5, token=TOKEN)
        with pytest.raises(TimeoutError, match="last answer 401"):
            wait_until_served(url, 0, [0.0], policy="p", timeout_s=0.2)
        assert asyncio.run(_post(JsonClient(url, token=TOKEN), "/recommend", body)).ok


# ---------------------------------------------------------------------------- the live stack
N_ITEMS, DIM = 20, 4


@pytest.fixture(scope="module")
def live(kafka_bootstrap, ray_session, tmp_path_factory):
    with serving_stack(kafka_bootstrap, tmp_path_factory.mktemp("auth"), "auth",
                       n_items=N_ITEMS, dim=DIM,
                       serve={"auth_token": TOKEN, "max_body_bytes": 10_000}) as (stack, _):
        yield stack


@pytest.mark.integration
def test_the_served_app_needs_the_token_to_write_and_nothing_to_look(live) -> None:
    url = live.url
    body = {"user_id": "u1", "context": {"dense": [0.1] * DIM}, "k": 2}
    refused = requests.post(f"{url}/recommend", json=body, timeout=30)
    assert refused.status_code == 401, refused.text
    assert refused.headers["WWW-Authenticate"] == 'Bearer realm="recsys"'
    assert refused.json()["detail"].endswith("got no token")
    wrong = requests.post(f"{url}/recommend", json=body, timeout=30,
                          headers={"Authorization": "Bearer not-it"})
    assert wrong.status_code == 401 and "invalid_token" in wrong.headers["WWW-Authenticate"]
    # checked before the body: a body over serve.max_body_bytes without the token is a 401
    big = requests.post(f"{url}/feedback", data=b"[" + b" " * 20_000 + b"]", timeout=30,
                        headers={"content-type": "application/json"})
    assert big.status_code == 401, big.text

    served = requests.post(f"{url}/recommend", json=body, timeout=30,
                           headers={"Authorization": f"Bearer {TOKEN}"})
    assert served.status_code == 200, served.text
    click = {"request_id": served.json()["request_id"], "user_id": "u1",
             "item_id": served.json()["items"][0], "position": 0, "event_type": "click"}
    assert requests.post(f"{url}/feedback", json=click, timeout=30).status_code == 401
    accepted = requests.post(f"{url}/feedback", json=click, timeout=30,
                             headers={"X-API-Key": TOKEN})
    assert accepted.status_code == 202, accepted.text

    # the repo's client sends it when given it
    reply = asyncio.run(_post(JsonClient(url, token=TOKEN), "/recommend", body))
    assert reply.status == "200", reply.error
    reply = asyncio.run(_post(JsonClient(url, max_retries_503=0), "/recommend", body))
    assert reply.status == "401", reply.error

    for path in ("/health", "/health/live", "/health/ready", "/metrics", "/openapi.json",
                 "/docs"):
        assert requests.get(f"{url}{path}", timeout=30).status_code == 200, path
    metrics = requests.get(f"{url}/metrics", timeout=30).text
    assert 'recsys_serve_requests_total{endpoint="/recommend",status="401"}' in metrics


async def _post(client: JsonClient, path: str, payload: Any) -> Any:
    try:
        return await client.post_json(path, payload)
    finally:
        await client.aclose()
