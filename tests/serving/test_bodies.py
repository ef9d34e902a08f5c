"""The HTTP contract of request bodies, without services: the size limit (413) before parsing,
parse errors (400) that say where, bounded validation errors (422) that never echo the input,
strict JSON types, and the OpenAPI document a replica serves.

A small app carries the serving app's own middleware, exception handlers and body models (the
real routes need a replica), called in process through ASGI (:class:`Client`); the schema tests
build the real app's document for a stand-in replica.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from recsys.bandits.contexts import ClusterContexts, DenseContexts
from recsys.config import ServeSettings
from recsys.serving import app as served
from recsys.serving.bodies import MAX_ERROR_BYTES, MSG_CHARS, LimitBody
from recsys.serving.openapi import ServedApp, build_schema, undocumented
from recsys.serving.schemas import FeedbackBody, RecommendRequest
from recsys.serving.service import RequestError

LIMIT = 4096


def small_app(limit: int = LIMIT) -> ServedApp:
    app = ServedApp()
    app.add_middleware(LimitBody, max_body_bytes=limit)
    app.add_exception_handler(RequestValidationError, served._invalid_body)
    app.add_exception_handler(HTTPException, served._http_error)
    app.add_exception_handler(RequestError, served._request_error)

    @app.post("/recommend")
    async def recommend(body: RecommendRequest) -> dict[str, Any]:
        return {"k": body.k}

    @app.post("/feedback", status_code=202)
    async def feedback(body: FeedbackBody) -> dict[str, Any]:
        return {"accepted": len(body) if isinstance(body, list) else 1}

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, Any]:
        return {"size": len(await request.body())}

    @app.get("/refuse")
    async def refuse() -> None:
        raise RequestError(("x" * 500,), "m" * 5000)

    return app


class Answer:
    """What an ASGI app answered."""

    def __init__(self, status: int, content: bytes) -> None:
        self.status_code, self.content = status, content
        self.text = content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class Client:
    """Calls an ASGI app in process, as an HTTP server would: one chunk is sent with its
    ``Content-Length``, several are sent chunked."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def request(self, method: str, path: str, chunks: Iterable[bytes] = (),
                headers: dict[str, str] | None = None) -> Answer:
        parts = list(chunks)
        head = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        if len(parts) == 1:
            head.append((b"content-length", str(len(parts[0])).encode()))
        elif parts:
            head.append((b"transfer-encoding", b"chunked"))
        messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1}
                    for i, p in enumerate(parts)] or [{"type": "http.request", "body": b""}]
        sent: list[dict] = []

        async def receive() -> dict:
            if messages:
                return messages.pop(0)
            await asyncio.sleep(3600)  # the client stays
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "root_path": "", "headers": head,
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        asyncio.run(self.app(scope, receive, send))
        status = next(m["status"] for m in sent if m["type"] == "http.response.start")
        return Answer(status, b"".join(m.get("body", b"") for m in sent
                                       if m["type"] == "http.response.body"))

    def get(self, path: str) -> Answer:
        return self.request("GET", path)


@pytest.fixture(scope="module")
def client() -> Client:
    return Client(small_app())


def post(client: Client, path: str, data: bytes | str) -> Answer:
    body = data.encode() if isinstance(data, str) else data
    return client.request("POST", path, [body], {"content-type": "application/json"})

# ---------------------------------------------------------------------------- size limit
def test_a_declared_length_over_the_limit_gets_413_before_anything_is_read() -> None:
    reached: list[str] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        reached.append("app")

    async def receive() -> dict:
        reached.append("receive")
        return {"type": "http.request", "body": b"x" * 10, "more_body": True}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/recommend",
             "headers": [(b"content-length", str(10 * 1024 * 1024).encode())]}
    asyncio.run(LimitBody(app, max_body_bytes=LIMIT)(scope, receive, send))
    assert reached == []
    assert sent[0]["status"] == 413
    body = json.loads(sent[1]["body"])
    assert body["detail"][0]["type"] == "body_too_large"
    assert "4,096 bytes (serve.max_body_bytes)" in body["detail"][0]["msg"]
    assert "10,485,760" in body["detail"][0]["msg"]


def test_a_chunked_body_is_counted_and_reading_stops_at_the_limit() -> None:
    chunks = 0

    async def receive() -> dict:
        nonlocal chunks
        chunks += 1
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}  # endless

    async def app(scope: dict, receive: Any, send: Any) -> None:
        raise AssertionError("the app must not run")

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/feedback",
             "headers": [(b"transfer-encoding", b"chunked")]}
    asyncio.run(LimitBody(app, max_body_bytes=LIMIT)(scope, receive, send))
    assert sent[0]["status"] == 413 and chunks == 5  # 5,000 bytes > 4,096: stopped there


