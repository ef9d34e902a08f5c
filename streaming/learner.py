"""Learner actors: Kafka batches → vectorised statistics deltas → the shard that owns each item.

A :class:`Learner` owns an explicit, co-partitioned assignment of ``recsys.impressions`` and
``recsys.feedback`` partitions (no consumer group), polls them in batches, turns each batch into
deltas with the statistics protocol's ``delta_from_batch`` and sends each shard its share
(``shard_of`` then ``select``) as ``(arrays, meta)``: fire-and-forget ``apply.remote`` calls, at
most ``max_in_flight`` per shard outstanding; ``flush`` waits for all of them (the checkpoint
coordinator calls it). :class:`LearnerCore` is the Kafka-free half (events in, deltas out).

Freshness does not wait for the attribution window (the default, ``mode="fresh"``)
-----------------------------------------------------------------------------------
Exposure sums (Σx², Σx, counts) do not depend on the reward and reward sums (Σx·r, Σr) only on
the feedback, so an impression's exposure part (one row per shown item, with the impression's
context) is learned the moment the impression is read, and a click's reward part the moment the
click is read; the two add up to one ``learn(part="both")`` on the joined examples. The reward of
a shown item is the **max** of the mapped values of its feedback, as the joiner
(``streaming.join``) defines it; the learner learns it incrementally: each feedback adds the
*increase* of the running max (the first adds its value, a lower or repeated one adds nothing).

The price is the usual **delayed-feedback pessimism**: between an impression and its clicks the
item has been shown but not (yet) rewarded, so its estimated reward is biased low for a few
seconds to the length of the window, and the more so the more it is shown right now (a popular
new item looks worse than it is until its clicks arrive). The bias vanishes as the feedback lands;
exploration bonuses shrink with exposure at once, which is what keeps one item from being shown to
everyone on stale parameters. ``mode="window"`` is the alternative: learn ``part="both"`` only
from the joined examples on ``recsys.rewards``, unbiased but a full window late.

Same rules as the joiner, so the state equals learning its joined examples
---------------------------------------------------------------------------
The statistics after any stream of events equal ``learn(part="both")`` on the rewards the joiner
emits for the same events (tested), whatever the interleaving of partitions and streams. So the
learner mirrors every decision of ``streaming.join``: per-partition and per-stream event-time
watermarks (max seen − allowed lateness); late impressions (below their stream's watermark) and
impressions repeated while open are not learned (the joiner writes no example for them); feedback
counts when its type is mapped, it is not late, its time is in ``[impression time, impression time
+ window)``, its user is the impression's and its item was shown at its position; feedback that
arrives before its impression is held until the impression comes or the impression watermark
passes it; duplicates are harmless under max. Rejected feedback is counted by the joiner's reason
names (the joiner dead-letters it; the learner only counts, so nothing is reported twice).
Open requests are kept until the feedback watermark of their partition passes their window end
(the context cache, bounded by ``max_open_requests``: beyond it the oldest are closed early and
counted), held feedback until it expires; both are checked lazily, in amortised O(1) per event,
which cannot change a decision (a feedback that would find a window closed is late or outside it).
One exception: an impression repeated *after* its window closed is learned again if its request
was already swept and not if it is still held (the joiner re-emits its rewards, which downstream
de-duplicates); idempotent producers make such repeats rare.

Bad input never stops a learner: events that do not decode are the consumer's dead letters;
contexts of the wrong width, unknown clusters and items outside the catalogue are counted and
skipped. The state (open requests with their running rewards, held feedback, watermarks,
counters) round-trips through plain numpy arrays (``state_arrays`` / ``restore``), so a checkpoint
holds it beside the offsets.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import ray
from numpy.typing import NDArray

from recsys.bandits import shard_of, stats_from_arrays
from recsys.bandits.graph import SoftContexts
from recsys.bandits.protocol import StatsArrays
from recsys.events import Feedback, Impression, Reward
from streaming.consumer import ConsumedEvent, EventConsumer
from streaming.join import DEFAULT_REWARD_MAPPING, FEEDBACK_TYPES, NO_TIME, Reason
from streaming.reading import ConsumingActor, Offsets
from streaming.topics import DEAD_LETTER

Mode = Literal["fresh", "window"]
STATE_FORMAT = "recsys.learner.state/1"
_TYPES = tuple(sorted(FEEDBACK_TYPES))
_TYPE_CODE = {name: code for code, name in enumerate(_TYPES)}


# ---------------------------------------------------------------------------------------------
# columns that grow by doubling and compact by mask


class _Table:
    """Equal-length numpy columns (1-d or 2-d) with amortised O(1) appends; 2-d columns widen
    with their pad value when a wider block arrives (longer slates, more clusters)."""

    def __init__(self, columns: Mapping[str, tuple[Any, int | None, Any]]) -> None:
        # name -> (dtype, width or None for 1-d, pad value)
        self._spec = dict(columns)
        self.n = 0
        self._cols: dict[str, NDArray[Any]] = {
            name: np.full((16,) if w is None else (16, w), pad, dtype=dtype)
            for name, (dtype, w, pad) in self._spec.items()
        }

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, name: str) -> NDArray[Any]:
        return self._cols[name][: self.n]

    def append(self, block: Mapping[str, NDArray[Any]]) -> int:
        """Append equal-length columns; returns the first new row."""
        m = len(next(iter(block.values())))
        start, need = self.n, self.n + m
        for name, values in block.items():
            col = self._cols[name]
            dtype, _, pad = self._spec[name]
            rows = max(col.shape[0], 16)
            while rows < need:
                rows *= 2
            wide = col.ndim == 2 and values.shape[1] > col.shape[1]
            if rows != col.shape[0] or wide:
                shape = (rows,) if col.ndim == 1 else (rows, max(col.shape[1], values.shape[1]))
                grown = np.full(shape, pad, dtype=dtype)
                if col.ndim == 1:
                    grown[: self.n] = col[: self.n]
                else:
                    grown[: self.n, : col.shape[1]] = col[: self.n]
                self._cols[name] = col = grown
            if col.ndim == 1:
                col[start:need] = values
            else:
                col[start:need, : values.shape[1]] = values
                col[start:need, values.shape[1]:] = pad
        self.n = need
        return start

    def keep(self, mask: NDArray[np.bool_]) -> None:
        """Keep the rows where ``mask`` is true, in order."""
        for col in self._cols.values():
            kept = col[: self.n][mask]
            col[: kept.shape[0]] = kept
        self.n = int(mask.sum())

    def arrays(self, prefix: str) -> dict[str, NDArray[Any]]:
        return {f"{prefix}{name}": np.array(self[name]) for name in self._cols}

    def load(self, arrays: Mapping[str, NDArray[Any]], prefix: str) -> None:
        self.n = 0
        block = {name: np.asarray(arrays[f"{prefix}{name}"]) for name in self._cols}
        if len(next(iter(block.values()))):
            self.append(block)


def _padded(lengths: NDArray[np.int64], flat: NDArray[Any], pad: Any) -> NDArray[Any]:
    """Ragged rows (``flat`` cut by ``lengths``) as a [rows, max length] matrix, padded."""
    width = int(lengths.max()) if lengths.size else 0
    out = np.full((lengths.size, max(width, 1)), pad, dtype=flat.dtype)
    if flat.size:
        rows = np.repeat(np.arange(lengths.size), lengths)
        starts = np.cumsum(lengths) - lengths
        out[rows, np.arange(flat.size) - np.repeat(starts, lengths)] = flat
    return out


def _running_late(times: NDArray[np.int64], partitions: NDArray[np.int64],
                  clock: dict[int, int], lateness: int) -> NDArray[np.bool_]:
    """Which events are late (below the max event time seen before them on their partition's
    stream, minus the lateness), updating ``clock`` (partition -> max time) in place."""
    late = np.zeros(times.size, dtype=bool)
    for p in np.unique(partitions).tolist():
        rows = np.flatnonzero(partitions == p)
        t = times[rows]
        before = np.maximum.accumulate(np.concatenate([[clock.get(p, NO_TIME)], t]))[:-1]
        late[rows] = t < before - lateness
        clock[p] = int(max(before[-1], t[-1]))
    return late


# ---------------------------------------------------------------------------------------------
# contexts: dense rows or sparse cluster memberships, by the statistics' layout


@dataclass
class _Contexts:
    """The contexts of a batch of events in the layout's form, and which rows were usable."""

    columns: dict[str, NDArray[Any]]
    ok: NDArray[np.bool_]


