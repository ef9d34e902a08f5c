"""Input checks for the off-policy estimators, with messages that name the offending argument.

The rules are Open Bandit Pipeline's (``check_ope_inputs``) plus the ones OBP leaves out and that
silently produce wrong numbers: NaN or infinite values, propensities above one, negative
evaluation-policy probabilities.
"""

from __future__ import annotations

import numpy as np

from recsys.ope.scan import scan


def as_array(value: object, name: str, ndim: int) -> np.ndarray:
    """``value`` as an ndarray of the given dimension, or a ValueError naming ``name``."""
    if value is None:
        raise ValueError(f"`{name}` is required but was None")
    array = np.asarray(value)
    if array.ndim != ndim:
        raise ValueError(f"`{name}` must be {ndim}-dimensional, but got shape {array.shape}")
    if array.dtype == object:
        raise ValueError(f"`{name}` must be numeric, got dtype object")
    return array


def _check_finite(array: np.ndarray, name: str) -> None:
    # One summing pass: any NaN or infinity makes the sum non-finite (cheaper than isfinite on
    # the 300M-cell arrays of a large evaluation).
    floating = np.issubdtype(array.dtype, np.floating)
    if floating and not np.isfinite(array.sum()) and not np.isfinite(array).all():
        raise ValueError(f"`{name}` contains NaN or infinite values")


def _check_index(array: np.ndarray, name: str, upper: int, upper_name: str) -> None:
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"`{name}` must hold integers, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= upper):
        raise ValueError(
            f"`{name}` elements must be integers in [0, {upper_name}) = [0, {upper}), "
            f"got values in [{array.min()}, {array.max()}]"
        )


def check_action_dist(action_dist: object) -> np.ndarray:
    """A 3-D array of probabilities over actions (axis 1) for every round and position."""
    action_dist = as_array(action_dist, "action_dist", 3)
    scan(action_dist, np.zeros(action_dist.shape[0], dtype=np.intp))
    return action_dist


def check_ope_inputs(
    action_dist: object,
    position: object = None,
    action: object = None,
    reward: object = None,
    pscore: object = None,
    estimated_rewards_by_reg_model: object = None,
) -> dict[str, np.ndarray | None]:
    """Validate OBP-style estimator inputs; return them as arrays (``position`` filled with 0s
    when it is None and ``action_dist`` has one position).

    Shapes, indices, rewards and propensities are checked here; the contents of the two large
    3-D arrays are checked by ``recsys.ope.scan`` in the same pass that reads them (or call
    ``check_action_dist`` directly)."""
    dist = as_array(action_dist, "action_dist", 3)
    n_rounds, n_actions, len_list = dist.shape
    out: dict[str, np.ndarray | None] = {"action_dist": dist}

    if position is None:
        if len_list > 1:
            raise ValueError(
                "`position` must be given when action_dist.shape[2] (len_list) is greater than 1"
            )
        pos = np.zeros(n_rounds, dtype=np.intp)
    else:
        pos = as_array(position, "position", 1)
        if pos.shape[0] != n_rounds:
            raise ValueError(f"`position` has {pos.shape[0]} rounds but action_dist has {n_rounds}")
        _check_index(pos, "position", len_list, "action_dist.shape[2]")
    out["position"] = pos

    if estimated_rewards_by_reg_model is not None:
        q_hat = as_array(estimated_rewards_by_reg_model, "estimated_rewards_by_reg_model", 3)
        if q_hat.shape != dist.shape:
            raise ValueError(
                f"`estimated_rewards_by_reg_model` must have the shape of action_dist {dist.shape},"
                f" got {q_hat.shape}"
            )
        out["estimated_rewards_by_reg_model"] = q_hat

    if action is not None or reward is not None:
        act = as_array(action, "action", 1)
        rew = as_array(reward, "reward", 1)
        if act.shape[0] != n_rounds:
            raise ValueError(f"`action` has {act.shape[0]} rounds but action_dist has {n_rounds}")
        if rew.shape[0] != n_rounds:
            raise ValueError(f"`reward` has {rew.shape[0]} rounds but action_dist has {n_rounds}")
        _check_index(act, "action", n_actions, "action_dist.shape[1]")
        _check_finite(rew, "reward")
        out["action"] = act
        out["reward"] = rew.astype(float, copy=False)

    if pscore is not None:
        ps = check_pscore(pscore, n_rounds)
        out["pscore"] = ps
    return out


def check_pscore(pscore: object, n_rounds: int, name: str = "pscore") -> np.ndarray:
    """Propensities must be finite, in (0, 1], one per round."""
    ps = as_array(pscore, name, 1).astype(float, copy=False)
    if ps.shape[0] != n_rounds:
        raise ValueError(f"`{name}` has {ps.shape[0]} rounds but there are {n_rounds}")
    _check_finite(ps, name)
    if ps.size and ps.min() <= 0:
        raise ValueError(
            f"`{name}` must be positive: found {int((ps <= 0).sum())} propensities <= 0 "
            "(a shown item must have had a positive probability of being shown)"
        )
    if ps.size and ps.max() > 1:
        raise ValueError(
            f"`{name}` must be at most 1: found {int((ps > 1).sum())} propensities above 1 "
            f"(max {ps.max():.6g}); were scores logged instead of probabilities?"
        )
    return ps


def check_scalar(value: object, name: str, low: float, high: float = np.inf) -> float:
    """A real hyperparameter in [low, high], not NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"`{name}` must be a float, got {type(value).__name__}")
    value = float(value)
    if value != value or not low <= value <= high:
        raise ValueError(f"`{name}` must be in [{low}, {high}], got {value}")
    return value
