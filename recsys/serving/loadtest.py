"""``recsys loadtest``: a bounded, open-loop HTTP load generator for the serving app.

Why open loop: a client that waits for each response before sending the next one slows down
exactly when the server does, so the slow periods get few samples and the percentiles look
better than what users see ("coordinated omission"). Here request ``i`` is *scheduled* at
``t0 + i / rate`` whatever the responses do, and each request reports two latencies:

* **service** latency: from the moment it was actually sent to the end of the response body;
* **intended** latency: from the moment it was *scheduled*, which also counts any time the
  client fell behind its schedule (the coordinated-omission-corrected figure).

The run is bounded in time (``warmup_s + duration_s`` of sending, then at most ``timeout_s``
for the last responses) and in concurrency: when ``max_in_flight`` requests are already
outstanding, a due request is not sent and is counted as ``skipped`` (never dropped silently:
a run with skips did not deliver its target rate and says so).

It only ever talks to a loopback address (localhost, 127.0.0.0/8, ::1), so it cannot be pointed
at somebody else's server by mistake.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

MAX_REQUESTS = 10_000_000  # one run's sample arrays stay well under 1 GB
PERCENTILES: tuple[tuple[str, float], ...] = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0),
                                              ("p99.9", 99.9))
DEFAULT_PORT = 8000

MakeBody = Callable[[int], dict[str, Any]]


# -- URLs ----------------------------------------------------------------------------------------


def check_loopback(url: str) -> str:
    """Return ``url`` if it is an http(s) URL on a loopback host, else raise ``ValueError``.

    Only the literal name ``localhost`` and loopback IP literals pass: any other name could
    resolve to a remote machine, and this tool must never load someone else's server."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url!r}: expected an http:// or https:// URL "
                         f"(e.g. http://127.0.0.1:{DEFAULT_PORT}/recommend)")
    host = parts.hostname
    if not host:
        raise ValueError(f"{url!r}: the URL has no host; use http://127.0.0.1:PORT/...")
    if host.lower() != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"{url!r}: refusing to load host {host!r}: the load generator only "
                             "targets loopback addresses (localhost, 127.0.0.0/8, ::1) so it can "
                             "never flood someone else's server; run it on the serving machine")
    try:
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError as exc:
        raise ValueError(f"{url!r}: bad port: {exc}") from None
    return url


def endpoint_urls(url: str, path: str = "/recommend") -> tuple[str, str]:
    """``(endpoint URL, health URL)`` from a base URL (``http://127.0.0.1:8000`` gets ``path``
    appended) or a full endpoint URL (kept as given); the health URL is ``/health`` on the
    same host."""
    check_loopback(url)
    parts = urlsplit(url)
    endpoint = url if parts.path not in ("", "/") else urlunsplit(
        (parts.scheme, parts.netloc, path, "", ""))
    return endpoint, urlunsplit((parts.scheme, parts.netloc, "/health", "", ""))


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


# -- results -------------------------------------------------------------------------------------


