"""Event-time join of impressions and feedback: the attribution-window rules, once, for everyone.

:class:`WindowJoin` is the one implementation of the attribution-window rules, columnar
(numpy) and free of Kafka and Ray. Two callers use it:

* :class:`EventTimeJoiner` (the ``Joiner`` actor's core in ``streaming.joiner``) turns events
  into exactly one ``Reward`` per shown item, emitted when that item's window closes, and
  ``Rejected`` events for the dead-letter topic;
* ``streaming.learner.LearnerCore`` learns an impression's exposure the moment it is opened and
  each accepted feedback's increase of the running max reward at once (its freshness split).

Because both take every decision from the same code, the learner's statistics after any stream of
events equal learning the rewards the joiner emits for it (property-tested).

The rules (attribution window and max reward, watermarks per partition and stream, determinism,
every edge case and the reason it is rejected with, the checkpoint state) are written out once,
in the README's "Joining feedback to impressions"; ``Reason`` names the rejection categories.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, get_args

import numpy as np
from numpy.typing import NDArray

from recsys.bandits.contexts import ColumnSpec, padded
from recsys.events import Context, Feedback, FeedbackType, Impression, Reward, SlateEntry
from recsys.validation import did_you_mean, message

FEEDBACK_TYPES: frozenset[str] = frozenset(get_args(FeedbackType))
DEFAULT_REWARD_MAPPING: dict[str, float] = {
    "click": 1.0,
    "add_to_cart": 1.0,
    "purchase": 1.0,
    "skip": 0.0,
}
JOIN_STATE_FORMAT = "recsys.join.state/1"
STATE_FORMAT = "recsys.joiner.state/2"
NO_TIME = -(2**62)  # "nothing seen yet" for a clock; far below any event time, no overflow
TYPES: tuple[str, ...] = tuple(sorted(FEEDBACK_TYPES))
"""Feedback types by code: the ``type`` column of feedback columns."""
TYPE_CODE: dict[str, int] = {name: code for code, name in enumerate(TYPES)}


class Reason:
    """Why an event was rejected: the prefix of ``Rejected.reason`` and a dead-letter counter."""

    LATE_FEEDBACK = "late feedback"
    LATE_IMPRESSION = "late impression"
    NO_IMPRESSION = "no impression"
    BEFORE_IMPRESSION = "feedback before its impression"
    OUTSIDE_WINDOW = "feedback outside the attribution window"
    NOT_IN_SLATE = "item not in the slate"
    USER_MISMATCH = "user mismatch"
    UNMAPPED_TYPE = "unmapped feedback type"
    CONFLICTING_IMPRESSION = "conflicting impression"


class Outcome:
    """What ``WindowJoin.add`` decided for each event (int8 codes; rejections name a Reason)."""

    JOINED = 0  # impression: its request opened; feedback: attributed, counted in the max
    DUPLICATE = 1  # an identical repeat: harmless, not rejected
    HELD = 2  # feedback waiting for its impression
    REASONS: tuple[str, ...] = (
        Reason.LATE_FEEDBACK, Reason.LATE_IMPRESSION, Reason.NO_IMPRESSION,
        Reason.BEFORE_IMPRESSION, Reason.OUTSIDE_WINDOW, Reason.NOT_IN_SLATE,
        Reason.USER_MISMATCH, Reason.UNMAPPED_TYPE, Reason.CONFLICTING_IMPRESSION,
    )
    FIRST_REJECTION = 3

    @classmethod
    def of(cls, reason: str) -> int:
        return cls.FIRST_REJECTION + cls.REASONS.index(reason)

    @classmethod
    def reason(cls, code: int) -> str:
        return cls.REASONS[code - cls.FIRST_REJECTION]


_LATE_FEEDBACK = Outcome.of(Reason.LATE_FEEDBACK)
_LATE_IMPRESSION = Outcome.of(Reason.LATE_IMPRESSION)
_BEFORE = Outcome.of(Reason.BEFORE_IMPRESSION)
_OUTSIDE = Outcome.of(Reason.OUTSIDE_WINDOW)
_NOT_IN_SLATE = Outcome.of(Reason.NOT_IN_SLATE)
_USER_MISMATCH = Outcome.of(Reason.USER_MISMATCH)
_UNMAPPED = Outcome.of(Reason.UNMAPPED_TYPE)
_CONFLICTING = Outcome.of(Reason.CONFLICTING_IMPRESSION)


# ---------------------------------------------------------------------------------------------
# columns that grow by doubling and compact by mask


class _Table:
    """Equal-length numpy columns (1-d or 2-d) with amortised O(1) appends; 2-d columns widen
    with their pad value when a wider block arrives (longer slates, more clusters)."""

    def __init__(self, columns: ColumnSpec) -> None:
        self.spec = dict(columns)
        self.n = 0
        self._cols: dict[str, NDArray[Any]] = {
            name: np.full((16,) if w is None else (16, w), pad, dtype=dtype)
            for name, (dtype, w, pad) in self.spec.items()
        }

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, name: str) -> NDArray[Any]:
        """The live rows of a column: a view, so in-place updates stick."""
        return self._cols[name][: self.n]

    def append(self, block: Mapping[str, NDArray[Any]]) -> int:
        """Append equal-length columns (all of this table's); returns the first new row."""
        m = len(block[next(iter(self.spec))])
        start, need = self.n, self.n + m
        for name, (dtype, _, pad) in self.spec.items():
            values, col = block[name], self._cols[name]
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

    def take(self, rows: NDArray[Any]) -> dict[str, NDArray[Any]]:
        """Copies of the given rows (an index array or mask) of every column."""
        return {name: self[name][rows] for name in self.spec}

    def keep(self, mask: NDArray[np.bool_]) -> None:
        """Keep the rows where ``mask`` is true, in order."""
        for col in self._cols.values():
            kept = col[: self.n][mask]
            col[: kept.shape[0]] = kept
        self.n = int(mask.sum())


# ---------------------------------------------------------------------------------------------
# events as columns


def _as_column(name: str, value: int | Sequence[int] | NDArray[Any], n: int
               ) -> NDArray[np.int64]:
    if np.ndim(value) == 0:
        return np.full(n, int(value), dtype=np.int64)  # type: ignore[arg-type]
    out = np.asarray(value, dtype=np.int64)
    if out.shape != (n,):
        raise ValueError(message(name, f"one per event ({n}) or one for all", f"{out.size}"))
    return out


def _objects(values: Iterable[Any], n: int) -> NDArray[np.object_]:
    return np.fromiter(values, dtype=object, count=n)


def impression_columns(events: Sequence[Impression], partitions: int | Sequence[int],
                       offsets: int | Sequence[int] = -1) -> dict[str, NDArray[Any]]:
    """The columns ``WindowJoin.add`` reads of impressions (callers add their payload columns)."""
    n = len(events)
    sizes = np.fromiter((len(e.slate) for e in events), np.int64, n)
    total = int(sizes.sum())
    items = np.fromiter((s.item_id for e in events for s in e.slate), np.int64, total)
    positions = np.fromiter((s.position for e in events for s in e.slate), np.int64, total)
    return {
        "request_id": _objects((e.request_id for e in events), n),
        "user_id": _objects((e.user_id for e in events), n),
        "time": np.fromiter((e.event_time_ms for e in events), np.int64, n),
        "partition": _as_column("partitions", partitions, n),
        "offset": _as_column("offsets", offsets, n),
        "items": padded(sizes, items, -1), "positions": padded(sizes, positions, -1),
    }


def feedback_columns(events: Sequence[Feedback], partitions: int | Sequence[int],
                     offsets: int | Sequence[int] = -1) -> dict[str, NDArray[Any]]:
    """The columns ``WindowJoin.add`` reads of feedback (callers add their payload columns)."""
    n = len(events)
    return {
        "request_id": _objects((e.request_id for e in events), n),
        "user_id": _objects((e.user_id for e in events), n),
        "item": np.fromiter((e.item_id for e in events), np.int64, n),
        "position": np.fromiter((e.position for e in events), np.int64, n),
        "type": np.fromiter((TYPE_CODE[e.event_type] for e in events), np.int64, n),
        "value": np.fromiter((e.value for e in events), np.float64, n),
        "time": np.fromiter((e.event_time_ms for e in events), np.int64, n),
        "partition": _as_column("partitions", partitions, n),
        "offset": _as_column("offsets", offsets, n),
    }


def _running_watermark(times: NDArray[np.int64], partitions: NDArray[np.int64],
                       clock: dict[int, int], lateness: int) -> NDArray[np.int64]:
    """Each event's stream watermark on arrival (the max time seen before it on its partition,
    minus the lateness), raising ``clock`` (partition -> max time) in place."""
    marks = np.empty(times.size, dtype=np.int64)
    for p in np.unique(partitions).tolist():
        rows = np.flatnonzero(partitions == p)
        t = times[rows]
        before = np.maximum.accumulate(np.concatenate([[clock.get(p, NO_TIME)], t]))
        marks[rows] = before[:-1] - lateness
        clock[p] = int(before[-1])
    return marks


def _watermark(clock: Mapping[int, int], partitions: NDArray[np.int64],
               lateness: int) -> NDArray[np.int64]:
    """The current watermark of each row's partition (NO_TIME where nothing was seen)."""
    if not clock:
        return np.full(partitions.size, NO_TIME, dtype=np.int64)
    known = np.array(sorted(clock), dtype=np.int64)
    marks = np.array([clock[p] for p in known.tolist()], dtype=np.int64) - lateness
    pos = np.minimum(np.searchsorted(known, partitions), known.size - 1)
    return np.where(known[pos] == partitions, marks[pos], NO_TIME)


_MIX = np.uint64(0x9E3779B97F4A7C15)


def _key_hash(*columns: NDArray[Any]) -> NDArray[np.uint64]:
    """A 64-bit hash per row of int64/float64 columns (splitmix64 steps): feedback's duplicate
    key. Stable across processes, unlike ``hash``; a collision (odds ~1e-7 with a million open
    keys) can only miscount a duplicate, never change a reward (max is idempotent)."""
    h = np.zeros(columns[0].shape[0], dtype=np.uint64)
    with np.errstate(over="ignore"):
        for col in columns:
            h = (h ^ np.ascontiguousarray(col).view(np.uint64)) + _MIX
            h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h ^= h >> np.uint64(31)
    return h


def _rows_equal(a: NDArray[Any], b: NDArray[Any], pad: Any) -> NDArray[np.bool_]:
    """Row-wise equality of two columns (2-d ones padded to a common width)."""
    if a.ndim == 1:
        return np.asarray(a == b, dtype=bool)
    width = max(a.shape[1], b.shape[1])
    grown = []
    for x in (a, b):
        if x.shape[1] < width:
            x = np.concatenate([x, np.full((x.shape[0], width - x.shape[1]), pad, x.dtype)], 1)
        grown.append(x)
    return np.asarray(grown[0] == grown[1], dtype=bool).all(axis=1)


# ---------------------------------------------------------------------------------------------
# the join


@dataclass
class Step:
    """What one ``WindowJoin.add`` decided. Row numbers index the open table (``open_column``)
    and stay valid until the next ``close``."""

    impression_outcome: NDArray[np.int8]
    impression_watermark: NDArray[np.int64]  # each impression's stream watermark on arrival
    opened_rows: NDArray[np.int64]  # the rows of the impressions that opened, in input order
    feedback_outcome: NDArray[np.int8]
    feedback_watermark: NDArray[np.int64]
    feedback_row: NDArray[np.int64]  # the open request it was checked against, -1 none
    released: dict[str, NDArray[Any]]  # held feedback whose impression arrived (its columns)
    released_outcome: NDArray[np.int8]
    released_row: NDArray[np.int64]
    reward_rows: NDArray[np.int64]  # cells whose running max reward rose ...
    reward_slots: NDArray[np.int64]  # ... (row, position in the slate's columns) ...
    reward_increase: NDArray[np.float64]  # ... and by how much


@dataclass
class Closed:
    """What one ``WindowJoin.close`` produced: the closed windows' rows, ordered by (event time,
    request id), and the held feedback that expired, ordered by (event time, request id,
    partition, offset). Both as columns, payload included."""

    windows: dict[str, NDArray[Any]]
    expired: dict[str, NDArray[Any]]


class WindowJoin:
    """The attribution-window rules (module docs), columnar: impressions and feedback in as
    columns (``impression_columns`` / ``feedback_columns`` plus the caller's payload columns),
    decisions and reward increases out (``add``), closed windows and expired held feedback out
    (``close``).

    ``open_payload`` / ``held_payload`` name extra columns (``ColumnSpec``) kept with each open
    request / held feedback and handed back with it: the learner keeps contexts, the joiner the
    events themselves. Payload columns take part in telling an identical repeated impression from
    a conflicting one.
    """

    def __init__(
        self,
        window_ms: int,
        allowed_lateness_ms: int = 0,
        reward_mapping: Mapping[str, float] | None = None,
        *,
        open_payload: ColumnSpec | None = None,
        held_payload: ColumnSpec | None = None,
        max_open_requests: int | None = None,
    ) -> None:
        self.window_ms = _non_negative_int("window_ms", window_ms, positive=True)
        self.allowed_lateness_ms = _non_negative_int("allowed_lateness_ms", allowed_lateness_ms)
        self.reward_mapping = _check_mapping(
            DEFAULT_REWARD_MAPPING if reward_mapping is None else reward_mapping
        )
        if max_open_requests is not None:
            max_open_requests = _non_negative_int("max_open_requests", max_open_requests,
                                                  positive=True, unit="")
        self.max_open_requests = max_open_requests
        self._value_of_code = np.array([self.reward_mapping.get(t, np.nan) for t in TYPES])
        self.counts: Counter[str] = Counter()
        self._imp_clock: dict[int, int] = {}
        self._fb_clock: dict[int, int] = {}
        self._open_payload = dict(open_payload or {})
        self._held_payload = dict(held_payload or {})
        self._open = _Table({
            "serial": (np.int64, None, 0), "request_id": (object, None, ""),
            "user_id": (object, None, ""), "time": (np.int64, None, 0),
            "partition": (np.int64, None, 0), "offset": (np.int64, None, -1),
            "items": (np.int64, 1, -1), "positions": (np.int64, 1, -1),
            "reward": (np.float64, 1, np.nan), "closed": (np.bool_, None, False),
            "forgotten": (np.bool_, None, False), **self._open_payload,
        })
        self._held = _Table({
            "request_id": (object, None, ""), "user_id": (object, None, ""),
            "item": (np.int64, None, 0), "position": (np.int64, None, 0),
            "type": (np.int64, None, 0), "value": (np.float64, None, 0.0),
            "time": (np.int64, None, 0), "partition": (np.int64, None, 0),
            "offset": (np.int64, None, -1), **self._held_payload,
        })
        self._seen = _Table({"serial": (np.int64, None, 0), "hash": (np.uint64, None, 0)})
        self._seen_set: set[int] = set()
        self._slot: dict[str, int] = {}
        self._next_serial = 0
        self.opened_since_close = 0

    # -- introspection ---------------------------------------------------------------------

    @property
    def open_requests(self) -> int:
        """Requests whose window is open (closed ones a repeat could still name not counted)."""
        return len(self._open) - int(self._open["closed"].sum())

    @property
    def held_feedback(self) -> int:
        return len(self._held)

    def open_column(self, name: str) -> NDArray[Any]:
        """A column of the open requests (a view; rows as ``Step`` numbers them)."""
        return self._open[name]

    def watermarks(self) -> dict[int, tuple[int | None, int | None]]:
        """Per partition: (impression watermark, feedback watermark), None before any event."""
        lateness = self.allowed_lateness_ms
        out = {}
        for p in sorted(set(self._imp_clock) | set(self._fb_clock)):
            imp, fb = self._imp_clock.get(p, NO_TIME), self._fb_clock.get(p, NO_TIME)
            out[p] = (None if imp == NO_TIME else imp - lateness,
                      None if fb == NO_TIME else fb - lateness)
        return out

    def mark_feedback_idle(self, partition: int) -> None:
        """Partition ``partition``'s feedback stream is idle: raise its feedback clock to its
        impression clock, so windows can close. Feedback arriving later below the raised
        watermark is late. Uses no wall time itself; the caller decides when a stream is idle."""
        imp = self._imp_clock.get(int(partition), NO_TIME)
        if imp > self._fb_clock.get(int(partition), NO_TIME):
            self._fb_clock[int(partition)] = imp

    # -- input -----------------------------------------------------------------------------

    def add(self, impressions: Mapping[str, NDArray[Any]] | None = None,
            feedback: Mapping[str, NDArray[Any]] | None = None) -> Step:
        """Decide a batch: impressions (columns) first, then feedback (columns), each stream in
        partition order. Within a partition, impressions and feedback may come in one batch in
        any relative order: a decision depends only on each stream's own order."""
        imp_out, imp_marks, opened, opened_ids = self._add_impressions(impressions)
        released = self._release(opened_ids)
        released_rows = np.fromiter(map(self._slot.__getitem__, released["request_id"].tolist()),
                                    np.int64, len(released["request_id"]))
        fb_out, fb_marks, fb_rows = self._add_feedback(feedback)
        found = np.flatnonzero(fb_rows >= 0)
        fresh = {} if feedback is None else {name: col[found] for name, col in feedback.items()}
        (fresh_out, released_out), increases = self._attribute(
            [(fresh, fb_rows[found]), (released, released_rows)])
        fb_out[found] = fresh_out
        return Step(imp_out, imp_marks, opened, fb_out, fb_marks, fb_rows, released,
                    released_out, released_rows, *increases)

    def _add_impressions(self, block: Mapping[str, NDArray[Any]] | None):
        """Lateness and repeats of a batch's impressions; opens the others' requests."""
        empty = np.zeros(0, dtype=np.int64)
        if block is None or not len(block["time"]):
            return np.zeros(0, np.int8), empty, empty, []
        n = len(block["time"])
        self.counts["impressions"] += n
        marks = _running_watermark(block["time"], block["partition"], self._imp_clock,
                                   self.allowed_lateness_ms)
        outcome = np.zeros(n, dtype=np.int8)
        late = block["time"] < marks
        outcome[late] = _LATE_IMPRESSION
        self.counts[Reason.LATE_IMPRESSION] += int(late.sum())
        on_time = np.flatnonzero(~late)
        rids = block["request_id"][on_time].tolist()
        known = self._rows_of(rids)
        # a repeat of a known request, or of an earlier impression of this batch
        repeat_known = known >= 0
        repeat_batch = np.zeros(on_time.size, dtype=bool)
        if len(set(rids)) < len(rids):
            first = dict(zip(reversed(rids), reversed(on_time.tolist()), strict=True))
            earlier = np.fromiter(map(first.__getitem__, rids), np.int64, len(rids))
            repeat_batch = ~repeat_known & (earlier != on_time)
        same = np.ones(on_time.size, dtype=bool)
        if repeat_known.any():
            same[repeat_known] = self._same_impression(
                block, on_time[repeat_known], self._open.take(known[repeat_known]))
        if repeat_batch.any():
            same[repeat_batch] = self._same_impression(
                block, on_time[repeat_batch],
                {name: col[earlier[repeat_batch]] for name, col in block.items()})
        repeated = repeat_known | repeat_batch
        outcome[on_time[repeated & same]] = Outcome.DUPLICATE
        outcome[on_time[repeated & ~same]] = _CONFLICTING
        self.counts["duplicate_impressions"] += int((repeated & same).sum())
        self.counts[Reason.CONFLICTING_IMPRESSION] += int((repeated & ~same).sum())
        picked = on_time[~repeated]
        if not picked.size:
            return outcome, marks, empty, []
        everyone = picked.size == n  # the usual case: no copy of the columns
        start = self._open.append({
            **{name: block[name] if everyone else block[name][picked] for name in self._open.spec
               if name not in ("serial", "reward", "closed", "forgotten")},
            "serial": self._next_serial + np.arange(picked.size),
            "reward": np.full((picked.size, block["items"].shape[1]), np.nan),
            "closed": np.zeros(picked.size, dtype=bool),
            "forgotten": np.zeros(picked.size, dtype=bool),
        })
        self._next_serial += picked.size
        self.opened_since_close += picked.size
        new_ids = rids if everyone else block["request_id"][picked].tolist()
        self._slot.update(zip(new_ids, range(start, start + picked.size), strict=True))
        return outcome, marks, np.arange(start, start + picked.size), new_ids

    def _rows_of(self, request_ids: list[str]) -> NDArray[np.int64]:
        """The open-table row of each known request, -1 for the others."""
        rows = np.fromiter(map(self._slot.get, request_ids, repeat(-1)), np.int64,
                           len(request_ids))
        found = rows >= 0
        rows[found] = np.where(self._open["forgotten"][rows[found]], -1, rows[found])
        return rows

    def _same_impression(self, block: Mapping[str, NDArray[Any]], rows: NDArray[np.int64],
                         other: Mapping[str, NDArray[Any]]) -> NDArray[np.bool_]:
        same = np.ones(rows.size, dtype=bool)
        for name in ("user_id", "time", "items", "positions", *self._open_payload):
            same &= _rows_equal(block[name][rows], other[name], self._open.spec[name][2])
        return same

    def _add_feedback(self, block: Mapping[str, NDArray[Any]] | None):
        """Mapping and lateness of a batch's feedback; holds what finds no known request.
        Returns the outcomes so far, the watermarks met and the rows found (-1: none)."""
        empty = np.zeros(0, dtype=np.int64)
        if block is None or not len(block["time"]):
            return np.zeros(0, np.int8), empty, empty
        n = len(block["time"])
        self.counts["feedback"] += n
        marks = _running_watermark(block["time"], block["partition"], self._fb_clock,
                                   self.allowed_lateness_ms)
        outcome = np.zeros(n, dtype=np.int8)
        unmapped = np.isnan(self._value_of_code[block["type"]])
        late = ~unmapped & (block["time"] < marks)
        outcome[unmapped], outcome[late] = _UNMAPPED, _LATE_FEEDBACK
        self.counts[Reason.UNMAPPED_TYPE] += int(unmapped.sum())
        self.counts[Reason.LATE_FEEDBACK] += int(late.sum())
        candidates = np.flatnonzero(~(unmapped | late))
        rows = np.full(n, -1, dtype=np.int64)
        rows[candidates] = self._rows_of(block["request_id"][candidates].tolist())
        waiting = candidates[rows[candidates] < 0]
        if waiting.size:
            outcome[waiting] = Outcome.HELD
            self._held.append({name: block[name][waiting] for name in self._held.spec})
            self.counts["held_feedback"] += waiting.size
        return outcome, marks, rows

    def _release(self, opened_ids: list[str]) -> dict[str, NDArray[Any]]:
        """Take the held feedback of the requests just opened out of the held table."""
        if opened_ids and len(self._held):
            opened = set(opened_ids)
            found = np.fromiter(map(opened.__contains__, self._held["request_id"].tolist()),
                                bool, len(self._held))
            if found.any():
                released = self._held.take(found)
                self._held.keep(~found)
                return released
        return self._held.take(np.zeros(0, dtype=np.int64))

    def _attribute(self, parts: list[tuple[dict[str, NDArray[Any]], NDArray[np.int64]]]):
        """The window/user/slate/position checks, duplicate keys and running-max increases of
        feedback whose request is known; returns each part's outcomes and the increases."""
        sizes = [rows.size for _, rows in parts]
        parts = [(p, r) for p, r in parts if r.size]
        rows = np.concatenate([r for _, r in parts]) if parts else np.zeros(0, dtype=np.int64)
        outcome = np.zeros(rows.size, dtype=np.int8)
        if not rows.size:
            empty = np.zeros(0, dtype=np.int64)
            return [outcome for _ in sizes], (empty, empty, np.zeros(0))
        cols = {name: np.concatenate([p[name] for p, _ in parts])
                for name in ("user_id", "item", "position", "type", "value", "time")}
        start = self._open["time"][rows]
        t = cols["time"]
        before = t < start
        outside = ~before & (t >= start + self.window_ms)
        other_user = ~(before | outside) & (self._open["user_id"][rows] != cols["user_id"])
        shown = self._open["items"][rows] == cols["item"][:, None]
        slot = shown.argmax(axis=1)
        at = shown.any(axis=1) & (self._open["positions"][rows, slot] == cols["position"])
        not_shown = ~(before | outside | other_user | at)
        for mask, code, reason in ((before, _BEFORE, Reason.BEFORE_IMPRESSION),
                                   (outside, _OUTSIDE, Reason.OUTSIDE_WINDOW),
                                   (other_user, _USER_MISMATCH, Reason.USER_MISMATCH),
                                   (not_shown, _NOT_IN_SLATE, Reason.NOT_IN_SLATE)):
            outcome[mask] = code
            self.counts[reason] += int(mask.sum())
        ok = np.flatnonzero(outcome == Outcome.JOINED)
        # duplicates: the same key seen before, or earlier in this batch
        keys = _key_hash(self._open["serial"][rows[ok]], cols["item"][ok], cols["type"][ok],
                         cols["time"][ok], cols["value"][ok] + 0.0)
        seen = np.fromiter(map(self._seen_set.__contains__, keys.tolist()), bool, ok.size)
        firsts = np.zeros(ok.size, dtype=bool)
        firsts[np.unique(keys, return_index=True)[1]] = True
        duplicate = seen | ~firsts
        outcome[ok[duplicate]] = Outcome.DUPLICATE
        self.counts["duplicate_feedback"] += int(duplicate.sum())
        self.counts["joined_feedback"] += int((~duplicate).sum())
        fresh_keys = keys[~duplicate]
        self._seen_set.update(fresh_keys.tolist())
        self._seen.append({"serial": self._open["serial"][rows[ok[~duplicate]]],
                           "hash": fresh_keys})
        increases = self._raise_rewards(rows[ok], slot[ok],
                                        self._value_of_code[cols["type"][ok]])
        return np.split(outcome, np.cumsum(sizes)[:-1]), increases

    def _raise_rewards(self, rows: NDArray[np.int64], slots: NDArray[np.int64],
                       values: NDArray[np.float64]):
        """Raise each cell's running max; returns the cells that rose and by how much."""
        width = self._open["reward"].shape[1]
        cell = rows * width + slots
        cells, inverse = np.unique(cell, return_inverse=True)
        best = np.full(cells.size, -np.inf)
        np.maximum.at(best, inverse, values)
        reward = self._open["reward"].reshape(-1)  # a view of the live rows
        had = reward[cells]
        after = np.where(np.isnan(had), best, np.fmax(had, best))
        increase = after - np.nan_to_num(had, nan=0.0)
        reward[cells] = after
        rose = increase != 0
        up_rows, up_slots = np.divmod(cells[rose], width)
        return up_rows, up_slots, increase[rose]

    # -- output ----------------------------------------------------------------------------

    def close(self, final: bool = False, collect: bool = True) -> Closed:
        """Close the windows the feedback watermarks have passed (all with ``final``, the end
        of a bounded replay), beyond ``max_open_requests`` the oldest too, and expire the held
        feedback the impression watermarks have passed (all with ``final``). Without
        ``collect`` the closed windows are not gathered (the learner has learned them)."""
        self.opened_since_close = 0
        lateness = self.allowed_lateness_ms
        windows = self._open.take(np.zeros(0, dtype=np.int64))
        if len(self._open):
            time, partition = self._open["time"], self._open["partition"]
            was_closed = self._open["closed"]
            closing = ~was_closed & (
                final | (time + self.window_ms <= _watermark(self._fb_clock, partition, lateness)))
            forced = np.zeros(closing.size, dtype=bool)
            if self.max_open_requests is not None:
                over = int((~was_closed & ~closing).sum()) - self.max_open_requests
                if over > 0:  # close the oldest early: bounded memory beats an unbounded cache
                    live = np.where(~was_closed & ~closing, time, np.iinfo(np.int64).max)
                    forced[np.argpartition(live, over - 1)[:over]] = True
                    self.counts["closed_over_capacity"] += over
            closing |= forced
            self.counts["closed_windows"] += int(closing.sum())
            if collect:
                picked = np.flatnonzero(closing)
                rids = self._open["request_id"][picked].astype(str)
                windows = self._open.take(picked[np.lexsort((rids, time[picked]))])
            was_closed |= closing
            # forget a closed request once no on-time repeat of its impression can come
            forgotten = self._open["forgotten"]
            forgotten |= was_closed & (final | forced | (
                time < _watermark(self._imp_clock, partition, lateness)))
            if final or 2 * int(forgotten.sum()) >= len(self._open):
                self._compact(forgotten)
        return Closed(windows, self._expire(final))

    def _compact(self, forgotten: NDArray[np.bool_]) -> None:
        """Drop the forgotten requests (amortised: once they are half the table) and their
        duplicate keys."""
        dropped = np.isin(self._seen["serial"], self._open["serial"][forgotten])
        if dropped.any():
            self._seen_set.difference_update(self._seen["hash"][dropped].tolist())
            self._seen.keep(~dropped)
        self._open.keep(~forgotten)
        self._slot = dict(zip(self._open["request_id"].tolist(), range(len(self._open)),
                              strict=True))

    def _expire(self, final: bool) -> dict[str, NDArray[Any]]:
        held = self._held
        if not len(held):
            return held.take(np.zeros(0, dtype=np.int64))
        expired = final | (held["time"] < _watermark(self._imp_clock, held["partition"],
                                                     self.allowed_lateness_ms))
        picked = np.flatnonzero(expired)
        order = np.lexsort((held["offset"][picked], held["partition"][picked],
                            held["request_id"][picked].astype(str), held["time"][picked]))
        out = held.take(picked[order])
        if picked.size:
            held.keep(~expired)
            self.counts[Reason.NO_IMPRESSION] += picked.size
        return out

    # -- checkpoint state ------------------------------------------------------------------

    def state_arrays(self) -> dict[str, NDArray[Any]]:
        """Everything the join holds as plain numpy arrays, except object payload columns
        (the caller encodes those: ``open_column``, ``held_column``)."""
        counts = sorted(self.counts.items())
        out = {
            "join_format": np.array(JOIN_STATE_FORMAT),
            "window_ms": np.array(self.window_ms, dtype=np.int64),
            "allowed_lateness_ms": np.array(self.allowed_lateness_ms, dtype=np.int64),
            "mapping_types": _strings(list(self.reward_mapping)),
            "mapping_values": np.array(list(self.reward_mapping.values()), dtype=np.float64),
            "count_names": _strings([name for name, _ in counts]),
            "count_values": np.array([v for _, v in counts], dtype=np.int64),
            "impression_clock": _clock_array(self._imp_clock),
            "feedback_clock": _clock_array(self._fb_clock),
            "next_serial": np.array(self._next_serial, dtype=np.int64),
            "seen_serial": np.array(self._seen["serial"]),
            "seen_hash": np.array(self._seen["hash"]),
        }
        for prefix, table in (("open_", self._open), ("held_", self._held)):
            for name, (dtype, _, _) in table.spec.items():
                if name in ("request_id", "user_id"):
                    out[prefix + name] = _strings(table[name].tolist())
                elif dtype is not object:
                    out[prefix + name] = np.array(table[name])
        return out

    def held_column(self, name: str) -> NDArray[Any]:
        """A column of the held feedback (a view)."""
        return self._held[name]

    def load_state(self, arrays: Mapping[str, NDArray[Any]],
                   objects: Mapping[str, NDArray[np.object_]] | None = None) -> None:
        """Continue from ``state_arrays`` (and the caller's object payload columns, keyed
        ``open_<name>`` / ``held_<name>``), replacing the current state."""
        objects = dict(objects or {})
        if str(np.asarray(arrays.get("join_format", ""))) != JOIN_STATE_FORMAT:
            raise ValueError(f"join state: format {str(arrays.get('join_format'))!r}, this "
                             f"build reads {JOIN_STATE_FORMAT!r}")
        saved = {k: int(arrays[k]) for k in ("window_ms", "allowed_lateness_ms")}
        mapping = dict(zip(np.asarray(arrays["mapping_types"]).tolist(),
                           np.asarray(arrays["mapping_values"]).tolist(), strict=True))
        mine = {"window_ms": self.window_ms, "allowed_lateness_ms": self.allowed_lateness_ms}
        if saved != mine or mapping != self.reward_mapping:
            raise ValueError(f"join state: saved with {saved} and reward mapping {mapping}, "
                             f"this join has {mine} and {self.reward_mapping}")
        tables = {"open_": self._open, "held_": self._held}
        missing = sorted(prefix + name for prefix, table in tables.items()
                         for name in table.spec if prefix + name not in {**arrays, **objects})
        if missing:
            raise ValueError(f"join state: missing arrays {missing}")
        for prefix, table in tables.items():
            block = {}
            for name, (dtype, _, _) in table.spec.items():
                source = objects if prefix + name in objects else arrays
                block[name] = np.asarray(source[prefix + name]).astype(dtype, copy=False)
            sizes = {name: len(col) for name, col in block.items()}
            if len(set(sizes.values())) > 1:
                raise ValueError(f"join state: {prefix}* columns differ in length: {sizes}")
            table.n = 0
            table.append(block)
        self._seen.n = 0
        self._seen.append({"serial": np.asarray(arrays["seen_serial"], dtype=np.int64),
                           "hash": np.asarray(arrays["seen_hash"], dtype=np.uint64)})
        self._seen_set = set(self._seen["hash"].tolist())
        self._slot = dict(zip(self._open["request_id"].tolist(), range(len(self._open)),
                              strict=True))
        self._imp_clock = _clock_dict(arrays["impression_clock"])
        self._fb_clock = _clock_dict(arrays["feedback_clock"])
        self._next_serial = int(arrays["next_serial"])
        self.counts = Counter(dict(zip(np.asarray(arrays["count_names"]).tolist(),
                                       np.asarray(arrays["count_values"]).tolist(), strict=True)))
        self.opened_since_close = 0


def _clock_array(clock: Mapping[int, int]) -> NDArray[np.int64]:
    return np.array(sorted(clock.items()), dtype=np.int64).reshape(-1, 2)


def _clock_dict(array: NDArray[Any]) -> dict[int, int]:
    return {int(p): int(t) for p, t in np.asarray(array).reshape(-1, 2).tolist()}


# ---------------------------------------------------------------------------------------------
# the joiner's core: events in, rewards and dead letters out


@dataclass(frozen=True, slots=True)
class Rejected:
    """An event the join refused, where it came from, and why (``category: detail``)."""

    event: Impression | Feedback
    partition: int
    offset: int
    reason: str

    @property
    def category(self) -> str:
        return self.reason.split(":", 1)[0]


@dataclass(frozen=True, slots=True)
class JoinOutput:
    """What one ``advance`` produced: closed windows' rewards and expired held feedback."""

    rewards: list[Reward] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


_EVENT = {"event": (object, None, None)}


class EventTimeJoiner:
    """Joins impressions and feedback in event time (``WindowJoin``'s rules, module docs) into
    one ``Reward`` per shown item.

    ``add(events, partition, offsets)`` takes a batch read from one partition (impressions and
    feedback mixed, in partition order) and returns the events rejected on arrival;
    ``advance()`` returns the rewards whose windows have closed and the held feedback that expired.
    """

    def __init__(
        self,
        window_ms: int,
        allowed_lateness_ms: int = 0,
        reward_mapping: Mapping[str, float] | None = None,
    ) -> None:
        self.join = WindowJoin(window_ms, allowed_lateness_ms, reward_mapping,
                               open_payload=_EVENT, held_payload=_EVENT)

    @property
    def window_ms(self) -> int:
        return self.join.window_ms

    @property
    def allowed_lateness_ms(self) -> int:
        return self.join.allowed_lateness_ms

    @property
    def reward_mapping(self) -> dict[str, float]:
        return self.join.reward_mapping

    @property
    def counts(self) -> Counter[str]:
        return self.join.counts

    @property
    def open_impressions(self) -> int:
        return self.join.open_requests

    @property
    def held_feedback(self) -> int:
        return self.join.held_feedback

    def watermarks(self) -> dict[int, tuple[int | None, int | None]]:
        """Per partition: (impression watermark, feedback watermark), None before any event."""
        return self.join.watermarks()

    def mark_feedback_idle(self, partition: int) -> None:
        """See ``WindowJoin.mark_feedback_idle``."""
        self.join.mark_feedback_idle(partition)

    # -- input -----------------------------------------------------------------------------

    def add(
        self,
        events: Iterable[Impression | Feedback],
        partition: int = 0,
        offsets: Sequence[int] | None = None,
    ) -> list[Rejected]:
        """Take a batch of one partition's events, in partition order; returns those rejected.

        ``offsets`` (one per event) are carried into ``Rejected`` for dead letters; -1 without.
        """
        events = list(events)
        if offsets is None:
            offsets = [-1] * len(events)
        elif len(offsets) != len(events):
            raise ValueError(message("offsets", f"one per event ({len(events)}), or None",
                                     f"{len(offsets)}"))
        imps: list[Impression] = []
        fbs: list[Feedback] = []
        imp_offsets: list[int] = []
        fb_offsets: list[int] = []
        for event, offset in zip(events, offsets, strict=True):
            if isinstance(event, Feedback):
                fbs.append(event)
                fb_offsets.append(offset)
            elif isinstance(event, Impression):
                imps.append(event)
                imp_offsets.append(offset)
            else:
                raise TypeError(message("events", "Impression or Feedback events",
                                        f"a {type(event).__name__}"))
        partition = int(partition)
        imp_cols = impression_columns(imps, partition, imp_offsets)
        imp_cols["event"] = _objects(imps, len(imps))
        fb_cols = feedback_columns(fbs, partition, fb_offsets)
        fb_cols["event"] = _objects(fbs, len(fbs))
        step = self.join.add(imp_cols, fb_cols)
        return [
            *self._rejected(imp_cols, step.impression_outcome, step.impression_watermark, None),
            *self._rejected(fb_cols, step.feedback_outcome, step.feedback_watermark,
                            step.feedback_row),
            *self._rejected(step.released, step.released_outcome, None, step.released_row),
        ]

    def _rejected(self, cols: Mapping[str, NDArray[Any]], outcome: NDArray[np.int8],
                  marks: NDArray[np.int64] | None, rows: NDArray[np.int64] | None
                  ) -> list[Rejected]:
        out = []
        for k in np.flatnonzero(outcome >= Outcome.FIRST_REJECTION).tolist():
            reason = Outcome.reason(int(outcome[k]))
            event = cols["event"][k]
            detail = self._detail(reason, event, int(cols["partition"][k]),
                                  None if marks is None else int(marks[k]),
                                  None if rows is None else int(rows[k]))
            out.append(Rejected(event, int(cols["partition"][k]), int(cols["offset"][k]),
                                f"{reason}: {detail}"))
        return out

    def _detail(self, reason: str, event: Any, partition: int, mark: int | None,
                row: int | None) -> str:
        time, lateness = event.event_time_ms, self.allowed_lateness_ms
        if reason == Reason.LATE_IMPRESSION:
            return (f"event time {time} is below the impression watermark {mark} of partition "
                    f"{partition} (allowed lateness {lateness} ms)")
        if reason == Reason.LATE_FEEDBACK:
            return (f"event time {time} is below the feedback watermark {mark} of partition "
                    f"{partition} (allowed lateness {lateness} ms); its attribution window may "
                    "have closed")
        if reason == Reason.UNMAPPED_TYPE:
            return (f"event type {event.event_type!r} has no reward in the mapping "
                    f"{sorted(self.reward_mapping)}; add it to reward_mapping")
        if reason == Reason.CONFLICTING_IMPRESSION:
            return f"request {event.request_id!r} is already open with a different impression"
        imp = self.join.open_column("event")[row]
        start = imp.event_time_ms
        if reason == Reason.BEFORE_IMPRESSION:
            return f"event time {time} precedes the impression's {start}"
        if reason == Reason.OUTSIDE_WINDOW:
            end = start + self.window_ms
            return (f"event time {time} is at or after the window end {end} "
                    f"(window {self.window_ms} ms)")
        if reason == Reason.USER_MISMATCH:
            return f"feedback from user {event.user_id!r}, impression for {imp.user_id!r}"
        shown = [e.position for e in imp.slate if e.item_id == event.item_id]
        if not shown:
            return f"item {event.item_id} was not shown in request {event.request_id!r}"
        return (f"item {event.item_id} was shown at position {shown[0]}, the feedback says "
                f"{event.position}")

    # -- output ----------------------------------------------------------------------------

    def advance(self) -> JoinOutput:
        """Rewards of every window the watermarks have closed, and held feedback that no on-time
        impression can match any more (rejected, ``no impression``)."""
        return self._output(self.join.close())

    def flush(self) -> JoinOutput:
        """Close every window and reject all held feedback: the end of a bounded replay."""
        return self._output(self.join.close(final=True))

    def _output(self, closed: Closed) -> JoinOutput:
        windows = closed.windows
        rewards = _rewards_of(windows["event"], windows["positions"], windows["reward"])
        self.counts["rewards"] += len(rewards)
        expired = closed.expired
        rejected = [
            Rejected(fb, p, offset, f"{Reason.NO_IMPRESSION}: no on-time impression of request "
                     f"{fb.request_id!r} arrived (never served, rejected, already closed, or "
                     "later than the allowed lateness)")
            for fb, p, offset in zip(expired["event"], expired["partition"].tolist(),
                                     expired["offset"].tolist(), strict=True)
        ]
        return JoinOutput(rewards, rejected)

    # -- checkpoint state ------------------------------------------------------------------

    def state_arrays(self) -> dict[str, NDArray[Any]]:
        """Everything the joiner holds, as plain numpy arrays (no objects; ``.npz``-safe): the
        join's state, plus the open impressions' fields the join does not keep as columns and
        the held feedback's schema versions."""
        imps = self.join.open_column("event").tolist()
        contexts = [imp.context for imp in imps]
        slates = [imp.slate for imp in imps]
        held = self.join.held_column("event").tolist()
        return {
            **self.join.state_arrays(),
            "format": np.array(STATE_FORMAT),
            "open_policy_name": _strings([imp.policy_name for imp in imps]),
            "open_policy_version": np.array([imp.policy_version for imp in imps], np.int64),
            "open_schema_version": np.array([imp.schema_version for imp in imps], np.int64),
            "dense_offsets": _offsets(len(c.dense) for c in contexts),
            "dense": _floats(v for c in contexts for v in c.dense),
            "cluster_offsets": _offsets(len(c.cluster_ids) for c in contexts),
            "cluster_ids": np.array([v for c in contexts for v in c.cluster_ids], np.int64),
            "cluster_weights": _floats(v for c in contexts for v in c.cluster_weights),
            "slate_offsets": _offsets(len(s) for s in slates),
            "slate_score": _floats(e.score for s in slates for e in s),
            "slate_propensity": _floats(e.propensity for s in slates for e in s),
            "slate_propensity_se": _floats(e.propensity_se for s in slates for e in s),
            "held_schema_version": np.array([f.schema_version for f in held], np.int64),
        }

    @classmethod
    def from_state_arrays(cls, arrays: Mapping[str, NDArray[Any]]) -> EventTimeJoiner:
        """Rebuild a joiner from ``state_arrays`` (e.g. a checkpoint's ``.npz``): fed the events
        after the checkpoint's offsets, it emits what an undisturbed joiner would."""
        missing = sorted(set(_STATE_KEYS) - set(arrays))
        if missing:
            raise ValueError(f"joiner state: missing arrays {missing}; is this a joiner's state?")
        if str(arrays["format"]) != STATE_FORMAT:
            raise ValueError(f"joiner state: format {str(arrays['format'])!r}, this build reads "
                             f"{STATE_FORMAT!r}")
        a = {k: np.asarray(arrays[k]) for k in _STATE_KEYS}
        n_open = len(a["open_request_id"])
        for name in ("dense_offsets", "cluster_offsets", "slate_offsets"):
            if len(a[name]) != n_open + 1:
                raise ValueError(f"joiner state: {name} has {len(a[name])} entries for "
                                 f"{n_open} open impressions (expected {n_open + 1})")
        mapping = dict(zip(a["mapping_types"].tolist(), a["mapping_values"].tolist(), strict=True))
        joiner = cls(int(a["window_ms"]), int(a["allowed_lateness_ms"]), mapping)
        objects = {"open_event": _impressions_of(a), "held_event": _feedback_of(a)}
        joiner.join.load_state(a, objects)
        return joiner


def _impressions_of(a: Mapping[str, NDArray[Any]]) -> NDArray[np.object_]:
    dense, d_off = a["dense"].tolist(), a["dense_offsets"].tolist()
    cids, cws = a["cluster_ids"].tolist(), a["cluster_weights"].tolist()
    c_off, s_off = a["cluster_offsets"].tolist(), a["slate_offsets"].tolist()
    items, positions = a["open_items"].tolist(), a["open_positions"].tolist()
    scores, props = a["slate_score"].tolist(), a["slate_propensity"].tolist()
    ses = a["slate_propensity_se"].tolist()
    out = []
    for i, (rid, user, policy, version, time, schema) in enumerate(zip(
        a["open_request_id"].tolist(), a["open_user_id"].tolist(),
        a["open_policy_name"].tolist(), a["open_policy_version"].tolist(),
        a["open_time"].tolist(), a["open_schema_version"].tolist(), strict=True,
    )):
        lo, hi = s_off[i], s_off[i + 1]
        slate = tuple(
            SlateEntry(item_id=items[i][k], position=positions[i][k], score=scores[lo + k],
                       propensity=props[lo + k], propensity_se=ses[lo + k])
            for k in range(hi - lo)
        )
        context = Context(dense=tuple(dense[d_off[i]:d_off[i + 1]]),
                          cluster_ids=tuple(cids[c_off[i]:c_off[i + 1]]),
                          cluster_weights=tuple(cws[c_off[i]:c_off[i + 1]]))
        out.append(Impression(schema_version=schema, request_id=rid, event_time_ms=time,
                              user_id=user, context=context, policy_name=policy,
                              policy_version=version, slate=slate))
    return _objects(out, len(out))


def _feedback_of(a: Mapping[str, NDArray[Any]]) -> NDArray[np.object_]:
    out = [
        Feedback(schema_version=schema, request_id=rid, event_time_ms=time, user_id=user,
                 item_id=item, position=pos, event_type=TYPES[kind], value=value)
        for rid, user, item, pos, kind, time, value, schema in zip(
            *(a[f"held_{c}"].tolist() for c in (
                "request_id", "user_id", "item", "position", "type", "time", "value",
                "schema_version")), strict=True)
    ]
    return _objects(out, len(out))


def _rewards_of(impressions: NDArray[np.object_], positions: NDArray[np.int64],
                rewards: NDArray[np.float64]) -> list[Reward]:
    """One reward per shown item of each closed window, in position order (0 where no feedback
    came)."""
    if not len(impressions):
        return []
    order = np.argsort(np.where(positions < 0, np.iinfo(np.int64).max, positions), axis=1,
                       kind="stable").tolist()
    values = np.nan_to_num(rewards, nan=0.0).tolist()
    out = []
    for imp, ks, row in zip(impressions.tolist(), order, values, strict=True):
        slate = imp.slate
        for k in ks[: len(slate)]:
            entry = slate[k]
            out.append(Reward(
                request_id=imp.request_id, event_time_ms=imp.event_time_ms, user_id=imp.user_id,
                context=imp.context, item_id=entry.item_id, position=entry.position,
                reward=row[k], propensity=entry.propensity, propensity_se=entry.propensity_se,
                policy_name=imp.policy_name, policy_version=imp.policy_version,
            ))
    return out


def _strings(values: list[str]) -> NDArray[np.str_]:
    return np.array(values, dtype=np.str_) if values else np.zeros(0, dtype="<U1")


def _floats(values: Iterable[float]) -> NDArray[np.float64]:
    return np.fromiter(values, dtype=np.float64)


def _offsets(lengths: Iterable[int]) -> NDArray[np.int64]:
    sizes = np.fromiter(lengths, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def _non_negative_int(name: str, value: object, positive: bool = False,
                      unit: str = " number of milliseconds") -> int:
    expected = f"an integer{unit} {'> 0' if positive else '>= 0'}"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(message(name, expected, repr(value)))
    if value < (1 if positive else 0):
        raise ValueError(message(name, expected, repr(value)))
    return int(value)


def _check_mapping(mapping: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(mapping, Mapping) or not mapping:
        raise ValueError(message("reward_mapping", "a non-empty mapping of feedback type -> "
                                 "reward", repr(mapping), f"e.g. {DEFAULT_REWARD_MAPPING}"))
    unknown = sorted(set(mapping) - FEEDBACK_TYPES)
    if unknown:
        raise ValueError(message(
            "reward_mapping", f"feedback types of the contract {sorted(FEEDBACK_TYPES)}",
            f"{unknown}, which are not feedback types", did_you_mean(str(unknown[0]),
                                                                      FEEDBACK_TYPES)))
    out: dict[str, float] = {}
    for kind, value in mapping.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise TypeError(message(f"reward_mapping[{kind!r}]", "a finite number", repr(value)))
        if not np.isfinite(value):
            raise ValueError(message(f"reward_mapping[{kind!r}]", "a finite number",
                                     repr(value)))
        out[str(kind)] = float(value)
    return out


_STATE_KEYS = tuple(EventTimeJoiner(1).state_arrays())
