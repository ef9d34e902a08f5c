"""Replay evaluation of a *learning* bandit configuration on logged data (rejection sampling).

The comparison engine evaluates frozen policies; this module answers the other question a user
asks ("would alpha = 0.3 have learned better than what runs now?", Azure Personalizer's
"optimization discovery", done openly): a bandit configuration is started from empty statistics
and replayed through the logs in time order, learning from the events it would have seen.

The estimator is rejection-sampling replay: Li, Chu, Langford & Wang (WSDM 2011, "Unbiased
offline evaluation of contextual-bandit-based news article recommendation algorithms") for
uniformly random logs, generalised to any logging policy with known propensities as in Dudík,
Erhan, Langford & Li (UAI 2012, "Sample-efficient nonstationary policy evaluation for contextual
bandits"). A logged event (x, a, r, p) is accepted with probability π_t(a | x) / (M · p), where
π_t is the learning policy as it stands and M a bound on π/p; accepted events are exactly the
events the policy "saw": its reward counts, and it learns from them. When M · p ≥ π_t(a | x) for
every event, the accepted events are distributed as if π_t had chosen the actions itself, so the
mean reward of the accepted events estimates the learning policy's average reward over its first
``n_accepted`` interactions (its learning curve averaged). Each event is accepted with
probability 1/M on average, whatever the policy, so about ``n_rows / M`` events are accepted.

What it assumes (and what breaks it):

* The logged propensities are correct and > 0 for every action the learning policy may take.
  Logged actions outside the policy's items are never accepted.
* The world is stationary over the logs: (context, reward) pairs do not depend on the time they
  were logged, beyond what the context carries. A drifting world is replayed as it drifted, but
  the accepted events then cover the log's whole time span, not ``n_accepted`` consecutive steps.
* The policy's choice depends only on the past (the accepted events before it) and its own
  randomness: it may not look at the logged action or reward before deciding.
* M ≥ max π_t(a | x) / p. The default M = 1 / (smallest logged propensity) guarantees it
  (π ≤ 1). A smaller ``max_ratio`` accepts more events (lower variance) but caps the rows whose
  ratio exceeds 1 at acceptance probability 1: those actions are then under-represented against
  the policy's distribution, a bias toward the logging policy's choices. ``ReplayResult.n_capped``
  counts such rows; it is 0 with the default M.
* Slates: with ``position=None`` every logged request must be a slate of one item (k = 1). With
  ``position=p`` only the rows at slot p are replayed, each accepted with the policy's marginal
  probability of showing the logged item at slot p (``action_dist(..., p + 1)[:, :, p]``); that
  assumes the reward of an item at a slot does not depend on the other items of the slate (the
  item-position model of slate independent IPS), which a choice model with competition between
  shown items breaks.

Mini-batches. A per-event Python loop would be the replay's whole cost, so the policy is frozen
for ``batch_size`` accepted events and learns from them at once, exactly like the streaming
learners' micro-batches: the policy serves ``batch_size`` requests between two updates. The batch
size is therefore part of the evaluated configuration (``batch_size=1`` is Li et al.'s per-event
replay). Each block of logged rows is scored in one vectorised call, sized to hold about the
events still missing from the batch (or to bound memory); the rows after the
``batch_size``-th accepted one are decided again by the updated policy (their uniform draws were
made in advance and never influenced anything, so reusing them is valid).

Interval. A normal-approximation interval for the mean of the accepted rewards, with their
sample standard deviation. The rewards are a martingale sequence (the policy changes), not
independent draws; the deviations of the per-step expected reward from the overall mean count as
noise here, which makes the interval somewhat conservative. It is clipped to the policy's
``reward_range``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from numpy.typing import ArrayLike, NDArray
from scipy.stats import norm
from sklearn.base import clone

from recsys.bandits import BasePolicy, policy_from_spec, policy_spec
from recsys.bandits.base import check_reward_range
from recsys.validation import check_scalar, message

__all__ = ["ReplayEvents", "ReplayResult", "make_policy", "replay_events", "replay_value"]

_CELLS = 1 << 22
"""Rows × items × positions per ``action_dist`` call (bounds the temporaries)."""
_MIN_WINDOW = 64
_REQUIRED = ("event_time_ms", "context_dense", "item_id", "position", "reward", "propensity")

PolicySource = BasePolicy | Mapping[str, Any] | str | Callable[[], BasePolicy]
"""A policy instance (cloned: its hyperparameters only), a spec (mapping or JSON text, see
``recsys.bandits.policy_from_spec``) or a factory that returns a policy."""


@dataclass(frozen=True, eq=False)
class ReplayEvents:
    """Logged single-item decisions in time order, as arrays: what the replay walks through."""

    contexts: NDArray[np.float64]  # [n, d] the dense context served
    items: NDArray[np.int64]  # [n] the logged item
    rewards: NDArray[np.float64]  # [n]
    propensities: NDArray[np.float64]  # [n] P(logging policy shows the item at the slot)
    position: int | None = None  # the replayed slot (None: slates of one item)

    def __len__(self) -> int:
        return int(self.items.size)


@dataclass(frozen=True)
class ReplayResult:
    """The replay estimate of a learning configuration: mean reward of the accepted events."""

    value: float
    lower: float
    upper: float
    n_accepted: int
    n_rows: int
    n_capped: int
    """Rows decided with π / (M · p) > 1 (accepted with probability 1: a bias, see the module)."""
    max_ratio: float
    """M, the bound on π / p used for the acceptance probability."""
    batch_size: int
    n_updates: int
    alpha: float
    spec: dict[str, Any] | None
    """The configuration's policy spec (None for a policy without one)."""
    policy: BasePolicy = field(repr=False, compare=False)
    """The policy after the replay (its statistics learned from the accepted events)."""

    @property
    def acceptance_rate(self) -> float:
        """Accepted over logged rows (about 1 / M)."""
        return self.n_accepted / self.n_rows if self.n_rows else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-safe values (the learned policy left out)."""
        return {
            "value": self.value, "lower": self.lower, "upper": self.upper,
            "n_accepted": self.n_accepted, "n_rows": self.n_rows, "n_capped": self.n_capped,
            "max_ratio": self.max_ratio, "batch_size": self.batch_size,
            "n_updates": self.n_updates, "alpha": self.alpha,
            "acceptance_rate": self.acceptance_rate, "spec": self.spec,
        }


# ------------------------------------------------------------------------------------- logs


def _frame_of(logs: Any) -> pl.DataFrame:
    """The logged rows as a polars frame (eager)."""
    if isinstance(logs, pl.LazyFrame):
        return logs.collect()
    if isinstance(logs, pl.DataFrame):
        return logs
    raise TypeError(message("logs", "a polars DataFrame in the lake's rewards schema, "
                            "LoggedSlates or ReplayEvents", type(logs).__name__))


def _is_logged_slates(logs: Any) -> bool:
    """Duck-typed ``recsys.comparison.logs.LoggedSlates``: requests in time order + row arrays."""
    return all(hasattr(logs, name) for name in
               ("requests", "request_index", "action", "position", "reward", "pscore"))


def _check_position(position: Any, max_position: int) -> int | None:
    """The replayed slot: None only for slates of one item."""
    if position is None:
        if max_position > 0:
            raise ValueError(message(
                "logs", "slates of one item (position 0 only) when position is None",
                f"slates of up to {max_position + 1} items",
                "pass position=0 to replay the lead slot (see the slate assumption in "
                "recsys.comparison.replay)"))
        return None
    if isinstance(position, bool) or not isinstance(position, int | np.integer) or position < 0:
        raise ValueError(message("position", "None or an integer >= 0", repr(position)))
    return int(position)


def _slate_rows(logs: Any, position: int | None) -> tuple[NDArray[np.float64], NDArray[np.int64],
                                                          NDArray[np.float64],
                                                          NDArray[np.float64]]:
    """Contexts, items, rewards and propensities of the replayed rows of ``LoggedSlates``
    (already in time order)."""
    slot = np.asarray(logs.position)
    rows = np.flatnonzero(slot == (0 if position is None else position))
    dense = logs.requests.dense
    if dense is None:
        raise ValueError(message("context_dense", "a dense context on every request (replay "
                                 "learns dense bandits)", "none"))
    contexts = dense[np.asarray(logs.request_index)[rows]]
    return (contexts, np.asarray(logs.action)[rows].astype(np.int64),
            np.asarray(logs.reward, dtype=np.float64)[rows],
            np.asarray(logs.pscore, dtype=np.float64)[rows])


def _frame_rows(frame: pl.DataFrame, position: int | None) -> tuple[
        NDArray[np.float64], NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
    """Contexts, items, rewards and propensities of the replayed rows of a rewards frame,
    sorted by event time (ties by request id)."""
    missing = [c for c in _REQUIRED if c not in frame.columns]
    if missing:
        raise ValueError(message("logs", f"the columns {list(_REQUIRED)}", f"none of {missing}"))
    frame = frame.filter(pl.col("position") == (0 if position is None else position))
    frame = frame.sort(["event_time_ms", "request_id"] if "request_id" in frame.columns
                       else ["event_time_ms"], maintain_order=True)
    if frame.height == 0:
        return (np.empty((0, 0)), np.empty(0, dtype=np.int64), np.empty(0), np.empty(0))
    dense = frame["context_dense"]
    lengths = dense.list.len().to_numpy()
    if lengths.min() != lengths.max() or lengths.max() == 0:
        raise ValueError(message("context_dense", "a dense context of one length on every row "
                                 "(replay learns dense bandits)",
                                 f"lengths from {lengths.min()} to {lengths.max()}"))
    contexts = dense.explode().to_numpy().astype(np.float64).reshape(frame.height, -1)
    return (contexts, frame["item_id"].to_numpy().astype(np.int64),
            frame["reward"].to_numpy().astype(np.float64),
            frame["propensity"].to_numpy().astype(np.float64))


def replay_events(logs: Any, position: int | None = None) -> ReplayEvents:
    """The rows to replay, in time order: every row when slates hold one item
    (``position=None``), else the rows at slot ``position``. ``logs``: a polars frame in the
    lake's ``rewards`` schema, ``LoggedSlates`` (``recsys.comparison.logs``) or ReplayEvents."""
    if isinstance(logs, ReplayEvents):
        if logs.position != position:
            raise ValueError(message("position", f"the events' slot ({logs.position})", position))
        return logs
    if _is_logged_slates(logs):
        slot = np.asarray(logs.position)
        position = _check_position(position, int(slot.max()) if slot.size else 0)
        contexts, items, rewards, propensities = _slate_rows(logs, position)
    else:
        frame = _frame_of(logs)
        if "position" not in frame.columns:
            raise ValueError(message("logs", f"the columns {list(_REQUIRED)}", "no position"))
        top = frame["position"].max() if frame.height else 0
        position = _check_position(position, int(top))
        contexts, items, rewards, propensities = _frame_rows(frame, position)
    if items.size == 0:
        raise ValueError(message("logs", "at least one logged row to replay", "none"))
    bad = ~(np.isfinite(propensities) & (propensities > 0) & (propensities <= 1))
    if bad.any():
        raise ValueError(message("propensity", "a logged probability in (0, 1] on every row",
                                 f"{int(bad.sum())} rows outside it (first: "
                                 f"{propensities[np.argmax(bad)]!r})",
                                 "replay needs the logging policy's propensities"))
    if not (np.isfinite(rewards).all() and np.isfinite(contexts).all()):
        raise ValueError(message("logs", "finite rewards and contexts", "NaN or infinity"))
    return ReplayEvents(contexts, items, rewards, propensities, position)


