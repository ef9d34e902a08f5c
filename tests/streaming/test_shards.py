"""Parameter shards: deltas merge in any order, snapshots respect the staleness bound without
copying on every read, the catalogue changes while running, checkpoints round-trip."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.bandits import (
    ClusterGraph,
    DenseStats,
    GraphStats,
    Publication,
    merge_parts,
    shard_of,
    stats_from_arrays,
)
from recsys.bandits.graph import SoftContexts
from streaming.shards import ParameterShard, dense_statistics, shard_parts, start_shards

ITEMS = np.arange(40) * 3 + 1
DIM = 4
N_SHARDS = 3
N_CLUSTERS = 5


class FakeClock:
    """Time that only moves when the test says so."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _graph() -> GraphStats:
    c, i = np.meshgrid(np.arange(N_CLUSTERS), ITEMS, indexing="ij")
    keep = (c.ravel() + i.ravel()) % 4 != 0
    return GraphStats.empty(ITEMS, N_CLUSTERS, c.ravel()[keep], i.ravel()[keep], lam=0.5)


def _batch(layout: str, rng: np.random.Generator, n: int):
    items = rng.choice(ITEMS, n)
    rewards = rng.random(n)
    if layout == "graph":
        contexts = SoftContexts.of(rng.integers(0, N_CLUSTERS, (n, 2)),
                                   rng.dirichlet([1.0, 1.0], n))
    else:
        contexts = rng.normal(size=(n, DIM)) + 2.0
    return contexts, items, rewards


def _stats(layout: str):
    return _graph() if layout == "graph" else dense_statistics(ITEMS, DIM, lam=0.5)


def _shards(stats, clock=None) -> list[ParameterShard]:
    kwargs = {} if clock is None else {"clock": clock}
    return [ParameterShard(i, N_SHARDS, *part, **kwargs)
            for i, part in enumerate(shard_parts(stats, N_SHARDS))]


def _merged(shards: list[ParameterShard]):
    """The shards' current statistics put back together."""
    return merge_parts([stats_from_arrays(*s.snapshot(max_staleness_ms=0)) for s in shards])


def _routed(delta) -> dict[int, tuple]:
    """A delta's (arrays, meta) per owning shard, the way learners route them."""
    owner = shard_of(delta.item_ids, N_SHARDS)
    return {s: delta.select(delta.item_ids[owner == s]).to_arrays()
            for s in range(N_SHARDS) if (owner == s).any()}


def test_dense_statistics_default_to_the_centred_layout() -> None:
    assert dense_statistics(ITEMS, DIM).centred
    assert not dense_statistics(ITEMS, DIM, centred=False).centred


def test_graph_statistics_live_on_the_cluster_graph_edges_and_shard_by_item() -> None:
    graph = ClusterGraph(centroids=np.eye(3), item_ids=ITEMS,
                         edge_clusters=np.repeat(np.arange(3), 4),
                         edge_items=np.tile(ITEMS[:4], 3), version="graph-v1")
    stats = graph.stats(calibration="normalised")
    assert (stats.layout, stats.n_edges, stats.weighting, stats.space) == (
        "graph", 12, "linear", "graph-v1")
    shards = _shards(stats)
    assert sum(s.counters()["n_items"] for s in shards) == ITEMS.size
    assert _merged(shards).allclose(stats)


