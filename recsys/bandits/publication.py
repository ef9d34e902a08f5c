"""What a parameter shard publishes for its readers, and the protocol readers call.

``recsys`` defines both and ``streaming`` implements them (``streaming.shards.ParameterShard``),
so serving replicas reach the shards through Ray handles and this protocol alone, never by
importing ``streaming`` (DESIGN.md), and the pipeline's metrics read the same publication.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Publication:
    """One shard's published statistics: a reference to them and what they are.

    ``ref`` is a Ray ``ObjectRef`` to the statistics' ``to_arrays()`` ``(arrays, meta)`` in the
    object store (put once per publication; every reader maps it zero-copy). It holds every
    delta the shard merged more than the staleness bound the reader asked for ago.
    ``snapshot_id`` names the content (a reader fetches ``ref`` only when it changed),
    ``version`` counts the shard's merges, ``published_ms`` is when the copy was made and
    ``current_at_ms`` the last time the shard confirmed that the publication equals its live
    statistics (both wall clock, milliseconds).
    """

    ref: Any
    snapshot_id: str
    version: int
    published_ms: int
    current_at_ms: int
    shard_index: int
    n_shards: int


class Publisher(Protocol):
    """A parameter shard as its readers see it (called through a Ray actor handle)."""

    def publication(self, max_staleness_ms: float = ...) -> Publication:
        """The publication, republished first when the live statistics moved past it more
        than ``max_staleness_ms`` ago."""
        ...
