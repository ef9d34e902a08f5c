"""recsys compare's engine on 5 candidates × 1M logged slates (10k items, k = 5), beside OBP 0.5.7.

What is measured: ``recsys.comparison.compare_policies`` evaluating 5 candidates with IPS, SNIPS,
DM, DR, SNDR and Switch-DR and 1,000-resample bootstrap intervals: wall time (median of
``--repeat`` runs; one run at the full size unless ``--repeat-full``) and peak memory (the worker
process's peak RSS, ``resource.getrusage``, and its rise over the RSS once the inputs are built).
Beside it, Open Bandit Pipeline 0.5.7 on the largest size it can hold: OBP needs every candidate's
dense ``action_dist`` and the reward model's ``estimated_rewards_by_reg_model``, each
``n_rounds × n_items × k`` floats (one round per slot), so at 10k items and k = 5 every logged
slate costs it ``(1 + 2k) · n_items · k · 8`` bytes (the per-request array, then both per-round
arrays): about 4.4 MB, and ``--obp-memory-gb`` (default a fifth of the available memory) decides
how many slates it gets. recsys runs on that size too, so the two can be compared on one row.

Fair rules: both sides build the same inputs from the same seed with the same numpy code
(``make_inputs``; the table prints both digests), evaluate the same candidate code (numpy-only,
``CANDIDATES``), use the same reward model (recsys's cross-fitted table, exported to OBP) and the
same estimators with the same number of resamples; the timed region is evaluating all candidates
(their ``action_dist``, the estimates and the intervals); building the inputs is not timed on either
side (recsys's conversion of the logs to ``LoggedSlates`` is reported separately). OBP's
estimators see one round per slot: its IPS, DM, DR and Switch-DR are recsys's divided by k (full
slates), which the table checks; its SNIPS and SNDR normalise over all slots rather than per
position, so they are not the same numbers.

Each side runs in its own process (recsys in this venv, OBP in ``tests/benchmarks/.peers-venv``
from ``setup_peers.sh``); without that venv the OBP rows say so and only recsys is measured.
``--peer-module recsys.ope`` runs the OBP side's code with recsys.ope's OBP-compatible classes
(a check of the harness, labelled as such, not a measurement of OBP).

Usage: python tests/benchmarks/bench_compare.py [--quick] [--requests 1000000] [--items 10000]
       [--slots 5] [--bootstrap 1000] [--repeat 3] [--n-jobs 1] [--obp-memory-gb G]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import ope_cases  # noqa: E402  (numpy only: the digest both sides print)
from text_table import print_table  # noqa: E402

PEERS_PYTHON = HERE / ".peers-venv" / "bin" / "python"
DIM = 8
N_GROUPS = 64
LOGGING_EPSILON = 0.2
ESTIMATORS = ("ips", "snips", "dm", "dr", "sndr", "switch-dr")
OBP_CLASSES = {
    "ips": "InverseProbabilityWeighting",
    "snips": "SelfNormalizedInverseProbabilityWeighting",
    "dm": "DirectMethod",
    "dr": "DoublyRobust",
    "sndr": "SelfNormalizedDoublyRobust",
    "switch-dr": "SwitchDoublyRobust",
}
PER_SLOT = ("ips", "dm", "dr", "switch-dr")
"""Estimators whose recsys value (sum over slots) is k × OBP's (mean over slots)."""


# ----------------------------------------------------------------------------- inputs (numpy)
def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores per row, best first."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def epsilon_greedy(slates: np.ndarray, n_items: int, epsilon: float) -> np.ndarray:
    """(m, n_items, k): the slate with probability 1 − ε, a uniform distinct slate otherwise."""
    m, k = slates.shape
    dist = np.full((m, n_items, k), epsilon / n_items)
    dist[np.arange(m)[:, None], slates, np.arange(k)] += 1.0 - epsilon
    return dist


