"""``recsys loadtest``: load ``POST /recommend`` of a server on this machine at a fixed rate (or
a rising one, ``--sweep``) and report latency percentiles, outcome counts and a plot.

The generator is ``recsys.client.load`` (open loop, see there), the sweep
``recsys.client.sweep``; this module adds request bodies shaped like real traffic and the command.
"""

from __future__ import annotations

import argparse
import json
import math
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from recsys.client.guard import check_loopback, is_loopback_host
from recsys.commands import CommandError, add_command
from recsys.validation import message

if TYPE_CHECKING:  # the generator (and aiohttp) load when the command runs, not with every CLI
    from recsys.client.load import MakeBody

DEFAULT_PORT = 8000


def endpoint_urls(url: str, path: str = "/recommend") -> tuple[str, str]:
    """``(endpoint URL, health URL)`` from a base URL (``http://127.0.0.1:8000`` gets ``path``
    appended) or a full endpoint URL (kept as given); the health URL is ``/health`` on the
    same host."""
    check_loopback(url)
    parts = urlsplit(url)
    endpoint = url if parts.path not in ("", "/") else urlunsplit(
        (parts.scheme, parts.netloc, path, "", ""))
    return endpoint, urlunsplit((parts.scheme, parts.netloc, "/health", "", ""))


