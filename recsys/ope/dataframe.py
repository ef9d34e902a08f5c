"""From logged events in a polars DataFrame to estimator inputs, with checks that fail loudly.

One row per shown item (the ``recsys.rewards`` grain). Column names default to the event
contract's (``item_id``, ``position``, ``propensity``) and a ``click`` reward; override them with
``columns``. Missing, null, zero or above-one propensities are rejected with the number of bad
rows, because OPE on such logs would return a number that means nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from recsys.ope.diagnostics import OverlapDiagnostics, overlap_diagnostics

DEFAULT_COLUMNS: dict[str, str] = {
    "action": "item_id",
    "position": "position",
    "reward": "click",
    "pscore": "propensity",
    "context": "context",
}


@dataclass(frozen=True)
class BanditFeedback:
    """Logged rounds as OBP-shaped arrays (``context`` is None when the frame has none)."""

    reward: np.ndarray
    action: np.ndarray
    position: np.ndarray
    pscore: np.ndarray
    context: np.ndarray | None
    n_actions: int
    len_list: int

    @property
    def n_rounds(self) -> int:
        return int(self.reward.shape[0])

    def estimator_kwargs(
        self, action_dist: np.ndarray, estimated_rewards_by_reg_model: np.ndarray | None = None
    ) -> dict[str, Any]:
        """Keyword arguments for any estimator's ``estimate_policy_value``/``estimate_interval``."""
        expected = (self.n_rounds, self.n_actions, self.len_list)
        if np.shape(action_dist) != expected:
            raise ValueError(f"`action_dist` must have shape {expected}, got {action_dist.shape}")
        kwargs: dict[str, Any] = {
            "reward": self.reward,
            "action": self.action,
            "position": self.position,
            "pscore": self.pscore,
            "action_dist": action_dist,
        }
        if estimated_rewards_by_reg_model is not None:
            kwargs["estimated_rewards_by_reg_model"] = estimated_rewards_by_reg_model
        return kwargs

    def diagnostics(self, action_dist: np.ndarray) -> OverlapDiagnostics:
        """Overlap between the logging policy and ``action_dist`` on these rounds."""
        return overlap_diagnostics(self.action, self.position, self.pscore, action_dist)


def _column(frame: pl.DataFrame, role: str, name: str) -> pl.Series:
    if name not in frame.columns:
        raise ValueError(
            f"the frame has no `{name}` column for {role} (columns: {frame.columns}); "
            f"pass columns={{'{role}': ...}} to name it"
        )
    series = frame[name]
    nulls = series.null_count()
    if nulls:
        raise ValueError(f"column `{name}` ({role}) has {nulls} null values")
    return series


def bandit_feedback_from_frame(
    frame: pl.DataFrame,
    n_actions: int | None = None,
    len_list: int | None = None,
    columns: Mapping[str, str] | None = None,
    position_offset: int = 0,
) -> BanditFeedback:
    """Validated OBP-style arrays from a log frame.

    ``position_offset`` is subtracted from the position column (1 for OBD's 1-based positions).
    ``n_actions``/``len_list`` default to max + 1 of the logged values.
    """
    names = {**DEFAULT_COLUMNS, **(columns or {})}
    if not isinstance(frame, pl.DataFrame):
        raise TypeError(f"`frame` must be a polars DataFrame, got {type(frame).__name__}")
    if frame.height == 0:
        raise ValueError("`frame` has no rows")
    pscore = _column(frame, "pscore", names["pscore"]).cast(pl.Float64).to_numpy()
    bad = ~np.isfinite(pscore)
    if bad.any():
        raise ValueError(f"column `{names['pscore']}` has {int(bad.sum())} NaN/inf propensities")
    if (pscore <= 0).any():
        raise ValueError(
            f"column `{names['pscore']}` has {int((pscore <= 0).sum())} propensities <= 0: a shown "
            "item must have had a positive probability; fix the logging before evaluating"
        )
    if (pscore > 1).any():
        raise ValueError(
            f"column `{names['pscore']}` has {int((pscore > 1).sum())} propensities above 1 "
            f"(max {pscore.max():.4g}); were scores logged instead of probabilities?"
        )
    action = _column(frame, "action", names["action"]).cast(pl.Int64).to_numpy()
    position = _column(frame, "position", names["position"]).cast(pl.Int64).to_numpy()
    position = position - position_offset
    reward = _column(frame, "reward", names["reward"]).cast(pl.Float64).to_numpy()
    if action.min() < 0:
        raise ValueError(f"column `{names['action']}` has negative ids")
    if position.min() < 0:
        raise ValueError(
            f"column `{names['position']}` has positions below {position_offset}; "
            "check `position_offset`"
        )
    n_actions = int(action.max()) + 1 if n_actions is None else n_actions
    len_list = int(position.max()) + 1 if len_list is None else len_list
    if action.max() >= n_actions:
        raise ValueError(f"column `{names['action']}` has ids >= n_actions={n_actions}")
    if position.max() >= len_list:
        raise ValueError(f"column `{names['position']}` has positions >= len_list={len_list}")
    context = None
    if names["context"] in frame.columns:
        ctx = frame[names["context"]]
        context = np.asarray(ctx.to_numpy() if ctx.dtype != pl.List else ctx.to_list(), float)
    return BanditFeedback(reward, action, position, pscore, context, n_actions, len_list)