class _ContextReader:
    """Reads event contexts as columns for one statistics layout (dense [n, d]; graph
    clusters/weights [n, K]) and turns stored rows back into ``delta_from_batch`` input."""

    def __init__(self, template: Any) -> None:
        self.graph = template.layout == "graph"
        self.dim = None if self.graph else int(template.dim)
        self.n_clusters = int(template.n_clusters) if self.graph else 0

    def table_columns(self) -> dict[str, tuple[Any, int | None, Any]]:
        if self.graph:
            return {"clusters": (np.int64, 1, -1), "weights": (np.float64, 1, 0.0)}
        return {"dense": (np.float64, self.dim, 0.0)}

    def read(self, events: Sequence[Impression | Reward]) -> _Contexts:
        contexts = [e.context for e in events]
        if not self.graph:
            lengths = np.fromiter((len(c.dense) for c in contexts), np.int64, len(contexts))
            ok = lengths == self.dim
            rows = [c.dense for c, good in zip(contexts, ok, strict=True) if good] \
                if not ok.all() else [c.dense for c in contexts]
            dense = np.zeros((len(contexts), self.dim))
            if rows:
                dense[ok] = np.array(rows, dtype=np.float64)
            return _Contexts({"dense": dense}, ok)
        lengths = np.fromiter((len(c.cluster_ids) for c in contexts), np.int64, len(contexts))
        ids = np.fromiter((i for c in contexts for i in c.cluster_ids), np.int64,
                          int(lengths.sum()))
        weights = np.fromiter((w for c in contexts for w in c.cluster_weights), np.float64,
                              int(lengths.sum()))
        clusters, w = _padded(lengths, ids, -1), _padded(lengths, weights, 0.0)
        ok = ((clusters < self.n_clusters) | (w <= 0)).all(axis=1)
        return _Contexts({"clusters": np.where(w > 0, clusters, -1), "weights": w}, ok)

    def of(self, columns: Mapping[str, NDArray[Any]]) -> Any:
        if self.graph:
            return SoftContexts(columns["clusters"], columns["weights"])
        return columns["dense"]