class World:
    """Item vectors, the logging policy's group slates and the candidates' parameters."""

    def __init__(self, n_items: int, k: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.n_items, self.k = n_items, k
        self.true_items = rng.standard_normal((n_items, DIM))
        self.true_bias = rng.normal(-3.0, 0.5, n_items)
        self.centroids = rng.standard_normal((N_GROUPS, DIM))
        noisy = self.true_items + rng.standard_normal((n_items, DIM))
        self.group_slates = top_k(self.centroids @ noisy.T + self.true_bias, k)
        self.linear = [self.true_items + s * rng.standard_normal((n_items, DIM))
                       for s in (0.5, 1.5)]
        self.popularity = top_k((self.true_bias + 0.3 * rng.standard_normal(n_items))[None], k)[0]

    def group(self, x: np.ndarray) -> np.ndarray:
        return np.argmax(x @ self.centroids.T - 0.5 * (self.centroids**2).sum(axis=1), axis=1)


def candidate_dist(world: World, name: str, x: np.ndarray, k: int) -> np.ndarray:
    """``action_dist`` (m, n_items, k) of candidate ``name`` on contexts ``x``."""
    m, n = x.shape[0], world.n_items
    if name == "uniform":
        return np.full((m, n, k), 1.0 / n)
    if name == "popularity":
        return epsilon_greedy(np.broadcast_to(world.popularity[:k], (m, k)), n, 0.05)
    if name == "logging":
        return epsilon_greedy(world.group_slates[world.group(x), :k], n, LOGGING_EPSILON)
    weights = world.linear[0 if name == "linear-a" else 1]
    return epsilon_greedy(top_k(x @ weights.T / np.sqrt(DIM) + world.true_bias, k), n, 0.1)


CANDIDATES = ("uniform", "popularity", "logging", "linear-a", "linear-b")


def make_inputs(n_requests: int, n_items: int, k: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Logged slates of the ε-mixed group-greedy logging policy, one row per slot, requests in
    order and each request's rows in position order; exact per-(item, position) propensities."""
    world = World(n_items, k, seed)
    rng = np.random.default_rng(seed + 1)
    x = world.centroids[rng.integers(N_GROUPS, size=n_requests)]
    x = x + 0.7 * rng.standard_normal((n_requests, DIM))
    slates = world.group_slates[world.group(x)].copy()
    explore = rng.random(n_requests) < LOGGING_EPSILON
    uniform = rng.integers(n_items, size=(int(explore.sum()), k))
    while True:  # distinct items per uniform slate: redraw the rare rows with a repeat
        ordered = np.sort(uniform, axis=1)
        bad = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
        if not bad.any():
            break
        uniform[bad] = rng.integers(n_items, size=(int(bad.sum()), k))
    slates[explore] = uniform
    greedy = world.group_slates[world.group(x)]
    pscore = LOGGING_EPSILON / n_items + (1 - LOGGING_EPSILON) * (slates == greedy)
    utility = np.einsum("nd,nkd->nk", x, world.true_items[slates]) / np.sqrt(DIM)
    click = 0.8 ** np.arange(k) / (1.0 + np.exp(-(utility + world.true_bias[slates])))
    return {
        "contexts": x,
        "request_index": np.repeat(np.arange(n_requests), k),
        "action": slates.ravel(),
        "position": np.tile(np.arange(k), n_requests),
        "reward": (rng.random((n_requests, k)) < click).astype(float).ravel(),
        "pscore": pscore.ravel(),
    }


# ----------------------------------------------------------------------------- memory
def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (ru_maxrss is in kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def available_gb() -> float:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return 4.0


# ----------------------------------------------------------------------------- the two sides
def recsys_side(args: argparse.Namespace) -> dict:
    """compare_policies on the inputs, timed; optionally export the reward model for OBP."""
    import polars as pl

    from recsys.comparison import LoggedSlates, ShrunkRateModel, compare_policies

    data = make_inputs(args.requests, args.items, args.slots, args.seed)
    world = World(args.items, args.slots, args.seed)
    n, k = args.requests, args.slots
    start = time.perf_counter()
    frame = pl.DataFrame({
        "request_id": pl.Series(data["request_index"]).cast(pl.String).str.zfill(9),
        "event_time_ms": data["request_index"],
        "user_id": pl.Series(data["request_index"] % 1000).cast(pl.String),
        "context_dense": pl.Series(np.repeat(data["contexts"], k, axis=0)),
        "position": data["position"], "item_id": data["action"],
        "reward": data["reward"], "propensity": data["pscore"],
    })
    logs = LoggedSlates.from_frame(frame)
    load_s = time.perf_counter() - start
    del frame

    class Candidate:
        item_ids_ = np.arange(args.items)

        def __init__(self, name: str) -> None:
            self.name_ = name

        def action_dist(self, batch, k):
            return candidate_dist(world, self.name_, batch.dense, k)

    candidates = {name: Candidate(name) for name in CANDIDATES}
    base = rss_mb()
    walls, result = [], None
    for _ in range(args.repeat):
        start = time.perf_counter()
        result = compare_policies(logs, candidates, estimators=ESTIMATORS,
                                  n_bootstrap=args.bootstrap, n_jobs=args.n_jobs,
                                  progress=False)
        walls.append(time.perf_counter() - start)
    if args.export:
        model = ShrunkRateModel().fit(logs.items_, logs.action, logs.position, logs.reward,
                                      logs.request_index, k)
        np.savez(args.export, qhat=model.tables_for(np.arange(args.items)),
                 fold=model.fold_of(np.arange(n)))
    return {
        "side": "recsys", "digest": ope_cases.digest(data), "requests": n,
        "rows": int(n * k), "wall_s": median(walls), "walls": walls, "load_s": load_s,
        "peak_rss_mb": peak_rss_mb(), "base_rss_mb": base, "n_jobs": args.n_jobs,
        "estimates": {c.name: {e: c.estimates[e].value for e in ESTIMATORS}
                      for c in result.candidates},
    }


def peer_module(name: str):
    if name == "obp":
        import obp_runner

        return obp_runner.import_obp_ope()
    return importlib.import_module(name)


def obp_side(args: argparse.Namespace) -> dict:
    """OBP's estimators on the dense per-round arrays of every candidate, timed."""
    ope = peer_module(args.peer_module)
    data = make_inputs(args.requests, args.items, args.slots, args.seed)
    world = World(args.items, args.slots, args.seed)
    with np.load(args.qhat, allow_pickle=False) as archive:
        qhat, fold = archive["qhat"], archive["fold"]
    rows = data["request_index"]
    logged = {key: data[key] for key in ("reward", "action", "position", "pscore")}
    base = rss_mb()
    walls, estimates = [], {}
    for _ in range(args.repeat):
        start = time.perf_counter()
        for name in CANDIDATES:
            per_request = candidate_dist(world, name, data["contexts"], args.slots)
            action_dist = per_request[rows]
            del per_request
            q_rows = qhat[fold[rows]]
            out = {}
            for estimator in ESTIMATORS:
                cls = getattr(ope, OBP_CLASSES[estimator])
                model = cls() if estimator != "switch-dr" else cls(lambda_=np.inf)
                kwargs = dict(logged, action_dist=action_dist)
                if estimator in ("dm", "dr", "sndr", "switch-dr"):
                    kwargs["estimated_rewards_by_reg_model"] = q_rows
                if estimator == "dm":
                    kwargs = {key: kwargs[key] for key in
                              ("action_dist", "estimated_rewards_by_reg_model", "position")}
                value = model.estimate_policy_value(**kwargs)
                model.estimate_interval(n_bootstrap_samples=args.bootstrap, random_state=0,
                                        **kwargs)
                out[estimator] = float(value)
            estimates[name] = out
            del action_dist, q_rows
        walls.append(time.perf_counter() - start)
    return {
        "side": "OBP 0.5.7" if args.peer_module == "obp" else f"{args.peer_module} (harness "
        "check)", "digest": ope_cases.digest(data), "requests": args.requests,
        "rows": int(args.requests * args.slots), "wall_s": median(walls), "walls": walls,
        "load_s": None, "peak_rss_mb": peak_rss_mb(), "base_rss_mb": base, "n_jobs": 1,
        "estimates": estimates,
    }


# ----------------------------------------------------------------------------- orchestration
def run_worker(python: Path | str, side: str, args: argparse.Namespace, requests: int,
               repeat: int, extra: list[str]) -> dict | str:
    """One side in its own process: its JSON, or 'unavailable: <reason>'."""
    command = [str(python), str(Path(__file__).resolve()), "--worker", side,
               "--requests", str(requests), "--items", str(args.items),
               "--slots", str(args.slots), "--bootstrap", str(args.bootstrap),
               "--repeat", str(repeat), "--seed", str(args.seed), "--n-jobs", str(args.n_jobs),
               "--peer-module", args.peer_module, *extra]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return f"unavailable: exceeded {args.timeout:.0f} s"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"unavailable: {last[:200]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def obp_requests(args: argparse.Namespace) -> int:
    """The most slates whose dense OBP arrays fit in ``--obp-memory-gb``."""
    per_slate = (1 + 2 * args.slots) * args.items * args.slots * 8
    return max(1, int(args.obp_memory_gb * 2**30 // per_slate))


def row_of(result: dict | str, label: str, requests: int, items: int, slots: int
           ) -> tuple[str, ...]:
    size = f"{requests:,} x {items:,} x {slots}"
    if isinstance(result, str):
        return (label, size, result, "-", "-", "-", "-", "-")
    runs = len(result["walls"])
    load = "-" if result["load_s"] is None else f"{result['load_s']:.1f}"
    return (result["side"], size, f"{result['wall_s']:.2f} (median of {runs})", load,
            f"{result['peak_rss_mb'] / 1024:.2f}",
            f"{(result['peak_rss_mb'] - result['base_rss_mb']) / 1024:.2f}",
            str(result["n_jobs"]), result["digest"])


def parity(ours: dict, theirs: dict, slots: int) -> float:
    """Largest |recsys − k · OBP| over candidates and the per-slot estimators."""
    return max(abs(ours["estimates"][c][e] - slots * theirs["estimates"][c][e])
               for c in CANDIDATES for e in PER_SLOT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--slots", type=int, default=5)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="median of k, both sides")
    parser.add_argument("--repeat-full", type=int, default=1,
                        help="runs at the full size (recsys only)")
    parser.add_argument("--n-jobs", type=int, default=1, help="recsys's chunk threads")
    parser.add_argument("--obp-memory-gb", type=float, default=None,
                        help="memory for OBP's dense arrays (default: a fifth of available)")
    parser.add_argument("--obp-requests", type=int, default=None,
                        help="slates for the OBP-size run (default: from --obp-memory-gb)")
    parser.add_argument("--peer-module", default="obp",
                        help="obp (in the peers venv) or recsys.ope (harness check)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--quick", action="store_true",
                        help="5k slates, 200 resamples, OBP within 1 GB")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--worker", choices=["recsys", "obp"], help=argparse.SUPPRESS)
    parser.add_argument("--export", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--qhat", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        out = recsys_side(args) if args.worker == "recsys" else obp_side(args)
        print(json.dumps(out))
        return 0
    if args.quick:
        args.requests, args.bootstrap = min(args.requests, 5000), min(args.bootstrap, 200)
        args.obp_memory_gb = args.obp_memory_gb or 1.0
    if args.obp_memory_gb is None:
        args.obp_memory_gb = available_gb() / 5
    n_obp = min(args.obp_requests or obp_requests(args), args.requests)

    results: list[tuple[dict | str, str, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        qhat = str(Path(tmp) / "qhat.npz")
        ours_small = run_worker(sys.executable, "recsys", args, n_obp, args.repeat,
                                ["--export", qhat])
        results.append((ours_small, "recsys", n_obp))
        python = PEERS_PYTHON if args.peer_module == "obp" else sys.executable
        if args.peer_module == "obp" and not PEERS_PYTHON.exists():
            theirs: dict | str = ("unavailable: peers venv missing "
                                  "(bash tests/benchmarks/setup_peers.sh)")
        elif isinstance(ours_small, str):
            theirs = "unavailable: the recsys run at this size failed"
        else:
            theirs = run_worker(python, "obp", args, n_obp, args.repeat, ["--qhat", qhat])
        results.append((theirs, "OBP 0.5.7", n_obp))
    if args.requests > n_obp:
        results.append((run_worker(sys.executable, "recsys", args, args.requests,
                                   args.repeat_full, []), "recsys", args.requests))

    print(f"compare: {len(CANDIDATES)} candidates ({', '.join(CANDIDATES)}), estimators "
          f"{', '.join(ESTIMATORS)}, {args.bootstrap} bootstrap resamples; OBP's share "
          f"{args.obp_memory_gb:.1f} GB -> {n_obp:,} slates")
    header = ("side", "slates x items x k", "wall s", "load s", "peak RSS GB",
              "RSS rise GB", "threads", "input digest")
    print_table([row_of(r, label, n, args.items, args.slots) for r, label, n in results], header)
    if not isinstance(ours_small, str) and not isinstance(theirs, str):
        same = ours_small["digest"] == theirs["digest"]
        print(f"same inputs: {same}; max |recsys - k*OBP| over {', '.join(PER_SLOT)}: "
              f"{parity(ours_small, theirs, args.slots):.2e}; speed-up at that size "
              f"{theirs['wall_s'] / ours_small['wall_s']:.1f}x")
    print(f"load average during the run: {os.getloadavg()} on {os.cpu_count()} cores")
    if args.json:
        args.json.write_text(json.dumps([r for r, *_ in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
