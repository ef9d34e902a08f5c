"""Start and stop the serving app on Ray Serve (the process must already be connected to Ray)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

APP_NAME = "recsys"


def start_serving(config: object, *, host: str = "127.0.0.1", port: int = 8000,
                  replicas: int = 1, ready_timeout_s: float = 60.0) -> str:
    """Deploy the app with ``config`` (a ``ServiceConfig``), wait until ``/health`` says ready,
    and return its base URL. Raises ``TimeoutError`` saying what the app last reported."""
    from ray import serve

    from recsys.serving.app import Recommender

    # A free gRPC port too: Serve's default (9000) collides when two instances share a host.
    serve.start(http_options={"host": host, "port": port}, grpc_options={"port": _free_port()})
    options = config.to_dict()  # type: ignore[attr-defined]
    serve.run(Recommender.options(num_replicas=replicas).bind(options), name=APP_NAME,
              route_prefix="/")
    url = f"http://{host}:{port}"
    wait_healthy(url, ready_timeout_s)
    return url


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
    gone, so that a Serve started next in this Ray instance does not meet the old one."""
    import ray
    from ray import serve

    serve.shutdown()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
        except ValueError:
            return
        time.sleep(0.2)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