@pytest.mark.parametrize("layout", ["dense", "graph"])
def test_deltas_merged_in_any_order_equal_one_learn(layout: str) -> None:
    rng = np.random.default_rng(7)
    base = _stats(layout)
    contexts, items, rewards = _batch(layout, rng, 300)
    truth = base.copy().learn(contexts, items, rewards)
    shards = _shards(base)
    # exposure and reward parts of random slices, delivered to the shards in a shuffled order,
    # some one by one and some several per call
    labels = rng.integers(0, 6, items.size)
    messages = []
    for label in range(6):
        rows = np.flatnonzero(labels == label)
        for part in ("exposure", "reward"):
            delta = base.delta_from_batch(contexts[rows], items[rows],
                                          None if part == "exposure" else rewards[rows],
                                          part=part)
            messages += list(_routed(delta).items())
    for k in rng.permutation(len(messages)):
        shard, delta = messages[k]
        if k % 2:
            shards[shard].apply([delta])
        else:
            shards[shard].apply([delta, delta])
            shards[shard].apply([])  # an empty call is harmless
    # every message with an even k went twice: take the second copies back out of the truth
    for k in range(0, len(messages), 2):
        shard, (arrays, meta) = messages[k]
        truth.merge_inplace(stats_from_arrays(arrays, meta))
    assert _merged(shards).allclose(truth, rtol=1e-9, atol=1e-12)
    assert sum(s.counters()["deltas_applied"] for s in shards) == len(messages) + len(messages[::2])


def test_a_share_with_items_of_other_shards_is_refused() -> None:
    stats = dense_statistics(ITEMS, DIM)
    arrays, meta = stats.to_arrays()
    with pytest.raises(ValueError, match="belong to other shards"):
        ParameterShard(0, N_SHARDS, arrays, meta)
    with pytest.raises(ValueError, match=r"index: expected an integer in \[0, 3\)"):
        ParameterShard(3, N_SHARDS, *shard_parts(stats, N_SHARDS)[0])


def test_bad_deltas_are_counted_not_raised_and_foreign_rows_are_dropped() -> None:
    base = dense_statistics(ITEMS, DIM)
    shard = _shards(base)[0]
    mine = shard.checkpoint()[0]["items"]
    other = ITEMS[shard_of(ITEMS, N_SHARDS) != 0]
    x = np.ones((2, DIM))
    good = base.delta_from_batch(x, np.array([mine[0], other[0]]), np.array([1.0, 1.0]))
    wrong_dim = DenseStats.empty(mine, DIM + 1, centred=True).to_arrays()
    not_stats = ({"items": mine}, {"format": "nonsense"})
    version = shard.apply([wrong_dim, good.to_arrays(), not_stats])
    counters = shard.counters()
    assert counters["deltas_applied"] == 1 and counters["foreign_rows"] == 1
    assert sum(counters["deltas_rejected"].values()) == 2
    assert any("dim" in reason for reason in counters["deltas_rejected"])
    assert version == shard.version
    got = stats_from_arrays(*shard.snapshot(0))
    assert got.select([mine[0]]).allclose(good.select([mine[0]]))


def test_snapshot_republishes_only_when_changed_and_older_than_the_bound() -> None:
    clock = FakeClock()
    base = dense_statistics(ITEMS, DIM)
    shard = _shards(base, clock)[1]
    mine = shard.checkpoint()[0]["items"]
    delta = base.delta_from_batch(np.ones((1, DIM)), mine[:1], np.array([1.0])).to_arrays()

    first_arrays, first_meta = shard.snapshot(max_staleness_ms=100)
    assert first_meta["published_ms"] == int(clock.now * 1000)
    assert first_meta["snapshot_id"] == shard.counters()["snapshot_id"]
    # unchanged statistics: the same publication, however old, and it is current now
    clock.now += 5.0
    again_arrays, again_meta = shard.snapshot(max_staleness_ms=100)
    assert again_arrays is first_arrays and shard.publications == 1
    assert again_meta["current_at_ms"] == int(clock.now * 1000)
    # changed less than the bound ago: still the old publication (no copy), current as of
    # the change
    changed_at = clock.now
    shard.apply([delta])
    clock.now += 0.08
    arrays, meta = shard.snapshot(max_staleness_ms=100)
    assert arrays is first_arrays and meta["snapshot_id"] == first_meta["snapshot_id"]
    assert arrays["count"].sum() == 0 and meta["current_at_ms"] == int(changed_at * 1000)
    # more changes do not reset the clock: the first unpublished change counts
    shard.apply([delta])
    clock.now += 0.03
    arrays, meta = shard.snapshot(max_staleness_ms=100)
    assert arrays is not first_arrays and shard.publications == 2
    assert arrays["count"].sum() == 2 and meta["snapshot_id"] == shard.counters()["snapshot_id"]
    assert meta["published_ms"] == meta["current_at_ms"] == int(clock.now * 1000)
    # a publication is a copy: later deltas do not leak into it
    shard.apply([delta])
    assert arrays["count"].sum() == 2
    # a zero bound always sees the latest statistics
    assert shard.snapshot(max_staleness_ms=0)[0]["count"].sum() == 3
    with pytest.raises(ValueError, match="max_staleness_ms: expected a number >= 0"):
        shard.snapshot(-1)


