"""Measures the peers (Vowpal Wabbit, MABWiser) on the benchmark problem; run by bench_bandits.py.

Runs inside the peers' own virtual environment (tests/benchmarks/.peers-venv, made by
setup_peers.sh), imports nothing from recsys, and prints one JSON object on stdout. The problem
comes from an .npz written by the benchmark: contexts ``x`` [N, d], true logistic parameters
``theta`` [A, d] and uniform draws ``u`` [N] so that the reward of action a at round t is
``u[t] < sigmoid(x[t]·theta[a])`` for every library (common random numbers).

Usage: python peers_runner.py TASK PROBLEM.npz N_EVENTS [WORKDIR]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def mu_row(x: np.ndarray, theta: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(theta @ x)))


def vw_lines(x: np.ndarray, n_actions: int) -> tuple[list[str], list[str]]:
    """Shared-context lines (precomputed, outside any timed loop) and the static action lines."""
    shared = [
        "shared |U " + " ".join(f"{j}:{v:.6f}" for j, v in enumerate(row) if v != 0.0)
        for row in x
    ]
    actions = [f"|A a{a}" for a in range(n_actions)]
    return shared, actions


def vw_closed_loop(prob: dict, n: int, args: str) -> dict:
    """One event at a time through the Python bindings: predict (pmf), sample, learn."""
    import vowpalwabbit

    x, theta, u = prob["x"][:n], prob["theta"], prob["u"][:n]
    n_actions = theta.shape[0]
    shared, actions = vw_lines(x, n_actions)
    vw = vowpalwabbit.Workspace(args + " --quiet -q UA", enable_logging=False)
    rng = np.random.default_rng(0)
    draws = rng.random(n)
    regret = np.empty(n)
    start = time.perf_counter()
    for t in range(n):  # the peer's own per-event loop is what is being measured
        ex = [shared[t], *actions]
        pmf = np.asarray(vw.predict(ex))
        a = min(int(np.searchsorted(np.cumsum(pmf), draws[t] * pmf.sum())), n_actions - 1)
        mu = mu_row(x[t], theta)
        r = 1.0 if u[t] < mu[a] else 0.0
        labelled = list(ex)
        labelled[a + 1] = f"0:{-r}:{pmf[a]:.6f} {actions[a]}"
        vw.learn(labelled)
        regret[t] = mu.max() - mu[a]
    elapsed = time.perf_counter() - start
    vw.finish()
    return {"events": n, "seconds": elapsed, "events_per_s": n / elapsed,
            "us_per_event": 1e6 * elapsed / n, "cum_regret": float(regret.sum()),
            "regret_curve": np.cumsum(regret)[:: max(1, n // 200)].tolist()}


def vw_native(prob: dict, n: int, workdir: Path) -> dict:
    """VW's own C++ reader and learner on a written file of logged (uniform-random) examples."""
    import vowpalwabbit

    x, theta, u = prob["x"][:n], prob["theta"], prob["u"][:n]
    n_actions = theta.shape[0]
    shared, actions = vw_lines(x, n_actions)
    rng = np.random.default_rng(1)
    logged = rng.integers(0, n_actions, n)
    path = workdir / "vw_cb_adf.txt"
    with open(path, "w") as fh:
        for t in range(n):
            r = 1.0 if u[t] < mu_row(x[t], theta)[logged[t]] else 0.0
            lines = [shared[t], *actions]
            lines[logged[t] + 1] = f"0:{-r}:{1.0 / n_actions:.6f} {actions[logged[t]]}"
            fh.write("\n".join(lines) + "\n\n")
    start = time.perf_counter()
    vw = vowpalwabbit.Workspace(f"--cb_explore_adf --quiet -q UA -d {path}", enable_logging=False)
    vw.run_parser()
    vw.finish()
    elapsed = time.perf_counter() - start
    return {"events": n, "seconds": elapsed, "events_per_s": n / elapsed,
            "file_mb": path.stat().st_size / 1e6}


def mabwiser_loop(prob: dict, n: int, batch: int) -> dict:
    """MABWiser LinUCB: predict a batch, observe, partial_fit, repeat (batch=1: per event)."""
    from mabwiser.mab import MAB, LearningPolicy

    x, theta, u = prob["x"][:n], prob["theta"], prob["u"][:n]
    n_actions = theta.shape[0]
    mab = MAB(arms=list(range(n_actions)), learning_policy=LearningPolicy.LinUCB(alpha=1.0),
              seed=0)
    warm = 1000
    xw = prob["x"][-warm:]
    mab.fit(decisions=np.arange(warm) % n_actions, rewards=np.zeros(warm), contexts=xw)
    start = time.perf_counter()
    for s in range(0, n, batch):  # the peer's own loop (per batch, or per event when batch=1)
        xb = x[s:s + batch]
        dec = np.atleast_1d(np.asarray(mab.predict(xb)))
        mu = 1.0 / (1.0 + np.exp(-(xb @ theta.T)))
        r = (u[s:s + batch] < mu[np.arange(len(dec)), dec]).astype(float)
        mab.partial_fit(decisions=dec, rewards=r, contexts=xb)
    elapsed = time.perf_counter() - start
    return {"events": n, "seconds": elapsed, "events_per_s": n / elapsed,
            "us_per_event": 1e6 * elapsed / n}


def main() -> None:
    task, problem, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    workdir = Path(sys.argv[4]) if len(sys.argv) > 4 else Path(problem).parent
    with np.load(problem, allow_pickle=False) as data:
        prob = {k: data[k] for k in data.files}
    if task == "vw_per_event":
        out = vw_closed_loop(prob, n, "--cb_explore_adf --epsilon 0.05")
    elif task == "vw_squarecb":
        out = vw_closed_loop(prob, n, "--cb_explore_adf --squarecb")
    elif task == "vw_native":
        out = vw_native(prob, n, workdir)
    elif task == "mabwiser_batch":
        out = mabwiser_loop(prob, n, 1000)
    elif task == "mabwiser_per_event":
        out = mabwiser_loop(prob, n, 1)
    else:
        raise SystemExit(f"unknown task {task!r}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
