"""Input checks shared by the statistics and the policies.

Every check raises with a message that says which argument is wrong, what was expected and what
was received, so that bad input never turns into silent NaN scores downstream.
"""

from __future__ import annotations

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


def check_items(items: ArrayLike, batch: int, *, name: str = "items") -> NDArray[np.int64]:
    """Integer item ids of shape [batch]; a scalar becomes [1]."""
    raw = np.asarray(items)
    if raw.ndim == 0:
        raw = raw[None]
    if raw.ndim != 1:
        raise ValueError(f"{name}: expected a 1-d array of item ids, got shape {raw.shape}")
    integral_floats = np.issubdtype(raw.dtype, np.floating) and bool(np.all(raw == np.round(raw)))
    if raw.size and not np.issubdtype(raw.dtype, np.integer) and not integral_floats:
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
    if not np.isfinite(r).all():
        i = int(np.argmax(~np.isfinite(r)))
        raise ValueError(f"{name}: reward at index {i} is {r[i]}; rewards must be finite")
    low, high = reward_range
    outside = (r < low) | (r > high)
    if outside.any():
        i = int(np.argmax(outside))
        raise ValueError(
            f"{name}: reward at index {i} is {r[i]}, outside the allowed range [{low}, {high}]; "
            "rescale rewards or set reward_range on the policy"
        )
    return r


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
