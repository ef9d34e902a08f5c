"""Naive reference implementations of the estimator definitions Open Bandit Pipeline 0.5.5 uses.

OBP does not install on Python 3.11, so the tests compare recsys.ope's blocked, vectorised code with
these slow, obviously-correct versions written from the definitions: per-round rewards whose mean is
the estimate, and OBP's bootstrap (resample rounds with ``RandomState.choice``, one resample after
another, percentile interval). Written for clarity, not speed.
"""

from __future__ import annotations

import numpy as np


def _positions(position, action_dist):
    """OBP treats a missing position as position 0 everywhere."""
    return np.zeros(len(action_dist), dtype=int) if position is None else position


def _target_probability(action, action_dist, position):
    """pi_e(a_i | x_i, k_i): the target policy's probability of the logged action."""
    return np.array([action_dist[i, action[i], position[i]] for i in range(len(action))])


def _importance_weights(action, pscore, action_dist, position):
    return _target_probability(action, action_dist, position) / pscore


def _model_terms(action, action_dist, q, position):
    """q(x_i, a_i) and E_{a ~ pi_e}[q(x_i, a)] at each round's position."""
    rows = range(len(action))
    factual = np.array([q[i, action[i], position[i]] for i in rows])
    expected = np.array([np.dot(action_dist[i, :, position[i]], q[i, :, position[i]])
                         / action_dist[i, :, position[i]].sum() for i in rows])
    return factual, expected


def ipw(reward, action, pscore, action_dist, position=None, lambda_=np.inf):
    weights = _importance_weights(action, pscore, action_dist, _positions(position, action_dist))
    return reward * np.minimum(weights, lambda_)


def snipw(reward, action, pscore, action_dist, position=None):
    weights = _importance_weights(action, pscore, action_dist, _positions(position, action_dist))
    return reward * weights / weights.mean()


def dm(action_dist, estimated_rewards_by_reg_model, position=None):
    position = _positions(position, action_dist)
    n = len(action_dist)
    return np.array([
        np.dot(action_dist[i, :, position[i]], estimated_rewards_by_reg_model[i, :, position[i]])
        / action_dist[i, :, position[i]].sum()
        for i in range(n)
    ])


def _doubly_robust(reward, action, pscore, action_dist, q, position, shrink):
    """model term + shrink(weights) * residual: DR, Switch-DR and DRos differ only in ``shrink``."""
    position = _positions(position, action_dist)
    weights = _importance_weights(action, pscore, action_dist, position)
    factual, expected = _model_terms(action, action_dist, q, position)
    return expected + shrink(weights) * (reward - factual)


def dr(reward, action, pscore, action_dist, estimated_rewards_by_reg_model, position=None,
       lambda_=np.inf):
    return _doubly_robust(reward, action, pscore, action_dist, estimated_rewards_by_reg_model,
                          position, lambda w: np.minimum(w, lambda_))


def sndr(reward, action, pscore, action_dist, estimated_rewards_by_reg_model, position=None):
    return _doubly_robust(reward, action, pscore, action_dist, estimated_rewards_by_reg_model,
                          position, lambda w: w / w.mean())


def switch_dr(reward, action, pscore, action_dist, estimated_rewards_by_reg_model, position=None,
              lambda_=np.inf):
    """Rounds whose weight exceeds lambda_ keep only the model term."""
    return _doubly_robust(reward, action, pscore, action_dist, estimated_rewards_by_reg_model,
                          position, lambda w: np.where(w <= lambda_, w, 0.0))


def dr_os(reward, action, pscore, action_dist, estimated_rewards_by_reg_model, position=None,
          lambda_=0.0):
    """Optimistic shrinkage: w -> lambda w / (w^2 + lambda); lambda = inf leaves w unchanged."""
    def shrink(w):
        return w if np.isinf(lambda_) else lambda_ * w / (w**2 + lambda_)

    return _doubly_robust(reward, action, pscore, action_dist, estimated_rewards_by_reg_model,
                          position, shrink)


def replay(reward, action, action_dist, position=None):
    """Keep the rounds where the (deterministic) target picks the logged action; rescale by their
    share so the mean of the returned rewards is the mean reward on those rounds."""
    matched = _target_probability(action, action_dist, _positions(position, action_dist)) == 1
    if not matched.any():
        return np.zeros(len(reward))
    return matched * reward / matched.mean()


def bootstrap(samples, alpha=0.05, n_bootstrap_samples=10000, random_state=None):
    """Percentile bootstrap of the mean, resampling with ``RandomState.choice`` once per resample,
    in order; ``random_state`` is a seed or a RandomState (advanced); keys named as OBP does."""
    rng = (random_state if isinstance(random_state, np.random.RandomState)
           else np.random.RandomState(random_state))
    means = np.empty(n_bootstrap_samples)
    for b in range(n_bootstrap_samples):
        means[b] = rng.choice(samples, size=len(samples)).mean()
    level = 100 * (1.0 - alpha)
    return {
        "mean": means.mean(),
        f"{level}% CI (lower)": np.percentile(means, 100 * alpha / 2),
        f"{level}% CI (upper)": np.percentile(means, 100 * (1.0 - alpha / 2)),
    }
