"""Bandit benchmark: recsys policies beside Vowpal Wabbit and MABWiser on one synthetic problem.

Problem (all rows): 50 actions, d = 32, Bernoulli rewards from a logistic model
(``simulators.linear_logistic``), 200k events by default. recsys is measured in this process;
the peers run in their own virtual environment (``tests/benchmarks/.peers-venv``, created by
``bash tests/benchmarks/setup_peers.sh``) through ``peers_runner.py``, on the same contexts and
the same uniform reward draws. A peer that cannot run prints ``unavailable: <reason>``.

BLAS is limited to one thread on both sides (one request per core, as a serving process would
run); the machine may be shared, so absolute numbers are noisy — ratios measured in the same run
are the point.

Usage: python tests/benchmarks/bench_bandits.py [--events 200000] [--skip-regret]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

import regret  # noqa: E402

from recsys.bandits import DenseStats, DiagLinTS, DiagLinUCB  # noqa: E402

PEERS_PYTHON = HERE / ".peers-venv" / "bin" / "python"
N_ACTIONS, DIM = 50, 32


def best_of(fn: Callable[[], float], repeats: int = 3) -> float:
    """Smallest wall time of ``repeats`` runs (the least disturbed by other load)."""
    return min(fn() for _ in range(repeats))


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ---------------------------------------------------------------------------- recsys side
def ours_learn(prob: dict) -> float:
    """Batch ``learn`` of all events at once into DiagLinUCB statistics: events/s."""
    x, theta, u = prob["x"], prob["theta"], prob["u"]
    items = np.random.default_rng(0).integers(0, N_ACTIONS, x.shape[0])
    r = (u < 1.0 / (1.0 + np.exp(-(x * theta[items]).sum(1)))).astype(float)

    def run() -> float:
        policy = DiagLinUCB().init(np.arange(N_ACTIONS), DIM)
        return timed(lambda: policy.learn(x, items, r))

    return x.shape[0] / best_of(run)


def ours_closed_loop(prob: dict, make: Callable[[], object], n: int, batch: int = 1000) -> float:
    """recommend (k=1, with propensities) + learn on batches of ``batch``: events/s."""
    x, theta, u = prob["x"][:n], prob["theta"], prob["u"][:n]

    def run() -> float:
        policy = make().init(np.arange(N_ACTIONS), DIM)
        start = time.perf_counter()
        for s in range(0, n, batch):  # one call per batch of requests
            xb = x[s:s + batch]
            a = policy.recommend(xb, k=1).items[:, 0]
            mu = 1.0 / (1.0 + np.exp(-(xb * theta[a]).sum(1)))
            policy.learn(xb, a, (u[s:s + batch] < mu).astype(float))
        return time.perf_counter() - start

    return n / best_of(run)


def ours_per_event(prob: dict, make: Callable[[], object], n: int, single: bool) -> float:
    """One request, one update, ``n`` times: microseconds per event."""
    x, theta, u = prob["x"][:n], prob["theta"], prob["u"][:n]

    def run() -> float:
        policy = make().init(np.arange(N_ACTIONS), DIM)
        start = time.perf_counter()
        for t in range(n):  # the per-event loop is what is being measured
            if single:
                a = int(policy.recommend_one(x[t]).items[0, 0])
                mu = 1.0 / (1.0 + np.exp(-(x[t] @ theta[a])))
                policy.learn_one(x[t], a, float(u[t] < mu))
            else:
                a = policy.recommend(x[t:t + 1], k=1).items[:, 0]
                mu = 1.0 / (1.0 + np.exp(-(x[t] @ theta[a[0]])))
                policy.learn(x[t:t + 1], a, [float(u[t] < mu)])
        return time.perf_counter() - start

    return 1e6 * best_of(run) / n


def ours_scoring(n_items: int = 100_000, dtype: type = np.float32,
                 requests: int = 1000) -> tuple[float, float]:
    """Top-10 (with exact ε-mix propensities) of ``n_items`` for one request: p50, p99 ms."""
    rng = np.random.default_rng(3)
    policy = DiagLinUCB(alpha=1.0, epsilon=0.05, random_state=0).init(
        np.arange(n_items), DIM, dtype=dtype)
    xs = rng.normal(size=(200_000, DIM))
    policy.learn(xs, rng.integers(0, n_items, 200_000), rng.random(200_000))
    q = rng.normal(size=(requests, DIM))
    for i in range(20):
        policy.recommend(q[i], k=10)
    lat = np.empty(requests)
    for i in range(requests):  # one request at a time: this is a latency measurement
        t = time.perf_counter()
        policy.recommend(q[i], k=10)
        lat[i] = time.perf_counter() - t
    return 1e3 * float(np.percentile(lat, 50)), 1e3 * float(np.percentile(lat, 99))


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def ours_memory(n_items: int = 1_000_000, dim: int = 64) -> dict[str, float]:
    """Bytes held by 1M × 64 statistics (arrays, and resident after touching every page)."""
    out = {}
    for dtype in (np.float64, np.float32):
        before = rss_bytes()
        stats = DenseStats.empty(np.arange(n_items), dim, dtype=dtype)
        stats.decay(1.0)  # writes every page, so resident memory is real
        out[np.dtype(dtype).name] = stats.nbytes
        out[np.dtype(dtype).name + "_rss"] = rss_bytes() - before
        del stats
    return out


# ---------------------------------------------------------------------------- peers side
def peer(task: str, problem_path: Path, n: int, workdir: Path) -> dict | str:
    if not PEERS_PYTHON.exists():
        return "unavailable: peers venv missing (bash tests/benchmarks/setup_peers.sh)"
    proc = subprocess.run(
        [str(PEERS_PYTHON), str(HERE / "peers_runner.py"), task, str(problem_path), str(n),
         str(workdir)],
        capture_output=True, text=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"unavailable: {last[:120]}"
    return json.loads(proc.stdout)


# ---------------------------------------------------------------------------- table
def fmt_rate(v: float) -> str:
    return f"{v / 1e6:.2f}M/s" if v >= 1e6 else f"{v / 1e3:.1f}k/s" if v >= 1e3 else f"{v:.0f}/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--skip-regret", action="store_true")
    parser.add_argument("--scoring-only", type=int, metavar="RUNS", default=0,
                        help="only repeat the 100k-item scoring latency RUNS times (noise check)")
    args = parser.parse_args()
    if args.scoring_only:
        for run in range(args.scoring_only):
            p50, p99 = ours_scoring(dtype=np.float32)
            print(f"run {run}: top-10 of 100k, float32: p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
                  f"load average {os.getloadavg()[0]:.2f}")
        return
    n = args.events
    prob = regret.make_problem("gaussian", n)
    rows: list[tuple[str, str, str, str, str]] = []

    def row(metric: str, ours: str, peer_text: str, ratio: str, target: str) -> None:
        rows.append((metric, ours, peer_text, ratio, target))
        print(f"  measured: {metric}", file=sys.stderr)

    ucb = lambda: DiagLinUCB(alpha=1.0, epsilon=0.05, random_state=0)  # noqa: E731
    ts = lambda: DiagLinTS(v=0.5, n_mc_draws=100, random_state=0)  # noqa: E731

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = work / "problem.npz"
        np.savez(path, **prob)

        learn = ours_learn(prob)
        row("learn throughput, batch learn (DiagLinUCB, d=32)", fmt_rate(learn), "-", "-",
            f">= 2M/s: {'met' if learn >= 2e6 else 'MISSED'}")

        n_native = min(n, 50_000)
        vw_native = peer("vw_native", path, n_native, work)
        native_ok = not isinstance(vw_native, str)
        row(f"VW native reader+learner, --cb_explore_adf ({n_native} ex. file)", "-",
            f"VW {fmt_rate(vw_native['events_per_s'])}" if native_ok else vw_native,
            f"recsys learn {learn / vw_native['events_per_s']:.0f}x" if native_ok else "-",
            "reference")

        mab = peer("mabwiser_batch", path, min(n, 20_000), work)
        loop = ours_closed_loop(prob, ucb, n)
        loop_ts = ours_closed_loop(prob, ts, min(n, 50_000))
        mab_text = mab if isinstance(mab, str) else (
            f"MABWiser LinUCB {fmt_rate(mab['events_per_s'])}")
        ratio = "-" if isinstance(mab, str) else f"{loop / mab['events_per_s']:.0f}x"
        row("closed loop recommend+learn, batches of 1000 (DiagLinUCB eps=.05, exact props)",
            fmt_rate(loop), mab_text, ratio,
            ">= 10x MABWiser" + ("" if isinstance(mab, str) else
                                 (": met" if loop >= 10 * mab["events_per_s"] else ": MISSED")))
        row("  same, DiagLinTS with 100-draw Monte Carlo propensities", fmt_rate(loop_ts),
            mab_text, "-" if isinstance(mab, str) else f"{loop_ts / mab['events_per_s']:.0f}x",
            "info")

        vw_pe = peer("vw_per_event", path, min(n, 5000), work)
        mab_pe = peer("mabwiser_per_event", path, 300, work)
        one = ours_per_event(prob, ucb, 5000, single=True)
        batch1 = ours_per_event(prob, ucb, 3000, single=False)
        ts1 = ours_per_event(prob, ts, 1000, single=False)
        vw_text = vw_pe if isinstance(vw_pe, str) else (
            f"VW eps-greedy {vw_pe['us_per_event']:.0f} us ({fmt_rate(vw_pe['events_per_s'])})")
        vw_us = None if isinstance(vw_pe, str) else vw_pe["us_per_event"]
        row("per-event decision, recommend_one+learn_one (DiagLinUCB eps=.05)",
            f"{one:.0f} us ({fmt_rate(1e6 / one)})", vw_text,
            "-" if vw_us is None else f"{vw_us / one:.1f}x",
            ">= 10x VW" + ("" if vw_us is None else (": met" if vw_us >= 10 * one else ": MISSED")))
        row("  same through the batch API with a batch of 1", f"{batch1:.0f} us", vw_text,
            "-" if vw_us is None else f"{vw_us / batch1:.1f}x", "info")
        row("  DiagLinTS, 100-draw MC propensities, batch of 1", f"{ts1:.0f} us", vw_text,
            "-" if vw_us is None else f"{vw_us / ts1:.1f}x", "info")
        row("  MABWiser LinUCB per event (predict+partial_fit)", "-",
            mab_pe if isinstance(mab_pe, str) else
            f"{mab_pe['us_per_event']:.0f} us ({fmt_rate(mab_pe['events_per_s'])})",
            "-" if isinstance(mab_pe, str) else f"recsys {mab_pe['us_per_event'] / one:.0f}x",
            "info")

    p50, p99 = ours_scoring(dtype=np.float32)
    p50d, p99d = ours_scoring(dtype=np.float64, requests=300)
    row("scoring top-10 of 100k items, d=32, 1 request (float32 stats)",
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms", "-", "-",
        f"p99 <= 5 ms: {'met' if p99 <= 5 else 'MISSED'}")
    row("  same with float64 statistics", f"p50 {p50d:.2f} ms, p99 {p99d:.2f} ms", "-", "-",
        "info")

    mem = ours_memory()
    gib = 2.0**30
    verdict = ("met" if mem["float64"] <= 1e9 else
               "met in GiB only" if mem["float64"] <= gib else "MISSED")
    row("memory, 1M items x d=64 statistics (float64)",
        f"{mem['float64'] / gib:.3f} GiB ({mem['float64'] / 1e9:.3f} GB), "
        f"RSS +{mem['float64_rss'] / gib:.3f} GiB", "-", "-",
        f"<= 1 GB: {verdict}")
    row("  same with float32 statistics",
        f"{mem['float32'] / gib:.3f} GiB, RSS +{mem['float32_rss'] / gib:.3f} GiB", "-", "-",
        f"<= 1 GB: {'met' if mem['float32'] <= 1e9 else 'MISSED'}")

    if not args.skip_regret:
        exp = regret.experiment(n, with_vw=True)
        for kind, table in exp["table"].items():
            vw = table.get("VW SquareCB (per event)")
            for name in ("DiagLinTS", "DiagLinUCB", "DiagLinTS centred", "DiagLinUCB centred",
                         "LinUCB (full)", "LinTS (full)", "SquareCB (IGW)", "eps-greedy 0.05",
                         "random"):
                v = table[name]
                if isinstance(vw, float):
                    peer_text, ratio = f"VW SquareCB {vw:.0f}", f"{v / vw:.2f}x VW"
                    target = ("no worse than VW: " + ("met" if v <= vw else "MISSED")
                              if name.startswith("Diag") else "info")
                else:
                    peer_text, ratio, target = (vw or "-"), "-", "info"
                row(f"regret after {n} rounds, {kind} contexts: {name}", f"{v:.0f}", peer_text,
                    ratio, target)
        for kind in regret.PROBLEMS:
            acc = regret.diag_vs_full_accuracy(kind)
            row(f"mean-score RMSE vs truth, {kind}, 50k uniform logs: Diag / centred / full",
                f"{acc['diag_rmse']:.3f} / {acc['centred_rmse']:.3f} / {acc['full_rmse']:.3f}",
                "-", "-", "Diag-vs-full gap")
        print(f"regret plot: {exp['plot']}", file=sys.stderr)

    print(f"load average during the run: {os.getloadavg()} on {os.cpu_count()} cores")
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    header = ("metric", "recsys", "peer (same run)", "ratio", "target")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    line = " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("-" * len(line))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
