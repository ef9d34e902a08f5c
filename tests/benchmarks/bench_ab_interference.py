"""The A/B bias table: pooled training vs Si et al.'s weighted training (``recsys.ab_weighting``).

Two learning policies are served side by side on the linear-logistic environment with one-hot
user segments (``simulators.linear_logistic``, a known truth): the treatment is diagonal
Thompson sampling, the control greedy (it explores only through ties), each request to the
treatment with probability p, and the statistics are retrained after every batch of requests.
A second pair, TS vs a uniformly random control that learns nothing, is the demo's A/B.

* truth: each policy alone at 100 % of the traffic (``run_ab`` with p = 1 and p = 0) over the
  same horizon; the global treatment effect is the difference of their true values;
* pooled: both arms score with one set of statistics that learns every event (the demo's
  learner);
* weighted: each arm has its own statistics, learning every event with weight e(x)/p (treatment)
  or (1 − e(x))/(1 − p) (control), e(x) fitted on each batch (Si et al. 2023).

Values are true values of what each arm served (mean expected reward of its requests, from the
environment), so the table shows the interference bias, not click noise. Every seed draws a new
world; bias = mean over seeds of (A/B estimate − truth of that world), with its standard error.
The machine is shared and slow: runs are small; rerun on a quiet machine with more ``--seeds``.

Usage: python tests/benchmarks/bench_ab_interference.py [--seeds 30] [--rounds 16]
       [--batch 400]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from recsys.ab_weighting import run_ab  # noqa: E402
from recsys.bandits import DiagLinTS, Greedy  # noqa: E402
from simulators.linear_logistic import LinearLogisticEnv  # noqa: E402
from tests.benchmarks.text_table import print_table  # noqa: E402

N_ACTIONS, N_SEGMENTS = 6, 4
RESULTS = REPO / "tests" / "benchmarks" / "results" / "ab_interference.json"


def env_for(seed: int) -> LinearLogisticEnv:
    """The world of one seed: 6 items, 4 user segments, Bernoulli-logistic rewards."""
    return LinearLogisticEnv(N_ACTIONS, N_SEGMENTS, context="segments", seed=1000 + seed)


def policies(control: str, seed: int) -> tuple[DiagLinTS, Greedy | None]:
    """Fresh treatment (TS) and control (greedy, or None: uniform) policies for one run."""
    ts = DiagLinTS(v=1.0, n_mc_draws=0, random_state=2 * seed)
    return ts, (Greedy(random_state=2 * seed + 1) if control == "greedy" else None)


def one_seed(control: str, p: float, seed: int, rounds: int, batch: int) -> dict[str, float]:
    """Truth and both A/B estimates for one world."""
    def run(share: float, weighting: str = "pooled") -> float:
        treatment, ctrl = policies(control, seed)
        out = run_ab(env_for(seed), treatment, ctrl, p=share, n_rounds=rounds, batch_size=batch,
                     weighting=weighting, random_state=seed)  # type: ignore[arg-type]
        return out.value_treatment if share == 1.0 else (
            out.value_control if share == 0.0 else out.effect)

    key = (control, seed, rounds, batch)
    if key not in _TRUTH:  # the same for every p
        _TRUTH[key] = run(1.0) - run(0.0)
    return {"truth": _TRUTH[key], "pooled": run(p, "pooled"), "weighted": run(p, "si2023")}


_TRUTH: dict[tuple[str, int, int, int], float] = {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--batch", type=int, default=400)
    args = parser.parse_args()
    rows, results = [], []
    started = time.perf_counter()
    for control in ("greedy", "uniform"):
        for p in (0.1, 0.5):
            runs = [one_seed(control, p, s, args.rounds, args.batch) for s in range(args.seeds)]
            truth = np.array([r["truth"] for r in runs])
            row = {"control": control, "p": p, "truth": float(truth.mean())}
            cells = [f"TS vs {control}", f"{p:g}", f"{truth.mean():+.4f}"]
            for name in ("pooled", "weighted"):
                est = np.array([r[name] for r in runs])
                bias = est - truth
                se = bias.std(ddof=1) / np.sqrt(bias.size)
                row |= {name: float(est.mean()), f"{name}_bias": float(bias.mean()),
                        f"{name}_bias_se": float(se)}
                cells += [f"{est.mean():+.4f}", f"{bias.mean():+.4f} ± {se:.4f}"]
            rows.append(cells)
            results.append(row)
    print(f"A/B interference: {args.seeds} seeds (worlds), {args.rounds} rounds of {args.batch} "
          f"requests, {N_ACTIONS} items, {N_SEGMENTS} segments; values = expected reward per "
          f"request ({time.perf_counter() - started:.0f} s)")
    print_table(rows, ["arms", "p", "truth (GTE)", "pooled", "pooled bias ± se", "weighted",
                       "weighted bias ± se"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"args": vars(args), "rows": results}, indent=2))
    print(f"written {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
