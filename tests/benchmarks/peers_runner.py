"""Measures the peers (Vowpal Wabbit, MABWiser) for bench_bandits.py and regret.py.

Runs inside the peers' own virtual environment (tests/benchmarks/.peers-venv, made by
setup_peers.sh), imports nothing from recsys, and prints one JSON object on stdout. The problem
comes from an .npz written by the benchmark: contexts ``x`` [N, d], true logistic parameters
``theta`` [A, d] and uniform draws ``u`` [N] so that the reward of action a at round t is
``u[t] < sigmoid(x[t]·theta[a])`` for every library (common random numbers), and a warm-start
set ``warm_x``, ``warm_a``, ``warm_r`` that both sides learn, untimed, before a timed loop that
needs a fitted model (MABWiser's ``predict`` does).

Timing follows the recsys side exactly (bench_bandits.py): ``--repeat`` fresh runs, the median
reported; the timed region is the decision loop (choose, compute the reward from ``u``, learn).
VW consumes text: its loop formats and parses the example text every event, which recsys does not
need; ``vw_per_event`` therefore also times a parse-only loop over the same text, so the table can
show VW both as a user runs it and net of formatting and parsing.

Usage: python peers_runner.py TASK PROBLEM.npz --events N [--repeat K] [--params JSON]
       [--workdir DIR]
Tasks: vw_per_event, vw_regret, vw_native, mabwiser_linucb.
"""

from __future__ import annotations

import argparse
import json
import statistics
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


def vw_args(params: dict) -> str:
    """VW command-line options from ``{"flags": "--cb_explore_adf ...", option: value}``."""
    extra = " ".join(f"--{k} {v}" for k, v in params.items() if k != "flags")
    return f"{params['flags']} {extra} --quiet -q UA".strip()


def vw_loop(prob: dict, n: int, params: dict, seed: int) -> tuple[float, np.ndarray]:
    """One event at a time through the Python bindings: predict (pmf), sample, learn.

    Returns the loop's wall seconds and the per-round pseudo-regret."""
    import vowpalwabbit

    x, theta, u = prob["x"][:n], prob["theta"], prob["u"][:n]
    n_actions = theta.shape[0]
    shared, actions = vw_lines(x, n_actions)
    vw = vowpalwabbit.Workspace(vw_args(params), enable_logging=False)
    draws = np.random.default_rng(seed).random(n)
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
    return elapsed, regret


def vw_parse_only(prob: dict, n: int, params: dict) -> float:
    """The text work of ``vw_loop`` alone: build both example lists and let VW parse them."""
    import vowpalwabbit

    x, theta = prob["x"][:n], prob["theta"]
    n_actions = theta.shape[0]
    shared, actions = vw_lines(x, n_actions)
    vw = vowpalwabbit.Workspace(vw_args(params), enable_logging=False)
    start = time.perf_counter()
    for t in range(n):
        ex = [shared[t], *actions]
        vw.finish_example(vw.parse(ex))
        labelled = list(ex)
        labelled[1] = f"0:-1.0:{1.0 / n_actions:.6f} {actions[0]}"
        vw.finish_example(vw.parse(labelled))
    elapsed = time.perf_counter() - start
    vw.finish()
    return elapsed


def vw_per_event(prob: dict, n: int, repeat: int, params: dict) -> dict:
    loops = [vw_loop(prob, n, params, seed=rep)[0] for rep in range(repeat)]
    parses = [vw_parse_only(prob, n, params) for _ in range(repeat)]
    seconds, parse = statistics.median(loops), statistics.median(parses)
    return {"events": n, "repeat": repeat, "seconds": seconds, "events_per_s": n / seconds,
            "us_per_event": 1e6 * seconds / n, "parse_us_per_event": 1e6 * parse / n}