# ---------------------------------------------------------------------------------------------
# the Kafka-free learner


@dataclass
class Updates:
    """What one batch teaches: exposure rows (reward 0 implied) and reward-increase rows."""

    exposure_contexts: Any
    exposure_items: NDArray[np.int64]
    reward_contexts: Any
    reward_items: NDArray[np.int64]
    rewards: NDArray[np.float64]


class LearnerCore:
    """Events in, per-shard deltas out: the learner without Kafka or Ray (see the module docs).

    ``template`` is the ``(arrays, meta)`` of statistics of the policy's layout and
    hyperparameters; deltas cover its catalogue. With an empty catalogue (``stats.select([])``,
    the natural choice for the dense layout) the catalogue is open: every batch's items are
    taken, so a learner holds no n_items × d arrays, and the shards count rows for items they do
    not hold. Graph statistics need their edges (a delta is defined on them).
    """

    def __init__(
        self,
        template: StatsArrays,
        n_shards: int,
        *,
        mode: Mode = "fresh",
        window_ms: int = 60_000,
        allowed_lateness_ms: int = 5_000,
        reward_mapping: Mapping[str, float] | None = None,
        max_open_requests: int = 5_000_000,
    ) -> None:
        if mode not in ("fresh", "window"):
            raise ValueError(f"mode must be 'fresh' or 'window', got {mode!r}")
        if int(n_shards) != n_shards or n_shards < 1:
            raise ValueError(f"n_shards must be a positive integer, got {n_shards!r}")
        if window_ms <= 0 or allowed_lateness_ms < 0:
            raise ValueError(f"window_ms must be > 0 and allowed_lateness_ms >= 0, got "
                             f"{window_ms} and {allowed_lateness_ms}")
        self.mode: Mode = mode
        self.n_shards = int(n_shards)
        self.window_ms = int(window_ms)
        self.lateness_ms = int(allowed_lateness_ms)
        mapping = dict(DEFAULT_REWARD_MAPPING if reward_mapping is None else reward_mapping)
        unknown = sorted(set(mapping) - FEEDBACK_TYPES)
        if unknown:
            raise ValueError(f"reward_mapping: {unknown} are not feedback types "
                             f"({sorted(FEEDBACK_TYPES)})")
        self.reward_mapping = {k: float(v) for k, v in mapping.items()}
        self._value_of_code = np.array([self.reward_mapping.get(t, np.nan) for t in _TYPES])
        self.max_open_requests = int(max_open_requests)
        self._template = stats_from_arrays(*template)
        self._open_catalogue = self._template.n_items == 0
        self._contexts = _ContextReader(self._template)
        self.counts: Counter[str] = Counter()
        self._imp_clock: dict[int, int] = {}
        self._fb_clock: dict[int, int] = {}
        ctx = self._contexts.table_columns()
        self._open = _Table({"request_id": (object, None, ""), "user_id": (object, None, ""),
                             "time": (np.int64, None, 0), "partition": (np.int64, None, 0),
                             "items": (np.int64, 1, -1), "positions": (np.int64, 1, -1),
                             "reward": (np.float64, 1, np.nan), **ctx})
        self._slot: dict[str, int] = {}
        self._held = _Table({"request_id": (object, None, ""), "user_id": (object, None, ""),
                             "item": (np.int64, None, 0), "position": (np.int64, None, 0),
                             "type": (np.int64, None, 0), "time": (np.int64, None, 0),
                             "partition": (np.int64, None, 0)})
        self._appended_since_sweep = 0

    # -- batches -----------------------------------------------------------------------------

    def process(self, batch: Sequence[ConsumedEvent]) -> list[list[StatsArrays]]:
        """Learn from one batch; returns each shard's deltas (possibly empty lists).

        Each delta's meta carries ``oldest_record_ms``, the Kafka timestamp of the batch's oldest
        record, so shards can measure how long records take to be merged (freshness)."""
        updates = self.updates(batch)
        routed = self.route(updates)
        if batch:
            oldest = min(c.timestamp_ms for c in batch)
            for deltas in routed:
                for _, meta in deltas:
                    meta["oldest_record_ms"] = oldest
        return routed

    def updates(self, batch: Sequence[ConsumedEvent]) -> Updates:
        """The rows one batch teaches (exposure and reward increases), state updated."""
        imps = [c for c in batch if isinstance(c.event, Impression)]
        fbs = [c for c in batch if isinstance(c.event, Feedback)]
        rewards = [c for c in batch if isinstance(c.event, Reward)]
        expected = (len(imps) + len(fbs)) if self.mode == "fresh" else len(rewards)
        if expected != len(batch):
            self.counts["unexpected_event_type"] += len(batch) - expected
        if self.mode == "window":
            return self._joined_examples(rewards)
        exposure = self._impressions(imps)
        reward = self._feedback(fbs)
        self._maybe_sweep()
        return Updates(exposure[0], exposure[1], reward[0], reward[1], reward[2])

    # -- window mode: joined examples ----------------------------------------------------------

    def _joined_examples(self, batch: Sequence[ConsumedEvent]) -> Updates:
        events = [c.event for c in batch]
        self.counts["rewards"] += len(events)
        ctx = self._contexts.read(events)  # type: ignore[arg-type]
        items = np.fromiter((e.item_id for e in events), np.int64, len(events))  # type: ignore
        r = np.fromiter((e.reward for e in events), np.float64, len(events))  # type: ignore
        ok = ctx.ok & self._known(items)
        self.counts["bad_context"] += int((~ctx.ok).sum())
        cols = {k: v[ok] for k, v in ctx.columns.items()}
        empty = self._empty_rows()
        return Updates(self._contexts.of(cols), items[ok], empty[0], empty[1], r[ok])

    # -- fresh mode: impressions ---------------------------------------------------------------

    def _empty_rows(self) -> tuple[Any, NDArray[np.int64]]:
        """No rows: contexts of the layout's form with zero rows, and no items."""
        cols = {name: np.zeros((0, width or 1), dtype=dtype)
                for name, (dtype, width, _) in self._contexts.table_columns().items()}
        return self._contexts.of(cols), np.zeros(0, dtype=np.int64)

    def _known(self, items: NDArray[np.int64]) -> NDArray[np.bool_]:
        if self._open_catalogue:
            return np.ones(items.size, dtype=bool)
        ids = self._template.item_ids
        pos = np.minimum(np.searchsorted(ids, items), max(ids.size - 1, 0))
        known = ids[pos] == items
        self.counts["unknown_item"] += int((~known).sum())
        return known

    def _impressions(self, batch: Sequence[ConsumedEvent]) -> tuple[Any, NDArray[np.int64]]:
        if not batch:
            return self._empty_rows()
        events: list[Impression] = [c.event for c in batch]  # type: ignore[misc]
        n = len(events)
        self.counts["impressions"] += n
        times = np.fromiter((e.event_time_ms for e in events), np.int64, n)
        partitions = np.fromiter((c.partition for c in batch), np.int64, n)
        late = _running_late(times, partitions, self._imp_clock, self.lateness_ms)
        self.counts[Reason.LATE_IMPRESSION] += int(late.sum())
        # an impression repeated while its request is open (or within the batch) teaches nothing
        accept = ~late
        slot, seen = self._slot, set()
        for k, event in enumerate(events):
            if accept[k]:
                rid = event.request_id
                if rid in slot or rid in seen:
                    accept[k] = False
                    self.counts["repeated_impressions"] += 1
                else:
                    seen.add(rid)
        ctx = self._contexts.read(events)
        self.counts["bad_context"] += int((accept & ~ctx.ok).sum())
        accept &= ctx.ok
        picked = np.flatnonzero(accept)
        if not picked.size:
            return self._empty_rows()
        kept = [events[k] for k in picked.tolist()]
        sizes = np.fromiter((len(e.slate) for e in kept), np.int64, len(kept))
        items = np.fromiter((s.item_id for e in kept for s in e.slate), np.int64,
                            int(sizes.sum()))
        positions = np.fromiter((s.position for e in kept for s in e.slate), np.int64,
                                int(sizes.sum()))
        rids = np.array([e.request_id for e in kept], dtype=object)
        columns = {name: col[picked] for name, col in ctx.columns.items()}
        start = self._open.append({
            "request_id": rids,
            "user_id": np.array([e.user_id for e in kept], dtype=object),
            "time": times[picked], "partition": partitions[picked],
            "items": _padded(sizes, items, -1), "positions": _padded(sizes, positions, -1),
            "reward": np.full((len(kept), max(int(sizes.max()), 1)), np.nan),
            **columns,
        })
        slot.update(zip(rids.tolist(), range(start, start + len(kept)), strict=True))
        self._appended_since_sweep += len(kept)
        self.counts["impressions_learned"] += len(kept)
        # one exposure row per shown item, with the impression's context
        rows = np.repeat(np.arange(len(kept)), sizes)
        known = self._known(items)
        exposure_cols = {name: col[rows[known]] for name, col in columns.items()}
        return self._contexts.of(exposure_cols), items[known]

    # -- fresh mode: feedback ------------------------------------------------------------------

    def _feedback(self, batch: Sequence[ConsumedEvent]
                  ) -> tuple[Any, NDArray[np.int64], NDArray[np.float64]]:
        fresh = self._feedback_columns(batch) if batch else None
        # held feedback whose impression has just arrived joins this batch's feedback
        held = self._release_held()
        parts = [p for p in (fresh, held) if p is not None and p["item"].size]
        if not parts:
            empty = self._empty_rows()
            return empty[0], empty[1], np.zeros(0)
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        slots = np.fromiter((self._slot.get(r, -1) for r in cols["request_id"]), np.int64,
                            cols["request_id"].size)
        waiting = slots < 0
        if waiting.any():  # (released feedback always finds its request: only fresh waits)
            self._held.append({k: v[waiting] for k, v in cols.items()})
            self.counts["held_feedback"] += int(waiting.sum())
        return self._attribute({k: v[~waiting] for k, v in cols.items()}, slots[~waiting])

    def _feedback_columns(self, batch: Sequence[ConsumedEvent]) -> dict[str, NDArray[Any]] | None:
        events: list[Feedback] = [c.event for c in batch]  # type: ignore[misc]
        n = len(events)
        self.counts["feedback"] += n
        times = np.fromiter((e.event_time_ms for e in events), np.int64, n)
        partitions = np.fromiter((c.partition for c in batch), np.int64, n)
        types = np.fromiter((_TYPE_CODE[e.event_type] for e in events), np.int64, n)
        late = _running_late(times, partitions, self._fb_clock, self.lateness_ms)
        unmapped = np.isnan(self._value_of_code[types])
        self.counts[Reason.UNMAPPED_TYPE] += int(unmapped.sum())
        late &= ~unmapped
        self.counts[Reason.LATE_FEEDBACK] += int(late.sum())
        keep = ~(late | unmapped)
        if not keep.any():
            return None
        idx = np.flatnonzero(keep).tolist()
        return {
            "request_id": np.array([events[k].request_id for k in idx], dtype=object),
            "user_id": np.array([events[k].user_id for k in idx], dtype=object),
            "item": np.fromiter((events[k].item_id for k in idx), np.int64, len(idx)),
            "position": np.fromiter((events[k].position for k in idx), np.int64, len(idx)),
            "type": types[keep], "time": times[keep], "partition": partitions[keep],
        }

    def _release_held(self) -> dict[str, NDArray[Any]] | None:
        """Held feedback whose request is open now (taken out of the held table)."""
        if not len(self._held):
            return None
        slot = self._slot
        found = np.fromiter((r in slot for r in self._held["request_id"]), bool, len(self._held))
        if not found.any():
            return None
        out = {name: np.array(self._held[name][found]) for name in
               ("request_id", "user_id", "item", "position", "type", "time", "partition")}
        self._held.keep(~found)
        return out

    def _attribute(self, cols: dict[str, NDArray[Any]], slots: NDArray[np.int64]
                   ) -> tuple[Any, NDArray[np.int64], NDArray[np.float64]]:
        """Reward increases of feedback whose request is open (the joiner's checks, vectorised)."""
        if not slots.size:
            empty = self._empty_rows()
            return empty[0], empty[1], np.zeros(0)
        start = self._open["time"][slots]
        t = cols["time"]
        before = t < start
        outside = ~before & (t >= start + self.window_ms)
        other_user = ~(before | outside) & (self._open["user_id"][slots] != cols["user_id"])
        shown = self._open["items"][slots] == cols["item"][:, None]
        col = shown.argmax(axis=1)
        at = self._open["positions"][slots, col] == cols["position"]
        not_shown = ~(before | outside | other_user) & ~(shown.any(axis=1) & at)
        self.counts[Reason.BEFORE_IMPRESSION] += int(before.sum())
        self.counts[Reason.OUTSIDE_WINDOW] += int(outside.sum())
        self.counts[Reason.USER_MISMATCH] += int(other_user.sum())
        self.counts[Reason.NOT_IN_SLATE] += int(not_shown.sum())
        ok = ~(before | outside | other_user | not_shown)
        self.counts["joined_feedback"] += int(ok.sum())
        if not ok.any():
            empty = self._empty_rows()
            return empty[0], empty[1], np.zeros(0)
        value = self._value_of_code[cols["type"][ok]]
        width = self._open["reward"].shape[1]
        cell = slots[ok] * width + col[ok]
        cells, inverse = np.unique(cell, return_inverse=True)
        best_now = np.full(cells.size, -np.inf)
        np.maximum.at(best_now, inverse, value)
        reward = self._open["reward"].reshape(-1)  # a view of the live rows
        before_r = reward[cells]
        had = ~np.isnan(before_r)
        after_r = np.where(had, np.maximum(before_r, best_now), best_now)
        increase = after_r - np.where(had, before_r, 0.0)
        reward[cells] = after_r
        moved = increase != 0
        cells, increase = cells[moved], increase[moved]
        rows, cols_ = np.divmod(cells, width)
        items = self._open["items"][rows, cols_]
        known = self._known(items)
        ctx = {name: self._open[name][rows[known]] for name in self._contexts.table_columns()}
        return self._contexts.of(ctx), items[known], increase[known]

    # -- closing windows and expiring held feedback (lazily, amortised) ------------------------

    def _maybe_sweep(self) -> None:
        if self._appended_since_sweep * 2 >= max(len(self._open), 50_000) \
                or len(self._open) > self.max_open_requests:
            self.sweep()

    def _watermark(self, clock: dict[int, int], partitions: NDArray[np.int64]) -> NDArray[Any]:
        known = np.array(sorted(clock), dtype=np.int64)
        marks = np.array([clock[p] for p in known.tolist()], dtype=np.int64) - self.lateness_ms
        if not known.size:
            return np.full(partitions.size, NO_TIME, dtype=np.int64)
        pos = np.minimum(np.searchsorted(known, partitions), known.size - 1)
        return np.where(known[pos] == partitions, marks[pos], NO_TIME)

    def sweep(self) -> None:
        """Close the windows the feedback watermarks have passed, expire held feedback the
        impression watermarks have passed, and enforce ``max_open_requests``."""
        self._appended_since_sweep = 0
        if len(self._open):
            ends = self._open["time"] + self.window_ms
            keep = ends > self._watermark(self._fb_clock, self._open["partition"])
            over = int(keep.sum()) - self.max_open_requests
            if over > 0:  # close the oldest early: bounded memory beats an unbounded cache
                times = np.where(keep, self._open["time"], np.iinfo(np.int64).max)
                oldest = np.argpartition(times, over - 1)[:over]
                keep[oldest] = False
                self.counts["closed_over_capacity"] += over
            self.counts["closed_windows"] += int((~keep).sum())
            if not keep.all():
                self._open.keep(keep)
                self._slot = dict(zip(self._open["request_id"].tolist(), range(len(self._open)),
                                      strict=True))
        if len(self._held):
            expired = self._held["time"] < self._watermark(self._imp_clock,
                                                           self._held["partition"])
            if expired.any():
                self.counts[Reason.NO_IMPRESSION] += int(expired.sum())
                self._held.keep(~expired)

    # -- routing -----------------------------------------------------------------------------

    def route(self, updates: Updates) -> list[list[StatsArrays]]:
        """Each shard's share of the batch's deltas, as ``(arrays, meta)`` pairs."""
        out: list[list[StatsArrays]] = [[] for _ in range(self.n_shards)]
        part = "both" if self.mode == "window" else "exposure"
        jobs = [(updates.exposure_contexts, updates.exposure_items,
                 updates.rewards if part == "both" else None, part)]
        if self.mode == "fresh":
            jobs.append((updates.reward_contexts, updates.reward_items, updates.rewards,
                         "reward"))
        for contexts, items, rewards, part in jobs:
            if not items.size:
                continue
            basis = self._template
            if self._open_catalogue:
                basis = self._template.copy()
                basis.add_items(np.unique(items))
            delta = basis.delta_from_batch(contexts, items, rewards, part=part)
            if self.n_shards == 1:
                out[0].append(delta.to_arrays())
                continue
            owner = shard_of(delta.item_ids, self.n_shards)
            for s in np.unique(owner).tolist():
                out[s].append(delta.select(delta.item_ids[owner == s]).to_arrays())
        return out

    # -- checkpoint state ----------------------------------------------------------------------

    def state_arrays(self) -> dict[str, NDArray[Any]]:
        """Open requests, held feedback, watermarks and counters as plain numpy arrays."""
        arrays = {**self._open.arrays("open_"), **self._held.arrays("held_")}
        for name in ("open_request_id", "open_user_id", "held_request_id", "held_user_id"):
            arrays[name] = _strings(arrays[name].tolist())
        counts = sorted(self.counts.items())
        return {
            "format": np.array(STATE_FORMAT), "mode": np.array(self.mode),
            "window_ms": np.array(self.window_ms), "lateness_ms": np.array(self.lateness_ms),
            "imp_clock": np.array(sorted(self._imp_clock.items()), np.int64).reshape(-1, 2),
            "fb_clock": np.array(sorted(self._fb_clock.items()), np.int64).reshape(-1, 2),
            "count_names": _strings([k for k, _ in counts]),
            "count_values": np.array([v for _, v in counts], np.int64),
            **arrays,
        }

    def load_state(self, arrays: Mapping[str, NDArray[Any]]) -> None:
        """Continue from ``state_arrays`` (a checkpoint), replacing the current state."""
        if str(np.asarray(arrays.get("format", ""))) != STATE_FORMAT:
            raise ValueError(f"learner state: format {str(arrays.get('format'))!r}, this build "
                             f"reads {STATE_FORMAT!r}")
        saved = (str(arrays["mode"]), int(arrays["window_ms"]), int(arrays["lateness_ms"]))
        if saved != (self.mode, self.window_ms, self.lateness_ms):
            raise ValueError(f"learner state: saved with (mode, window_ms, lateness_ms) = "
                             f"{saved}, this learner has "
                             f"{(self.mode, self.window_ms, self.lateness_ms)}")
        a = {k: np.asarray(v) for k, v in arrays.items()}
        for name in ("open_request_id", "open_user_id", "held_request_id", "held_user_id"):
            a[name] = a[name].astype(object)
        self._open.load(a, "open_")
        self._held.load(a, "held_")
        self._slot = dict(zip(self._open["request_id"].tolist(), range(len(self._open)),
                              strict=True))
        self._imp_clock = {int(p): int(t) for p, t in a["imp_clock"].tolist()}
        self._fb_clock = {int(p): int(t) for p, t in a["fb_clock"].tolist()}
        self.counts = Counter(dict(zip(a["count_names"].tolist(),
                                       a["count_values"].tolist(), strict=True)))
        self._appended_since_sweep = 0

    @property
    def open_requests(self) -> int:
        return len(self._open)

    @property
    def held_feedback(self) -> int:
        return len(self._held)


