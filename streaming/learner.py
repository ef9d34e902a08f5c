"""Learner actors: Kafka batches → vectorised statistics deltas → the shard that owns each item.

A :class:`Learner` owns an explicit, co-partitioned assignment of ``recsys.impressions`` and
``recsys.feedback`` partitions (no consumer group), polls them in batches, turns each batch into
deltas with the statistics protocol's ``delta_from_batch`` and sends each shard its share
(``shard_of`` then ``select``) as ``(arrays, meta)``: fire-and-forget ``apply.remote`` calls, at
most ``max_in_flight`` per shard outstanding; ``flush`` waits for all of them (the checkpoint
coordinator calls it). :class:`LearnerCore` is the Kafka-free half (events in, deltas out).

Which impressions and feedback count, and for which shown item, is decided by the join itself:
``LearnerCore`` feeds every batch to a ``streaming.join.WindowJoin``, the same rules the joiner
emits ``recsys.rewards`` from (attribution window, watermarks, held feedback, repeats; see that
module). So the statistics after any stream of events equal ``learn(part="both")`` on the rewards
the joiner emits for it, whatever the interleaving of partitions and streams (tested).

Freshness does not wait for the attribution window (the default, ``mode="fresh"``)
-----------------------------------------------------------------------------------
Exposure sums (Σx², Σx, counts) do not depend on the reward and reward sums (Σx·r, Σr) only on
the feedback, so an impression's exposure part (one row per shown item, with the impression's
context) is learned the moment the join opens its request, and a feedback's reward part the
moment the join accepts it: the *increase* of the item's running max reward. The two add up to
one ``learn(part="both")`` on the joined examples.

The price is the usual **delayed-feedback pessimism**: between an impression and its clicks the
item has been shown but not (yet) rewarded, so its estimated reward is biased low for a few
seconds to the length of the window, and the more so the more it is shown right now (a popular
new item looks worse than it is until its clicks arrive). The bias vanishes as the feedback lands;
exploration bonuses shrink with exposure at once, which is what keeps one item from being shown to
everyone on stale parameters. ``mode="window"`` is the alternative: learn ``part="both"`` only
from the joined examples on ``recsys.rewards``, unbiased but a full window late.

The join keeps each open request's context (in the layout's columns) until its window closes;
windows are closed and held feedback expired in amortised O(1) per event (``sweep``), bounded by
``max_open_requests``. Rejected events are counted by the join's reason names (the joiner
dead-letters them; the learner only counts, so nothing is reported twice). Bad input never stops
a learner: events that do not decode are the consumer's dead letters; contexts of the wrong width
or with unknown clusters and items outside the catalogue are joined as usual but not learned,
and counted (``bad_context``, ``unknown_item``).

No event can make the statistics non-finite. Every context is clipped to the statistics'
``clip_norm`` (``stream.context_clip_norm``) inside the statistics' own batch validation, so
fresh exposure, fresh rewards and the joiner's rewards learned later clip identically (the
equivalence above holds; see ``recsys.bandits.influence`` for the bound on one event's
influence). Rewards are the reward mapping's values (fresh mode: increases of a running max
over them), so a mapping whose values times the clip norm overflow is refused when the learner
is built. In window mode the learner reads ``recsys.rewards`` records, which any producer could
write: a reward outside the mapping's range ``[min(0, values), max(0, values)]`` cannot come from
the joiner, so it is refused, counted (:data:`REFUSED_REWARD`) and dead-lettered by the learner,
the one role that learns from that topic. The state (the join's, contexts included)
round-trips through plain numpy arrays (``state_arrays`` / ``load_state``), so a checkpoint holds
it beside the offsets.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import ray
from numpy.typing import NDArray

from recsys.bandits import shard_of, stats_from_arrays
from recsys.bandits.protocol import StatsArrays
from recsys.events import Feedback, Impression, Reward, encode
from recsys.topics import DEAD_LETTER
from recsys.validation import message
from streaming.consumer import ConsumedEvent, EventConsumer
from streaming.join import WindowJoin, feedback_columns, impression_columns
from streaming.reading import ConsumingActor, Offsets, dead_letter_choice, output_producer

Mode = Literal["fresh", "window"]
STATE_FORMAT = "recsys.learner.state/2"
REFUSED_REWARD = "reward outside the reward mapping's range"
"""Why a learner refuses (and dead-letters) a joined example: a counter and dead-letter reason."""
_FLOAT_MAX = float(np.finfo(np.float64).max)


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
            raise ValueError(message("mode", "'fresh' or 'window'", repr(mode)))
        if int(n_shards) != n_shards or n_shards < 1:
            raise ValueError(message("n_shards", "a positive integer", repr(n_shards)))
        self.mode: Mode = mode
        self.n_shards = int(n_shards)
        self._template = stats_from_arrays(*template)
        self._open_catalogue = self._template.n_items == 0
        self.refused: list[tuple[ConsumedEvent, str]] = []
        """Events refused since the last :meth:`take_refused`, with the reason (dead letters)."""
        self._contexts = self._template.context_codec()
        self._context_columns = tuple(self._contexts.columns())
        self.join = WindowJoin(
            window_ms, allowed_lateness_ms, reward_mapping,
            open_payload={**self._contexts.columns(), "learnable": (np.bool_, None, False)},
            max_open_requests=max_open_requests,
        )
        values = self.join.reward_mapping.values()
        self.reward_range = (min(0.0, *values), max(0.0, *values))
        spread = self.reward_range[1] - self.reward_range[0]  # bounds every reward increase
        clip = float(self._template.clip_norm)
        if spread * clip > _FLOAT_MAX:
            raise ValueError(message(
                "reward_mapping", "rewards whose products with a context of the clip norm are "
                "finite", f"a reward range of {spread:.3g} times clip_norm {clip:.3g}",
                "lower the rewards or stream.context_clip_norm"))

    @property
    def counts(self) -> Counter[str]:
        """The join's counters (events, joins, rejections by reason) and the learner's own."""
        return self.join.counts

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
        step = self.join.add(self._impression_columns(imps) if imps else None,
                             self._feedback_columns(fbs) if fbs else None)
        exposure_contexts, exposure_items = self._exposure(step.opened_rows)
        reward_contexts, reward_items, learned = self._rows(step.reward_rows, step.reward_slots)
        self._maybe_sweep()  # after reading the rows: closing renumbers them
        return Updates(exposure_contexts, exposure_items, reward_contexts, reward_items,
                       step.reward_increase[learned])

    # -- window mode: joined examples ----------------------------------------------------------

    def take_refused(self) -> list[tuple[ConsumedEvent, str]]:
        """The events refused since the last call, with their reasons (then forgotten)."""
        refused, self.refused = self.refused, []
        return refused

    def _joined_examples(self, batch: Sequence[ConsumedEvent]) -> Updates:
        events: list[Reward] = [c.event for c in batch]  # type: ignore[misc]
        self.counts["rewards"] += len(events)
        columns, fits = self._contexts.read([e.context for e in events])
        items = np.fromiter((e.item_id for e in events), np.int64, len(events))
        r = np.fromiter((e.reward for e in events), np.float64, len(events))
        low, high = self.reward_range
        outside = (r < low) | (r > high)
        if outside.any():
            self.counts[REFUSED_REWARD] += int(outside.sum())
            for i in np.flatnonzero(outside).tolist():  # only the refused events
                e = events[i]
                self.refused.append((batch[i], f"{REFUSED_REWARD}: reward {e.reward!r} for item "
                                     f"{e.item_id} of request {e.request_id!r}, expected a value "
                                     f"in [{low:g}, {high:g}] (stream.reward_mapping)"))
        ok = fits & ~outside & self._known(items)
        self.counts["bad_context"] += int((~fits).sum())
        cols = {k: v[ok] for k, v in columns.items()}
        empty = self._empty_rows()
        return Updates(self._contexts.of(cols), items[ok], empty[0], empty[1], r[ok])

    # -- fresh mode ----------------------------------------------------------------------------

    def _impression_columns(self, batch: Sequence[ConsumedEvent]) -> dict[str, NDArray[Any]]:
        events: list[Impression] = [c.event for c in batch]  # type: ignore[misc]
        n = len(batch)
        columns = impression_columns(events, np.fromiter((c.partition for c in batch), np.int64, n),
                                     np.fromiter((c.offset for c in batch), np.int64, n))
        contexts, fits = self._contexts.read([e.context for e in events])
        return {**columns, **contexts, "learnable": fits}

    @staticmethod
    def _feedback_columns(batch: Sequence[ConsumedEvent]) -> dict[str, NDArray[Any]]:
        n = len(batch)
        return feedback_columns([c.event for c in batch],  # type: ignore[misc]
                                np.fromiter((c.partition for c in batch), np.int64, n),
                                np.fromiter((c.offset for c in batch), np.int64, n))

    def _empty_rows(self) -> tuple[Any, NDArray[np.int64]]:
        """No rows: contexts of the layout's form with zero rows, and no items."""
        cols = {name: np.zeros((0, width or 1), dtype=dtype)
                for name, (dtype, width, _) in self._contexts.columns().items()}
        return self._contexts.of(cols), np.zeros(0, dtype=np.int64)

    def _known(self, items: NDArray[np.int64]) -> NDArray[np.bool_]:
        if self._open_catalogue:
            return np.ones(items.size, dtype=bool)
        ids = self._template.item_ids
        pos = np.minimum(np.searchsorted(ids, items), max(ids.size - 1, 0))
        known = ids[pos] == items
        self.counts["unknown_item"] += int((~known).sum())
        return known

    def _exposure(self, rows: NDArray[np.int64]) -> tuple[Any, NDArray[np.int64]]:
        """One exposure row per shown item of the requests just opened, with their context."""
        learnable = self.join.open_column("learnable")[rows]
        self.counts["bad_context"] += int((~learnable).sum())
        rows = rows[learnable]
        self.counts["impressions_learned"] += rows.size
        items = self.join.open_column("items")[rows]
        shown = items >= 0
        owner = np.broadcast_to(rows[:, None], items.shape)[shown]
        context, items, _ = self._rows(owner, np.nonzero(shown)[1])
        return context, items

    def _rows(self, rows: NDArray[np.int64], slots: NDArray[np.int64]
              ) -> tuple[Any, NDArray[np.int64], NDArray[np.bool_]]:
        """Contexts and items of (open request, slate position) cells that can be learned, and
        which of the cells those are."""
        items = self.join.open_column("items")[rows, slots]
        ok = self.join.open_column("learnable")[rows]
        ok[ok] = self._known(items[ok])
        context = {name: self.join.open_column(name)[rows[ok]]
                   for name in self._context_columns}
        return self._contexts.of(context), items[ok], ok

    def _maybe_sweep(self) -> None:
        """Sweep once the requests opened since the last sweep are half those open (amortised
        O(1) per event; it changes no decision), or beyond ``max_open_requests``."""
        open_now, bound = self.join.open_requests, self.join.max_open_requests
        if self.join.opened_since_close * 2 >= max(open_now, 50_000) \
                or (bound is not None and open_now > bound):
            self.sweep()

    def sweep(self) -> None:
        """Close the windows the feedback watermarks have passed, expire held feedback the
        impression watermarks have passed, and enforce ``max_open_requests``."""
        self.join.close(collect=False)

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
        """The join's state (open requests with contexts, held feedback, watermarks, counters)
        as plain numpy arrays."""
        return {"format": np.array(STATE_FORMAT), "mode": np.array(self.mode),
                **self.join.state_arrays()}

    def load_state(self, arrays: Mapping[str, NDArray[Any]]) -> None:
        """Continue from ``state_arrays`` (a checkpoint), replacing the current state."""
        if str(np.asarray(arrays.get("format", ""))) != STATE_FORMAT:
            raise ValueError(f"learner state: format {str(arrays.get('format'))!r}, this build "
                             f"reads {STATE_FORMAT!r}")
        if str(arrays["mode"]) != self.mode:
            raise ValueError(f"learner state: saved with mode {str(arrays['mode'])!r}, this "
                             f"learner has {self.mode!r}")
        self.join.load_state(arrays)

    @property
    def open_requests(self) -> int:
        return self.join.open_requests

    @property
    def held_feedback(self) -> int:
        return self.join.held_feedback


