"""Serving replicas read the bandit statistics from the parameter shards.

A shard is a Ray actor, found by name, that implements ``recsys.bandits.Publisher``: its
``publication(max_staleness_ms)`` answers a :class:`~recsys.bandits.Publication` whose ``ref``
points at the shard's published statistics (``Statistics.to_arrays()``) in Ray's object store,
holding every delta applied more than ``max_staleness_ms`` ago; its ``current_at_ms`` is the
last time the shard confirmed that the publication equals its live statistics. ``recsys``
defines both and ``streaming`` implements them, so serving never imports ``streaming``
(DESIGN.md). A replica polls every shard, fetches arrays only for shards whose ``snapshot_id``
changed (zero-copy from the object store), and merges the parts into one statistics object over
the whole catalogue (``recsys.bandits.merge_parts``).

Staleness: a replica polling every ``refresh_interval_ms`` asks the shards for
``max_staleness_ms - refresh_interval_ms``, so what it scores with is at most ``max_staleness_ms``
behind the shards (plus the time one poll takes). The snapshot's age is ``now -
min(current_at_ms)`` over the shards: how far behind the shards it may be.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from recsys.bandits import Publication, merge_parts, stats_from_arrays
from recsys.bandits.protocol import Statistics


@dataclass(frozen=True, eq=False)
class Snapshot:
    """The statistics a replica scores with, and where they came from."""

    stats: Statistics
    snapshot_id: str
    """The shards' snapshot ids joined by ``+``: equal ids mean equal statistics."""
    version: int
    """The sum of the shards' versions: grows with every merged delta."""
    current_at_ms: int
    """The oldest of the shards' confirmations that their publication was current."""
    fetched_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def age_ms(self, now_ms: float | None = None) -> float:
        """How far behind the shards this snapshot may be, in milliseconds."""
        now = time.time() * 1000 if now_ms is None else now_ms
        return max(0.0, now - self.current_at_ms)


class ShardsUnavailable(RuntimeError):
    """A shard could not be found or did not answer; the replica keeps its last snapshot."""


class ShardSnapshots:
    """Polls named shard actors and builds a :class:`Snapshot` when any of them changed.

    ``names`` are the shards' Ray actor names in shard order and ``namespace`` the Ray namespace
    they live in (the pipeline's driver's). Handles are looked up lazily and again after a
    failure, so the shards a recovered pipeline rebuilds under the same names are found.
    """

    def __init__(self, names: list[str], namespace: str | None, max_staleness_ms: float,
                 *, timeout_s: float = 5.0) -> None:
        if not names:
            raise ValueError("names: expected the Ray names of at least one shard actor, got "
                             "none; start the pipeline with shard_name_prefix set")
        if max_staleness_ms < 0:
            raise ValueError(f"max_staleness_ms: expected >= 0, got {max_staleness_ms!r}")
        self.names = list(names)
        self.namespace = namespace
        self.max_staleness_ms = float(max_staleness_ms)
        self.timeout_s = timeout_s
        self._handles: list[Any] | None = None
        self._parts: list[tuple[str, Statistics] | None] = [None] * len(self.names)
        self.fetches = 0

    def _lookup(self) -> list[Any]:
        import ray

        if self._handles is None:
            try:
                self._handles = [ray.get_actor(n, namespace=self.namespace) for n in self.names]
            except ValueError as exc:
                raise ShardsUnavailable(f"shard actors not found ({exc}); is the streaming "
                                        "pipeline running?") from None
        return self._handles

    def poll(self, previous: Snapshot | None = None) -> Snapshot | None:
        """A new snapshot when any shard published since ``previous`` (None: unchanged).

        Raises :class:`ShardsUnavailable` when a shard is gone or does not answer; the next
        poll looks the shards up again.
        """
        import ray

        handles = self._lookup()
        try:
            pubs: list[Publication] = ray.get(
                [h.publication.remote(self.max_staleness_ms) for h in handles],
                timeout=self.timeout_s)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
            self._handles = None
            raise ShardsUnavailable(f"a shard did not answer: {type(exc).__name__}") from None
        current_at = min(p.current_at_ms for p in pubs)
        ids = [p.snapshot_id for p in pubs]
        snapshot_id = "+".join(ids)
        version = sum(p.version for p in pubs)
        if previous is not None and previous.snapshot_id == snapshot_id:
            return Snapshot(previous.stats, snapshot_id, version, current_at, previous.fetched_ms)
        stale = [i for i, sid in enumerate(ids)
                 if self._parts[i] is None or self._parts[i][0] != sid]  # type: ignore[index]
        try:
            fetched = ray.get([pubs[i].ref for i in stale], timeout=self.timeout_s)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError,
                ray.exceptions.ObjectLostError) as exc:
            self._handles = None
            raise ShardsUnavailable(f"a shard's snapshot could not be read: "
                                    f"{type(exc).__name__}") from None
        for i, (arrays, meta) in zip(stale, fetched, strict=True):
            self._parts[i] = (ids[i], stats_from_arrays(arrays, meta))
        self.fetches += 1
        return Snapshot(merge_parts([p[1] for p in self._parts if p is not None]), snapshot_id,
                        version, current_at)
