"""Input checks shared by the statistics and the policies, in ``recsys.validation``'s convention.

Every check raises with a message that says which argument is wrong, what was expected and what
was received (``name: expected ..., got ...; what to do``), so that bad input never turns into
silent NaN scores downstream. The single-event paths keep an inline fast path and only call the
shared primitives once something is wrong.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from recsys.validation import check_scalar, first_non_finite, message


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
        raise ValueError(message(name, f"shape [batch, {dim}]", f"an array of shape {x.shape}"))
    if x.shape[1] != dim:
        raise ValueError(
            message(name, f"{dim} features per context", f"{x.shape[1]} (shape {x.shape})")
        )
    bad = first_non_finite(x)
    if bad is not None:
        raise ValueError(
            message(
                name,
                "finite features",
                f"NaN or infinity (first at row {bad[0]}, feature {bad[1]})",
                "clean or impute the features before scoring or learning",
            )
        )
    return x


def check_context_one(context: ArrayLike, dim: int) -> NDArray[np.float64]:
    """One finite context of shape [dim] (the single-event fast path)."""
    x = np.asarray(context, dtype=np.float64)
    if x.shape != (dim,):
        if x.ndim == 2 and x.shape[0] == 1:
            return check_contexts(x, dim)[0]
        raise ValueError(message("context", f"shape [{dim}]", f"an array of shape {x.shape}"))
    if not np.isfinite(x).all():
        return check_contexts(x, dim)[0]  # raises with the position of the bad value
    return x


def check_reward_one(reward: float, reward_range: tuple[float, float]) -> float:
    """One finite reward inside ``reward_range``."""
    try:
        r = float(reward)
    except (TypeError, ValueError):
        raise ValueError(message("reward", "a number", repr(reward))) from None
    if math.isfinite(r) and reward_range[0] <= r <= reward_range[1]:
        return r
    return float(check_rewards([r], 1, reward_range)[0])  # raises with the reason


def check_items(items: ArrayLike, batch: int, *, name: str = "items") -> NDArray[np.int64]:
    """Integer item ids of shape [batch]; a scalar becomes [1]."""
    raw = np.asarray(items)
    if raw.ndim == 0:
        raw = raw[None]
    if raw.ndim != 1:
        raise ValueError(message(name, "a 1-d array of item ids", f"shape {raw.shape}"))
    kind = raw.dtype.kind
    integral_floats = kind == "f" and bool(np.all(raw == np.round(raw)))
    if raw.size and kind not in "iu" and not integral_floats:
        raise ValueError(message(name, "item ids that are integers", f"dtype {raw.dtype}"))
    ids = raw.astype(np.int64)
    if ids.shape[0] != batch:
        raise ValueError(
            message(
                name,
                "one item id per context",
                f"{ids.shape[0]} item ids for a batch of {batch} contexts",
            )
        )
    return ids


def check_rewards(
    rewards: ArrayLike, batch: int, reward_range: tuple[float, float], *, name: str = "rewards"
) -> NDArray[np.float64]:
    """Finite float64 rewards of shape [batch] inside ``reward_range`` (inclusive)."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim == 0:
        r = r[None]
    if r.ndim != 1 or r.shape[0] != batch:
        raise ValueError(message(name, f"shape [{batch}]", f"shape {r.shape}"))
    if r.size == 0:
        return r
    low, high = reward_range
    lo, hi = float(r.min()), float(r.max())  # NaN propagates into both
    if math.isfinite(lo) and math.isfinite(hi) and low <= lo and hi <= high:
        return r
    bad = first_non_finite(r)
    if bad is not None:
        i = bad[0]
        raise ValueError(
            message(
                name,
                "finite rewards",
                f"reward at index {i} = {r[i]}",
                "rewards must be finite; fix or drop the event",
            )
        )
    i = int(np.argmax((r < low) | (r > high)))
    raise ValueError(
        message(
            name,
            f"rewards in [{low}, {high}]",
            f"reward at index {i} = {r[i]}, outside the allowed range",
            "rescale rewards or set reward_range on the policy",
        )
    )


def check_positive(value: float, name: str, *, allow_zero: bool = False) -> float:
    """A finite positive (or non-negative) hyperparameter."""
    return check_scalar(value, name, 0.0, math.inf, low_open=not allow_zero, high_open=True)


def check_probability(value: float, name: str) -> float:
    """A hyperparameter in [0, 1]."""
    return check_scalar(value, name, 0.0, 1.0)