# ---------------------------------------------------------------------------------------------
# the Kafka + Ray learner


class Learner(ConsumingActor):
    """A learner actor's job: read its partitions, learn, send each shard its deltas.

    ``shards`` are ``ParameterShardActor`` handles (deltas go as fire-and-forget
    ``apply.remote`` calls, at most ``max_in_flight`` outstanding per shard) or, in-process,
    plain ``ParameterShard`` objects (applied at once). Checkpoint hooks as every
    ``ConsumingActor``'s: ``pause`` (stop reading, flush deltas and dead letters, return the
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
        transactional_id: str | None = None,
        dead_letter_topics: Collection[str] | None = None,
    ) -> None:
        """``transactional_id``: dead letters in transactions committed by ``pause``
        (``streaming.reading``); ``dead_letter_topics``: the topics whose undecodable records this
        learner dead-letters (None: all it reads; in the pipeline the joiners own impressions and
        feedback, and learners own rewards only in window mode without a lake). Records it
        refuses as unlearnable it always dead-letters."""
        self._assignment = [(topic, int(p)) for topic, p in assignment]
        if len(set(self._assignment)) != len(self._assignment):
            raise ValueError(f"assignment: a partition is listed twice in {self._assignment}")
        if not shards:
            raise ValueError("shards: give at least one shard")
        if max_in_flight < 1:
            raise ValueError(message("max_in_flight", "an integer >= 1", max_in_flight))
        self.core = LearnerCore(
            template, len(shards), mode=mode, window_ms=window_ms,
            allowed_lateness_ms=allowed_lateness_ms, reward_mapping=reward_mapping,
            max_open_requests=max_open_requests,
        )
        self._shards = list(shards)
        self._remote = [hasattr(getattr(s, "apply", None), "remote") for s in self._shards]
        self._in_flight: list[list[Any]] = [[] for _ in self._shards]
        self._max_in_flight = int(max_in_flight)
        options = dict(client_options or {})
        self._dead_letter_topic = dead_letter_topic
        # undecodable and refused records; transactional with an id (streaming.reading)
        self._producer = output_producer(bootstrap, transactional_id, options)
        self._consumer = EventConsumer(
            bootstrap, self._assignment, dead_letter_topic=dead_letter_topic,
            expected_types=expected_types, dead_letter_producer=self._producer,
            dead_letter=dead_letter_choice(dead_letter_topics, {t for t, _ in self._assignment},
                                           self.role),
            **options,
        )
        self._paused = False
        self.events = 0
        self.deltas_sent = 0
        self.refused = 0

    # -- learning ----------------------------------------------------------------------------

    def _handle(self, batch: list[ConsumedEvent]) -> None:
        if not batch:
            return
        self.events += len(batch)
        for s, deltas in enumerate(self.core.process(batch)):
            if deltas:
                self._send(s, deltas)
        refused = self.core.take_refused()
        if refused:
            self._begin_output()
        for consumed, reason in refused:
            self._producer.send_dead_letter(
                self._dead_letter_topic, source_topic=consumed.topic,
                partition=consumed.partition, offset=consumed.offset, key=consumed.event.key,
                value=encode(consumed.event), reason=reason)
            self.refused += 1

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

    def settle(self) -> int:
        """Stop reading and wait until every delta sent so far was merged or failed (a dead
        shard's): a recovering group calls it so no delta lands after its shard rolled back.
        Returns how many calls were waited for; unlike ``flush``, a dead shard does not raise."""
        self._paused = True
        pending = [ref for refs in self._in_flight for ref in refs]
        if pending:
            ray.wait(pending, num_returns=len(pending))
        self._in_flight = [[] for _ in self._in_flight]
        return len(pending)

    def use_shards(self, shards: Sequence[Any]) -> None:
        """Send deltas to ``shards`` from now on (a recovery rebuilt some of them)."""
        if len(shards) != len(self._shards):
            raise ValueError(message("shards", f"{len(self._shards)} shards (the layout the "
                                     "deltas are routed by)", len(shards)))
        self._shards = list(shards)
        self._remote = [hasattr(getattr(s, "apply", None), "remote") for s in self._shards]
        self._in_flight = [[] for _ in self._shards]

    # -- offsets and checkpoint hooks ----------------------------------------------------------

    def pause(self) -> Offsets:
        """Stop reading; flush deltas (merged by the shards) and dead letters; return the
        positions, which with ``state_arrays`` and the shards' checkpoints form a cut."""
        self._paused = True
        self.flush()
        self._commit_output()
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
        self._abort_output()
        if state is not None:
            self.core.load_state(state)
        self._consumer.seek(offsets)
        self._begin_output()

    def counters(self) -> dict[str, Any]:
        """Counters: events, deltas sent, rejections by reason, open requests, dead letters
        (``dead_lettered``: undecodable records; ``refused``: records refused as unlearnable,
        by reason in ``counts``)."""
        return {
            "events": self.events, "deltas_sent": self.deltas_sent, "busy_s": self.busy_s,
            "counts": dict(self.core.counts), "open_requests": self.core.open_requests,
            "held_feedback": self.core.held_feedback,
            "consumed": self._consumer.consumed, "dead_lettered": self._consumer.dead_lettered,
            "dead_letters_sent": self._consumer.dead_letters_sent,
            "refused": self.refused,
        }

    def close(self) -> None:
        """Flush deltas and dead letters and close the Kafka clients."""
        try:
            self.flush()
            self._close_output()
        finally:
            try:
                self._consumer.close()
            finally:
                self._producer.close()


LearnerActor = ray.remote(num_cpus=0.5)(Learner)
"""``Learner`` as a Ray actor."""