def vw_regret(prob: dict, n: int, params: dict) -> dict:
    """Cumulative pseudo-regret of one closed-loop run (the regret experiment's VW curve)."""
    elapsed, regret = vw_loop(prob, n, params, seed=0)
    return {"events": n, "seconds": elapsed, "cum_regret": float(regret.sum()),
            "regret_curve": np.cumsum(regret)[:: max(1, n // 200)].tolist(),
            "first_half": float(regret[: n // 2].mean()),
            "second_half": float(regret[n // 2:].mean())}


def vw_native(prob: dict, n: int, repeat: int, workdir: Path) -> dict:
    """VW's own C++ reader and learner on a written file of logged (uniform-random) examples."""
    import vowpalwabbit

    x, theta, u = prob["x"][:n], prob["theta"], prob["u"][:n]
    n_actions = theta.shape[0]
    shared, actions = vw_lines(x, n_actions)
    logged = np.random.default_rng(1).integers(0, n_actions, n)
    path = workdir / "vw_cb_adf.txt"
    with open(path, "w") as fh:
        for t in range(n):
            r = 1.0 if u[t] < mu_row(x[t], theta)[logged[t]] else 0.0
            lines = [shared[t], *actions]
            lines[logged[t] + 1] = f"0:{-r}:{1.0 / n_actions:.6f} {actions[logged[t]]}"
            fh.write("\n".join(lines) + "\n\n")
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        vw = vowpalwabbit.Workspace(f"--cb_explore_adf --quiet -q UA -d {path}",
                                    enable_logging=False)
        vw.run_parser()
        vw.finish()
        runs.append(time.perf_counter() - start)
    seconds = statistics.median(runs)
    return {"events": n, "repeat": repeat, "seconds": seconds, "events_per_s": n / seconds,
            "file_mb": path.stat().st_size / 1e6}


def mabwiser_linucb(prob: dict, n: int, repeat: int, params: dict) -> dict:
    """MABWiser LinUCB: fit the warm-start set (untimed), then predict a batch, observe,
    partial_fit, repeat (``batch`` 1: per event)."""
    from mabwiser.mab import MAB, LearningPolicy

    x, theta, u = prob["x"][:n], prob["theta"], prob["u"][:n]
    n_actions = theta.shape[0]
    batch = int(params.get("batch", 1000))
    runs = []
    for rep in range(repeat):
        mab = MAB(arms=list(range(n_actions)),
                  learning_policy=LearningPolicy.LinUCB(alpha=params.get("alpha", 1.0),
                                                        l2_lambda=params.get("l2_lambda", 1.0)),
                  seed=rep)
        mab.fit(decisions=prob["warm_a"], rewards=prob["warm_r"], contexts=prob["warm_x"])
        start = time.perf_counter()
        for s in range(0, n, batch):  # the same loop as the recsys side's
            xb = x[s:s + batch]
            dec = np.atleast_1d(np.asarray(mab.predict(xb)))
            mu = 1.0 / (1.0 + np.exp(-(xb * theta[dec]).sum(1)))
            mab.partial_fit(decisions=dec, rewards=(u[s:s + batch] < mu).astype(float),
                            contexts=xb)
        runs.append(time.perf_counter() - start)
    seconds = statistics.median(runs)
    return {"events": n, "repeat": repeat, "batch": batch, "seconds": seconds,
            "events_per_s": n / seconds, "us_per_event": 1e6 * seconds / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("problem")
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--params", default="{}", help="JSON object of the task's settings")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    params = json.loads(args.params)
    workdir = Path(args.workdir) if args.workdir else Path(args.problem).parent
    with np.load(args.problem, allow_pickle=False) as data:
        prob = {k: data[k] for k in data.files}
    n = args.events
    if args.task == "vw_per_event":
        out = vw_per_event(prob, n, args.repeat, params)
    elif args.task == "vw_regret":
        out = vw_regret(prob, n, params)
    elif args.task == "vw_native":
        out = vw_native(prob, n, args.repeat, workdir)
    elif args.task == "mabwiser_linucb":
        out = mabwiser_linucb(prob, n, args.repeat, params)
    else:
        raise SystemExit(f"unknown task {args.task!r}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
