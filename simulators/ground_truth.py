"""The true value of a policy in the simulator's current state, and the optimal value.

Value = expected clicks per request (``SlateSimulator.expected_clicks``: P(a click) under the
MNL, the sum of the slots' click probabilities under the PBM), over the simulator's user
distribution. Users form a finite population with known arrival weights and a policy sees a fixed
feature vector per user, so the expectation over users is an exact weighted sum; the expectation
over the user's clicks is exact (the choice model gives probabilities). Only the policy's own
randomness over slates of two or more positions needs Monte Carlo, and then the standard error
is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from recsys.policy import Policy
from simulators.model import SlateSimulator
from simulators.policies import GreedyPolicy

_CHUNK_CELLS = 2**22


@dataclass(frozen=True)
class PolicyValue:
    """A true policy value; ``standard_error`` is 0 when ``exact``."""

    value: float
    standard_error: float
    exact: bool


def item_click_probabilities(sim: SlateSimulator, position: int = 0) -> np.ndarray:
    """(n_users, n_items): P(click) when the item is shown alone at ``position`` (MNL:
    θ e^s / (e^b + θ e^s), PBM: θ σ(s − b); equal at position 0, where θ = 1)."""
    n_users, n_items = sim.config.n_users, sim.config.n_items
    out = np.empty((n_users, n_items))
    theta = sim.examination[position]
    b = np.exp(sim.config.no_click_utility)
    pbm = sim.config.choice_model == "pbm"
    step = max(1, _CHUNK_CELLS // n_items)
    items = np.arange(n_items)
    for start in range(0, n_users, step):
        users = np.arange(start, min(start + step, n_users))
        s = sim.utilities(np.repeat(users, n_items), np.tile(items, users.size))
        s = s.reshape(users.size, n_items)
        if pbm:
            out[users] = theta * expit(s - sim.config.no_click_utility)
        else:
            w = theta * np.exp(s)
            out[users] = w / (b + w)
    eps = sim.config.click_noise
    return (1 - eps) * out + eps if eps else out


def policy_value(
    sim: SlateSimulator,
    policy: Policy,
    n_monte_carlo: int = 200,
    slate_size: int | None = None,
) -> PolicyValue:
    """The expected clicks per request of ``policy`` in the simulator's current state, for slates
    of ``slate_size`` (default: the simulator's).

    One-item slates and the deterministic greedy policy are exact; longer slates of a
    random policy average ``n_monte_carlo`` slates per user drawn by ``recommend`` (the policy's
    own ``random_state``). Where some items have not arrived, the policy gets ``available``.
    """
    k = slate_size or sim.config.slate_size
    users = np.arange(sim.config.n_users)
    context = sim.user_features(users)
    available = sim.available_items()
    only_available = {} if available.all() else {"available": available}
    weights = sim.user_weights
    if k == 1:
        dist = policy.action_dist(context, 1, **only_available)[:, :, 0]
        q = item_click_probabilities(sim)[:, policy.item_ids_]
        return PolicyValue(float(weights @ (dist * q).sum(axis=1)), 0.0, True)
    if isinstance(policy, GreedyPolicy):  # one slate per user
        slates = policy.recommend(context, k, **only_available).items
        return PolicyValue(float(weights @ sim.expected_clicks(users, slates)), 0.0, True)
    draws = np.empty(n_monte_carlo)
    for m in range(n_monte_carlo):  # loop over Monte Carlo draws, each one vectorised over users
        slates = policy.recommend(context, k, **only_available).items
        draws[m] = weights @ sim.expected_clicks(users, slates)
    return PolicyValue(
        float(draws.mean()), float(draws.std(ddof=1) / np.sqrt(n_monte_carlo)), False
    )


def optimal_slates(sim: SlateSimulator, slate_size: int | None = None) -> np.ndarray:
    """(n_users, slate_size): the best slate per user in the current state.

    MNL: P(click) is W / (e^b + W) with W = Σ_k θ_k exp(s_k), increasing in W. PBM: expected
    clicks are (1 − ε) Σ_k θ_k σ(s_k − b) + ε. Both W and that sum are Σ_k θ_k f(s_k) with f
    increasing, largest with the most attractive items at the most examined positions (θ is
    non-increasing; rearrangement inequality), so sorting items by utility is exact for both.
    """
    k = slate_size or sim.config.slate_size
    users = np.arange(sim.config.n_users)
    n_items = sim.config.n_items
    out = np.empty((users.size, k), dtype=np.int64)
    step = max(1, _CHUNK_CELLS // n_items)
    items = np.arange(n_items)
    available = sim.available_items()
    for start in range(0, users.size, step):
        rows = users[start : start + step]
        s = sim.utilities(np.repeat(rows, n_items), np.tile(items, rows.size))
        s = s.reshape(rows.size, n_items)
        s[:, ~available] = -np.inf
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1)
        out[rows] = np.take_along_axis(part, order, axis=1)
    return out


def optimal_value(sim: SlateSimulator, slate_size: int | None = None) -> PolicyValue:
    """The value of the optimal (oracle) policy: regret = optimal − policy value."""
    users = np.arange(sim.config.n_users)
    slates = optimal_slates(sim, slate_size)
    clicks = sim.expected_clicks(users, slates)
    return PolicyValue(float(sim.user_weights @ clicks), 0.0, True)


def regret(
    sim: SlateSimulator, policy: Policy, n_monte_carlo: int = 200, slate_size: int | None = None
) -> PolicyValue:
    """Expected clicks per request lost against the optimal policy (same state, same slate
    size; default: the simulator's)."""
    value = policy_value(sim, policy, n_monte_carlo, slate_size)
    best = optimal_value(sim, slate_size).value
    return PolicyValue(best - value.value, value.standard_error, value.exact)
