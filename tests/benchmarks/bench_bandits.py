"""Bandit benchmark: recsys policies beside Vowpal Wabbit and MABWiser on one synthetic problem.

Problem (all rows): 50 actions, d = 32, Bernoulli rewards from a logistic model
(``simulators.linear_logistic``, gaussian contexts). recsys is measured in this process; the
peers run in their own virtual environment (``tests/benchmarks/.peers-venv``, created by
``bash tests/benchmarks/setup_peers.sh``) through ``peers_runner.py``, on the same contexts and
the same uniform reward draws. A peer that cannot run prints ``unavailable: <reason>``.

Fairness rules (issue 7), kept row by row; the ``events x runs`` column shows them:

* the same number of events and the same repetitions on both sides: every timed row is the
  median of ``--repeat`` fresh runs, for recsys and for the peer alike;
* the same work in the timed loop: both sides run the same loop (choose, reward from the shared
  draws, learn; per event also the full expected-reward row for the pseudo-regret). VW consumes
  text, so its loop formats and parses examples each event; the peer is shown as a user runs it
  and, on its own row, net of that text work (measured by a parse-only loop over the same text).
  A model that needs a fit before its first ``predict`` (MABWiser) is fitted on the same 1,000
  warm-start events as recsys, outside the timed region;
* the same algorithm where a target names one: full ``LinUCB`` (recsys.bandits.LinUCB) beside
  MABWiser's ``LinUCB`` (same α = 1, λ = 1); the per-event target against VW is measured on
  ε-greedy (0.05) for both (VW: ``--cb_explore_adf --epsilon 0.05``; both keep a linear model per
  action — VW's by online gradient steps on action×context features, recsys's by ridge
  statistics). Diag-LinUCB and Thompson sampling rows are labelled as different algorithms;
* hyperparameters of the regret table: tuned for every policy and for VW alike (``regret.tune``,
  three values each on a separate tuning problem); the timing rows use fixed settings, the same
  on both sides where the algorithm is the same.

BLAS is limited to one thread on both sides (one request per core, as a serving process would
run); the machine may be shared, so absolute numbers are noisy — ratios measured in the same run
are the point.

Usage: python tests/benchmarks/bench_bandits.py [--quick] [--repeat 3] [--skip-regret]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

import regret  # noqa: E402
from text_table import print_table  # noqa: E402

from recsys.bandits import (  # noqa: E402
    DenseStats,
    DiagLinTS,
    DiagLinUCB,
    EpsilonGreedy,
    LinUCB,
)

PEERS_PYTHON = HERE / ".peers-venv" / "bin" / "python"
N_ACTIONS, DIM = 50, 32
N_WARM = 1000


@dataclass(frozen=True)
class Sizes:
    """Events per timed row (each the same for recsys and its peer)."""

    learn: int = 200_000
    native: int = 50_000
    loop: int = 20_000  # batches of 1000 vs MABWiser
    per_event: int = 5000  # vs VW
    per_event_mab: int = 500  # vs MABWiser, one row at a time
    regret: int = 100_000
    tune: int = 30_000


QUICK = Sizes(learn=50_000, native=10_000, loop=5000, per_event=1000, per_event_mab=200,
              regret=20_000, tune=10_000)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def make_problem(n: int) -> dict[str, np.ndarray]:
    """Contexts, parameters and draws for ``n`` events, plus a warm-start set of ``N_WARM``
    uniformly logged events from the same environment (learned untimed by both sides)."""
    prob = regret.make_problem("gaussian", n + N_WARM)
    x, u = prob["x"], prob["u"]
    warm_a = np.arange(N_WARM) % N_ACTIONS
    warm_x = x[n:]
    warm_r = (u[n:] < sigmoid((warm_x * prob["theta"][warm_a]).sum(1))).astype(float)
    return {"x": x[:n], "theta": prob["theta"], "u": u[:n], "warm_x": warm_x, "warm_a": warm_a,
            "warm_r": warm_r}


def median_seconds(run: Callable[[], float], repeat: int) -> float:
    """Median of ``repeat`` fresh runs (each returns its own timed seconds)."""
    return statistics.median(run() for _ in range(repeat))


# ---------------------------------------------------------------------------- recsys side
def ours_learn(prob: dict, repeat: int) -> float:
    """Batch ``learn`` of all events at once into DiagLinUCB statistics: seconds."""
    x, theta, u = prob["x"], prob["theta"], prob["u"]
    items = np.random.default_rng(0).integers(0, N_ACTIONS, x.shape[0])
    r = (u < sigmoid((x * theta[items]).sum(1))).astype(float)

    def run() -> float:
        policy = DiagLinUCB().init(np.arange(N_ACTIONS), DIM)
        start = time.perf_counter()
        policy.learn(x, items, r)
        return time.perf_counter() - start

    return median_seconds(run, repeat)


def ours_closed_loop(prob: dict, make: Callable[[], object], n: int, batch: int,
                     repeat: int) -> float:
    """recommend (k=1, with propensities) + learn on batches: the loop of peers_runner's
    ``mabwiser_linucb``, after the same warm start. Seconds (median)."""
    x, theta, u = prob["x"][:n], prob["theta"], prob["u"][:n]

    def run() -> float:
        policy = make().init(np.arange(N_ACTIONS), DIM)
        policy.learn(prob["warm_x"], prob["warm_a"], prob["warm_r"])
        start = time.perf_counter()
        for s in range(0, n, batch):  # one call per batch of requests
            xb = x[s:s + batch]
            a = policy.recommend(xb, k=1).items[:, 0]
            mu = sigmoid((xb * theta[a]).sum(1))
            policy.learn(xb, a, (u[s:s + batch] < mu).astype(float))
        return time.perf_counter() - start

    return median_seconds(run, repeat)


def ours_per_event(prob: dict, make: Callable[[], object], n: int, repeat: int,
                   single: bool, warm: bool = False) -> float:
    """One request, one update, ``n`` times: the loop of peers_runner's VW loop (full
    expected-reward row and pseudo-regret per event). Seconds (median)."""
    x, theta, u = prob["x"][:n], prob["theta"], prob["u"][:n]

    def run() -> float:
        policy = make().init(np.arange(N_ACTIONS), DIM)
        if warm:
            policy.learn(prob["warm_x"], prob["warm_a"], prob["warm_r"])
        regret_t = np.empty(n)
        start = time.perf_counter()
        for t in range(n):  # the per-event loop is what is being measured
            if single:
                a = int(policy.recommend_one(x[t]).items[0, 0])
            else:
                a = int(policy.recommend(x[t:t + 1], k=1).items[0, 0])
            mu = sigmoid(theta @ x[t])
            r = 1.0 if u[t] < mu[a] else 0.0
            if single:
                policy.learn_one(x[t], a, r)
            else:
                policy.learn(x[t:t + 1], [a], [r])
            regret_t[t] = mu.max() - mu[a]
        return time.perf_counter() - start

    return median_seconds(run, repeat)


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
def peer(task: str, problem_path: Path, n: int, repeat: int, workdir: Path,
         params: dict | None = None) -> dict | str:
    if not PEERS_PYTHON.exists():
        return "unavailable: peers venv missing (bash tests/benchmarks/setup_peers.sh)"
    proc = subprocess.run(
        [str(PEERS_PYTHON), str(HERE / "peers_runner.py"), task, str(problem_path),
         "--events", str(n), "--repeat", str(repeat), "--params", json.dumps(params or {}),
         "--workdir", str(workdir)],
        capture_output=True, text=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"unavailable: {last[:120]}"
    return json.loads(proc.stdout)


# ---------------------------------------------------------------------------- table
def fmt_rate(v: float) -> str:
    return f"{v / 1e6:.2f}M/s" if v >= 1e6 else f"{v / 1e3:.1f}k/s" if v >= 1e3 else f"{v:.0f}/s"


def fmt_us(seconds: float, n: int) -> str:
    return f"{1e6 * seconds / n:.0f} us ({fmt_rate(n / seconds)})"


def verdict(ratio: float, target: float) -> str:
    return "met" if ratio >= target else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"smaller sizes: {QUICK}")
    parser.add_argument("--repeat", type=int, default=3, help="median of k, both sides")
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
    sizes, k = (QUICK if args.quick else Sizes()), args.repeat
    prob = make_problem(max(sizes.learn, sizes.native, sizes.loop, sizes.per_event))
    rows: list[tuple[str, ...]] = []

    def row(metric: str, runs: str, ours: str, peer_text: str, ratio: str, target: str) -> None:
        rows.append((metric, runs, ours, peer_text, ratio, target))
        print(f"  measured: {metric}", file=sys.stderr)

    def runs(n: int, peer_too: bool = True) -> str:
        return f"{n:,} x {k}" + (" both" if peer_too else "")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = work / "problem.npz"
        np.savez(path, **prob)

        learn = sizes.learn / ours_learn(prob, k)
        row("learn throughput, batch learn (DiagLinUCB, d=32)", runs(sizes.learn, False),
            fmt_rate(learn), "-", "-", f">= 2M/s: {'met' if learn >= 2e6 else 'MISSED'}")
        native = peer("vw_native", path, sizes.native, k, work)
        row("  VW's C++ reader+learner on a text file (--cb_explore_adf -q UA; parses text, "
            "other model: reference, no ratio)", runs(sizes.native), "-",
            native if isinstance(native, str) else f"VW {fmt_rate(native['events_per_s'])}",
            "-", "reference")

        # Batches of 1000 against MABWiser: the same algorithm first.
        mab = peer("mabwiser_linucb", path, sizes.loop, k, work,
                   {"batch": 1000, "alpha": 1.0, "l2_lambda": 1.0})
        mab_text = (mab if isinstance(mab, str)
                    else f"MABWiser LinUCB {fmt_rate(mab['events_per_s'])}")
        full = ours_closed_loop(prob, lambda: LinUCB(alpha=1.0, lam=1.0, random_state=0),
                                sizes.loop, 1000, k)
        ratio = None if isinstance(mab, str) else mab["seconds"] / full
        row("closed loop recommend+learn, batches of 1000: full LinUCB a=1 l=1 (same algorithm)",
            runs(sizes.loop), fmt_rate(sizes.loop / full), mab_text,
            "-" if ratio is None else f"{ratio:.1f}x",
            ">= 10x MABWiser" + ("" if ratio is None else f": {verdict(ratio, 10)}"))
        for label, make in (
            ("  DiagLinUCB eps=.05, exact propensities (different algorithm: diagonal)",
             lambda: DiagLinUCB(alpha=1.0, epsilon=0.05, random_state=0)),
            ("  DiagLinTS, propensities at 100-draw precision or better (quadrature; different "
             "algorithm)", lambda: DiagLinTS(v=0.5, n_mc_draws=100, random_state=0)),
            ("  DiagLinTS without propensities (n_mc_draws=0: the ceiling of the row above)",
             lambda: DiagLinTS(v=0.5, n_mc_draws=0, random_state=0)),
        ):
            seconds = ours_closed_loop(prob, make, sizes.loop, 1000, k)
            row(label, runs(sizes.loop), fmt_rate(sizes.loop / seconds), mab_text,
                "-" if isinstance(mab, str) else f"{mab['seconds'] / seconds:.1f}x", "info")

        # One event at a time against VW: epsilon-greedy on both sides.
        n1 = sizes.per_event
        vw = peer("vw_per_event", path, n1, k, work,
                  {"flags": "--cb_explore_adf --epsilon 0.05"})
        eps = ours_per_event(prob, lambda: EpsilonGreedy(0.05, random_state=0), n1, k,
                             single=True)
        vw_s = None if isinstance(vw, str) else vw["seconds"]
        vw_text = vw if isinstance(vw, str) else f"VW eps-greedy {fmt_us(vw_s, n1)}"
        row("per-event decision, recommend_one+learn_one: eps-greedy 0.05 (same exploration; "
            "VW parses text)", runs(n1), fmt_us(eps, n1), vw_text,
            "-" if vw_s is None else f"{vw_s / eps:.1f}x",
            ">= 10x VW" + ("" if vw_s is None else f": {verdict(vw_s / eps, 10)}"))
        if vw_s is not None:
            net = vw_s - vw["parse_us_per_event"] * n1 / 1e6
            row("  same, VW net of its text formatting+parsing (parse-only loop: "
                f"{vw['parse_us_per_event']:.0f} us/event)", runs(n1), fmt_us(eps, n1),
                f"VW {fmt_us(net, n1)}" if net > 0 else "VW parse >= total",
                f"{net / eps:.1f}x" if net > 0 else "-", "info")
        for label, make, single in (
            ("  DiagLinUCB eps=.05, recommend_one+learn_one (different algorithm)",
             lambda: DiagLinUCB(alpha=1.0, epsilon=0.05, random_state=0), True),
            ("  DiagLinUCB eps=.05 through the batch API, batch of 1",
             lambda: DiagLinUCB(alpha=1.0, epsilon=0.05, random_state=0), False),
            ("  DiagLinTS, propensities at 100-draw precision or better, batch of 1 (different "
             "algorithm)",
             lambda: DiagLinTS(v=0.5, n_mc_draws=100, random_state=0), False),
        ):
            seconds = ours_per_event(prob, make, n1, k, single=single)
            row(label, runs(n1), fmt_us(seconds, n1), vw_text,
                "-" if vw_s is None else f"{vw_s / seconds:.1f}x", "info")

        # One event at a time against MABWiser: full LinUCB on both sides, warm-started alike.
        n2 = sizes.per_event_mab
        mab1 = peer("mabwiser_linucb", path, n2, k, work,
                    {"batch": 1, "alpha": 1.0, "l2_lambda": 1.0})
        full1 = ours_closed_loop(prob, lambda: LinUCB(alpha=1.0, lam=1.0, random_state=0),
                                 n2, 1, k)
        row("per event, full LinUCB a=1 l=1, predict/recommend + (partial_)fit on one row "
            "(same algorithm)", runs(n2), fmt_us(full1, n2),
            mab1 if isinstance(mab1, str) else f"MABWiser LinUCB {fmt_us(mab1['seconds'], n2)}",
            "-" if isinstance(mab1, str) else f"{mab1['seconds'] / full1:.1f}x", "info")

    p50, p99 = ours_scoring(dtype=np.float32)
    p50d, p99d = ours_scoring(dtype=np.float64, requests=300)
    row("scoring top-10 of 100k items, d=32, 1 request (float32 stats)", "1,000 requests",
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms", "-", "-",
        f"p99 <= 5 ms: {'met' if p99 <= 5 else 'MISSED'}")
    row("  same with float64 statistics", "300 requests", f"p50 {p50d:.2f} ms, p99 {p99d:.2f} ms",
        "-", "-", "info")

    mem = ours_memory()
    gib = 2.0**30
    mem_verdict = ("met" if mem["float64"] <= 1e9 else
                   "met in GiB only" if mem["float64"] <= gib else "MISSED")
    row("memory, 1M items x d=64 statistics (float64)", "-",
        f"{mem['float64'] / gib:.3f} GiB ({mem['float64'] / 1e9:.3f} GB), "
        f"RSS +{mem['float64_rss'] / gib:.3f} GiB", "-", "-", f"<= 1 GB: {mem_verdict}")
    row("  same with float32 statistics", "-",
        f"{mem['float32'] / gib:.3f} GiB, RSS +{mem['float32_rss'] / gib:.3f} GiB", "-", "-",
        f"<= 1 GB: {'met' if mem['float32'] <= 1e9 else 'MISSED'}")

    tuning = None
    if not args.skip_regret:
        tuning = regret.tune("linear-logistic", sizes.tune, with_vw=True)
        exp = regret.experiment(sizes.regret, with_vw=True, tuning=tuning)
        for kind, table in exp["table"].items():
            vw_regret = table.get(regret.VW_NAME)
            for name in regret.POLICIES:
                v = table[name]
                if isinstance(vw_regret, float):
                    peer_text, ratio = f"VW SquareCB {vw_regret:.0f}", f"{v / vw_regret:.2f}x VW"
                    target = ("no worse than VW: " + ("met" if v <= vw_regret else "MISSED")
                              if name.startswith("Diag") else "info")
                else:
                    peer_text, ratio, target = (vw_regret or "-"), "-", "info"
                row(f"regret, {kind} contexts: {name}", f"{sizes.regret:,} x 1 both",
                    f"{v:.0f}", peer_text, ratio, target)
        for kind in regret.PROBLEMS:
            acc = regret.diag_vs_full_accuracy(kind)
            row(f"mean-score RMSE vs truth, {kind}, 50k uniform logs: Diag / centred / full",
                "-", f"{acc['diag_rmse']:.3f} / {acc['centred_rmse']:.3f} / "
                f"{acc['full_rmse']:.3f}", "-", "-", "Diag-vs-full gap")
        print(f"regret plot: {exp['plot']}", file=sys.stderr)

    print(f"load average during the run: {os.getloadavg()} on {os.cpu_count()} cores")
    header = ("metric", "events x runs", "recsys (median)", "peer (same run, median)", "ratio",
              "target")
    print_table(rows, header)
    if not args.skip_regret:
        print("regret: cumulative pseudo-regret on the linear-logistic problem; recsys learns "
              "once per batch of 1000, VW SquareCB after every event")
        regret.print_tuning(tuning)


if __name__ == "__main__":
    main()
