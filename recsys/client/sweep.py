"""The rate sweep: load at rising rates until the server stops keeping up; the last rate that
kept up is the highest sustainable rate (``recsys loadtest --sweep``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.client.load import LoadtestResult, MakeBody, json_safe, run_loadtest
from recsys.validation import message


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
        return json_safe({"p99_limit_ms": self.p99_limit_ms, "best_rate": self.best_rate,
                          "results": [r.to_dict() for r in self.results]})

    def save_plot(self, path: str | Path) -> Path:
        """p99 (service and intended) against target rate, with the limit; return the path."""
        from recsys.client.plots import plot_sweep

        return plot_sweep(self, path)


def sweep_rates(start_rate: float, max_rate: float, *, factor: float = 1.5,
                step: float | None = None) -> list[float]:
    """The rates a sweep tries, in order: ``start_rate``, then each next one ``+ step`` when
    given, else ``x factor``, up to ``max_rate`` (included)."""
    if not (math.isfinite(start_rate) and start_rate > 0):
        raise ValueError(message("start_rate", "a number > 0", repr(start_rate)))
    if step is None and not factor > 1:
        raise ValueError(message("factor", "a number > 1 (or give step)", repr(factor)))
    if step is not None and not step > 0:
        raise ValueError(message("step", "a number > 0", repr(step)))
    if not max_rate >= start_rate:
        raise ValueError(message("max_rate", f"at least start_rate ({start_rate:g})",
                                 f"{max_rate:g}"))
    rates = []
    rate = float(start_rate)
    while rate <= max_rate * (1 + 1e-9):
        rates.append(rate)
        rate = rate + step if step is not None else rate * factor
    return rates


def find_max_rate(url: str, make_body: MakeBody, *, start_rate: float = 50.0,
                  factor: float = 1.5, step: float | None = None, duration_s: float = 10.0,
                  p99_limit_ms: float = 50.0, max_rate: float = 20_000.0,
                  timeout_s: float = 5.0, max_in_flight: int = 256, warmup_s: float = 1.0,
                  progress: bool = False,
                  on_result: Callable[[LoadtestResult], None] | None = None,
                  token: str | None = None) -> SweepResult:
    """``run_loadtest`` at each of ``sweep_rates(...)``, stopping at the first rate that does not
    keep up (see ``LoadtestResult.problems``: intended p99 over ``p99_limit_ms``, any 5xx or
    transport error, skips, or under 90% of the target sent). ``best_rate`` is the last rate that
    kept up. ``token``: the server's ``serve.auth_token``."""
    results: list[LoadtestResult] = []
    best: float | None = None
    for rate in sweep_rates(start_rate, max_rate, factor=factor, step=step):
        result = run_loadtest(url, rate, duration_s, make_body, timeout_s=timeout_s,
                              max_in_flight=max_in_flight, warmup_s=warmup_s, progress=progress,
                              token=token)
        results.append(result)
        if on_result is not None:
            on_result(result)
        if result.problems(p99_limit_ms):
            break
        best = rate
    return SweepResult(results=results, best_rate=best, p99_limit_ms=float(p99_limit_ms))