@pytest.mark.parametrize("layout", ["dense", "graph"])
def test_items_are_added_and_retired_while_running(layout: str) -> None:
    base = _stats(layout)
    shards = _shards(base)
    new = np.array([1000, 1001, 1002, 1003, 1004, 1005])
    added = [s.add_items(new) for s in shards]  # the driver broadcasts; each takes its own
    assert sum(added) == new.size
    if layout == "graph":
        added_edges = [s.add_edges(np.zeros(new.size, dtype=np.int64), new) for s in shards]
        assert sum(added_edges) == new.size
    grown = base.copy()
    grown.add_items(new) if layout == "dense" else grown.add_edges(np.zeros(new.size), new)
    rng = np.random.default_rng(3)
    contexts, items, rewards = _batch(layout, rng, 50)
    items[:6] = new
    if layout == "graph":
        contexts.clusters[:6, 0], contexts.weights[:6, 0] = 0, 1.0
    delta = grown.delta_from_batch(contexts, items, rewards)
    for s, arrays_meta in _routed(delta).items():
        shards[s].apply([arrays_meta])
    assert _merged(shards).allclose(grown.learn(contexts, items, rewards))
    gone = np.array([1000, ITEMS[0]])
    assert sum(s.retire_items(gone) for s in shards) == 2
    merged = _merged(shards)
    assert not np.isin(gone, merged.item_ids).any()
    assert merged.allclose(grown.select(np.setdiff1d(grown.item_ids, gone)))
    # a delta for a retired item is dropped row by row and counted, the rest still merges
    for s, arrays_meta in _routed(delta).items():
        shards[s].apply([arrays_meta])
    assert sum(s.counters()["foreign_rows"] for s in shards) == np.isin(delta.item_ids, gone).sum()
    with pytest.raises(ValueError, match="already present"):
        for s in shards:
            s.add_items([1001])
    if layout == "dense":
        with pytest.raises(TypeError, match=r"add_edges: expected graph statistics .*, got dense"):
            shards[0].add_edges([0], [1000])


def test_checkpoint_restores_the_same_statistics_into_a_fresh_shard() -> None:
    base = dense_statistics(ITEMS, DIM)
    shard = _shards(base)[2]
    mine = shard.checkpoint()[0]["items"]
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, DIM))
    shard.apply([base.delta_from_batch(x, rng.choice(mine, 30), rng.random(30)).to_arrays()])
    arrays, meta = shard.checkpoint()
    saved = {k: v.copy() for k, v in arrays.items()}
    fresh = _shards(base)[2]
    assert fresh.restore(saved, meta) == shard.version
    assert stats_from_arrays(*fresh.snapshot(0)).allclose(stats_from_arrays(*shard.snapshot(0)))
    assert fresh.counters()["snapshot_id"] == shard.counters()["snapshot_id"]
    # the restored shard learns on (its arrays are its own, not the checkpoint's)
    fresh.apply([base.delta_from_batch(x[:1], mine[:1], np.ones(1)).to_arrays()])
    assert np.array_equal(saved["count"], arrays["count"])
    with pytest.raises(ValueError, match="the checkpoint is of shard 2/3, this is shard 0/3"):
        _shards(base)[0].restore(saved, meta)


