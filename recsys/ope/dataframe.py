"""From logged events in a polars DataFrame to estimator inputs, with checks that fail loudly.

One row per shown item (the ``recsys.rewards`` grain). Column names default to the lake schema's
(``recsys.schema.REWARDS``: ``item_id``, ``position``, ``reward``, ``propensity`` and the dense
context ``context_dense``), so a frame in that schema needs no ``columns`` override; other logs
(OBD's, say) name theirs with ``columns``. Missing, null, zero or above-one propensities are
rejected with the number of bad rows, because OPE on such logs would return a number that means
nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from recsys.ope.diagnostics import OverlapDiagnostics, overlap_diagnostics
from recsys.validation import check_probabilities, message

DEFAULT_COLUMNS: dict[str, str] = {
    "action": "item_id",
    "position": "position",
    "reward": "reward",
    "pscore": "propensity",
    "context": "context_dense",
}
"""OBP role → column of the lake schema (``recsys.schema``)."""


@dataclass(frozen=True, eq=False)
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
            raise ValueError(
                message("action_dist", f"shape {expected}", f"shape {np.shape(action_dist)}")
            )
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
            message(
                name,
                f"a column holding the {role}",
                f"no such column (columns: {frame.columns})",
                f"pass columns={{'{role}': ...}} to name it",
            )
        )
    series = frame[name]
    nulls = series.null_count()
    if nulls:
        raise ValueError(message(name, f"no nulls (the {role})", f"{nulls} null values"))
    return series


def _context(series: pl.Series) -> np.ndarray | None:
    """A (n, d) float array from a list or array column of equal-length vectors; None when
    every list is empty (graph-mode logs carry no dense context)."""
    if series.null_count():
        raise ValueError(message(series.name, "a context on every row", "null contexts"))
    if isinstance(series.dtype, pl.Array):
        return series.to_numpy().astype(float, copy=False)
    if not isinstance(series.dtype, pl.List):
        return series.to_numpy().astype(float, copy=False).reshape(series.len(), -1)
    lengths = series.list.len()
    width = int(lengths.max() or 0)
    if width == 0:
        return None
    if lengths.min() != width:
        raise ValueError(
            message(
                series.name,
                "context vectors of one length",
                f"lengths from {lengths.min()} to {width}",
            )
        )
    values = series.explode().to_numpy().astype(float, copy=False)
    return values.reshape(series.len(), width)


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
        raise TypeError(message("frame", "a polars DataFrame", type(frame).__name__))
    if frame.height == 0:
        raise ValueError(message("frame", "logged rounds", "no rows"))
    pscore = _column(frame, "pscore", names["pscore"]).cast(pl.Float64).to_numpy()
    check_probabilities(pscore, names["pscore"])
    action = _column(frame, "action", names["action"]).cast(pl.Int64).to_numpy()
    position = _column(frame, "position", names["position"]).cast(pl.Int64).to_numpy()
    position = position - position_offset
    reward = _column(frame, "reward", names["reward"]).cast(pl.Float64).to_numpy()
    if action.min() < 0:
        raise ValueError(message(names["action"], "ids >= 0", f"minimum {action.min()}"))
    if position.min() < 0:
        raise ValueError(
            message(
                names["position"],
                f"positions >= position_offset={position_offset}",
                f"minimum {position.min() + position_offset}",
                "check position_offset (1 for 1-based positions)",
            )
        )
    n_actions = int(action.max()) + 1 if n_actions is None else n_actions
    len_list = int(position.max()) + 1 if len_list is None else len_list
    if action.max() >= n_actions:
        raise ValueError(
            message(names["action"], f"ids < n_actions={n_actions}", f"maximum {action.max()}")
        )
    if position.max() >= len_list:
        raise ValueError(
            message(
                names["position"],
                f"positions < len_list={len_list}",
                f"maximum {position.max() + position_offset}",
            )
        )
    context = None
    if names["context"] in frame.columns:
        context = _context(frame[names["context"]])
    return BanditFeedback(reward, action, position, pscore, context, n_actions, len_list)
