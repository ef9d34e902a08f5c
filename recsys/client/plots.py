"""The load generator's plots (PNG through matplotlib's Agg canvas: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from recsys.client.load import LoadtestResult
    from recsys.client.sweep import SweepResult


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_latencies(result: LoadtestResult, path: str | Path) -> Path:
    """Latency over time (scatter; 5xx and transport errors marked) and a latency histogram with
    p50/p99 lines, service and intended; written to ``path``, which is returned."""
    fig = _figure(12, 4.5)
    over_time, hist = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    ok = result.status > 0
    service_ms, intended_ms = result.service_latency * 1e3, result.intended_latency * 1e3
    for kind, values, colour in (("intended", intended_ms, "tab:orange"),
                                 ("service", service_ms, "tab:blue")):
        good = ok & (result.status < 500)
        over_time.scatter(result.scheduled[good], values[good], s=3, alpha=0.5, color=colour,
                          label=kind, linewidths=0)
    bad = ok & (result.status >= 500)
    if bad.any():
        over_time.scatter(result.scheduled[bad], service_ms[bad], s=12, marker="x",
                          color="tab:red", label="5xx")
    if (~ok).any():
        top = float(np.nanmax(intended_ms)) if ok.any() else result.timeout_s * 1e3
        over_time.scatter(result.scheduled[~ok], np.full((~ok).sum(), top), s=12, marker="|",
                          color="black", label="transport error")
    over_time.set_xlabel("scheduled send time (s)")
    over_time.set_ylabel("latency (ms)")
    if ok.any() and np.nanmin(service_ms[ok]) > 0:
        over_time.set_yscale("log")
    over_time.set_title(f"{result.url}  target {result.target_rate:g}/s, "
                        f"achieved {result.achieved_rate:.1f}/s")
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
            pct = result.percentiles(kind)
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
    return _save(fig, path)


def plot_sweep(sweep: SweepResult, path: str | Path) -> Path:
    """p99 (service and intended) against target rate, with the limit and the best rate;
    written to ``path``, which is returned."""
    fig = _figure(7, 4.5)
    ax = fig.subplots()
    rates = [r.target_rate for r in sweep.results]
    for kind, colour in (("service", "tab:blue"), ("intended", "tab:orange")):
        ax.plot(rates, [r.percentiles(kind)["p99"] for r in sweep.results], "o-",
                color=colour, label=f"{kind} p99")
    ax.axhline(sweep.p99_limit_ms, color="tab:red", linestyle="--",
               label=f"limit {sweep.p99_limit_ms:g} ms")
    if sweep.best_rate is not None:
        ax.axvline(sweep.best_rate, color="tab:green", linestyle=":",
                   label=f"max ok {sweep.best_rate:g}/s")
    ax.set_xlabel("target rate (requests/s)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.legend(fontsize="small")
    return _save(fig, path)