def _ms(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {name: math.nan for name, _ in PERCENTILES} | {"max": math.nan}
    qs = np.percentile(values, [q for _, q in PERCENTILES], method="higher") * 1e3
    out = {name: float(v) for (name, _), v in zip(PERCENTILES, qs, strict=True)}
    out["max"] = float(values.max() * 1e3)
    return out


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


@dataclass(repr=False)
class LoadtestResult:
    """One fixed-rate run, measurement window only (warmup requests are sent but not kept).

    Arrays are parallel, one entry per request that was sent, in schedule order. Times are
    seconds from the start of the measurement window; latencies are seconds. A request that got
    no HTTP response (timeout, refused connection, ...) has status 0 and NaN latencies and is
    counted in ``errors`` by exception type; percentiles are over requests that got a response.
    """

    url: str
    target_rate: float
    duration_s: float
    warmup_s: float
    scheduled: np.ndarray
    sent: np.ndarray
    service_latency: np.ndarray
    intended_latency: np.ndarray
    status: np.ndarray
    errors: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    max_in_flight: int = 256
    timeout_s: float = 5.0

    def __repr__(self) -> str:  # a summary: the default would print every sample array
        return (f"LoadtestResult({self.url!r}, target_rate={self.target_rate:g}, "
                f"achieved_rate={self.achieved_rate:.1f}, requests={self.requests}, "
                f"status_counts={self.status_counts}, errors={self.errors}, "
                f"skipped={self.skipped})")

    @property
    def requests(self) -> int:
        """Requests sent in the measurement window."""
        return int(self.status.size)

    @property
    def status_counts(self) -> dict[int, int]:
        """HTTP status -> count (transport errors, status 0, are in ``errors`` instead)."""
        codes, counts = np.unique(self.status[self.status > 0], return_counts=True)
        return {int(c): int(n) for c, n in zip(codes, counts, strict=True)}

    def count_class(self, hundreds: int) -> int:
        """Responses with status ``hundreds``xx, e.g. ``count_class(5)`` for 5xx."""
        return int(np.count_nonzero(self.status // 100 == hundreds))

    @property
    def transport_errors(self) -> int:
        return int(sum(self.errors.values()))

    @property
    def achieved_rate(self) -> float:
        """Requests sent per second: sent count over the window, stretched when the client fell
        behind so that the last send landed after the window (skips and lag both lower it)."""
        if self.sent.size == 0:
            return 0.0
        span = max(self.duration_s, float(self.sent.max()) + 1.0 / self.target_rate)
        return self.requests / span

    def percentiles(self, kind: str = "service") -> dict[str, float]:
        """p50/p90/p99/p99.9/max in milliseconds of ``kind`` ("service" or "intended")
        latency, over requests that got an HTTP response (NaN when none did). Each percentile is
        an observed sample (the nearest one at or above it), never an interpolation."""
        if kind not in ("service", "intended"):
            raise ValueError(f"kind must be 'service' or 'intended', not {kind!r}")
        values = self.service_latency if kind == "service" else self.intended_latency
        return _ms(values[self.status > 0])

    def problems(self, p99_limit_ms: float | None = None) -> list[str]:
        """Why this run does not count as keeping up (empty: it does): 5xx or transport errors,
        skipped requests, an achieved rate under 90% of the target, intended p99 over a limit."""
        found = []
        if self.count_class(5):
            found.append(f"{self.count_class(5)} 5xx")
        if self.transport_errors:
            found.append(f"{self.transport_errors} transport errors")
        if self.skipped:
            found.append(f"{self.skipped} skipped")
        if self.achieved_rate < 0.9 * self.target_rate:
            found.append(f"achieved {self.achieved_rate:.0f}/s < 90% of target")
        if p99_limit_ms is not None:
            p99 = self.percentiles("intended")["p99"]
            if not p99 <= p99_limit_ms:  # NaN (no response at all) fails too
                found.append(f"intended p99 {p99:.1f} ms > {p99_limit_ms:g} ms")
        return found

    def table(self) -> str:
        """A text summary: target vs achieved rate, outcome counts, latency percentiles."""
        lines = [
            f"loadtest {self.url}: {self.duration_s:g}s measured"
            + (f" after {self.warmup_s:g}s warmup" if self.warmup_s else ""),
            f"  rate       target {self.target_rate:,.1f}/s   achieved {self.achieved_rate:,.1f}/s",
            f"  requests   {self.requests:,} sent   2xx {self.count_class(2):,}   "
            f"4xx {self.count_class(4):,}   5xx {self.count_class(5):,}   "
            f"transport errors {self.transport_errors:,}   skipped {self.skipped:,}",
        ]
        if self.errors:
            lines.append("  errors     " + ", ".join(f"{name} {n:,}" for name, n in
                                                      sorted(self.errors.items())))
        other = {c: n for c, n in self.status_counts.items() if c // 100 not in (2,)}
        if other:
            lines.append("  statuses   " + ", ".join(f"{c}: {n:,}" for c, n in other.items()))
        names = [name for name, _ in PERCENTILES] + ["max"]
        lines.append("  latency ms " + "".join(f"{name:>10}" for name in names))
        for kind in ("service", "intended"):
            values = self.percentiles(kind)
            lines.append(f"  {kind:<10} " + "".join(f"{values[n]:>10.2f}" for n in names))
        if self.skipped:
            lines.append(f"  note: {self.skipped:,} requests were skipped (max_in_flight "
                         f"{self.max_in_flight} reached): the server did not keep up and the "
                         "percentiles leave those requests out")
        return "\n".join(lines)

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        """A JSON-ready summary (NaN becomes null); ``samples`` adds the per-request arrays."""
        out: dict[str, Any] = {
            "url": self.url,
            "target_rate": self.target_rate,
            "achieved_rate": self.achieved_rate,
            "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
            "max_in_flight": self.max_in_flight,
            "timeout_s": self.timeout_s,
            "requests": self.requests,
            "status_counts": {str(c): n for c, n in self.status_counts.items()},
            "2xx": self.count_class(2),
            "4xx": self.count_class(4),
            "5xx": self.count_class(5),
            "transport_errors": self.transport_errors,
            "errors": dict(self.errors),
            "skipped": self.skipped,
            "service_ms": self.percentiles("service"),
            "intended_ms": self.percentiles("intended"),
        }
        if samples:
            out["samples"] = {
                "scheduled_s": self.scheduled.tolist(),
                "sent_s": self.sent.tolist(),
                "service_s": self.service_latency.tolist(),
                "intended_s": self.intended_latency.tolist(),
                "status": self.status.tolist(),
            }
        return _json_safe(out)

    def save_plot(self, path: str | Path) -> Path:
        """Write latency-over-time (scatter) and a latency histogram with p50/p99 lines to
        ``path`` (PNG, matplotlib Agg; no display needed); return the path."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig = Figure(figsize=(12, 4.5), layout="constrained")
        FigureCanvasAgg(fig)
        over_time, hist = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
        ok = self.status > 0
        service_ms, intended_ms = self.service_latency * 1e3, self.intended_latency * 1e3
        for kind, values, colour in (("intended", intended_ms, "tab:orange"),
                                     ("service", service_ms, "tab:blue")):
            good = ok & (self.status < 500)
            over_time.scatter(self.scheduled[good], values[good], s=3, alpha=0.5, color=colour,
                              label=kind, linewidths=0)
        bad = ok & (self.status >= 500)
        if bad.any():
            over_time.scatter(self.scheduled[bad], service_ms[bad], s=12, marker="x",
                              color="tab:red", label="5xx")
        if (~ok).any():
            top = float(np.nanmax(intended_ms)) if ok.any() else self.timeout_s * 1e3
            over_time.scatter(self.scheduled[~ok], np.full((~ok).sum(), top), s=12, marker="|",
                              color="black", label="transport error")
        over_time.set_xlabel("scheduled send time (s)")
        over_time.set_ylabel("latency (ms)")
        if ok.any() and np.nanmin(service_ms[ok]) > 0:
            over_time.set_yscale("log")
        over_time.set_title(f"{self.url}  target {self.target_rate:g}/s, "
                            f"achieved {self.achieved_rate:.1f}/s")
        over_time.legend(loc="upper right", markerscale=3, fontsize="small")
        if ok.any():
            low, top = float(np.nanmin(service_ms[ok])), float(np.nanmax(intended_ms[ok]))
            if low > 0 and top > 1.01 * low:  # log bins: the tail must not squash the bulk
                bins = np.geomspace(low * 0.98, top * 1.02, 60)
                hist.set_xscale("log")
            else:
                bins = np.linspace(0.0, top * 1.02 + 1e-9, 60)
            for kind, values, colour in (("service", service_ms, "tab:blue"),
                                         ("intended", intended_ms, "tab:orange")):
                hist.hist(values[ok], bins=bins, histtype="step", color=colour, label=kind)
                pct = self.percentiles(kind)
                for name, style in (("p50", "--"), ("p99", ":")):
                    hist.axvline(pct[name], color=colour, linestyle=style,
                                 label=f"{kind} {name} {pct[name]:.1f} ms")
            hist.set_yscale("log")
            hist.legend(fontsize="small")
        else:
            hist.text(0.5, 0.5, "no responses", ha="center", va="center",
                      transform=hist.transAxes)
        hist.set_xlabel("latency (ms)")
        hist.set_ylabel("requests")
        fig.savefig(path, dpi=110)
        return path


# -- the generator -------------------------------------------------------------------------------


def _validate(rate: float, duration_s: float, timeout_s: float, max_in_flight: int,
              warmup_s: float) -> int:
    for name, value in (("rate", rate), ("duration_s", duration_s), ("timeout_s", timeout_s)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not (math.isfinite(warmup_s) and warmup_s >= 0):
        raise ValueError(f"warmup_s must be >= 0, got {warmup_s!r}")
    if not (isinstance(max_in_flight, int) and max_in_flight >= 1):
        raise ValueError(f"max_in_flight must be an integer >= 1, got {max_in_flight!r}")
    total = math.ceil((warmup_s + duration_s) * rate - 1e-9)
    if total > MAX_REQUESTS:
        raise ValueError(f"rate x (warmup + duration) = {total:,} requests, more than the "
                         f"{MAX_REQUESTS:,} one run may hold; shorten the run or lower the rate")
    return total


async def arun_loadtest(url: str, rate: float, duration_s: float, make_body: MakeBody, *,
                        timeout_s: float = 5.0, max_in_flight: int = 256, warmup_s: float = 0.0,
                        progress: bool = False) -> LoadtestResult:
    """``run_loadtest`` for callers already inside an event loop."""
    import aiohttp

    check_loopback(url)
    total = _validate(rate, duration_s, timeout_s, max_in_flight, warmup_s)
    first_measured = math.ceil(warmup_s * rate - 1e-9)  # request i is measured iff i/rate >= warmup
    n = total - first_measured
    scheduled = np.full(n, np.nan)
    sent = np.full(n, np.nan)
    done = np.full(n, np.nan)
    status = np.zeros(n, dtype=np.int16)
    kept = np.zeros(n, dtype=bool)
    errors: Counter[str] = Counter()
    skipped = 0
    in_flight = 0
    headers = {"Content-Type": "application/json"}

    connector = aiohttp.TCPConnector(limit=max_in_flight, limit_per_host=max_in_flight,
                                     keepalive_timeout=max(30.0, timeout_s))
    async with aiohttp.ClientSession(connector=connector, trust_env=False,
                                     timeout=aiohttp.ClientTimeout(total=None)) as session:

        async def one(j: int, data: bytes) -> None:
            nonlocal in_flight
            started = time.perf_counter()
            try:
                async with asyncio.timeout(timeout_s):
                    async with session.post(url, data=data, headers=headers) as response:
                        await response.read()
                        code = response.status
                ended = time.perf_counter()
            except TimeoutError:
                code, ended = 0, math.nan
                if j >= 0:
                    errors["timeout"] += 1
            except (aiohttp.ClientError, OSError) as exc:
                code, ended = 0, math.nan
                if j >= 0:
                    errors[type(exc).__name__] += 1
            finally:
                in_flight -= 1
            if j >= 0:
                sent[j], done[j], status[j] = started, ended, code

        tasks: set[asyncio.Task[None]] = set()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="req", desc="loadtest", disable=None, leave=False,
                       mininterval=0.5)
        t0 = time.perf_counter() + 0.05  # a little lead so request 0 is not already late
        try:
            for i in range(total):
                due = t0 + i / rate
                j = i - first_measured
                # Built before waiting, so a slow make_body eats into the wait, not the schedule.
                body = json.dumps(make_body(i), separators=(",", ":")).encode()
                delay = due - time.perf_counter()
                await asyncio.sleep(delay if delay > 0 else 0)  # always yield: started sends run
                if bar is not None and i % 64 == 0:
                    bar.update(i - bar.n)
                if in_flight >= max_in_flight:
                    skipped += j >= 0
                    continue
                if j >= 0:
                    scheduled[j], kept[j] = due, True
                in_flight += 1
                task = asyncio.create_task(one(j, body))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            if bar is not None:
                bar.update(total - bar.n)
                bar.close()
            pending = list(tasks)  # only when the loop above raised (e.g. make_body did)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    window_start = t0 + first_measured / rate
    scheduled, sent, done, status = scheduled[kept], sent[kept], done[kept], status[kept]
    return LoadtestResult(
        url=url,
        target_rate=float(rate),
        duration_s=float(duration_s),
        warmup_s=float(warmup_s),
        scheduled=scheduled - window_start,
        sent=sent - window_start,
        service_latency=done - sent,
        intended_latency=done - scheduled,
        status=status.astype(np.int32),
        errors=dict(errors),
        skipped=int(skipped),
        max_in_flight=max_in_flight,
        timeout_s=float(timeout_s),
    )


def run_loadtest(url: str, rate: float, duration_s: float, make_body: MakeBody, *,
                 timeout_s: float = 5.0, max_in_flight: int = 256, warmup_s: float = 0.0,
                 progress: bool = False) -> LoadtestResult:
    """POST ``make_body(i)`` (JSON) to ``url`` at a fixed ``rate`` for ``warmup_s + duration_s``
    seconds, open loop (request ``i`` is due at ``t0 + i / rate`` whatever the responses do),
    with at most ``max_in_flight`` outstanding (a due request beyond that is skipped and
    counted) and each request abandoned after ``timeout_s``. One aiohttp session, keep-alive.
    Only loopback URLs are accepted (``ValueError`` otherwise). Blocks; returns the measured
    window. ``make_body`` runs on the sending loop, so keep it cheap."""
    return asyncio.run(arun_loadtest(url, rate, duration_s, make_body, timeout_s=timeout_s,
                                     max_in_flight=max_in_flight, warmup_s=warmup_s,
                                     progress=progress))


# -- sweep ---------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    """A rate sweep: one result per rate tried, in order, and the highest rate that kept up."""

    results: list[LoadtestResult]
    best_rate: float | None
    p99_limit_ms: float

    def table(self) -> str:
        """One line per rate: target, achieved, intended/service p99, verdict."""
        lines = [f"rate sweep (limit: intended p99 <= {self.p99_limit_ms:g} ms, no 5xx, no "
                 "transport errors, no skips, >= 90% of the target rate)",
                 f"  {'target/s':>10} {'achieved/s':>11} {'requests':>9} {'svc p99':>9} "
                 f"{'int p99':>9}  verdict"]
        for result in self.results:
            problems = result.problems(self.p99_limit_ms)
            lines.append(f"  {result.target_rate:>10,.1f} {result.achieved_rate:>11,.1f} "
                         f"{result.requests:>9,} {result.percentiles('service')['p99']:>9.2f} "
                         f"{result.percentiles('intended')['p99']:>9.2f}  "
                         + ("ok" if not problems else "FAIL: " + "; ".join(problems)))
        lines.append("  max rate that kept up: "
                     + ("none" if self.best_rate is None else f"{self.best_rate:,.1f}/s"))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return _json_safe({"p99_limit_ms": self.p99_limit_ms, "best_rate": self.best_rate,
                           "results": [r.to_dict() for r in self.results]})

    def save_plot(self, path: str | Path) -> Path:
        """p99 (service and intended) against target rate, with the limit; return the path."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig = Figure(figsize=(7, 4.5), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        rates = [r.target_rate for r in self.results]
        for kind, colour in (("service", "tab:blue"), ("intended", "tab:orange")):
            ax.plot(rates, [r.percentiles(kind)["p99"] for r in self.results], "o-",
                    color=colour, label=f"{kind} p99")
        ax.axhline(self.p99_limit_ms, color="tab:red", linestyle="--",
                   label=f"limit {self.p99_limit_ms:g} ms")
        if self.best_rate is not None:
            ax.axvline(self.best_rate, color="tab:green", linestyle=":",
                       label=f"max ok {self.best_rate:g}/s")
        ax.set_xlabel("target rate (requests/s)")
        ax.set_ylabel("p99 latency (ms)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize="small")
        fig.savefig(path, dpi=110)
        return path


def find_max_rate(url: str, make_body: MakeBody, *, start_rate: float = 50.0,
                  factor: float = 1.5, step: float | None = None, duration_s: float = 10.0,
                  p99_limit_ms: float = 50.0, max_rate: float = 20_000.0,
                  timeout_s: float = 5.0, max_in_flight: int = 256, warmup_s: float = 1.0,
                  progress: bool = False,
                  on_result: Callable[[LoadtestResult], None] | None = None) -> SweepResult:
    """Run ``run_loadtest`` at ``start_rate``, then each next rate (``+ step`` when given, else
    ``x factor``) up to ``max_rate``, stopping at the first rate that does not keep up (see
    ``LoadtestResult.problems``: intended p99 over ``p99_limit_ms``, any 5xx or transport error,
    skips, or under 90% of the target sent). ``best_rate`` is the last rate that kept up."""
    if not (math.isfinite(start_rate) and start_rate > 0):
        raise ValueError(f"start_rate must be > 0, got {start_rate!r}")
    if step is None and not factor > 1:
        raise ValueError(f"factor must be > 1 (or give step), got {factor!r}")
    if step is not None and not step > 0:
        raise ValueError(f"step must be > 0, got {step!r}")
    if max_rate < start_rate:
        raise ValueError(f"max_rate {max_rate:g} is below start_rate {start_rate:g}")
    results: list[LoadtestResult] = []
    best: float | None = None
    rate = float(start_rate)
    while rate <= max_rate * (1 + 1e-9):
        result = run_loadtest(url, rate, duration_s, make_body, timeout_s=timeout_s,
                              max_in_flight=max_in_flight, warmup_s=warmup_s, progress=progress)
        results.append(result)
        if on_result is not None:
            on_result(result)
        if result.problems(p99_limit_ms):
            break
        best = rate
        rate = rate + step if step is not None else rate * factor
    return SweepResult(results=results, best_rate=best, p99_limit_ms=float(p99_limit_ms))


# -- request bodies ------------------------------------------------------------------------------


def recommend_bodies(n_users: int, dim: int | None, k: int, seed: int,
                     policy: str | None = None) -> MakeBody:
    """A ``make_body(i)`` for ``POST /recommend``: user ``u<n>`` drawn uniformly from
    ``n_users``, ``k`` items, and a dense context of ``dim`` floats fixed per user (the same
    user always sends the same features); ``dim=None`` sends no context, so the server looks
    the user up in its feature table. Deterministic in ``(seed, i)``."""
    from recsys.serving.schemas import MAX_K

    if not (isinstance(n_users, int) and n_users >= 1):
        raise ValueError(f"n_users must be an integer >= 1, got {n_users!r}")
    if dim is not None and not (isinstance(dim, int) and 1 <= dim <= 4096):
        raise ValueError(f"dim must be 1..4096 (the schema's limit) or None, got {dim!r}")
    if not (isinstance(k, int) and 1 <= k <= MAX_K):
        raise ValueError(f"k must be 1..{MAX_K}, got {k!r}")
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


# -- CLI -----------------------------------------------------------------------------------------


def _default_url(settings: Any) -> str:
    serve = getattr(settings, "serve", None)
    port = getattr(serve, "port", None) or DEFAULT_PORT
    host = str(getattr(serve, "host", "") or "127.0.0.1")
    try:
        check_loopback(f"http://{host}/")
    except ValueError:
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
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        print("recsys loadtest: needs the aiohttp client: pip install aiohttp", file=sys.stderr)
        return 2
    settings = args.settings
    url = args.url or _default_url(settings)
    dim = None if args.no_context else (args.dim if args.dim is not None else settings.stream.dim)
    try:
        endpoint, health_url = endpoint_urls(url)
        make_body = recommend_bodies(args.users, dim, args.k, args.seed, args.policy)
        _validate(args.rate, args.duration, args.timeout, args.max_in_flight, args.warmup)
        if args.sweep:
            if args.max_rate < args.rate:
                raise ValueError(f"--max-rate {args.max_rate:g} is below --rate {args.rate:g}")
            if not args.factor > 1:
                raise ValueError(f"--factor must be > 1, got {args.factor:g}")
    except ValueError as exc:
        print(f"recsys loadtest: {exc}", file=sys.stderr)
        return 2
    plot = Path(args.plot) if args.plot else Path(settings.data_dir) / "loadtest.png"

    try:
        health = wait_for_health(health_url, timeout_s=args.health_timeout)
    except TimeoutError as exc:
        print(f"recsys loadtest: {exc}", file=sys.stderr)
        return 1
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
            progress=long_run,
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
                          progress=long_run)
    print(result.table())
    print(f"plot: {result.save_plot(plot)}")
    if args.json:
        _write_json(args.json, result.to_dict())
        print(f"json: {args.json}")
    return 1 if result.count_class(5) or result.transport_errors else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``recsys loadtest`` (entry point ``recsys.serving.loadtest:register``)."""
    parser = subparsers.add_parser(
        "loadtest",
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
    parser.set_defaults(func=run_cli)
