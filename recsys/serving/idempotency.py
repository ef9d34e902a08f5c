"""Retries that change nothing: what one replica remembers to answer a repeated request once.

* :class:`RecentKeys` remembers 64-bit keys for at least ``window_s`` in at most ``max_keys``
  entries: two generations of dicts that rotate (O(1) per key, about 70 bytes a key). A flood of
  new keys rotates early and shortens the memory instead of growing it (``forgotten_early``).
* :class:`FeedbackOnce` queues a feedback batch wholly or not at all, each event once per key
  (:func:`feedback_key`): the room for the batch's new events is checked before any is queued,
  and a send that fails midway leaves the keys of the events already queued remembered, so the
  client's retry of the whole batch queues exactly the rest.
* :class:`SlateReplays` makes a client's ``request_id`` on ``/recommend`` unique: a repeat with
  the same body gets the original answer (no new slate, no new impression); with another body,
  or while the first is still being served, or once its answer is no longer kept, a
  :class:`Repeated` (served as 409).

A replica's memory is its own: another replica, or this one after a restart, queues a retried
event again. That is still harmless downstream, where the join decides: an identical repeated
feedback is a duplicate and a repeated one with a new event time raises no reward (the reward is
the max), and a repeated impression is a duplicate or a conflicting impression (dead-lettered),
never a second request (``streaming.join``).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from recsys.validation import message

RESPONSE_CACHE_BYTES = 64 * 1024 * 1024
"""How many bytes of original ``/recommend`` answers a replica keeps for replays (about 100k
slates of 10 items); an older repeat beyond it gets a 409 that says so."""

_encode = msgspec.msgpack.Encoder().encode


def key64(*fields: Any) -> int:
    """A 64-bit key of plain values (str, int, float, None), unambiguous (msgpack) and stable
    across processes; two different events share one with odds ~5e-14 per event at 1M keys."""
    return int.from_bytes(hashlib.blake2b(_encode(fields), digest_size=8).digest(), "little")


def feedback_key(event: Any) -> int:
    """The idempotency key of a feedback event: all its fields as the client sent them. Without
    ``event_time_ms`` a retry is recognised too (the time is stamped at first acceptance), at
    the price of merging identical time-less events within the window, which cannot change a
    reward (the reward of a shown item is the max of its feedback)."""
    return key64(event.request_id, event.user_id, event.item_id, event.position,
                 event.event_type, float(event.value), event.event_time_ms)


class RecentKeys:
    """Keys seen within the last ``window_s`` (at least; at most ``2 * window_s``), at most
    ``max(max_keys, 2)`` of them: a current and a previous generation that rotate every
    ``window_s``, or early when the current one holds half of ``max_keys`` (counted in
    ``forgotten_early``). Not thread-safe: callers hold their own lock."""

    def __init__(self, window_s: float, max_keys: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not window_s > 0:
            raise ValueError(message("window_s", "a number > 0", window_s))
        if max_keys < 1:
            raise ValueError(message("max_keys", "an integer >= 1", max_keys))
        self.window_s = float(window_s)
        self.max_keys = int(max_keys)
        self._half = max(1, self.max_keys // 2)
        self._clock = clock
        self._current: dict[int, Any] = {}
        self._previous: dict[int, Any] = {}
        self._started = clock()
        self.forgotten_early = 0
        """Keys dropped by an early rotation (``max_keys`` reached), some younger than
        ``window_s``: a retry of one of them is queued again (and left to the join)."""

    def _rotate(self) -> None:
        now = self._clock()
        windows = int((now - self._started) // self.window_s)
        if windows >= 2:  # idle for two windows: everything has expired
            self._previous, self._current = {}, {}
        elif windows == 1:
            self._previous, self._current = self._current, {}
        elif len(self._current) >= self._half:
            self.forgotten_early += len(self._previous)
            self._previous, self._current = self._current, {}
            self._started = now
            return
        else:
            return
        # generations cover whole windows, so a key lives between one and two of them
        self._started += windows * self.window_s

    def get(self, key: int, default: Any = None) -> Any:
        """The value remembered with ``key`` (``default`` when it is not remembered)."""
        self._rotate()
        current = self._current.get(key, self)
        if current is not self:
            return current
        return self._previous.get(key, default)

    def __contains__(self, key: int) -> bool:
        return self.get(key, self) is not self

    def set(self, key: int, value: Any = None) -> None:
        """Remember ``key`` (with ``value``) from now on."""
        self._rotate()
        self._previous.pop(key, None)
        self._current[key] = value

    def discard(self, key: int) -> None:
        """Forget ``key``."""
        self._current.pop(key, None)
        self._previous.pop(key, None)

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)


class NoRoom(Exception):
    """The batch's new events do not fit in the room left for Kafka: nothing was queued."""

    def __init__(self, needed: int, room: int) -> None:
        super().__init__(f"{needed} new events do not fit in the room for {room} more")
        self.needed, self.room = needed, room


