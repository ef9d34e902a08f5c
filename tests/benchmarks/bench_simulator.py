"""Simulator benchmark: requests per second through the vectorised batch API.

Target (issue 3): ≥ 100k simulated requests/s for 10k items, d = 32. One request = draw a user
and its observable context, take a slate, sample the listwise choice, update state. The slate
policy's own cost is reported separately (uniform: nearly free; softmax over 10k items: a
(batch × 10k) score matrix per batch), since it belongs to the policy, not the simulator.

Usage: python tests/benchmarks/bench_simulator.py [--items 10000] [--dim 32] [--requests 1000000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from simulators.model import SimulatorConfig, SlateSimulator
from simulators.policies import EpsilonMixturePolicy, GreedyPolicy, SoftmaxPolicy, UniformPolicy


def rate(sim, policy, n_requests: int, batch: int, rng) -> tuple[float, float, float]:
    """(requests/s of the simulator alone, of simulator + policy, click-through per request).

    The policy gets the items that have arrived (``available``) in worlds with new items."""
    sim_seconds = policy_seconds = 0.0
    clicks = 0
    k = sim.config.slate_size
    for _ in range(n_requests // batch):
        t0 = time.perf_counter()
        requests = sim.sample_requests(batch, rng)
        t1 = time.perf_counter()
        available = None if requests.available.all() else requests.available
        slates = policy.recommend(requests.context, k, available=available).items
        t2 = time.perf_counter()
        responses = sim.respond(requests, slates, rng)
        t3 = time.perf_counter()
        sim_seconds += (t1 - t0) + (t3 - t2)
        policy_seconds += t2 - t1
        clicks += int((responses.clicked_position >= 0).sum())
    done = (n_requests // batch) * batch
    return done / sim_seconds, done / (sim_seconds + policy_seconds), clicks / done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--slate-size", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="200k requests")
    args = parser.parse_args()
    if args.quick:
        args.requests = min(args.requests, 200_000)
    rng = np.random.default_rng(0)
    print(
        f"{args.items:,} items, {args.users:,} users, d = {args.dim}, slates of "
        f"{args.slate_size}, batches of {args.batch:,}\n"
    )
    print(f"{'setting':<34}{'sim req/s':>14}{'sim+policy req/s':>19}{'clicks/req':>12}")
    settings = [
        ("defaults, uniform policy", {}, "uniform", args.requests),
        (
            "all effects on, uniform policy",
            {
                "click_noise": 0.02,
                "drift_std": 0.01,
                "fatigue_strength": 0.5,
                "new_item_fraction": 0.1,
                "popularity_bias": 1.0,
            },
            "uniform",
            args.requests,
        ),
        # Scoring 10k items per request is the policy's cost: measured on fewer requests.
        ("defaults, epsilon-greedy policy", {}, "greedy", args.batch // 5),
        ("slates of 2, softmax policy", {"slate_size": 2}, "softmax", args.batch // 5),
    ]
    for label, extra, policy_name, n_requests in settings:
        config = SimulatorConfig(
            **{
                "n_users": args.users,
                "n_items": args.items,
                "dim": args.dim,
                "slate_size": args.slate_size,
                **extra,
            }
        )
        sim = SlateSimulator(config)
        if policy_name == "uniform":
            policy = UniformPolicy(args.items, random_state=rng)
        elif policy_name == "greedy":
            policy = EpsilonMixturePolicy(GreedyPolicy(sim.item_features), 0.1, random_state=rng)
        else:
            # Exact Plackett-Luce propensities: O(n_items) per context for two positions (a
            # third costs O(n_items^2), so softmax slates of 3 are limited to small catalogues).
            policy = SoftmaxPolicy(sim.item_features, random_state=rng)
        batch = min(args.batch, n_requests)
        sim_rate, total_rate, ctr = rate(sim, policy, n_requests, batch, rng)
        print(f"{label:<34}{sim_rate:>14,.0f}{total_rate:>19,.0f}{ctr:>12.4f}")


if __name__ == "__main__":
    main()
