"""Scoring benchmark: one top-10 slate from the numpy and the torch serving backends.

Rows: catalogues of {10k, 100k, 1M} items at d = 32 and 64 (``--quick``: 10k and 100k at d = 32),
batch 1 (one request, as the serving app scores), Diag-LinUCB (``--policy ts`` for diagonal
Thompson sampling, n_mc_draws=100: propensities at the precision of 100 plain replays).
Columns: the median milliseconds of ``--repeat`` requests for numpy, torch on the CPU and, where
a GPU is present, torch on CUDA.

Fairness: every backend scores the same statistics object with the same policy class and the same
contexts, and its timed call is the whole ``scorer.recommend(policy, context, 10)`` (validation,
moments, top-k, exploration mix, propensities, the ``Slate`` on the host; CUDA calls end with the
results copied back, so they are synchronous). The backends are timed in turns within each
repetition, so a load spike on a shared machine hits all of them alike. One untimed call per
backend first builds its caches (numpy's posterior, the device copy); its cost is printed as
``first call`` because a snapshot refresh pays it once. Statistics are float32 by default (the
dtype large catalogues use; ``--dtype float64`` for the exact-equality setting), and the torch
backends compute in that dtype. ``--threads`` sets numpy's BLAS and torch's intra-op CPU threads
alike; the default is 1 (one request per core, as a serving process runs, and as
``bench_bandits.py`` measures): on a shared 2-core machine two threads that spin-wait on each
other made both CPU backends 5-10x slower and noisy.

Usage: python tests/benchmarks/bench_scoring.py [--quick] [--repeat 15] [--dtype float32]
       [--policy ucb|ts] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k items at d=32 only")
    parser.add_argument("--repeat", type=int, default=None, help="timed requests per row")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--policy", choices=["ucb", "ts"], default="ucb")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for numpy's BLAS and torch alike (default 1)")
    parser.add_argument("--k", type=int, default=10)
    return parser.parse_args()


ARGS = parse_args()
if ARGS.threads < 1:
    raise SystemExit(f"--threads: expected a positive integer, got {ARGS.threads}")
for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[name] = str(ARGS.threads)  # before numpy loads its BLAS

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from recsys.bandits import DenseStats, DiagLinTS, DiagLinUCB  # noqa: E402
from recsys.bandits.dense import FORMAT  # noqa: E402
from recsys.serving.backends import NumpyScorer, TorchScorer  # noqa: E402


def learned_stats(n: int, d: int, dtype: str, seed: int = 0) -> DenseStats:
    """Statistics as if every item had ~50 impressions: distinct scores, no cold-start ties."""
    rng = np.random.default_rng(seed)
    arrays = {
        "items": np.arange(n, dtype=np.int64),
        "sxx": rng.random((n, d), dtype=np.float32).astype(dtype, copy=False) * 50.0,
        "sxr": rng.standard_normal((n, d), dtype=np.float32).astype(dtype, copy=False) * 5.0,
        "count": np.full(n, 50.0),
    }
    return DenseStats.from_arrays(arrays, {"format": FORMAT, "dim": d, "lam": 1.0, "space": ""})


def make_policy(kind: str, stats: DenseStats) -> DiagLinUCB | DiagLinTS:
    if kind == "ts":
        return DiagLinTS(v=1.0, n_mc_draws=100, random_state=0).use(stats)
    return DiagLinUCB(alpha=1.0, random_state=0).use(stats)


def time_row(scorers: dict[str, object], n: int, d: int) -> dict[str, tuple[float, float]]:
    """(median ms, first-call ms) per backend for one catalogue size and dimension."""
    stats = learned_stats(n, d, ARGS.dtype)
    contexts = np.random.default_rng(1).normal(size=(ARGS.repeat, 1, d))
    policies = {name: make_policy(ARGS.policy, stats) for name in scorers}
    first = {}
    for name, scorer in scorers.items():  # untimed in the table: builds the caches
        start = time.perf_counter()
        scorer.recommend(policies[name], contexts[0], ARGS.k)
        first[name] = (time.perf_counter() - start) * 1e3
    times: dict[str, list[float]] = {name: [] for name in scorers}
    for x in contexts:  # the backends take turns on the same request
        for name, scorer in scorers.items():
            start = time.perf_counter()
            scorer.recommend(policies[name], x, ARGS.k)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: (statistics.median(t), first[name]) for name, t in times.items()}


def main() -> None:
    if ARGS.repeat is None:
        ARGS.repeat = 5 if ARGS.quick else 15
    sizes = [10_000, 100_000] if ARGS.quick else [10_000, 100_000, 1_000_000]
    dims = [32] if ARGS.quick else [32, 64]
    scorers: dict[str, object] = {"numpy": NumpyScorer(),
                                  "torch-cpu": TorchScorer("cpu", threads=ARGS.threads)}
    if torch.cuda.is_available():
        scorers["torch-cuda"] = TorchScorer("cuda")
    print(f"top-{ARGS.k} of n items, batch 1, policy {ARGS.policy}, {ARGS.dtype} statistics, "
          f"median of {ARGS.repeat} requests; torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch thread(s), "
          f"cuda: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    names = list(scorers)
    header = f"{'items':>9} {'d':>3} " + " ".join(f"{n + ' ms':>14}" for n in names)
    header += " " + " ".join(f"{'numpy/' + n:>17}" for n in names[1:])
    print(header)
    firsts = []
    for d in dims:
        for n in sizes:
            row = time_row(scorers, n, d)
            cells = " ".join(f"{row[name][0]:>14.3f}" for name in names)
            ratios = " ".join(f"{row['numpy'][0] / row[name][0]:>16.1f}x" for name in names[1:])
            print(f"{n:>9,} {d:>3} {cells} {ratios}", flush=True)
            firsts.append((n, d, row))
    print("first call (ms; a snapshot refresh pays it once: numpy's posterior, the device copy):")
    for n, d, row in firsts:
        print(f"{n:>9,} {d:>3} " + " ".join(f"{row[name][1]:>14.1f}" for name in names))


if __name__ == "__main__":
    main()
