"""A literal transcription of Open Bandit Pipeline 0.5.5's formulas, for comparison in tests.

OBP itself does not install on Python 3.11, so its estimator bodies (``_estimate_round_rewards``)
and ``estimate_confidence_interval_by_bootstrap`` are copied here as written, loops and
``np.average`` included, to check that recsys.ope gives the same numbers.
"""

from __future__ import annotations

import numpy as np
from sklearn.utils import check_random_state


def _pos(position, action_dist):
    return np.zeros(action_dist.shape[0], dtype=int) if position is None else position


def ipw(reward, action, pscore, action_dist, position=None, lambda_=np.inf):
    position = _pos(position, action_dist)
    iw = action_dist[np.arange(action.shape[0]), action, position] / pscore
    iw = np.minimum(iw, lambda_)
    return reward * iw


def snipw(reward, action, pscore, action_dist, position=None):
    position = _pos(position, action_dist)
    iw = action_dist[np.arange(action.shape[0]), action, position] / pscore
    return reward * iw / iw.mean()


def dm(action_dist, estimated_rewards_by_reg_model, position=None):
    position = _pos(position, action_dist)
    n = position.shape[0]
    q_hat_at_position = estimated_rewards_by_reg_model[np.arange(n), :, position]
    pi_e_at_position = action_dist[np.arange(n), :, position]
    return np.average(q_hat_at_position, weights=pi_e_at_position, axis=1)


def _dr_parts(action, pscore, action_dist, q, position):
    n = action.shape[0]
    iw = action_dist[np.arange(n), action, position] / pscore
    q_hat_at_position = q[np.arange(n), :, position]
    q_hat_factual = q[np.arange(n), action, position]
    pi_e_at_position = action_dist[np.arange(n), :, position]
    base = np.average(q_hat_at_position, weights=pi_e_at_position, axis=1)
    return iw, q_hat_factual, base


def dr(
    reward,
    action,
    pscore,
    action_dist,
    estimated_rewards_by_reg_model,
    position=None,
    lambda_=np.inf,
):
    position = _pos(position, action_dist)
    iw, qf, base = _dr_parts(action, pscore, action_dist, estimated_rewards_by_reg_model, position)
    iw = np.minimum(iw, lambda_)
    return base + iw * (reward - qf)


def sndr(reward, action, pscore, action_dist, estimated_rewards_by_reg_model, position=None):
    position = _pos(position, action_dist)
    iw, qf, base = _dr_parts(action, pscore, action_dist, estimated_rewards_by_reg_model, position)
    return base + iw * (reward - qf) / iw.mean()


def switch_dr(
    reward,
    action,
    pscore,
    action_dist,
    estimated_rewards_by_reg_model,
    position=None,
    lambda_=np.inf,
):
    position = _pos(position, action_dist)
    iw, qf, base = _dr_parts(action, pscore, action_dist, estimated_rewards_by_reg_model, position)
    switch_indicator = np.array(iw <= lambda_, dtype=int)
    return base + switch_indicator * iw * (reward - qf)


def dr_os(
    reward, action, pscore, action_dist, estimated_rewards_by_reg_model, position=None, lambda_=0.0
):
    position = _pos(position, action_dist)
    iw, qf, base = _dr_parts(action, pscore, action_dist, estimated_rewards_by_reg_model, position)
    iw_hat = (lambda_ * iw) / (iw**2 + lambda_) if lambda_ < np.inf else iw
    return base + iw_hat * (reward - qf)


def replay(reward, action, action_dist, position=None):
    position = _pos(position, action_dist)
    action_match = np.array(action_dist[np.arange(action.shape[0]), action, position] == 1)
    estimated_rewards = np.zeros_like(action_match)
    if action_match.sum() > 0.0:
        estimated_rewards = action_match * reward / action_match.mean()
    return estimated_rewards


def bootstrap(samples, alpha=0.05, n_bootstrap_samples=10000, random_state=None):
    boot_samples = []
    random_ = check_random_state(random_state)
    for _ in np.arange(n_bootstrap_samples):
        boot_samples.append(np.mean(random_.choice(samples, size=samples.shape[0])))
    lower_bound = np.percentile(boot_samples, 100 * (alpha / 2))
    upper_bound = np.percentile(boot_samples, 100 * (1.0 - alpha / 2))
    return {
        "mean": np.mean(boot_samples),
        f"{100 * (1.0 - alpha)}% CI (lower)": lower_bound,
        f"{100 * (1.0 - alpha)}% CI (upper)": upper_bound,
    }