def _strings(values: list[str]) -> NDArray[np.str_]:
    return np.array(values, dtype=np.str_) if values else np.zeros(0, dtype="<U1")


# ---------------------------------------------------------------------------------------------
# the Kafka + Ray learner


class Learner(ConsumingActor):
    """A learner actor's job: read its partitions, learn, send each shard its deltas.

    ``shards`` are ``ParameterShardActor`` handles (deltas go as fire-and-forget
    ``apply.remote`` calls, at most ``max_in_flight`` outstanding per shard) or, in-process,
    plain ``ParameterShard`` objects (applied at once). Checkpoint hooks as
    ``PartitionReader``'s: ``pause`` (stop reading, flush deltas and dead letters, return the
    positions), ``state_arrays``, ``restore(offsets, state)``, ``resume``.
    """

    role = "learner"

    def __init__(
        self,
        bootstrap: str,
        assignment: Iterable[tuple[str, int]],
        shards: Sequence[Any],
        template: StatsArrays,
        *,
        mode: Mode = "fresh",
        window_ms: int = 60_000,
        allowed_lateness_ms: int = 5_000,
        reward_mapping: Mapping[str, float] | None = None,
        max_in_flight: int = 4,
        max_open_requests: int = 5_000_000,
        dead_letter_topic: str = DEAD_LETTER,
        expected_types: Mapping[str, type] | None = None,
        client_options: Mapping[str, object] | None = None,
    ) -> None:
        self._assignment = [(topic, int(p)) for topic, p in assignment]
        if len(set(self._assignment)) != len(self._assignment):
            raise ValueError(f"assignment: a partition is listed twice in {self._assignment}")
        if not shards:
            raise ValueError("shards: give at least one shard")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.core = LearnerCore(
            template, len(shards), mode=mode, window_ms=window_ms,
            allowed_lateness_ms=allowed_lateness_ms, reward_mapping=reward_mapping,
            max_open_requests=max_open_requests,
        )
        self._shards = list(shards)
        self._remote = [hasattr(getattr(s, "apply", None), "remote") for s in self._shards]
        self._in_flight: list[list[Any]] = [[] for _ in self._shards]
        self._max_in_flight = int(max_in_flight)
        self._consumer = EventConsumer(
            bootstrap, self._assignment, dead_letter_topic=dead_letter_topic,
            expected_types=expected_types, **dict(client_options or {}),
        )
        self._paused = False
        self.events = 0
        self.deltas_sent = 0

    # -- learning ----------------------------------------------------------------------------

    def _handle(self, batch: list[ConsumedEvent]) -> None:
        if not batch:
            return
        self.events += len(batch)
        for s, deltas in enumerate(self.core.process(batch)):
            if deltas:
                self._send(s, deltas)

    def _send(self, s: int, deltas: list[StatsArrays]) -> None:
        self.deltas_sent += len(deltas)
        shard = self._shards[s]
        if not self._remote[s]:
            shard.apply(deltas)
            return
        pending = self._in_flight[s]
        pending.append(shard.apply.remote(deltas))
        if len(pending) > self._max_in_flight:
            done, self._in_flight[s] = ray.wait(pending, num_returns=len(pending)
                                                - self._max_in_flight)
            ray.get(done)  # surfaces a dead shard here rather than at the next checkpoint

    def run_for(self, seconds: float, max_records: int = 10_000) -> int:
        """Learn whatever arrives for ``seconds``; returns the events read."""
        before, started = self.events, time.perf_counter()
        while not self._paused and time.perf_counter() - started < seconds:
            self.step(max_records=max_records, timeout_ms=50)
        return self.events - before

    def flush(self) -> int:
        """Wait until every delta sent so far is merged by its shard; returns how many calls
        were waited for."""
        waited = 0
        for s, pending in enumerate(self._in_flight):
            if pending:
                ray.get(pending)
                waited += len(pending)
                self._in_flight[s] = []
        return waited

    # -- offsets and checkpoint hooks ----------------------------------------------------------

    def pause(self) -> Offsets:
        """Stop reading; flush deltas (merged by the shards) and dead letters; return the
        positions, which with ``state_arrays`` and the shards' checkpoints form a cut."""
        self._paused = True
        self.flush()
        self._consumer.flush()
        return self.positions()

    def state_arrays(self) -> dict[str, NDArray[Any]]:
        """The learner's state for a checkpoint (see ``LearnerCore.state_arrays``)."""
        return self.core.state_arrays()

    def restore(self, offsets: Mapping[tuple[str, int], int],
                state: Mapping[str, NDArray[Any]] | None = None) -> None:
        """Seek every assigned partition to a checkpoint's offsets and load its state."""
        missing = sorted(set(self._assignment) - set(offsets))
        extra = sorted(set(offsets) - set(self._assignment))
        if missing or extra:
            raise ValueError(
                "restore: the checkpoint's partitions do not match this learner's assignment "
                f"(missing {missing}, not assigned here {extra})")
        if state is not None:
            self.core.load_state(state)
        self._consumer.seek(offsets)

    def stats(self) -> dict[str, Any]:
        """Counters: events, deltas sent, rejections by reason, open requests, dead letters."""
        return {
            "events": self.events, "deltas_sent": self.deltas_sent, "busy_s": self.busy_s,
            "counts": dict(self.core.counts), "open_requests": self.core.open_requests,
            "held_feedback": self.core.held_feedback,
            "consumed": self._consumer.consumed, "dead_lettered": self._consumer.dead_lettered,
        }

    def close(self) -> None:
        """Flush deltas and dead letters and close the Kafka clients."""
        try:
            self.flush()
        finally:
            self._consumer.close()


LearnerActor = ray.remote(num_cpus=0.5)(Learner)
"""``Learner`` as a Ray actor."""