def recommend_bodies(n_users: int, dim: int | None, k: int, seed: int,
                     policy: str | None = None) -> MakeBody:
    """A ``make_body(i)`` for ``POST /recommend``: user ``u<n>`` drawn uniformly from
    ``n_users``, ``k`` items, and a dense context of ``dim`` floats fixed per user (the same
    user always sends the same features); ``dim=None`` sends no context, so the server looks
    the user up in its feature table. Deterministic in ``(seed, i)``."""
    from recsys.serving.schemas import MAX_K

    if not (isinstance(n_users, int) and n_users >= 1):
        raise ValueError(message("n_users", "an integer >= 1", repr(n_users)))
    if dim is not None and not (isinstance(dim, int) and 1 <= dim <= 4096):
        raise ValueError(message("dim", "1..4096 (the schema's limit) or None", repr(dim)))
    if not (isinstance(k, int) and 1 <= k <= MAX_K):
        raise ValueError(message("k", f"1..{MAX_K}", repr(k)))
    period = 1 << 16
    users = np.random.default_rng([seed, 0]).integers(n_users, size=period).tolist()

    @lru_cache(maxsize=65_536)
    def dense(user: int) -> tuple[float, ...]:
        assert dim is not None
        vector = np.random.default_rng([seed, 1, user]).standard_normal(dim) / math.sqrt(dim)
        return tuple(round(v, 6) for v in vector.tolist())

    def make_body(i: int) -> dict[str, Any]:
        user = users[i % period] if i < period else (users[i % period] + i // period) % n_users
        body: dict[str, Any] = {"user_id": f"u{user}", "k": k}
        if dim is not None:
            body["context"] = {"dense": list(dense(user))}
        if policy is not None:
            body["policy"] = policy
        return body

    return make_body


def _default_url(settings: Any) -> str:
    """The configured server (``serve.host``/``serve.port``), reached over loopback."""
    serve = getattr(settings, "serve", None)
    port = getattr(serve, "port", None) or DEFAULT_PORT
    host = str(getattr(serve, "host", "") or "127.0.0.1")
    if not is_loopback_host(host):
        host = "127.0.0.1"  # a wildcard or public bind address: reach it over loopback
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _write_json(path: str, payload: dict[str, Any]) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")


def run_cli(args: argparse.Namespace) -> int:
    """``recsys loadtest``: 0 when every request got a non-5xx answer, 1 on any 5xx or
    transport error (sweep: when no rate kept up) or an unhealthy server, 2 on bad arguments."""
    from recsys.client.http import wait_for_health
    from recsys.client.load import check_run_parameters, run_loadtest
    from recsys.client.sweep import find_max_rate

    settings = args.settings
    url = args.url or _default_url(settings)
    dim = None if args.no_context else (args.dim if args.dim is not None else settings.stream.dim)
    try:
        endpoint, health_url = endpoint_urls(url)
        make_body = recommend_bodies(args.users, dim, args.k, args.seed, args.policy)
        check_run_parameters(args.rate, args.duration, args.timeout, args.max_in_flight,
                             args.warmup)
        if args.sweep:
            if args.max_rate < args.rate:
                raise ValueError(f"--max-rate {args.max_rate:g} is below --rate {args.rate:g}")
            if not args.factor > 1:
                raise ValueError(f"--factor must be > 1, got {args.factor:g}")
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    plot = Path(args.plot) if args.plot else Path(settings.data_dir) / "loadtest.png"

    try:
        health = wait_for_health(health_url, timeout_s=args.health_timeout)
    except TimeoutError as exc:
        raise CommandError(str(exc), exit_code=1) from None
    snapshot = health.get("snapshot_id")
    print(f"recsys loadtest: {endpoint} healthy"
          + (f" (snapshot {snapshot}, policies {', '.join(health.get('policies') or [])})"
             if snapshot else ""))
    context = "no context (server-side user features)" if dim is None else f"dense[{dim}]"
    long_run = args.warmup + args.duration >= 5

    if args.sweep:
        print(f"  sweep from {args.rate:g}/s x{args.factor:g} up to {args.max_rate:g}/s, "
              f"{args.duration:g}s each, {args.users:,} users, k={args.k}, {context}")
        sweep = find_max_rate(
            endpoint, make_body, start_rate=args.rate, factor=args.factor,
            duration_s=args.duration, p99_limit_ms=args.p99_limit_ms, max_rate=args.max_rate,
            timeout_s=args.timeout, max_in_flight=args.max_in_flight, warmup_s=args.warmup,
            progress=long_run, token=settings.serve.auth_token,
            on_result=lambda r: print(f"  {r.target_rate:,.1f}/s: intended p99 "
                                      f"{r.percentiles('intended')['p99']:.2f} ms, "
                                      f"5xx {r.count_class(5)}, errors {r.transport_errors}, "
                                      f"skipped {r.skipped}", flush=True))
        print(sweep.table())
        print(f"plot: {sweep.save_plot(plot)}")
        if args.json:
            _write_json(args.json, sweep.to_dict())
            print(f"json: {args.json}")
        return 0 if sweep.best_rate is not None else 1

    print(f"  {args.rate:g}/s for {args.duration:g}s"
          + (f" (+{args.warmup:g}s warmup)" if args.warmup else "")
          + f", {args.users:,} users, k={args.k}, {context}", flush=True)
    result = run_loadtest(endpoint, args.rate, args.duration, make_body, timeout_s=args.timeout,
                          max_in_flight=args.max_in_flight, warmup_s=args.warmup,
                          progress=long_run, token=settings.serve.auth_token)
    print(result.table())
    print(f"plot: {result.save_plot(plot)}")
    if args.json:
        _write_json(args.json, result.to_dict())
        print(f"json: {args.json}")
    return 1 if result.count_class(5) or result.transport_errors else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``recsys loadtest`` (entry point ``recsys.client.loadtest:register``)."""
    parser = add_command(
        subparsers, "loadtest", run_cli,
        help="load POST /recommend on a local server at a fixed rate; report latency percentiles",
        description="Open-loop load at a fixed rate against a loopback server (never another "
                    "host): reports service latency and intended (coordinated-omission-"
                    "corrected) latency, 2xx/4xx/5xx/transport errors/skipped, and a plot. "
                    "Exit 0: no 5xx or transport error; 1: some (or, with --sweep, no rate kept "
                    "up); 2: bad arguments.",
    )
    parser.add_argument("--url", default=None,
                        help="server base URL or full endpoint URL (default "
                             f"http://<serve.host>:<serve.port>, else 127.0.0.1:{DEFAULT_PORT})")
    parser.add_argument("--rate", type=float, default=200.0,
                        help="requests per second (with --sweep: the first rate); default 200")
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds measured (per rate with --sweep); default 60")
    parser.add_argument("--warmup", type=float, default=0.0,
                        help="seconds of load sent first and not measured; default 0")
    parser.add_argument("--k", type=int, default=10, help="slate size; default 10")
    context = parser.add_mutually_exclusive_group()
    context.add_argument("--dim", type=int, default=None,
                         help="dense context length (default: stream.dim)")
    context.add_argument("--no-context", action="store_true",
                         help="send no context: the server looks users up in its feature table")
    parser.add_argument("--users", type=int, default=10_000,
                        help="distinct user ids u0..u<N-1>; default 10000")
    parser.add_argument("--policy", default=None,
                        help="ask for this policy (default: the server's traffic split)")
    parser.add_argument("--seed", type=int, default=0, help="body generator seed; default 0")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds before a request counts as a timeout; default 5")
    parser.add_argument("--max-in-flight", type=int, default=256,
                        help="outstanding requests at most; due requests beyond are skipped "
                             "(and counted); default 256")
    parser.add_argument("--health-timeout", type=float, default=30.0,
                        help="seconds to wait for GET /health to answer 200; default 30")
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--sweep", action="store_true",
                       help="raise the rate from --rate by --factor until intended p99 exceeds "
                            "--p99-limit-ms or errors appear; report the highest rate that kept up")
    sweep.add_argument("--factor", type=float, default=1.5, help="rate multiplier; default 1.5")
    sweep.add_argument("--max-rate", type=float, default=20_000.0,
                       help="stop the sweep here; default 20000")
    sweep.add_argument("--p99-limit-ms", type=float, default=50.0,
                       help="intended-latency p99 a rate must stay under; default 50")
    parser.add_argument("--plot", default=None, metavar="PATH",
                        help="where to write the plot (default <data_dir>/loadtest.png)")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write the summary as JSON here")
