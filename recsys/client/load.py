"""An open-loop, fixed-rate HTTP load generator and its result.

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
a run with skips did not deliver its target rate and says so). It only ever talks to a loopback
address (``recsys.client.guard``).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsys.client.guard import check_loopback
from recsys.client.http import TRANSPORT_ERRORS, open_session
from recsys.validation import message

MAX_REQUESTS = 10_000_000  # one run's sample arrays stay well under 1 GB
PERCENTILES: tuple[tuple[str, float], ...] = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0),
                                              ("p99.9", 99.9))

MakeBody = Callable[[int], dict[str, Any]]


def _ms(values: np.ndarray) -> dict[str, float]:
    """``PERCENTILES`` and the max of ``values`` (seconds) in ms: observed samples, never
    interpolated (NaN when empty)."""
    if values.size == 0:
        return {name: math.nan for name, _ in PERCENTILES} | {"max": math.nan}
    qs = np.percentile(values, [q for _, q in PERCENTILES], method="higher") * 1e3
    out = {name: float(v) for (name, _), v in zip(PERCENTILES, qs, strict=True)}
    out["max"] = float(values.max() * 1e3)
    return out


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
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
        return json_safe(out)

    def save_plot(self, path: str | Path) -> Path:
        """Write latency over time and a latency histogram to ``path`` (PNG); return the path."""
        from recsys.client.plots import plot_latencies

        return plot_latencies(self, path)


def check_run_parameters(rate: float, duration_s: float, timeout_s: float, max_in_flight: int,
                         warmup_s: float) -> int:
    """The number of requests a run sends (warmup included); ``ValueError`` on a bad parameter."""
    for name, value in (("rate", rate), ("duration_s", duration_s), ("timeout_s", timeout_s)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ValueError(message(name, "a positive number", repr(value)))
    if not (math.isfinite(warmup_s) and warmup_s >= 0):
        raise ValueError(message("warmup_s", "a number >= 0", repr(warmup_s)))
    if not (isinstance(max_in_flight, int) and max_in_flight >= 1):
        raise ValueError(message("max_in_flight", "an integer >= 1", repr(max_in_flight)))
    total = math.ceil((warmup_s + duration_s) * rate - 1e-9)
    if total > MAX_REQUESTS:
        raise ValueError(message("rate x (warmup + duration)", f"at most {MAX_REQUESTS:,} requests "
                                 "(one run's sample arrays)", f"{total:,}",
                                 "shorten the run or lower the rate"))
    return total


async def arun_loadtest(url: str, rate: float, duration_s: float, make_body: MakeBody, *,
                        timeout_s: float = 5.0, max_in_flight: int = 256, warmup_s: float = 0.0,
                        progress: bool = False, token: str | None = None) -> LoadtestResult:
    """``run_loadtest`` for callers already inside an event loop."""
    check_loopback(url)
    total = check_run_parameters(rate, duration_s, timeout_s, max_in_flight, warmup_s)
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

    # each request bounds its own time
    async with open_session(max_in_flight, token=token) as session:

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
            except TRANSPORT_ERRORS as exc:
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
            from recsys.progress import progress_bar

            bar = progress_bar(total=total, unit="req", desc="loadtest", leave=False,
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
                 progress: bool = False, token: str | None = None) -> LoadtestResult:
    """POST ``make_body(i)`` (JSON) to ``url`` at a fixed ``rate`` for ``warmup_s + duration_s``
    seconds, open loop (request ``i`` is due at ``t0 + i / rate`` whatever the responses do),
    with at most ``max_in_flight`` outstanding (a due request beyond that is skipped and
    counted) and each request abandoned after ``timeout_s``. One keep-alive session.
    Only loopback URLs are accepted (``ValueError`` otherwise). Blocks; returns the measured
    window. ``make_body`` runs on the sending loop, so keep it cheap. ``token``: the server's
    ``serve.auth_token``, sent as a bearer token."""
    return asyncio.run(arun_loadtest(url, rate, duration_s, make_body, timeout_s=timeout_s,
                                     max_in_flight=max_in_flight, warmup_s=warmup_s,
                                     progress=progress, token=token))
