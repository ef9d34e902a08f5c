"""Parameter shards: the bandit statistics split by item across Ray actors.

A :class:`ParameterShard` owns the items with ``shard_of(item, n_shards) == index`` (a stable
hash, so learners route deltas and the driver builds shards without talking to each other). The
driver builds whole statistics, ``split``s them and ships each part as ``to_arrays()``
``(arrays, meta)``: plain numpy arrays travel through Ray's object store without pickling our
own objects (:func:`start_shards` does all of it). The shard is layout-agnostic: it only calls
the ``recsys.bandits`` statistics protocol, so dense (:func:`dense_statistics`, centred by
default: the bandits issue measured the centred layout about 3x better on dense embeddings) and
graph statistics (``ClusterGraph.stats``) run unchanged.

Design decisions:

* **Deltas merge in any order.** Statistics are sums, so ``apply`` adds whatever arrives; no
  ordering, locks or sequence numbers are needed between learners.
* **Bad deltas never stop a shard, and never vanish silently.** A delta that does not decode or
  does not fit (another layout, another feature space) is rejected and counted by reason; a
  delta holding NaN or infinity, or one whose merge would overflow a sum, is refused whole
  (nothing of it is merged) and counted (``non_finite_deltas``); rows
  for items this shard does not hold (retired, or routed here by mistake) are dropped from the
  delta and counted. ``counters()`` reports both.
* **Bounded staleness, without copying on every read.** Readers pull a *published* snapshot.
  The shard notes when its statistics first moved past the publication (``dirty_since``);
  ``snapshot(max_staleness_ms)`` republishes (copies the arrays) only when they did *and* that
  was longer ago than the bound; otherwise the published copy is handed out again. The returned
  snapshot therefore holds every delta applied more than ``max_staleness_ms`` ago, and a hot
  shard copies at most once per bound however many readers it has.
  Readers (serving replicas, the pipeline's metrics) call ``publication``: a
  :class:`~recsys.bandits.Publication` (defined in ``recsys``, so serving never imports this
  module) whose ``ref`` points at the publication put in Ray's object store once, which every
  reader maps zero-copy, with its ``snapshot_id`` (names the content), ``published_ms`` (wall
  clock, when the copy was made) and ``current_at_ms`` (the last time the shard confirmed the
  publication equals its statistics).
* **Checkpoints** are ``checkpoint()`` → the ``(arrays, meta)`` of the live statistics and
  ``restore(arrays, meta)``; the coordinator calls them while the learners are flushed and paused.
  The shard keeps its own copy of the statistics as of the last checkpoint that was written
  (``checkpoint()`` takes a candidate copy, ``confirm_checkpoint()`` makes it the rollback
  point once the coordinator wrote the checkpoint; ``restore`` and the construction set it too),
  and ``rollback()`` returns to it in memory: a local recovery after a learner or another shard
  died rolls the healthy shards back without reading the checkpoint from storage
  (``streaming.pipeline``). A checkpoint that failed after the snapshot leaves the rollback point
  where it was. The copy costs one more set of arrays per shard (two while a checkpoint is
  being written).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import ray
from numpy.typing import ArrayLike, NDArray

from recsys.bandits import DenseStats, NonFiniteError, Publication, shard_of, stats_from_arrays
from recsys.bandits.influence import DEFAULT_CLIP_NORM
from recsys.bandits.protocol import Statistics, StatsArrays
from recsys.validation import message

Clock = Callable[[], float]
"""Seconds since the epoch (``time.time``); injectable so tests control time."""

MERGE_DELAY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                         60.0)
"""Upper bounds of the record → merged histogram (seconds; a last, infinite bucket follows)."""


def dense_statistics(
    item_ids: ArrayLike, dim: int, *, lam: float = 1.0, centred: bool = True, space: str = "",
    dtype: type[np.floating] = np.float64, clip_norm: float = DEFAULT_CLIP_NORM,
) -> DenseStats:
    """Empty dense statistics for a shard fleet: centred by default (see the module docs);
    learned contexts are clipped to ``clip_norm`` (``stream.context_clip_norm``)."""
    return DenseStats.empty(item_ids, dim, lam=lam, centred=centred, space=space, dtype=dtype,
                            clip_norm=clip_norm)


def shard_parts(stats: Statistics, n_shards: int) -> list[StatsArrays]:
    """The ``(arrays, meta)`` of each shard's share of ``stats``, in shard order."""
    return [part.to_arrays() for part in stats.split(n_shards)]  # type: ignore[attr-defined]


