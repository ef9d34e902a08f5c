"""Who may call the serving app: a bearer token or API key checked before the body is read, and
the interface a replica's own HTTP port listens on.

``/feedback`` changes the model every user is served from, so when ``serve.auth_token`` (or
``$RECSYS_SERVE_AUTH_TOKEN``) is set, :class:`RequireToken` answers every request that does not
carry ``Authorization: Bearer <token>`` or ``X-API-Key: <token>`` with a 401 before anything
reads its body, admits or scores it. Decisions:

* **Deny by default.** Only :data:`OPEN_PATHS` are open without the token: the health probes
  (load balancers and Kubernetes call them without credentials), ``/metrics`` (scraped inside
  the cluster's network) and the API's description (``/docs``, ``/openapi.json``). A route added
  later is protected without a list to update.
* **Constant time.** The SHA-256 digests of the given and the configured token are compared
  with :func:`hmac.compare_digest`: equal-length inputs, so the time taken says nothing about
  how much of a guess was right, nor about the token's length.
* **Nothing to learn from a 401.** Its body says which header is expected and whether one was
  sent, never what was sent; the token is never logged.
* **One secret per deployment, no users.** A shared token keeps scrapers and stray clients
  out; per-client identities and encryption in transit belong to the TLS layer in front of the
  ingress (mutual TLS; see the README).

:func:`bind_replica_http` makes a replica's own HTTP server (Ray Serve's direct ingress, behind
HAProxy) listen on ``serve.replica_host`` (loopback by default) when that differs from the
ingress's ``serve.host``: Ray binds both to the one ``http_options.host``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable
from typing import Any

from recsys.validation import message

OPEN_PATHS = frozenset({"/health", "/health/live", "/health/ready", "/metrics", "/docs",
                        "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
"""Paths answered without the token; every other path needs it when one is configured."""
REALM = "recsys"
EXPECTED = ("`Authorization: Bearer <token>` or `X-API-Key: <token>` (the token is "
            "serve.auth_token)")


def _digest(token: str | bytes) -> bytes:
    raw = token.encode() if isinstance(token, str) else token
    return hashlib.sha256(raw).digest()


def service_token() -> str | None:
    """The token this process's replica was configured with (``serve.auth_token``), if any."""
    from recsys.serving import service as replica

    current = replica.current()
    return None if current is None else current.config.serve.auth_token


def presented_tokens(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """The tokens a request presents: a ``Bearer`` credential of ``Authorization`` (the scheme
    in any case) and the value of ``X-API-Key``, stripped of surrounding blanks."""
    found: list[bytes] = []
    for name, value in headers:
        name = name.lower()
        if name == b"authorization":
            scheme, _, credential = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and credential.strip():
                found.append(credential.strip())
        elif name == b"x-api-key" and value.strip():
            found.append(value.strip())
    return found


class RequireToken:
    """Pure ASGI middleware: with a token configured, a request to any path but ``open_paths``
    passes only with a matching ``Authorization: Bearer`` or ``X-API-Key`` header, else it is
    answered 401 before its body is read. ``token_of`` says the token (None: no
    authentication); by default the replica's ``serve.auth_token``, read per request (cheap)
    because Ray Serve builds the app before the replica's service exists."""

    def __init__(self, asgi: Any, token_of: Callable[[], str | None] = service_token,
                 open_paths: Iterable[str] = OPEN_PATHS) -> None:
        self.asgi = asgi
        self.token_of = token_of
        self.open_paths = frozenset(open_paths)
        self._cached: tuple[str, bytes] | None = None

    def _expected(self) -> bytes | None:
        token = self.token_of()
        if token is None:
            return None
        cached = self._cached
        if cached is None or cached[0] != token:
            cached = self._cached = (token, _digest(token))
        return cached[1]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path") in self.open_paths:
            await self.asgi(scope, receive, send)
            return
        expected = self._expected()
        if expected is None:
            await self.asgi(scope, receive, send)
            return
        given = presented_tokens(scope.get("headers") or ())
        # every presented token is compared, so the time does not depend on which one matched
        matches = [hmac.compare_digest(_digest(token), expected) for token in given]
        if any(matches):
            await self.asgi(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # policy violation
            return
        await self._refuse(send, sent=bool(given))

    @staticmethod
    async def _refuse(send: Any, *, sent: bool) -> None:
        """401 with ``WWW-Authenticate: Bearer`` (RFC 6750; ``error="invalid_token"`` when a
        token was sent) and ``{"detail": "..."}`` naming the expected headers; the request's
        body is never read."""
        if sent:
            detail = message("authorization", EXPECTED, "a token that does not match")
            challenge = f'Bearer realm="{REALM}", error="invalid_token"'
        else:
            detail = message("authorization", EXPECTED, "no token")
            challenge = f'Bearer realm="{REALM}"'
        body = json.dumps({"detail": detail}).encode()  # the served schema's Message
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", challenge.encode())]})
        await send({"type": "http.response.body", "body": body})


def bind_replica_http(host: str, ingress_host: str) -> bool:
    """Make this replica's direct-ingress HTTP server listen on ``host`` instead of
    ``ingress_host`` (which Ray Serve uses for both the ingress and every replica); call it in
    the replica's constructor, before Ray starts that server. True when the bind address was
    changed, False when the two are the same (Ray's own behaviour, nothing is touched).

    Ray 2.60 has no setting for this: the replica starts its server with
    ``ray.serve._private.replica.start_asgi_http_server`` and the controller's HTTP options,
    so that one function is wrapped to replace the host. A Ray without it raises here, naming
    the setting, rather than leaving replicas on ``ingress_host`` unnoticed."""
    if host == ingress_host:
        return False
    from ray.serve._private import replica as ray_replica

    start = getattr(ray_replica, "start_asgi_http_server", None)
    if start is None:
        raise RuntimeError(message(
            "serve.replica_host", "a Ray Serve whose replicas start their HTTP server with "
            "ray.serve._private.replica.start_asgi_http_server", f"Ray without it (replicas "
            f"would listen on serve.host {ingress_host!r})", f"set serve.replica_host to "
            f"{ingress_host!r}, or update recsys.serving.auth.bind_replica_http"))
    original = getattr(start, "__wrapped__", start)

    @functools.wraps(original)
    async def start_on_host(app: Any, http_options: Any, *args: Any, **kwargs: Any) -> Any:
        return await original(app, http_options.model_copy(update={"host": host}),
                              *args, **kwargs)

    ray_replica.start_asgi_http_server = start_on_host
    return True