# ------------------------------------------------------------------------------------- policy


def make_policy(policy: PolicySource, item_ids: ArrayLike, dim: int,
                random_state: int | None = None) -> BasePolicy:
    """A policy with empty statistics over ``item_ids`` and ``dim`` features from ``policy``;
    a factory's policy that already has statistics is used as is (a warm start). A policy
    without ``random_state`` gets ``random_state`` (reproducible Thompson propensities)."""
    if isinstance(policy, BasePolicy):
        built = clone(policy)
    elif isinstance(policy, Mapping | str):
        built = policy_from_spec(policy)
    elif callable(policy):
        built = policy()
        if not isinstance(built, BasePolicy):
            raise TypeError(message("policy", "a factory that returns a recsys.bandits policy",
                                    f"one that returned {type(built).__name__}"))
        if getattr(built, "stats_", None) is not None:
            return built
    else:
        raise TypeError(message("policy", "a recsys.bandits policy, a policy spec or a factory",
                                type(policy).__name__))
    if built.random_state is None and random_state is not None:
        built.set_params(random_state=random_state)
    return built.init(np.asarray(item_ids), dim)


def _spec_of(policy: BasePolicy) -> dict[str, Any] | None:
    try:
        return policy_spec(policy)
    except ValueError:
        return None


def _columns(policy: BasePolicy, items: NDArray[np.int64]) -> NDArray[np.intp]:
    """The ``action_dist`` column of every logged item, -1 for items the policy lacks."""
    ids = np.asarray(policy.item_ids_)
    order = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids[order], items)
    pos = np.minimum(pos, ids.size - 1)
    found = ids[order][pos] == items
    return np.where(found, order[pos], -1)