def test_bodies_within_the_limit_reach_the_route_whole(client: Client) -> None:
    answer = client.request("POST", "/echo", [b"a" * 3000, b"b" * 1096])  # the limit, chunked
    assert answer.status_code == 200 and answer.json() == {"size": LIMIT}
    assert post(client, "/echo", b"x" * (LIMIT + 1)).status_code == 413


def test_a_ten_megabyte_body_of_unknown_keys_gets_a_small_413() -> None:
    client = Client(small_app(limit=ServeSettings().max_body_bytes))
    body = b"{" + b'"unknown": 0, ' * 800_000 + b'"user_id": "u1"}'
    assert len(body) > 10_000_000
    answer = post(client, "/recommend", body)
    assert answer.status_code == 413 and len(answer.content) < 500


# ---------------------------------------------------------------------------- parse errors
@pytest.mark.parametrize(("data", "says"), [
    (b'{"user_id": "u1",\n "k": 3,,}', "line 2 column 9"),
    (b"{\"user_id\": \"\xff\"}", "not UTF-8 text (byte 13)"),
    (b"[" * 100_000 + b"]" * 100_000, "nest too deeply"),
    (b'{"user_id": "u1"', "line 1 column 17"),
])
def test_a_body_that_is_not_json_gets_400_saying_where(client: Client, data: bytes,
                                                       says: str) -> None:
    big = Client(small_app(limit=1 << 20))
    answer = post(big, "/recommend", data)
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["omitted"] == 0 and len(body["detail"]) == 1
    error = body["detail"][0]
    assert error["loc"] == ["body"] and error["type"] == "json_invalid"
    assert says in error["msg"], error


# ---------------------------------------------------------------------------- 422 bodies
def test_many_errors_are_capped_and_never_echo_the_input(client: Client) -> None:
    secret = "SECRET-VALUE-" + "z" * 40
    body = {f"unknown{i}": secret for i in range(200)} | {"user_id": "u1"}
    answer = post(client, "/recommend", json.dumps(body))
    assert answer.status_code == 413  # over 4 KB
    big = Client(small_app(limit=1 << 20))
    answer = post(big, "/recommend", json.dumps(body))
    assert answer.status_code == 422
    body = answer.json()
    assert len(body["detail"]) == ServeSettings().max_error_items
    assert body["omitted"] == 200 - ServeSettings().max_error_items
    assert body["detail"][0] == {"loc": ["body", "unknown0"], "type": "extra_forbidden",
                                 "msg": "Extra inputs are not permitted"}
    assert "SECRET" not in answer.text and len(answer.content) <= MAX_ERROR_BYTES + 100


def test_long_messages_and_keys_are_cut(client: Client) -> None:
    answer = client.get("/refuse")
    assert answer.status_code == 422
    error = answer.json()["detail"][0]
    assert len(error["msg"]) == MSG_CHARS and error["msg"].endswith("…")
    assert error["loc"][0] == "body" and len(error["loc"][1]) == 64


# ---------------------------------------------------------------------------- strict types
DENSE = {"dense": [0.5, 1]}


@pytest.mark.parametrize(("body", "loc"), [
    ({"user_id": "u1", "k": True}, ["body", "k"]),
    ({"user_id": "u1", "k": "5"}, ["body", "k"]),
    ({"user_id": "u1", "k": 5.0}, ["body", "k"]),
    ({"user_id": 7}, ["body", "user_id"]),
    ({"user_id": "u1", "candidates": [1, False]}, ["body", "candidates", 1]),
    ({"user_id": "u1", "candidates": ["3"]}, ["body", "candidates", 0]),
    ({"user_id": "u1", "context": {"dense": [True]}}, ["body", "context", "dense", 0]),
    ({"user_id": "u1", "context": {"dense": ["0.5"]}}, ["body", "context", "dense", 0]),
    ({"user_id": "u1", "candidates": [2**63]}, ["body", "candidates", 0]),
])
def test_recommend_refuses_coercions(client: Client, body: dict, loc: list) -> None:
    answer = post(client, "/recommend", json.dumps(body))
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"] == loc


def test_numbers_take_json_integers_and_ids_reach_two_to_the_63(client: Client) -> None:
    ok = post(client, "/recommend", json.dumps({"user_id": "u1", "k": 3, "context": DENSE,
                                                "candidates": [2**63 - 1]}))
    assert ok.status_code == 200 and ok.json() == {"k": 3}


EVENT = {"request_id": "r1", "user_id": "u1", "item_id": 3, "position": 0}