def _writable(arrays: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
    """Own, writable copies (arrays from Ray's object store are read-only views)."""
    return {name: np.array(value, copy=True) for name, value in arrays.items()}


def _held(sorted_ids: NDArray[np.int64], items: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Which ``items`` are among ``sorted_ids`` (item ids are kept sorted by every layout)."""
    pos = np.searchsorted(sorted_ids, items)
    found = pos < sorted_ids.size
    found[found] = sorted_ids[pos[found]] == items[found]
    return found


class ParameterShard:
    """One shard of the bandit statistics: merges deltas, publishes bounded-staleness snapshots.

    Built from the ``(arrays, meta)`` of its share (:func:`shard_parts`); refuses a share that
    holds items another shard owns. See the module docs for the publication rule.
    """

    def __init__(
        self, index: int, n_shards: int, arrays: dict[str, NDArray[Any]], meta: dict[str, Any],
        *, clock: Clock = time.time,
    ) -> None:
        if int(n_shards) != n_shards or n_shards < 1:
            raise ValueError(message("n_shards", "a positive integer", repr(n_shards)))
        if not 0 <= int(index) < n_shards:
            raise ValueError(message("index", f"an integer in [0, {n_shards})", repr(index)))
        self.index = int(index)
        self.n_shards = int(n_shards)
        self._clock = clock
        self._stats: Any = self._owned(arrays, meta)
        self._saved: StatsArrays = self._copy_of_stats()  # what rollback() returns to
        self._candidate: StatsArrays | None = None  # taken by checkpoint(), not yet confirmed
        self.rollbacks = 0
        self._published: StatsArrays | None = None
        self._published_ref: Any = None
        self._dirty_since: float | None = None  # when the statistics first moved past it
        self._current_at_ms = 0
        self.deltas_applied = 0
        self.publications = 0
        self.rejected: Counter[str] = Counter()
        self.non_finite_deltas = 0
        self.foreign_rows = 0
        # record produced → its delta merged here: per-bucket counts, sum and count (seconds)
        self.merge_delay_counts = np.zeros(len(MERGE_DELAY_BUCKETS_S) + 1, dtype=np.int64)
        self.merge_delay_sum_s = 0.0

    def _owned(self, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> Any:
        stats = stats_from_arrays(_writable(arrays), meta)
        owner = shard_of(stats.item_ids, self.n_shards)
        if (owner != self.index).any():
            wrong = stats.item_ids[owner != self.index][:5].tolist()
            raise ValueError(
                f"shard {self.index}/{self.n_shards}: item(s) {wrong} belong to other shards; "
                "build shards with streaming.shards.shard_parts(stats, n_shards)"
            )
        return stats

    # -- learning ----------------------------------------------------------------------------

    def apply(self, deltas: Sequence[StatsArrays]) -> int:
        """Merge deltas (each an ``(arrays, meta)`` pair), in any order; returns the version.

        A delta that cannot be merged is rejected and counted by reason; one with NaN or infinity
        (or that would overflow the sums) is refused whole and counted as ``non_finite_deltas``;
        rows for items this shard does not hold are dropped and counted (``counters()``); the
        others are merged.
        """
        for arrays, meta in deltas:
            try:
                delta = stats_from_arrays(arrays, meta)
                held = _held(self._stats.item_ids, delta.item_ids)
                if not held.all():
                    self.foreign_rows += int((~held).sum())
                    if not held.any():
                        continue
                    delta = delta.select(delta.item_ids[held])
                self._stats.merge_inplace(delta)
                self._changed()
                if "oldest_record_ms" in meta:
                    self._observe_merge_delay(self._clock() - meta["oldest_record_ms"] / 1000.0)
            except NonFiniteError:  # NaN/inf, or a sum that would overflow: never merged
                self.non_finite_deltas += 1
                continue
            except (ValueError, TypeError, KeyError) as exc:
                self.rejected[f"{type(exc).__name__}: {str(exc)[:120]}"] += 1
                continue
            self.deltas_applied += 1
        return int(self._stats.version)

    def _observe_merge_delay(self, seconds: float) -> None:
        """Count one delta's delay from its oldest record's Kafka timestamp to its merge."""
        seconds = max(0.0, seconds)
        self.merge_delay_counts[np.searchsorted(MERGE_DELAY_BUCKETS_S, seconds)] += 1
        self.merge_delay_sum_s += seconds

    def _changed(self) -> None:
        if self._dirty_since is None:
            self._dirty_since = self._clock()

    # -- catalogue ---------------------------------------------------------------------------

    def _mine(self, items: ArrayLike) -> NDArray[np.int64]:
        ids = np.asarray(items, dtype=np.int64).ravel()
        return ids[shard_of(ids, self.n_shards) == self.index]

    def add_items(self, items: ArrayLike) -> int:
        """Add the ones of ``items`` this shard owns (zero statistics); returns how many.

        The driver may send the whole list to every shard. Items already held raise.
        """
        mine = self._mine(items)
        if mine.size:
            self._stats.add_items(mine)
            self._changed()
        return int(mine.size)

    def add_edges(self, edge_clusters: ArrayLike, edge_items: ArrayLike) -> int:
        """Graph layout: add the (cluster, item) edges whose items this shard owns; returns
        how many (other layouts raise ``TypeError``: they have no edges)."""
        clusters = np.asarray(edge_clusters, dtype=np.int64).ravel()
        items = np.asarray(edge_items, dtype=np.int64).ravel()
        keep = shard_of(items, self.n_shards) == self.index
        self._stats.add_edges(clusters[keep], items[keep])
        if keep.any():
            self._changed()
        return int(keep.sum())

    def retire_items(self, items: ArrayLike) -> int:
        """Drop the ones of ``items`` this shard owns, with their statistics; returns how many.

        Unknown ids that this shard would own raise (a retire of something never added).
        """
        mine = self._mine(items)
        if mine.size:
            self._stats.retire_items(mine)
            self._changed()
        return int(mine.size)

    # -- reading -----------------------------------------------------------------------------

    @property
    def version(self) -> int:
        return int(self._stats.version)

    def _publish_if_stale(self, max_staleness_ms: float) -> None:
        now = self._clock()
        stale = (self._dirty_since is not None
                 and (now - self._dirty_since) * 1000.0 >= max_staleness_ms)
        if self._published is None or stale:
            arrays, meta = self._stats.to_arrays()
            self._published = ({k: v.copy() for k, v in arrays.items()},
                               {**meta, "shard_index": self.index, "n_shards": self.n_shards,
                                "snapshot_id": self._stats.snapshot_id,
                                "published_ms": int(now * 1000)})
            self._published_ref = None
            self._dirty_since = None
            self.publications += 1
        current = now if self._dirty_since is None else self._dirty_since
        self._current_at_ms = int(current * 1000)

    def snapshot(self, max_staleness_ms: float = 100.0) -> StatsArrays:
        """The published ``(arrays, meta)``, holding every delta applied more than
        ``max_staleness_ms`` ago (republished first if needed; see the module docs)."""
        if max_staleness_ms < 0:
            raise ValueError(message("max_staleness_ms", "a number >= 0", repr(max_staleness_ms)))
        self._publish_if_stale(max_staleness_ms)
        assert self._published is not None
        arrays, meta = self._published
        return arrays, {**meta, "current_at_ms": self._current_at_ms}

    def publication(self, max_staleness_ms: float = 100.0) -> Publication:
        """What readers poll (``recsys.bandits.Publisher``): :meth:`snapshot`'s publication,
        put in the object store once per publication, with what it is (see the module docs),
        so a reader fetches the arrays only when ``snapshot_id`` changed. ``current_at_ms`` is
        the current value; the meta inside ``ref`` keeps the one at publication."""
        arrays, meta = self.snapshot(max_staleness_ms)
        if self._published_ref is None:
            self._published_ref = ray.put((arrays, meta))
        return Publication(
            ref=self._published_ref, snapshot_id=str(meta["snapshot_id"]),
            version=int(meta["version"]), published_ms=int(meta["published_ms"]),
            current_at_ms=self._current_at_ms, shard_index=self.index, n_shards=self.n_shards)

    # -- checkpoints -------------------------------------------------------------------------

    def _copy_of_stats(self) -> StatsArrays:
        arrays, meta = self._stats.to_arrays()
        return ({k: np.array(v, copy=True) for k, v in arrays.items()},
                {**meta, "shard_index": self.index, "n_shards": self.n_shards})

    def statistics(self) -> StatsArrays:
        """``(arrays, meta)`` of the live statistics (views; unlike :meth:`checkpoint` it does
        not move the rollback point): what reports and tests read."""
        arrays, meta = self._stats.to_arrays()
        return arrays, {**meta, "shard_index": self.index, "n_shards": self.n_shards}

    def checkpoint(self) -> StatsArrays:
        """A copy of the live statistics' ``(arrays, meta)`` (it does not change as deltas
        arrive), kept as the candidate rollback point until :meth:`confirm_checkpoint`."""
        self._candidate = self._copy_of_stats()
        return self._candidate

    def confirm_checkpoint(self) -> bool:
        """The last :meth:`checkpoint` was written: make it the rollback point. Returns whether
        there was one to confirm."""
        if self._candidate is None:
            return False
        self._saved, self._candidate = self._candidate, None
        return True

    def rollback(self) -> int:
        """Return to the statistics of the last confirmed checkpoint (or :meth:`restore`, or
        the construction) in memory; returns the version. Deltas applied since are dropped."""
        arrays, meta = self._saved
        self._stats = stats_from_arrays(_writable(arrays), dict(meta))
        self._published, self._published_ref, self._dirty_since = None, None, None
        self.rollbacks += 1
        return self.version

    def restore(self, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> int:
        """Replace the statistics by a checkpoint's; returns the restored version."""
        for key, mine in (("shard_index", self.index), ("n_shards", self.n_shards)):
            if key in meta and int(meta[key]) != mine:
                raise ValueError(f"restore: the checkpoint is of shard {meta.get('shard_index')}"
                                 f"/{meta.get('n_shards')}, this is shard {self.index}/"
                                 f"{self.n_shards}")
        self._stats = self._owned(arrays, meta)
        self._saved, self._candidate = self._copy_of_stats(), None
        self._published, self._published_ref, self._dirty_since = None, None, None
        return self.version

    def counters(self) -> dict[str, Any]:
        """Counters for metrics: version, items, memory, deltas applied and rejected."""
        return {
            "shard_index": self.index, "n_shards": self.n_shards, "version": self.version,
            "snapshot_id": self._stats.snapshot_id, "n_items": int(self._stats.n_items),
            "nbytes": int(sum(a.nbytes for a in self._stats.to_arrays()[0].values())),
            "deltas_applied": self.deltas_applied, "deltas_rejected": dict(self.rejected),
            "non_finite_deltas": self.non_finite_deltas, "foreign_rows": self.foreign_rows,
            "publications": self.publications, "rollbacks": self.rollbacks,
            "merge_delay_bucket_counts": self.merge_delay_counts.tolist(),
            "merge_delay_sum_s": self.merge_delay_sum_s,
        }


ParameterShardActor = ray.remote(num_cpus=0)(ParameterShard)
"""``ParameterShard`` as a Ray actor (no CPU reservation: it waits on messages most of the time)."""


def start_shards(stats: Statistics, n_shards: int, *, names: Sequence[str] | None = None
                 ) -> list[Any]:
    """One ``ParameterShardActor`` per share of ``stats``; returns their handles in order.

    ``names`` (one per shard) names the actors, so serving replicas find them; a name still
    held by a killed actor (released asynchronously) is waited for.
    """
    if names is not None and len(names) != n_shards:
        raise ValueError(f"names: expected {n_shards} shard names, got {len(names)}")
    handles = []
    for i, (arrays, meta) in enumerate(shard_parts(stats, n_shards)):
        actor = ParameterShardActor
        if names is not None:
            _wait_name_free(names[i])
            actor = ParameterShardActor.options(name=names[i])
        handles.append(actor.remote(i, n_shards, arrays, meta))
    return handles


def start_shard(index: int, n_shards: int, arrays: Any, meta: dict[str, Any], *,
                name: str | None = None) -> Any:
    """One ``ParameterShardActor`` (shard ``index`` of ``n_shards``) from ``(arrays, meta)``;
    ``arrays`` may be an ``ObjectRef`` (a recovery rebuilds a shard from the cut in Ray's store).
    A ``name`` still held by a killed actor is waited for."""
    actor = ParameterShardActor
    if name is not None:
        _wait_name_free(name)
        actor = ParameterShardActor.options(name=name)
    return actor.remote(index, n_shards, arrays, meta)


def _wait_name_free(name: str, timeout_s: float = 30.0) -> None:
    """Wait until no live actor holds ``name`` (a killed actor releases it asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get_actor(name)
        except ValueError:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"shard name {name!r} is still taken by a live actor after "
                               f"{timeout_s:.0f} s; is another pipeline using the same "
                               "shard_name_prefix?")
        time.sleep(0.05)