class PartlyQueued(Exception):
    """A send failed midway: ``queued`` of the ``new`` events were queued (and are remembered,
    so a retry of the whole batch queues the rest only); ``__cause__`` is the send's error."""

    def __init__(self, queued: int, new: int) -> None:
        super().__init__(f"{queued} of {new} new events were queued before a send failed")
        self.queued, self.new = queued, new


class FeedbackOnce:
    """Queues feedback batches all-or-nothing and once per key (see the module docs);
    thread-safe."""

    def __init__(self, window_s: float, max_keys: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.keys = RecentKeys(window_s, max_keys, clock)
        self._lock = threading.Lock()

    def queue(self, keys: Sequence[int], room: Callable[[], int],
              send: Callable[[int], None]) -> list[int]:
        """Send the events at the returned indices (the first of each key not remembered) with
        ``send(i)``, all of them or none: raises :class:`NoRoom` before sending anything when
        ``room()`` is smaller than their number, :class:`PartlyQueued` if a send raises."""
        with self._lock:
            fresh, seen = [], set()
            for i, key in enumerate(keys):
                if key not in seen and key not in self.keys:
                    fresh.append(i)
                seen.add(key)
            free = room()
            if len(fresh) > free:
                raise NoRoom(len(fresh), free)
            for done, i in enumerate(fresh):
                try:
                    send(i)
                except Exception as exc:
                    raise PartlyQueued(done, len(fresh)) from exc
                self.keys.set(keys[i])
            return fresh


class Repeated(Exception):
    """A ``request_id`` this replica has served (or is serving) that cannot be answered again
    with its original slate; the message says why and what to do."""


class SlateReplays:
    """A client's ``request_id`` is served once: the first request is served and its answer
    kept (at most ``max_bytes`` of answers, oldest dropped first); a repeat with the same body
    within the window gets those bytes back. Thread-safe."""

    def __init__(self, window_s: float, max_keys: int, max_bytes: int = RESPONSE_CACHE_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ids = RecentKeys(window_s, max_keys, clock)  # id key -> body key
        self.max_bytes = int(max_bytes)
        self._clock = clock
        self._answers: OrderedDict[int, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self._serving: set[int] = set()
        self._lock = threading.Lock()

    def begin(self, request_id: str, body: int) -> bytes | None:
        """None: ``request_id`` is new and now reserved (call :meth:`finish` or
        :meth:`abandon`); bytes: the original answer to replay. Raises :class:`Repeated`."""
        rid = key64(request_id)
        with self._lock:
            known = self.ids.get(rid)
            if known is None:
                stale = self._answers.pop(rid, None)  # of an id forgotten since
                if stale is not None:
                    self._bytes -= len(stale[1])
                self.ids.set(rid, body)
                self._serving.add(rid)
                return None
            if known != body:
                raise Repeated(message(
                    "request_id", "an id not used before, or a retry with the same body",
                    f"{request_id!r}, already served for another body",
                    "request ids are unique: make a new one for a new request"))
            if rid in self._serving:
                raise Repeated(message(
                    "request_id", "an id not being served", f"{request_id!r}, whose first "
                    "request is still being served", "retry once it has been answered"))
            kept = self._answers.get(rid)
            if kept is None:
                raise Repeated(message(
                    "request_id", "an id not used before", f"{request_id!r}, already served "
                    "and its slate is no longer kept", "make a new id for a new request"))
            return kept[1]

    def finish(self, request_id: str, answer: bytes) -> None:
        """Keep ``answer`` for replays of ``request_id`` (served now)."""
        rid = key64(request_id)
        with self._lock:
            self._serving.discard(rid)
            if rid not in self.ids:  # forgotten meanwhile (a flood of ids): nothing to replay
                return
            now = self._clock()
            self._answers[rid] = (now, answer)
            self._bytes += len(answer)
            horizon = now - 2 * self.ids.window_s  # older ids are forgotten anyway
            while self._answers and (self._bytes > self.max_bytes
                                     or len(self._answers) > self.ids.max_keys
                                     or next(iter(self._answers.values()))[0] < horizon):
                _, (_, old) = self._answers.popitem(last=False)
                self._bytes -= len(old)

    def abandon(self, request_id: str) -> None:
        """Forget ``request_id``: its request was not served (4xx, 503), so a retry is new."""
        rid = key64(request_id)
        with self._lock:
            self._serving.discard(rid)
            self.ids.discard(rid)

    @property
    def kept_bytes(self) -> int:
        """Bytes of answers kept for replays."""
        return self._bytes
