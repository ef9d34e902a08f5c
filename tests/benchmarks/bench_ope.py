"""OPE benchmark: every point estimator on 1M logged rounds × 100 actions × 3 positions, and
bootstrap intervals with 1,000 resamples.

Targets (issue 3): each point estimate ≤ 1 s, the 1,000-resample interval ≤ 10 s. Times include
input validation (as a user calling ``estimate_policy_value`` pays it) and are the best of
``--repeat`` runs; the machine may be shared, so expect noise.

Usage: python tests/benchmarks/bench_ope.py [--rounds 1000000] [--actions 100] [--positions 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from recsys.ope import (
    DirectMethod,
    DoublyRobust,
    DoublyRobustWithShrinkage,
    InverseProbabilityWeighting,
    SelfNormalizedDoublyRobust,
    SelfNormalizedInverseProbabilityWeighting,
    SwitchDoublyRobust,
)


def make_data(n: int, n_actions: int, len_list: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    action_dist = rng.random((n, n_actions, len_list))
    action_dist /= action_dist.sum(axis=1, keepdims=True)
    return {
        "reward": rng.binomial(1, 0.05, size=n).astype(float),
        "action": rng.integers(n_actions, size=n),
        "position": rng.integers(len_list, size=n),
        "pscore": np.full(n, 1.0 / n_actions),
        "action_dist": action_dist,
        "estimated_rewards_by_reg_model": rng.random((n, n_actions, len_list)) * 0.1,
    }


def best_time(fn, repeat: int) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1_000_000)
    parser.add_argument("--actions", type=int, default=100)
    parser.add_argument("--positions", type=int, default=3)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-bootstrap", action="store_true")
    parser.add_argument("--quick", action="store_true", help="100k rounds, 100 resamples")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.bootstrap = min(args.rounds, 100_000), min(args.bootstrap, 100)

    t0 = time.perf_counter()
    data = make_data(args.rounds, args.actions, args.positions)
    print(
        f"data: {args.rounds:,} rounds x {args.actions} actions x {args.positions} positions "
        f"(built in {time.perf_counter() - t0:.1f} s)\n"
    )
    no_model = {k: v for k, v in data.items() if k != "estimated_rewards_by_reg_model"}
    dm_args = {k: data[k] for k in ("action_dist", "estimated_rewards_by_reg_model", "position")}
    estimators = [
        ("DirectMethod", DirectMethod(), dm_args),
        ("InverseProbabilityWeighting", InverseProbabilityWeighting(), no_model),
        ("IPW (lambda_=10)", InverseProbabilityWeighting(lambda_=10.0), no_model),
        ("SelfNormalizedIPW", SelfNormalizedInverseProbabilityWeighting(), no_model),
        ("DoublyRobust", DoublyRobust(), data),
        ("SelfNormalizedDoublyRobust", SelfNormalizedDoublyRobust(), data),
        ("SwitchDoublyRobust (lambda_=5)", SwitchDoublyRobust(lambda_=5.0), data),
        ("DoublyRobustWithShrinkage (1)", DoublyRobustWithShrinkage(lambda_=1.0), data),
    ]
    print(f"{'estimator':<34}{'seconds':>10}{'target':>9}{'ok':>5}   estimate")
    for name, est, kwargs in estimators:
        seconds, value = best_time(
            lambda e=est, k=kwargs: e.estimate_policy_value(**k), args.repeat
        )
        ok = "yes" if seconds <= 1 else "NO"
        print(f"{name:<34}{seconds:>10.3f}{'1.0':>9}{ok:>5}   {value:.6f}")

    if args.skip_bootstrap:
        return
    ipw = InverseProbabilityWeighting()
    seconds, interval = best_time(
        lambda: ipw.estimate_interval(
            n_bootstrap_samples=args.bootstrap, random_state=0, **no_model
        ),
        1,
    )
    ok = "yes" if seconds <= 10 else "NO"
    print(
        f"\n{'IPW estimate_interval, ' + str(args.bootstrap) + ' resamples':<34}"
        f"{seconds:>10.3f}{'10.0':>9}{ok:>5}   {interval}"
    )


if __name__ == "__main__":
    main()
