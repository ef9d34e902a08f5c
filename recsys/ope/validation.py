"""Input checks for the off-policy estimators, in ``recsys.validation``'s message convention.

The rules are Open Bandit Pipeline's (``check_ope_inputs``) plus the ones OBP leaves out and that
silently produce wrong numbers: NaN or infinite values, propensities above one, negative
evaluation-policy probabilities. Built from the shared primitives, which cost one pass over valid
input (the large 3-D arrays are checked by ``recsys.ope.scan`` in the pass that reads them).
"""

from __future__ import annotations

import numpy as np

from recsys.ope.scan import scan
from recsys.validation import as_array, check_finite, check_index, check_probabilities, message
from recsys.validation import check_scalar as _check_real

__all__ = [
    "as_array",
    "check_action_dist",
    "check_ope_inputs",
    "check_pscore",
    "check_scalar",
]


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
                message(
                    "position",
                    "an array of positions, since action_dist.shape[2] (len_list) > 1",
                    "None",
                )
            )
        pos = np.zeros(n_rounds, dtype=np.intp)
    else:
        pos = as_array(position, "position", 1)
        if pos.shape[0] != n_rounds:
            raise ValueError(
                message("position", f"{n_rounds} rounds like action_dist", pos.shape[0])
            )
        check_index(pos, "position", len_list, "action_dist.shape[2]")
    out["position"] = pos

    if estimated_rewards_by_reg_model is not None:
        q_hat = as_array(estimated_rewards_by_reg_model, "estimated_rewards_by_reg_model", 3)
        if q_hat.shape != dist.shape:
            raise ValueError(
                message(
                    "estimated_rewards_by_reg_model",
                    f"the shape of action_dist {dist.shape}",
                    f"shape {q_hat.shape}",
                )
            )
        out["estimated_rewards_by_reg_model"] = q_hat

    if action is not None or reward is not None:
        act = as_array(action, "action", 1)
        rew = as_array(reward, "reward", 1)
        for name, array in (("action", act), ("reward", rew)):
            if array.shape[0] != n_rounds:
                raise ValueError(
                    message(name, f"{n_rounds} rounds like action_dist", array.shape[0])
                )
        check_index(act, "action", n_actions, "action_dist.shape[1]")
        check_finite(rew, "reward")
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
        raise ValueError(message(name, f"{n_rounds} rounds", ps.shape[0]))
    check_probabilities(ps, name)
    return ps


def check_scalar(value: object, name: str, low: float, high: float = np.inf) -> float:
    """A real hyperparameter in [low, high], not NaN."""
    return _check_real(value, name, low, high)