@pytest.mark.parametrize(("body", "loc"), [
    ({**EVENT, "event_time_ms": False}, ["body", "event_time_ms"]),
    ({**EVENT, "value": "1"}, ["body", "value"]),
    ({**EVENT, "value": True}, ["body", "value"]),
    ({**EVENT, "position": "0"}, ["body", "position"]),
    ({**EVENT, "item_id": 1.5}, ["body", "item_id"]),
    ([EVENT, {**EVENT, "item_id": None}], ["body", 1, "item_id"]),
    ("click", ["body"]),
])
def test_feedback_refuses_coercions_at_the_event_path(client: Client, body: Any,
                                                      loc: list) -> None:
    answer = post(client, "/feedback", json.dumps(body))
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert detail[0]["loc"] == loc and len(detail) == 1, detail


def test_feedback_takes_one_event_or_a_list(client: Client) -> None:
    assert post(client, "/feedback", json.dumps({**EVENT, "value": 2})).json() == {
        "accepted": 1}
    assert post(client, "/feedback", json.dumps([EVENT, EVENT])).json() == {"accepted": 2}


# ---------------------------------------------------------------------------- OpenAPI
def replica(codec: Any = None, *, auth: str | None = None) -> SimpleNamespace:
    """A stand-in for a replica's service: what the schema reads from one."""
    served_ = None if codec is None else SimpleNamespace(
        snapshot=SimpleNamespace(stats=SimpleNamespace(context_codec=lambda: codec)))
    return SimpleNamespace(
        config=SimpleNamespace(policies={"ts": {}, "uniform": {}},
                               serve=ServeSettings(auth_token=auth, max_error_items=7)),
        _served=served_)


def bounds(node: Any) -> list[Any]:
    """Every numeric bound in a schema document."""
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k in {"maximum", "minimum", "exclusiveMaximum",
                                                      "exclusiveMinimum", "maxItems",
                                                      "minItems", "maxLength", "minLength"}]
        return found + [b for v in node.values() for b in bounds(v)]
    if isinstance(node, list):
        return [b for v in node for b in bounds(v)]
    return []


def test_the_served_schema_is_the_replicas_contract() -> None:
    doc = build_schema(served.app, replica(DenseContexts(8)))
    assert list(undocumented(doc, served.app)) == []
    schemas = doc["components"]["schemas"]
    request = schemas["RecommendRequest"]["properties"]
    assert request["policy"]["anyOf"][0]["enum"] == ["ts", "uniform"]
    assert request["k"] == {"default": 10, "maximum": 1000, "minimum": 1, "title": "K",
                            "type": "integer"}
    dense = schemas["ContextIn"]["properties"]["dense"]
    assert dense["minItems"] == dense["maxItems"] == 8
    assert "dense" in schemas["ContextIn"]["required"]
    assert schemas["FeedbackIn"]["properties"]["item_id"]["maximum"] == 2**63 - 1
    text = json.dumps(doc)
    assert "9223372036854775807" in text and "e+18" not in text
    assert all(isinstance(b, int) for b in bounds(doc)), bounds(doc)
    assert schemas["ErrorBody"]["properties"]["detail"]["maxItems"] == 7
    metrics = doc["paths"]["/metrics"]["get"]["responses"]
    assert list(metrics) == ["200"] and list(metrics["200"]["content"]) == ["text/plain"]
    recommend = doc["paths"]["/recommend"]["post"]["responses"]
    assert {"200", "400", "409", "413", "422", "503"} <= set(recommend)
    assert "401" not in recommend and "securitySchemes" not in doc["components"]
    assert recommend["503"]["headers"]["Retry-After"]["required"] is True
    health = doc["paths"]["/health"]["get"]["responses"]
    assert health["503"]["content"] == health["200"]["content"]


def test_auth_and_the_cluster_layout_show_in_the_schema() -> None:
    doc = build_schema(served.app, replica(ClusterContexts(5), auth="s3cret"))
    assert "s3cret" not in json.dumps(doc)
    for path in ("/recommend", "/feedback"):
        op = doc["paths"][path]["post"]
        assert op["security"] == [{"bearer": []}, {"apiKey": []}]
        assert op["responses"]["401"]["headers"]["WWW-Authenticate"]["required"] is True
    assert "401" not in doc["paths"]["/health"]["get"]["responses"]
    context = doc["components"]["schemas"]["ContextIn"]
    assert {"cluster_ids", "cluster_weights"} <= set(context["required"])
    assert "minItems" not in context["properties"]["dense"]


def test_before_a_snapshot_the_dense_length_is_not_claimed() -> None:
    doc = build_schema(served.app, replica(None))
    dense = doc["components"]["schemas"]["ContextIn"]["properties"]["dense"]
    assert "minItems" not in dense and dense["maxItems"] == 4096

