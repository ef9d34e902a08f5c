"""Request bodies before and after parsing: the size limit (413), parse errors (400) and
validation errors (422), all answered with one bounded error body.

Every 4xx the app writes for a body is ``{"detail": [{"loc", "msg", "type"}, ...], "omitted": n}``
(:func:`error_body`): at most ``serve.max_error_items`` errors, each message cut to
:data:`MSG_CHARS` characters and each ``loc`` to :data:`LOC_PARTS` parts of at most
:data:`LOC_CHARS` characters, the whole at most about :data:`MAX_ERROR_BYTES`; ``omitted`` counts
the errors left out. Input values are never written back (``loc`` names keys, which for an
unknown key is the client's own key, cut like the rest). Why: a 10 MB body of unknown keys used to
get a 79 MB answer after 6 s, and a body that failed to parse got a 400 naming nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from recsys.config import ServeSettings
from recsys.serving import service as replica
from recsys.serving.schemas import FEEDBACK_TAGS

MSG_CHARS = 200
LOC_PARTS = 8
LOC_CHARS = 64
MAX_ERROR_BYTES = 8192
_DEFAULTS = ServeSettings()
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _serve() -> ServeSettings:
    """The replica's ``[serve]`` settings (the defaults outside a replica: unit tests)."""
    service = replica.current()
    return service.config.serve if service is not None else _DEFAULTS


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _loc_part(part: Any) -> str | int:
    return part if isinstance(part, int) and not isinstance(part, bool) else _cut(str(part),
                                                                                   LOC_CHARS)


def error_item(loc: Iterable[Any], msg: str, type_: str) -> dict[str, Any]:
    """One bounded error: where (``loc``), what was expected (``msg``), a machine name."""
    parts = [_loc_part(p) for p in loc]
    if len(parts) > LOC_PARTS:
        parts = [*parts[: LOC_PARTS - 1], "…"]
    return {"loc": parts, "msg": _cut(str(msg), MSG_CHARS), "type": _cut(str(type_), LOC_CHARS)}


def error_body(errors: Iterable[Mapping[str, Any]], max_items: int | None = None
               ) -> dict[str, Any]:
    """``{"detail": [...], "omitted": n}`` from ``{"loc", "msg", "type"}`` mappings, bounded (see
    the module docs); the first error is always listed."""
    limit = _serve().max_error_items if max_items is None else max_items
    detail: list[dict[str, Any]] = []
    size, omitted = 0, 0
    for error in errors:
        item = error_item(error.get("loc", ()), error.get("msg", ""),
                          error.get("type", "value_error"))
        cost = len(json.dumps(item)) + 2
        if detail and (len(detail) >= limit or size + cost > MAX_ERROR_BYTES):
            omitted += 1
            continue
        detail.append(item)
        size += cost
    return {"detail": detail, "omitted": omitted}


def _body_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """``loc`` without the tag of the feedback body's shape (``body.event.item_id`` →
    ``body.item_id``): the path into the body as the client wrote it."""
    if len(loc) >= 2 and loc[0] == "body" and loc[1] in FEEDBACK_TAGS:
        return (loc[0], *loc[2:])
    return loc


def parse_error(exc: BaseException) -> dict[str, Any] | None:
    """The 400 body for a body that is not JSON (``type`` ``json_invalid``), naming the line and
    column of the error; None when ``exc`` is not a parse error."""
    if isinstance(exc, json.JSONDecodeError):
        msg = f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} (char {exc.pos})"
    elif isinstance(exc, UnicodeDecodeError):
        msg = f"invalid JSON: the body is not UTF-8 text (byte {exc.start})"
    elif isinstance(exc, RecursionError):
        msg = "invalid JSON: arrays or objects nest too deeply"
    else:
        return None
    return error_body([{"loc": ["body"], "msg": msg, "type": "json_invalid"}])


def _decode_error(exc: RequestValidationError) -> json.JSONDecodeError | None:
    """The JSON error behind FastAPI's ``json_invalid`` validation error (it keeps only the
    position and the document)."""
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            cause = exc.__cause__  # FastAPI raises it `from` the decoder's error
            if isinstance(cause, json.JSONDecodeError):
                return cause
            doc = exc.body if isinstance(exc.body, str) else ""
            pos = error.get("loc", ("body", 0))[-1]
            reason = str((error.get("ctx") or {}).get("error", "JSON decode error"))
            return json.JSONDecodeError(reason, doc, pos if isinstance(pos, int) else 0)
    return None


def validation_answer(exc: RequestValidationError) -> tuple[int, dict[str, Any]]:
    """A body FastAPI could not parse (400) or validate (422): status and bounded body."""
    decode = _decode_error(exc)
    if decode is not None:
        return 400, parse_error(decode) or {}
    errors = ({"loc": _body_loc(tuple(e.get("loc", ()))), "msg": e.get("msg", ""),
               "type": e.get("type", "value_error")} for e in exc.errors())
    return 422, error_body(errors)


def http_error_answer(exc: HTTPException) -> tuple[int, dict[str, Any]] | None:
    """FastAPI's bare 400 "There was an error parsing the body" (bytes that are not UTF-8, a
    body nested too deeply) with what was wrong; None for every other HTTP error."""
    if exc.status_code != 400 or exc.__cause__ is None:
        return None
    body = parse_error(exc.__cause__)
    return None if body is None else (400, body)


def too_large(limit: int, size: int | None) -> dict[str, Any]:
    """The 413 body: the limit and the setting that raises it."""
    got = "more" if size is None else f"{size:,} bytes"
    return error_body([{"loc": ["body"], "type": "body_too_large",
                        "msg": f"expected a body of at most {limit:,} bytes "
                               f"(serve.max_body_bytes), got {got}"}])


class LimitBody:
    """Pure ASGI middleware: a body larger than ``serve.max_body_bytes`` gets a 413 before
    anything parses it. A declared ``Content-Length`` is checked before reading; a chunked body is
    counted while it arrives and reading stops at the limit. The body read is handed on whole (the
    routes parse JSON from one buffer anyway)."""

    def __init__(self, asgi: Any, max_body_bytes: int | None = None) -> None:
        self.asgi = asgi
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.asgi(scope, receive, send)
            return
        limit = self.max_body_bytes if self.max_body_bytes is not None else (
            _serve().max_body_bytes)
        headers = dict(scope.get("headers") or ())
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _answer(send, 400, error_body([{
                    "loc": ["header", "content-length"], "type": "header_invalid",
                    "msg": "expected the body length as a decimal number of bytes"}]))
                return
            if size > limit:
                await _answer(send, 413, too_large(limit, size))
                return
        elif scope.get("method") not in _BODY_METHODS and b"transfer-encoding" not in headers:
            await self.asgi(scope, receive, send)  # no body coming: nothing to hold
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left: let the app see it
                await self.asgi(scope, _replay(b"".join(chunks), receive, message), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _answer(send, 413, too_large(limit, None))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.asgi(scope, _replay(b"".join(chunks), receive), send)


def _replay(body: bytes, receive: Any, first: dict | None = None) -> Any:
    """A ``receive`` that gives ``body`` once (or ``first``, a disconnect), then the real one."""
    pending: list[dict] = [first if first is not None
                           else {"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> dict:
        return pending.pop() if pending else await receive()

    return replayed


async def _answer(send: Any, status: int, body: dict[str, Any]) -> None:
    """A JSON answer from the middleware; ``connection: close`` since the rest of the body is
    not read."""
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})