def _block_rows(policy: BasePolicy, slot: int) -> int:
    """The most rows one ``action_dist`` call may score (bounds the temporaries)."""
    return max(1, _CELLS // max(1, len(policy.item_ids_) * (slot + 1)))


def _target_probability(policy: BasePolicy, contexts: NDArray[np.float64],
                        columns: NDArray[np.intp], slot: int) -> NDArray[np.float64]:
    """π(logged item at ``slot`` | context) under the frozen policy, for one block of rows."""
    known = columns >= 0
    if not known.any():
        return np.zeros(columns.size)
    dist = policy.action_dist(contexts, slot + 1)
    picked = dist[np.arange(columns.size), np.maximum(columns, 0), slot]
    return np.where(known, picked, 0.0)


# ------------------------------------------------------------------------------------- replay


def _check_count(value: Any, name: str) -> int:
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(message(name, "an integer >= 1", repr(value)))
    return int(value)


def replay_value(
    logs: Any,
    policy: PolicySource,
    *,
    item_ids: ArrayLike | None = None,
    dim: int | None = None,
    batch_size: int = 100,
    max_ratio: float | None = None,
    position: int | None = None,
    alpha: float = 0.05,
    random_state: int | np.random.Generator | None = 0,
) -> ReplayResult:
    """Replay the learning policy ``policy`` through ``logs`` in time order (module docstring).

    ``logs``: rows in the lake's ``rewards`` schema (a polars frame or ``LoggedSlates``) or
    ``ReplayEvents``. ``item_ids`` default to the logged items, ``dim`` to the contexts' length.
    ``batch_size``: accepted events between two updates of the policy. ``max_ratio``: M (default
    1 / the smallest logged propensity, which never caps). ``alpha``: 1 − the interval's level.
    ``random_state`` draws the acceptance coins; the same seed gives every configuration the
    same coins (common random numbers, which sharpens comparisons).
    """
    events = replay_events(logs, position)
    batch_size = _check_count(batch_size, "batch_size")
    alpha = check_scalar(alpha, "alpha", 0.0, 1.0, low_open=True, high_open=True)
    d = events.contexts.shape[1]
    if dim is not None and dim != d:
        raise ValueError(message("dim", f"the logged contexts' length ({d})", repr(dim)))
    items = np.unique(events.items) if item_ids is None else np.asarray(item_ids)
    rng = np.random.default_rng(random_state)
    coins = rng.random(len(events))
    seed = int(rng.integers(2**31))
    learner = make_policy(policy, items, d, random_state=seed)
    m = 1.0 / float(events.propensities.min()) if max_ratio is None else check_scalar(
        max_ratio, "max_ratio", 0.0, low_open=True)
    scale = m * events.propensities  # accept iff coin < π / (M · p)
    columns = _columns(learner, events.items)
    slot = 0 if events.position is None else events.position

    accepted: list[NDArray[np.intp]] = []
    pending: list[NDArray[np.intp]] = []
    n_pending = n_capped = n_updates = n_done = n_accepted = 0
    start, n = 0, len(events)
    block = _block_rows(learner, slot)
    while start < n:  # one pass per block of logged rows, vectorised inside
        need = batch_size - n_pending
        rate = (n_accepted + 1.0) / (n_done + m)  # acceptance so far (prior: 1 / M)
        window = min(n - start, block, max(_MIN_WINDOW, math.ceil(1.2 * need / rate)))
        rows = np.arange(start, start + window)
        ratio = _target_probability(learner, events.contexts[rows], columns[rows], slot)
        ratio /= scale[rows]
        hits = np.flatnonzero(coins[rows] < ratio)
        if hits.size >= need:
            cut = int(hits[need - 1]) + 1  # the rows up to the batch's last accepted event
            hits = hits[:need]
        else:
            cut = window
        n_capped += int((ratio[:cut] > 1.0).sum())
        pending.append(rows[hits])
        n_pending += hits.size
        n_accepted += hits.size
        n_done += cut
        start += cut
        if n_pending == batch_size or start >= n:
            batch = np.concatenate(pending)
            if batch.size:
                learner.learn(events.contexts[batch], events.items[batch], events.rewards[batch])
                n_updates += 1
            accepted.append(batch)
            pending, n_pending = [], 0

    if n_accepted == 0:
        raise ValueError(message(
            "logs", "at least one event accepted by the replay",
            f"none of {n} rows (M = {m:.4g}: about n_rows / M are accepted)",
            "give more logs, or a smaller max_ratio (at the cost of a bias)"))
    taken = np.concatenate(accepted)
    rewards = events.rewards[taken]
    value = float(rewards.mean())
    low, high = check_reward_range(learner.reward_range)
    if taken.size > 1:
        half = float(norm.ppf(1.0 - alpha / 2.0) * rewards.std(ddof=1) / math.sqrt(taken.size))
        lower, upper = max(low, value - half), min(high, value + half)
    else:
        lower, upper = low, high
    return ReplayResult(
        value=value, lower=float(lower), upper=float(upper), n_accepted=int(taken.size),
        n_rows=n, n_capped=n_capped, max_ratio=m, batch_size=batch_size, n_updates=n_updates,
        alpha=alpha, spec=_spec_of(learner), policy=learner,
    )

