"""Start and stop the serving app on Ray Serve (the process must already be connected to Ray)."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from recsys.config import ServeSettings, Settings

if TYPE_CHECKING:
    from ray.serve import Application

APP_NAME = "recsys"
CONTROLLER_NAME = "SERVE_CONTROLLER_ACTOR"
SERVE_NAMESPACE = "serve"


class PortInUseError(OSError):
    """The HTTP port the app should listen on is taken; the message says how to choose another."""


def ensure_port_free(host: str, port: int, *, name: str = "serve.port",
                     fix: str = "choose another with --port N (or --set serve.port=N)") -> None:
    """Raise :class:`PortInUseError` when something already listens on ``host:port``; checked
    before anything starts, so a taken port is one line, not a traceback after the services
    came up. ``name`` and ``fix`` word the message (the setting or flag, and what to do)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP server does
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise PortInUseError(f"{name}: expected a free port, got {port}, already in use on "
                                 f"{host}; {fix}") from None


def claim_serve_port(settings: Settings, port: int | None = None) -> Settings:
    """``settings`` with ``serve.port`` set to ``port`` (when given), once it is checked free
    (:class:`PortInUseError` otherwise)."""
    if port is not None:
        settings = replace(settings, serve=replace(settings.serve, port=port))
    ensure_port_free(settings.serve.host, settings.serve.port)
    return settings


@contextlib.contextmanager
def _serve_logs_at(level: int) -> Iterator[None]:
    """Ray Serve's driver-side log level for the block: its INFO lines ("Started Serve", "Connecting
    to existing Serve app", "Application ... is ready") repeat what the caller prints itself."""
    logger = logging.getLogger("ray.serve")
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def start_serving(config: object, *, host: str = "127.0.0.1", port: int = 8000,
                  replicas: int = 1, ready_timeout_s: float = 60.0) -> str:
    """Deploy the app with ``config`` (a ``ServiceConfig``), wait until ``/health`` says ready,
    and return its base URL. Raises :class:`PortInUseError` when ``port`` is taken and
    ``TimeoutError`` saying what the app last reported."""
    from ray import serve

    ensure_port_free(host, port)
    with _serve_logs_at(logging.WARNING):
        # A free gRPC port too: Serve's default (9000) collides when two instances share a host.
        serve.start(http_options={"host": host, "port": port},
                    grpc_options={"port": _free_port()})
        serve.run(recommender_app(config, replicas), name=APP_NAME, route_prefix="/")
    url = f"http://{host}:{port}"
    wait_healthy(url, ready_timeout_s)
    return url


USER_CODE_ON_SERVER_LOOP = True
"""Run the app on the replica's HTTP server loop (``RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0``
for the replica process). Ray's default puts user code on a second event loop in its own
thread, which costs every request two more thread hand-offs (and GIL switches) for nothing
here: the routes never block their loop, scoring runs on the admission gate's thread."""


ACCESS_LOG = False
"""Ray Serve's per-request access log line in the replica's log file: off, because every
request pays for it on the replica's one busy core (and most for the 503s of an overload);
``/metrics`` counts every answer by endpoint and status instead."""


def deployment_options(serve_settings: ServeSettings) -> dict[str, Any]:
    """Ray Serve options of the ``Recommender`` deployment from ``[serve]``.

    Admission control is the replica's own (``recsys.serving.admission``): Ray's per-replica
    limit on concurrent requests (``max_ongoing_requests``) is set well above what admission
    lets wait, so that ``/metrics`` and ``/health`` always find a slot; beyond it, Ray's own
    queue for a slot is bounded too and answers 503 with the same ``Retry-After`` (its body is
    Ray's plain text): a backstop that only acts when the replica cannot even get through its
    admission checks in time. Not as tight as admission's: Ray counts a request as queued from
    its arrival until its task first runs, so a burst that arrives in one loop turn would be
    refused with slots free."""
    from ray.serve.config import BackpressureConfig
    from ray.serve.schema import LoggingConfig

    actor: dict[str, Any] = {"num_cpus": 0}
    if USER_CODE_ON_SERVER_LOOP:
        actor["runtime_env"] = {"env_vars": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}}
    slots = 4 * serve_settings.max_queued_requests + 256
    return {
        "ray_actor_options": actor,
        "max_ongoing_requests": slots,
        "max_queued_requests": slots,
        "backpressure_config": BackpressureConfig(status_code=503,
                                                  retry_after_s=serve_settings.retry_after_s),
        "logging_config": LoggingConfig(enable_access_log=ACCESS_LOG),
    }


def recommender_app(config: object, replicas: int) -> Application:
    """The ``Recommender`` deployment with ``replicas`` replicas and the ``[serve]`` options of
    ``config`` (a ``ServiceConfig``), bound to it: what ``recsys serve`` runs and what
    ``recsys.serving.deploy:build`` returns to a declarative deployment."""
    from recsys.serving.app import Recommender

    deployment = Recommender.options(num_replicas=replicas,
                                     **deployment_options(config.serve))  # type: ignore
    return deployment.bind(config.to_dict())  # type: ignore[attr-defined]


def wait_healthy(url: str, timeout_s: float) -> dict:
    """Poll ``GET /health`` until it answers 200; its body."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            last = f"{exc.code}: {exc.read()[:300].decode(errors='replace')}"
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            raise TimeoutError(f"the serving app at {url} was not ready after {timeout_s:.0f} s; "
                               f"last /health: {last}")
        time.sleep(0.2)


def stop_serving(timeout_s: float = 60.0) -> None:
    """Stop Ray Serve (its applications, controller and ingress) and wait until the controller is
    gone, so that a Serve started next in this Ray instance does not meet the old one.

    Not ``serve.shutdown()``: Ray retries the controller's tasks forever, so its wait on
    ``graceful_shutdown`` is retried after the controller has exited and always ends in a 30 s
    timeout and a warning. Here the controller is asked to shut down without waiting, and its
    disappearance is what we wait for.
    """
    import ray
    from ray.serve import context

    client, had_cached = context._check_cached_client_alive()
    if client is None and not had_cached:  # started by another driver of this Ray instance
        client = context._get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return
    client.shutdown_cached_handles()
    with _serve_logs_at(logging.WARNING):
        with contextlib.suppress(ray.exceptions.RayActorError):
            ray.get(client._controller.graceful_shutdown.remote(wait=False), timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                ray.get_actor(CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
            except ValueError:
                break
            time.sleep(0.1)
    client._shutdown = True
    context._disconnect()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
