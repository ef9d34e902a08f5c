"""One protocol for every statistics layout, and the plumbing every layout shares.

A policy is statistics + a scoring rule; the distributed system moves the statistics around:
learners compute deltas, route them to the shard that owns each item, shards merge them, and
snapshots travel to serving replicas, checkpoints and mlflow. :class:`Statistics` names what each
layout (:class:`~recsys.bandits.DenseStats`, :class:`~recsys.bandits.GraphStats`,
:class:`~recsys.bandits.FullStats`) provides for that, so no caller needs ``isinstance``.

Snapshot identity. ``snapshot_id`` is ``"<origin>:<version>"``: ``version`` counts the mutations
of one object and ``origin`` is a random token naming its lineage. A new object (``empty``, a
merge, a delta, ``select``, ``copy``) gets a fresh origin; ``from_arrays``/``load`` keep the saved
one, so a snapshot shipped to a reader still names what it holds; and such a loaded object takes
a fresh origin at its first mutation. So at most one live object mutates under an origin, and two
snapshots with equal ids hold the same sums — unlike ``max(version)`` after a merge, which named
nothing. A set of shards is identified by the ids of its parts.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, Self, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from recsys.bandits.influence import (
    DEFAULT_CLIP_NORM,
    NonFiniteError,
    check_clip_norm,
    check_products,
    clip_rows,
)
from recsys.bandits.items import ItemIndex
from recsys.bandits.persistence import decode_npz, encode_npz
from recsys.bandits.validation import check_contexts, check_items, check_rewards
from recsys.storage import PathLike, read_bytes, resolve, write_bytes_atomic
from recsys.validation import message

if TYPE_CHECKING:
    from recsys.bandits.contexts import ContextCodec
    from recsys.config import StreamSettings

StatsArrays = tuple[dict[str, NDArray[Any]], dict[str, Any]]
"""``(arrays, meta)``: plain numpy arrays plus JSON-safe metadata (format, layout, identity)."""

Part = Literal["both", "exposure", "reward"]
"""Which sums an update touches. Exposure sums (Σx², Σx, counts) do not depend on the reward and
reward sums (Σx·r, Σr) only on it, so an impression can be learned as ``"exposure"`` when it is
served and its click as ``"reward"`` when the click arrives: the two parts add up to ``"both"``
(DESIGN: freshness is not gated by the attribution window)."""
PARTS = ("both", "exposure", "reward")
DenseBatch = tuple[NDArray[np.float64], NDArray[np.intp], NDArray[np.float64],
                   NDArray[np.float64] | None]
"""A validated batch over dense contexts: contexts [b, dim], the items' rows, the rewards and the
per-event weights (None: every event weighs 1)."""


def check_part(part: str, rewards: object) -> None:
    """Raise unless ``part`` is one of :data:`PARTS` and rewards are given where they count."""
    if part not in PARTS:
        raise ValueError(f"part: expected one of {PARTS}, got {part!r}")
    if rewards is None and part != "exposure":
        raise ValueError(f"rewards: required for part={part!r} (only part='exposure' may "
                         "omit them)")


MAX_SAMPLE_WEIGHT = 1e6
"""The largest weight one event may carry: it bounds one event's influence as the context clip
does (an importance weight above a million events is a propensity near 0, a bug upstream), and
keeps Σ w·x² finite at any ``clip_norm``."""


def check_sample_weight(sample_weight: ArrayLike | None, batch: int
                        ) -> NDArray[np.float64] | None:
    """Per-event weights as float64 [batch] (finite, in [0, MAX_SAMPLE_WEIGHT]), or None for
    all ones.

    A weight w multiplies every term the event adds (Σ w·x², Σ w·x·r, count += w, ...), as
    scikit-learn's ``sample_weight``: importance weights such as the A/B weights of
    ``recsys.ab_weighting`` (Si et al. 2023). An event of weight 0 adds nothing.
    """
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.ndim == 0:
        w = w[None]
    if w.shape != (batch,):
        raise ValueError(message("sample_weight", f"one weight per event, shape [{batch}]",
                                 f"shape {w.shape}", "pass None for unweighted events"))
    bad = ~(np.isfinite(w) & (w >= 0.0) & (w <= MAX_SAMPLE_WEIGHT))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(message("sample_weight",
                                 f"finite weights >= 0 and <= {MAX_SAMPLE_WEIGHT:g}",
                                 f"weight at index {i} = {w[i]}",
                                 "fix the weights (clip propensities away from 0 and 1)"))
    return w


Moments = tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_] | None]
"""Score mean and variance ``[batch, items]`` and the candidate mask (None: every item)."""


@dataclass(frozen=True, eq=False)
class ItemSummary:
    """Per-item figures of one statistics object, in item-id order (what metrics export).

    ``exposures``: the item's exposure count; ``rewards``: its reward sum; ``expected``: the
    exploration-free expected reward. ``rewards``/``expected`` are NaN where the layout holds
    no context-free reward (dense uncentred and full statistics: Σ x·r but no Σ r).
    """

    item_ids: NDArray[np.int64]
    exposures: NDArray[np.float64]
    rewards: NDArray[np.float64]
    expected: NDArray[np.float64]


@runtime_checkable
class Statistics(Protocol):
    """What policies, learners, shards and checkpoints need from any statistics layout."""

    layout: ClassVar[str]
    lam: float
    space: str
    version: int
    clip_norm: float

    @property
    def n_items(self) -> int: ...

    @property
    def item_ids(self) -> NDArray[np.int64]: ...

    @property
    def snapshot_id(self) -> str: ...

    # learning (in place) and deltas
    def learn(self, contexts: Any, items: ArrayLike, rewards: ArrayLike | None, *,
              reward_range: tuple[float, float] = ..., part: Part = ...,
              sample_weight: ArrayLike | None = ...) -> Self: ...

    def learn_one(self, context: Any, item: int, reward: float, *,
                  reward_range: tuple[float, float] = ...,
                  sample_weight: float | None = ...) -> Self: ...

    def delta_from_batch(self, contexts: Any, items: ArrayLike, rewards: ArrayLike | None, *,
                         reward_range: tuple[float, float] = ..., part: Part = ...,
                         sample_weight: ArrayLike | None = ...) -> Self: ...

    def merge(self, other: Self) -> Self: ...

    def set_clip_norm(self, clip_norm: float) -> Self: ...

    def merge_inplace(self, other: Self) -> Self: ...

    def decay(self, factor: float) -> Self: ...

    # catalogue and sharding
    def add_items(self, items: ArrayLike) -> Self: ...

    def retire_items(self, items: ArrayLike) -> Self: ...

    def add_edges(self, edge_clusters: ArrayLike, edge_items: ArrayLike) -> Self: ...

    def select(self, items: ArrayLike) -> Self: ...

    def split(self, n_shards: int) -> list[Self]: ...

    def delta_template(self) -> Self: ...

    @staticmethod
    def shard_of(items: ArrayLike, n_shards: int) -> NDArray[np.int64]: ...

    # scoring
    def moments(self, contexts: Any, rows: NDArray[np.intp] | None = None) -> Moments: ...

    def moments_one(self, context: Any) -> tuple[
        NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_] | None]: ...

    def posterior(self) -> tuple[NDArray[np.floating], NDArray[np.floating]]: ...

    def prepare_scoring(self) -> None: ...

    def linear_posterior(self) -> Any: ...

    def context_codec(self) -> ContextCodec: ...

    # reporting
    def item_summary(self) -> ItemSummary: ...

    # snapshots
    def to_arrays(self) -> StatsArrays: ...

    @classmethod
    def from_arrays(cls, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> Self: ...

    def save(self, uri: PathLike, *, filesystem: Any = None) -> None: ...

    @classmethod
    def load(cls, uri: PathLike, *, filesystem: Any = None) -> Self: ...

    def copy(self) -> Self: ...

    def allclose(self, other: Any, *, rtol: float = ..., atol: float = ...) -> bool: ...


def new_origin() -> str:
    """A fresh lineage token (12 hex digits; collisions are negligible for a fleet of shards)."""
    return secrets.token_hex(6)


_SPLITMIX_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_SPLITMIX_M1 = np.uint64(0xBF58476D1CE4E5B9)
_SPLITMIX_M2 = np.uint64(0x94D049BB133111EB)


def shard_of(items: ArrayLike, n_shards: int) -> NDArray[np.int64]:
    """The shard in ``[0, n_shards)`` that owns each item id: a stable hash, not Python's.

    SplitMix64's finaliser spreads consecutive ids evenly, gives the same answer in every process,
    Python version and platform (unlike ``hash``), and depends on nothing but the id and the
    shard count, so learners route deltas and shards are built without talking to each other.
    """
    n = int(n_shards)
    if n != n_shards or n < 1:
        raise ValueError(f"n_shards must be a positive integer, got {n_shards!r}")
    ids = np.asarray(items)
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"items: item ids must be integers, got dtype {ids.dtype}")
    z = ids.astype(np.int64).astype(np.uint64) + _SPLITMIX_GAMMA
    z = (z ^ (z >> np.uint64(30))) * _SPLITMIX_M1
    z = (z ^ (z >> np.uint64(27))) * _SPLITMIX_M2
    z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(n)).astype(np.int64)


class StatsBase:
    """Behaviour shared by every layout: identity, sharding, snapshots to arrays and files.

    Subclasses are dataclasses with ``origin``/``version`` fields and implement
    ``_arrays_and_meta``/``_from_parts`` (the layout-specific halves of to/from arrays).
    """

    layout: ClassVar[str]
    format: ClassVar[str]
    items: ItemIndex
    origin: str
    version: int
    clip_norm: float
    _borrowed: bool

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def item_ids(self) -> NDArray[np.int64]:
        """Item ids in row order (sorted, unique)."""
        return self.items.ids

    # ------------------------------------------------------------------ identity
    @property
    def snapshot_id(self) -> str:
        """``"<origin>:<version>"``: equal ids mean equal contents (see the module docs)."""
        return f"{self.origin}:{self.version}"

    def _bump(self) -> None:
        """Record one mutation (a loaded snapshot forks into its own lineage first)."""
        if self._borrowed:
            self.origin = new_origin()
            self._borrowed = False
        self.version += 1

    # ------------------------------------------------------------------ sharding
    shard_of = staticmethod(shard_of)

    def split(self, n_shards: int) -> list[Self]:
        """This object's items partitioned into ``n_shards`` selections by :func:`shard_of`."""
        owner = shard_of(self.item_ids, n_shards)
        return [self.select(self.item_ids[owner == s])  # type: ignore[attr-defined]
                for s in range(n_shards)]

    # ------------------------------------------------------------------ learning
    def _batch(self, contexts: Any, items: ArrayLike, rewards: ArrayLike | None,
               reward_range: tuple[float, float], part: Part,
               sample_weight: ArrayLike | None = None) -> Any:
        """The layout's validated form of a batch (what ``_learn`` and ``_delta`` take), each
        event's terms weighted by ``sample_weight`` (:func:`check_sample_weight`)."""
        raise NotImplementedError

    def _learn(self, batch: Any, part: Part) -> Self:
        raise NotImplementedError

    def _delta(self, batch: Any, part: Part) -> Self:
        raise NotImplementedError

    def learn(self, contexts: Any, items: ArrayLike, rewards: ArrayLike | None, *,
              reward_range: tuple[float, float] = (-np.inf, np.inf), part: Part = "both",
              sample_weight: ArrayLike | None = None) -> Self:
        """Add one batch (or one event) in place; returns ``self``. ``part`` and
        ``sample_weight`` as in :meth:`delta_from_batch`."""
        return self._learn(self._batch(contexts, items, rewards, reward_range, part,
                                       sample_weight), part)

    def delta_from_batch(self, contexts: Any, items: ArrayLike, rewards: ArrayLike | None, *,
                         reward_range: tuple[float, float] = (-np.inf, np.inf),
                         part: Part = "both", sample_weight: ArrayLike | None = None) -> Self:
        """The statistics of one batch alone, over the batch's distinct items (graph: the edges
        it touched). Same hyperparameters and ``space`` as ``self`` and no prior, so that
        ``self.merge(delta)`` equals learning the batch; items must be known to ``self``.
        ``part="exposure"`` (rewards may be None) or ``"reward"`` fills only those sums.
        ``sample_weight`` [batch] (finite, >= 0; None: all ones) multiplies each event's terms
        (Σ w·x², Σ w·x·r, count += w; :func:`check_sample_weight`)."""
        return self._delta(self._batch(contexts, items, rewards, reward_range, part,
                                       sample_weight), part)

    # ------------------------------------------------------------------ shared algebra
    def _sums(self) -> dict[str, NDArray[Any]]:
        """Every additive array by name (what merging adds and decay scales)."""
        raise NotImplementedError

    def _after_change(self) -> None:
        """Record a mutation of every row (layouts with derived state refresh it too)."""
        self._bump()

    def decay(self, factor: float) -> Self:
        """Multiply every sum by ``factor`` in (0, 1] in place (exponential forgetting).

        Linear in the sums, so decaying then merging equals merging then decaying. Use
        ``factor = 0.5 ** (elapsed / half_life)`` for a time-based half-life. The prior is not
        data: it is never decayed.
        """
        f = float(factor)
        if not (0.0 < f <= 1.0):
            raise ValueError(f"decay factor must be in (0, 1], got {factor!r}")
        for value in self._sums().values():
            value *= f
        self._after_change()
        return self

    def _new_item_ids(self, items: ArrayLike) -> NDArray[np.int64]:
        """``items`` as int64 ids for ``add_items``; raises naming ids already held."""
        new = np.asarray(items, dtype=np.int64).ravel()
        clash = self.items.contains(new)
        if clash.any():
            raise ValueError(f"add_items: item id(s) {new[clash][:5].tolist()} already present")
        return new

    def _rows_kept_without(self, items: ArrayLike) -> NDArray[np.bool_]:
        """For ``retire_items``: a mask of the rows to keep once ``items`` (all held) go."""
        gone = np.asarray(items, dtype=np.int64).ravel()
        keep = np.ones(self.n_items, dtype=bool)
        keep[self.items.rows(gone, name="retire_items")] = False
        return keep

    def _dense_batch(
        self, contexts: ArrayLike, items: ArrayLike, rewards: ArrayLike | None,
        reward_range: tuple[float, float], part: Part, sample_weight: ArrayLike | None = None,
    ) -> DenseBatch:
        """A validated batch over dense contexts of ``dim`` features (dense and full layouts):
        contexts [b, dim], the items' rows, the rewards (zeros for ``part="exposure"``) and the
        event weights (None: all ones)."""
        check_part(part, rewards)
        x = clip_rows(check_contexts(contexts, self.dim),  # type: ignore[attr-defined]
                      self.clip_norm)
        ids = check_items(items, x.shape[0])
        r = (np.zeros(x.shape[0]) if rewards is None
             else check_rewards(rewards, x.shape[0], reward_range))
        if part != "exposure":
            check_products(x, r, self.clip_norm)
        return x, self.items.rows(ids), r, check_sample_weight(sample_weight, x.shape[0])

    def set_clip_norm(self, clip_norm: float) -> Self:
        """Set the per-event context clip (``recsys.bandits.influence``) in place; returns
        ``self``. Not a change of the sums: the version stays."""
        self.clip_norm = check_clip_norm(clip_norm)
        return self

    def _check_finite_delta(self, sums: dict[str, NDArray[Any]]) -> None:
        """Raise :class:`~recsys.bandits.influence.NonFiniteError` if a delta's sums hold NaN
        or infinity (nothing is merged)."""
        for name, value in sums.items():
            if not np.isfinite(value).all():
                raise NonFiniteError(message(
                    "delta", "finite sums", f"NaN or infinity in {name}",
                    "the delta is refused; find the events that produced it"))

    @staticmethod
    def _check_finite_result(name: str, value: NDArray[Any]) -> None:
        """Raise :class:`~recsys.bandits.influence.NonFiniteError` if merging would overflow."""
        if not np.isfinite(value).all():
            raise NonFiniteError(message(
                "delta", "sums that stay finite once merged",
                f"{name} overflows when added to the statistics",
                "the delta is refused; decay the statistics or lower the clip norm"))

    def delta_template(self) -> Self:
        """What learners compute deltas against: here an empty selection, an open catalogue
        (deltas take any item id; shards keep the rows they hold), so a learner holds no
        catalogue-sized arrays and items can be added and retired while running. Layouts whose
        deltas need more of the catalogue (graph edges) override it."""
        return self.select(np.zeros(0, dtype=np.int64))  # type: ignore[attr-defined]

    def add_edges(self, edge_clusters: ArrayLike, edge_items: ArrayLike) -> Self:
        """Add graph edges; only the graph layout has them (this raises ``TypeError``)."""
        raise TypeError(message("add_edges", "graph statistics (they have edges)",
                                f"{self.layout} statistics"))

    def prepare_scoring(self) -> None:
        """Build whatever scoring reads now (a no-op here; layouts with a cache override it),
        so that the first request after a snapshot is published does not pay for it."""

    def linear_posterior(self) -> Any:
        """The scoring arrays as a :class:`~recsys.bandits.dense.DensePosterior`, which any
        array backend scores with; None here: this layout's scoring is not two matrix products
        (graph: sparse gathers; full: per-item matrices), so only numpy scores it."""
        return None

    # ------------------------------------------------------------------ snapshots
    def _arrays_and_meta(self) -> StatsArrays:
        raise NotImplementedError

    @classmethod
    def _from_parts(cls, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> Self:
        raise NotImplementedError

    def to_arrays(self) -> StatsArrays:
        """The statistics as plain arrays plus JSON-safe metadata (no copies of large arrays).

        For the Ray object store, checkpoints and mlflow artifacts; :meth:`from_arrays` inverts it.
        """
        arrays, meta = self._arrays_and_meta()
        return arrays, {"format": self.format, "layout": self.layout, "origin": self.origin,
                        "version": self.version, "clip_norm": self.clip_norm, **meta}

    @classmethod
    def from_arrays(cls, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> Self:
        """Rebuild from :meth:`to_arrays`; keeps the snapshot id until the first mutation."""
        if meta.get("format") != cls.format:
            raise ValueError(
                f"not {cls.__name__} arrays: format {meta.get('format')!r}, expected "
                f"{cls.format!r} (use recsys.bandits.stats_from_arrays for any layout)"
            )
        out = cls._from_parts(arrays, meta)
        out.version = int(meta.get("version", 0))
        out.clip_norm = check_clip_norm(meta.get("clip_norm", DEFAULT_CLIP_NORM),
                                        "meta['clip_norm']")
        if "origin" in meta:
            out.origin = str(meta["origin"])
            out._borrowed = True
        # else: a file from before snapshot ids; it keeps the fresh origin it was built with
        return out

    def save(self, uri: PathLike, *, filesystem: Any = None) -> None:
        """Write an ``.npz`` snapshot to a local path or fsspec URI, atomically.

        Plain arrays and a JSON header only: :meth:`load` never unpickles anything.
        """
        fs, path = resolve(uri, filesystem)
        arrays, meta = self.to_arrays()
        write_bytes_atomic(fs, path, encode_npz(meta, arrays))

    @classmethod
    def load(cls, uri: PathLike, *, filesystem: Any = None) -> Self:
        """Read a snapshot written by :meth:`save` (refuses other formats and pickles)."""
        fs, path = resolve(uri, filesystem)
        meta, arrays = decode_npz(read_bytes(fs, path), where=str(uri))
        try:
            return cls.from_arrays(arrays, meta)
        except ValueError as exc:
            raise ValueError(f"{uri}: {exc}") from None


LAYOUTS: dict[str, type[StatsBase]] = {}
"""Statistics classes by their ``layout`` name (filled as the layout modules are imported)."""


def register_layout(cls: type[StatsBase]) -> type[StatsBase]:
    """Class decorator: make a layout loadable by :func:`stats_from_arrays`/:func:`load_stats`."""
    LAYOUTS[cls.layout] = cls
    return cls


def merge_parts(parts: Sequence[Statistics]) -> Statistics:
    """One new statistics object, the sum of ``parts`` (shards' shares, deltas; overlapping or
    not) over the union of their items; it never aliases a part. The one way to put shards
    back together: serving replicas, the pipeline and tests all call it."""
    if not parts:
        raise ValueError(message("parts", "at least one statistics object", "none"))
    merged = parts[0].copy() if len(parts) == 1 else parts[0].merge(parts[1])
    for part in parts[2:]:
        merged = merged.merge(part)
    return merged


def stats_from_arrays(arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> Any:
    """Rebuild statistics of whatever layout ``meta`` names (checkpoints, Ray transfers)."""
    by_format = {cls.format: name for name, cls in LAYOUTS.items()}
    layout = meta.get("layout", by_format.get(meta.get("format", "")))
    if layout not in LAYOUTS:
        raise ValueError(f"unknown statistics layout {layout!r}; known: {sorted(LAYOUTS)}")
    return LAYOUTS[layout].from_arrays(arrays, meta)


def stats_for_stream(stream: StreamSettings) -> Any:
    """Empty statistics of the layout ``stream.layout`` names, over its configured catalogue
    (each streamed layout's ``for_stream``)."""
    if stream.layout not in LAYOUTS:
        raise ValueError(message("stream.layout", f"one of {sorted(LAYOUTS)}",
                                 repr(stream.layout)))
    return LAYOUTS[stream.layout].for_stream(stream)  # type: ignore[attr-defined]


def load_stats(uri: PathLike, *, filesystem: Any = None) -> Any:
    """Read a snapshot of any layout from a local path or fsspec URI."""
    fs, path = resolve(uri, filesystem)
    meta, arrays = decode_npz(read_bytes(fs, path), where=str(uri))
    return stats_from_arrays(arrays, meta)