@pytest.mark.integration
def test_shard_actors_publish_their_statistics_by_reference(ray_session) -> None:
    ray = ray_session
    base = dense_statistics(ITEMS, DIM)
    names = [f"test-shard-{i}" for i in range(N_SHARDS)]
    actors = start_shards(base, N_SHARDS, names=names)
    assert [ray.get_actor(n) for n in names] == actors
    rng = np.random.default_rng(11)
    x, items, r = rng.normal(size=(60, DIM)), rng.choice(ITEMS, 60), rng.random(60)
    delta = base.delta_from_batch(x, items, r)
    ray.get([actors[s].apply.remote([part]) for s, part in _routed(delta).items()])
    pubs = ray.get([a.publication.remote(0) for a in actors])
    assert all(isinstance(p, Publication) for p in pubs)
    assert [(p.shard_index, p.n_shards) for p in pubs] == [(i, N_SHARDS) for i in range(N_SHARDS)]
    assert [p.snapshot_id for p in pubs] == [ray.get(a.counters.remote())["snapshot_id"]
                                             for a in actors]
    merged = merge_parts([stats_from_arrays(*part) for part in ray.get([p.ref for p in pubs])])
    assert merged.allclose(base.copy().learn(x, items, r))
    # the same publication is handed out again while nothing changed
    assert ray.get(actors[0].publication.remote(0)).ref == pubs[0].ref
    with pytest.raises(ValueError, match="names: expected 3 shard names, got 1"):
        start_shards(base, N_SHARDS, names=names[:1])
    for actor in actors:
        ray.kill(actor)


def test_merge_delay_is_counted_from_the_oldest_record_timestamp_of_each_delta() -> None:
    clock = FakeClock()
    base = dense_statistics(np.arange(20), 2)
    shard = _shards(base, clock)[0]
    mine = shard.counters()["n_items"]
    assert mine > 0
    items = stats_from_arrays(*shard.checkpoint()).item_ids
    delta = base.delta_from_batch(np.ones((2, 2)), items[:2], [1.0, 0.0])
    arrays, meta = delta.to_arrays()
    for age_s in (0.003, 0.2, 0.2, 90.0):  # buckets ≤ 0.005, ≤ 0.25 twice, and +Inf
        shard.apply([(arrays, {**meta, "oldest_record_ms": (clock.now - age_s) * 1000})])
    shard.apply([delta.to_arrays()])  # a delta without a timestamp is merged, not observed
    stats = shard.counters()
    counts = np.asarray(stats["merge_delay_bucket_counts"])
    assert counts.sum() == 4 and stats["deltas_applied"] == 5
    assert counts[0] == 1 and counts[5] == 2 and counts[-1] == 1
    assert stats["merge_delay_sum_s"] == pytest.approx(0.003 + 0.2 + 0.2 + 90.0)


@pytest.mark.parametrize("layout", ["dense", "graph"])
def test_rollback_returns_to_the_last_confirmed_checkpoint_in_memory(layout: str) -> None:
    rng = np.random.default_rng(11)
    base = _stats(layout)
    shards = _shards(base)
    first, second, third = (_batch(layout, rng, 100) for _ in range(3))

    def learn(batch) -> None:
        for s, part in _routed(base.copy().learn(*batch)).items():
            shards[s].apply([part])

    for shard in shards:  # without a checkpoint: back to the construction
        shard.rollback()
    assert _merged(shards).allclose(base)
    learn(first)
    for shard in shards:
        shard.checkpoint()
        assert shard.confirm_checkpoint() and not shard.confirm_checkpoint()
    cut = _merged(shards)
    learn(second)
    for shard in shards:  # a checkpoint that failed after the snapshot: never confirmed
        shard.checkpoint()
    learn(third)
    versions = [shard.rollback() for shard in shards]
    assert _merged(shards).allclose(cut) and not _merged(shards).allclose(base)
    assert versions == [s.version for s in shards]
    assert [s.counters()["rollbacks"] for s in shards] == [2] * N_SHARDS
    learn(second)  # a rollback drops what came after, and learning goes on from there
    for shard in shards:
        shard.rollback()
    assert _merged(shards).allclose(cut)
