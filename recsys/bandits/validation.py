"""Input checks shared by the statistics and the policies.

Every check raises with a message that says which argument is wrong, what was expected and what
was received, so that bad input never turns into silent NaN scores downstream.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray


class UnknownItemError(KeyError):
    """An item id that the statistics do not hold (add it first, or drop the event)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


def check_contexts(contexts: ArrayLike, dim: int, *, name: str = "contexts") -> NDArray[np.float64]:
    """A finite float64 array of shape [batch, dim]; a single context [dim] becomes [1, dim]."""
    x = np.asarray(contexts, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"{name}: expected shape [batch, {dim}], got an array of shape {x.shape}")
    if x.shape[1] != dim:
        raise ValueError(
            f"{name}: expected {dim} features per context, got {x.shape[1]} (shape {x.shape})"
        )
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(
            f"{name}: contains NaN or infinity (first at row {bad[0]}, feature {bad[1]}); "
            "clean or impute the features before scoring or learning"
        )
    return x


def check_context_one(context: ArrayLike, dim: int) -> NDArray[np.float64]:
    """One finite context of shape [dim] (the single-event fast path)."""
    x = np.asarray(context, dtype=np.float64)
    if x.shape != (dim,):
        if x.ndim == 2 and x.shape[0] == 1:
            return check_contexts(x, dim)[0]
        raise ValueError(f"context: expected shape [{dim}], got an array of shape {x.shape}")
    if not np.isfinite(x).all():
        return check_contexts(x, dim)[0]  # raises with the position of the bad value
    return x


def check_reward_one(reward: float, reward_range: tuple[float, float]) -> float:
    """One finite reward inside ``reward_range``."""
    try:
        r = float(reward)
    except (TypeError, ValueError):
        raise ValueError(f"reward: expected a number, got {reward!r}") from None
    if math.isfinite(r) and reward_range[0] <= r <= reward_range[1]:
        return r
    return float(check_rewards([r], 1, reward_range)[0])  # raises with the reason


def check_items(items: ArrayLike, batch: int, *, name: str = "items") -> NDArray[np.int64]:
    """Integer item ids of shape [batch]; a scalar becomes [1]."""
    raw = np.asarray(items)
    if raw.ndim == 0:
        raw = raw[None]
    if raw.ndim != 1:
        raise ValueError(f"{name}: expected a 1-d array of item ids, got shape {raw.shape}")
    kind = raw.dtype.kind
    integral_floats = kind == "f" and bool(np.all(raw == np.round(raw)))
    if raw.size and kind not in "iu" and not integral_floats:
        raise ValueError(f"{name}: item ids must be integers, got dtype {raw.dtype}")
    ids = raw.astype(np.int64)
    if ids.shape[0] != batch:
        raise ValueError(f"{name}: got {ids.shape[0]} item ids for a batch of {batch} contexts")
    return ids


def check_rewards(
    rewards: ArrayLike, batch: int, reward_range: tuple[float, float], *, name: str = "rewards"
) -> NDArray[np.float64]:
    """Finite float64 rewards of shape [batch] inside ``reward_range`` (inclusive)."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim == 0:
        r = r[None]
    if r.ndim != 1 or r.shape[0] != batch:
        raise ValueError(f"{name}: expected shape [{batch}], got shape {r.shape}")
    if r.size == 0:
        return r
    low, high = reward_range
    lo, hi = float(r.min()), float(r.max())  # NaN propagates into both
    if math.isfinite(lo) and math.isfinite(hi) and low <= lo and hi <= high:
        return r
    if not np.isfinite(r).all():
        i = int(np.argmax(~np.isfinite(r)))
        raise ValueError(f"{name}: reward at index {i} is {r[i]}; rewards must be finite")
    i = int(np.argmax((r < low) | (r > high)))
    raise ValueError(
        f"{name}: reward at index {i} is {r[i]}, outside the allowed range [{low}, {high}]; "
        "rescale rewards or set reward_range on the policy"
    )


def check_positive(value: float, name: str, *, allow_zero: bool = False) -> float:
    """A finite positive (or non-negative) hyperparameter."""
    v = float(value)
    ok = np.isfinite(v) and (v >= 0 if allow_zero else v > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return v


def check_probability(value: float, name: str) -> float:
    """A hyperparameter in [0, 1]."""
    v = float(value)
    if not (0.0 <= v <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return v
