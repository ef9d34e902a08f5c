"""The transport the clients share: one keep-alive ``aiohttp`` session to a loopback server, JSON
posts that retry 503 with capped exponential backoff, and waiting for ``GET /health``.

A client given a ``token`` (the server's ``serve.auth_token``) sends it as
``Authorization: Bearer <token>`` on every request (:func:`auth_headers`); health is open.

Sessions never go through a proxy (``trust_env=False``): the target is this machine, and a proxy
from the environment would both add latency to the measurements and leave it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import aiohttp

from recsys.client.guard import check_loopback
from recsys.validation import message

TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, OSError, TimeoutError)
"""What a request can raise instead of answering: refused or reset connections, timeouts."""
ERROR_BODY_CHARS = 300


def auth_headers(token: str | None) -> dict[str, str]:
    """The header that authenticates with the serving app's ``serve.auth_token`` (none without
    a token)."""
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def open_session(max_connections: int, timeout_s: float | None = None,
                 token: str | None = None) -> aiohttp.ClientSession:
    """A keep-alive session with at most ``max_connections`` open connections, never via a proxy;
    ``timeout_s`` bounds each request (None: the caller bounds them); ``token`` is sent on every
    request (:func:`auth_headers`). Call inside the event loop that will use it."""
    keepalive_s = max(30.0, timeout_s or 0.0)
    connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=max_connections,
                                     keepalive_timeout=keepalive_s)
    return aiohttp.ClientSession(connector=connector, trust_env=False,
                                 timeout=aiohttp.ClientTimeout(total=timeout_s),
                                 headers=auth_headers(token))


@dataclass(frozen=True)
class Reply:
    """One JSON post's outcome: the decoded ``body`` of a 2xx answer, else ``error`` says why and
    ``status`` names the failure (``"503"``, ``"422"``, ``"transport"``, ...); ``retries_503``
    counts the 503 answers retried on the way."""

    status: str
    body: Any = None
    error: str | None = None
    retries_503: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


class JsonClient:
    """JSON posts to one loopback server over a keep-alive session, a 503 (the server shedding
    load or still loading) retried up to ``max_retries_503`` times after ``backoff_s · 2^attempt``
    seconds (or the server's ``Retry-After``, if longer), capped at ``max_backoff_s``.

    The session belongs to the event loop that first used it; a call from another loop (a later
    ``asyncio.run``) opens a new one. ``aclose`` closes it. ``token``: the server's
    ``serve.auth_token``, sent as a bearer token (None: none is sent)."""

    def __init__(self, base_url: str, *, max_connections: int = 32, timeout_s: float = 10.0,
                 max_retries_503: int = 5, backoff_s: float = 0.05,
                 max_backoff_s: float = 1.0, token: str | None = None) -> None:
        self.base_url = check_loopback(base_url).rstrip("/")
        for name, value, low in (("max_connections", max_connections, 1),
                                 ("max_retries_503", max_retries_503, 0)):
            if not (isinstance(value, int) and value >= low):
                raise ValueError(message(name, f"an integer >= {low}", repr(value)))
        for name, value in (("backoff_s", backoff_s), ("max_backoff_s", max_backoff_s)):
            if not value >= 0:
                raise ValueError(message(name, "a number >= 0", repr(value)))
        if not timeout_s > 0:
            raise ValueError(message("timeout_s", "a number > 0", repr(timeout_s)))
        self.max_connections = max_connections
        self.timeout_s = timeout_s
        self.max_retries_503 = max_retries_503
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.token = token
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            self._session = open_session(self.max_connections, self.timeout_s, self.token)
            self._session_loop = loop
        return self._session

    async def aclose(self) -> None:
        """Close the session (a later post opens a new one)."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def backoff(self, attempt: int, retry_after: str | None) -> float:
        """Seconds to wait before retry ``attempt`` (0-based) of a 503."""
        delay = self.backoff_s * 2**attempt
        if retry_after is not None:
            with contextlib.suppress(ValueError):  # an HTTP date: keep the exponential delay
                delay = max(delay, float(retry_after))
        return min(delay, self.max_backoff_s)

    async def post_json(self, path: str, payload: Any) -> Reply:
        """POST ``payload`` as JSON to ``base_url + path``; never raises for HTTP or transport
        failures: they come back as a ``Reply`` that is not ``ok``."""
        session = self._get_session()
        url = self.base_url + path
        attempt = 0
        while True:
            try:
                async with session.post(url, json=payload) as response:
                    if 200 <= response.status < 300:  # /feedback answers 202 Accepted
                        return Reply(str(response.status), await response.json(),
                                     retries_503=attempt)
                    text = (await response.text())[:ERROR_BODY_CHARS]
                    if response.status == 503 and attempt < self.max_retries_503:
                        await asyncio.sleep(self.backoff(attempt,
                                                         response.headers.get("Retry-After")))
                        attempt += 1
                        continue
                    status = str(response.status)
                    error = f"POST {path} -> {status}: {text}"
            except TRANSPORT_ERRORS as exc:
                status, error = "transport", f"POST {path} -> {type(exc).__name__}: {exc}"
            return Reply(status, error=error, retries_503=attempt)


def wait_for_health(url: str, timeout_s: float = 30.0, interval_s: float = 0.25) -> dict[str, Any]:
    """Poll ``GET url`` until it answers 200 (and, when the body has ``ready``, ready is true);
    return the body. Raises ``TimeoutError`` naming the last answer, so a server that is down
    or still loading is reported as such instead of as a wall of transport errors."""
    check_loopback(url)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        try:
            with opener.open(url, timeout=max(0.1, min(2.0, timeout_s))) as response:
                raw = response.read()
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = {}
                if not isinstance(body, dict):
                    body = {"body": body}
                if body.get("ready", True):
                    return body
                last = f"200 but not ready: {body.get('detail') or body}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (OSError, urllib.error.URLError) as exc:
            last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        if time.monotonic() + interval_s > deadline:
            raise TimeoutError(f"{url} did not become healthy within {timeout_s:g}s "
                               f"(last: {last}); is `recsys serve` running on that port?")
        time.sleep(interval_s)
