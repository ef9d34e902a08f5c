"""Every statistics layout satisfies one protocol: the same property tests run on all three.

Merging the deltas of any partition of a stream equals one learn on the whole stream; snapshots
round-trip through arrays and through a non-local filesystem; shard routing covers every item
exactly once; and a snapshot id names its content.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.bandits import (
    DenseStats,
    FullStats,
    GraphStats,
    Statistics,
    load_stats,
    shard_of,
    stats_from_arrays,
)
from recsys.bandits.graph import SoftContexts

ITEMS = np.array([2, 3, 5, 8, 13, 21, 34, 55])
DIM = 3
N_CLUSTERS = 4


@dataclass
class Layout:
    """How to build statistics of one layout and draw a batch of events for them."""

    name: str
    make: Any
    batch: Any
    rtol: float = 1e-9


def _dense_batch(rng: np.random.Generator, n: int):
    return rng.normal(size=(n, DIM)), rng.choice(ITEMS, n), rng.random(n)


def _graph_batch(rng: np.random.Generator, n: int):
    clusters = rng.integers(0, N_CLUSTERS, size=(n, 2))
    weights = rng.dirichlet([1.0, 1.0], size=n)
    return SoftContexts.of(clusters, weights), rng.choice(ITEMS, n), rng.random(n)


def _graph() -> GraphStats:
    c, i = np.meshgrid(np.arange(N_CLUSTERS), ITEMS, indexing="ij")
    keep = (c.ravel() + i.ravel()) % 3 != 0  # a graph that is not complete: some events skip
    return GraphStats.empty(ITEMS, N_CLUSTERS, c.ravel()[keep], i.ravel()[keep], lam=0.5)


LAYOUTS = [
    Layout("dense", lambda: DenseStats.empty(ITEMS, DIM, lam=0.5), _dense_batch),
    Layout("dense-centred", lambda: DenseStats.empty(ITEMS, DIM, lam=0.5, centred=True),
           _dense_batch),
    Layout("graph", _graph, _graph_batch),
    Layout("full", lambda: FullStats.empty(ITEMS, DIM, lam=0.5), _dense_batch, rtol=1e-7),
]
layouts = pytest.mark.parametrize("layout", LAYOUTS, ids=[lay.name for lay in LAYOUTS])


@layouts
def test_every_layout_implements_the_protocol(layout: Layout) -> None:
    stats = layout.make()
    assert isinstance(stats, Statistics)
    assert stats.layout in {"dense", "graph", "full"}


@layouts
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 80), parts=st.integers(1, 5))
def test_merging_deltas_of_any_partition_equals_one_learn(layout, seed, n, parts) -> None:
    rng = np.random.default_rng(seed)
    contexts, items, rewards = layout.batch(rng, n)
    base = layout.make()
    whole = base.copy().learn(contexts, items, rewards)
    labels = rng.integers(0, parts, n)
    pieces = [np.flatnonzero(labels == p) for p in rng.permutation(parts)]
    deltas = [base.delta_from_batch(contexts[p], items[p], rewards[p])
              for p in pieces if p.size]
    merged = base.copy()
    for delta in deltas:
        merged.merge_inplace(delta)
    assert merged.allclose(whole, rtol=layout.rtol, atol=1e-9)
    # the same deltas, routed to shards by item, rebuild the whole when the shards are merged
    shards = base.split(3)
    for delta in deltas:
        owner = shard_of(delta.item_ids, 3)
        for s, shard in enumerate(shards):
            mine = delta.item_ids[owner == s]
            if mine.size:
                shard.merge_inplace(delta.select(mine))
    rebuilt = shards[0]
    for shard in shards[1:]:
        rebuilt = rebuilt.merge(shard)
    assert rebuilt.allclose(whole, rtol=layout.rtol, atol=1e-9)


@layouts
def test_learn_one_equals_a_batch_of_one(layout: Layout) -> None:
    rng = np.random.default_rng(3)
    contexts, items, rewards = layout.batch(rng, 5)
    one, batch = layout.make(), layout.make()
    for i in range(5):
        context = contexts[np.array([i])]
        one.learn_one(context if isinstance(context, SoftContexts) else context[0],
                      int(items[i]), float(rewards[i]))
    batch.learn(contexts, items, rewards)
    assert one.allclose(batch, rtol=layout.rtol)
    mean_one, var_one, elig_one = one.moments_one(
        contexts[np.array([0])] if layout.name == "graph" else contexts[0])
    mean, var, elig = one.moments(contexts[np.array([0])])
    np.testing.assert_allclose(mean_one, mean[0])
    np.testing.assert_allclose(var_one, var[0])
    assert (elig_one is None) == (elig is None)


@layouts
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_shards=st.integers(1, 9))
def test_shard_routing_covers_every_item_exactly_once(layout, seed, n_shards) -> None:
    stats = layout.make()
    contexts, items, rewards = layout.batch(np.random.default_rng(seed), 30)
    stats.learn(contexts, items, rewards)
    shards = stats.split(n_shards)
    held = np.concatenate([s.item_ids for s in shards])
    assert np.array_equal(np.sort(held), stats.item_ids)
    for s, shard in enumerate(shards):
        assert (shard_of(shard.item_ids, n_shards) == s).all()
        assert shard.allclose(stats.select(shard.item_ids))


def _splitmix64(value: int) -> int:
    mask = 2**64 - 1
    z = (value + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def test_shard_of_is_stable_and_balanced() -> None:
    ids = np.arange(100_000)
    owner = shard_of(ids, 8)
    # the published SplitMix64 finaliser, in plain Python integers: a change of the hash would
    # silently re-route every item of a live system
    sample = [0, 1, 2, 3, 77, 1_000_000_007, 2**62 + 5]
    assert shard_of(np.array(sample), 8).tolist() == [_splitmix64(i) % 8 for i in sample]
    assert shard_of(np.array([0, 1, 2, 3]), 1).tolist() == [0, 0, 0, 0]
    counts = np.bincount(owner, minlength=8)
    assert counts.min() > 0.95 * ids.size / 8 and counts.max() < 1.05 * ids.size / 8
    # shards are independent of the order and batch in which items are routed
    perm = np.random.default_rng(0).permutation(ids)
    assert np.array_equal(shard_of(perm, 8), owner[perm])
    with pytest.raises(ValueError, match="n_shards must be a positive integer"):
        shard_of(ids, 0)
    with pytest.raises(ValueError, match="item ids must be integers"):
        shard_of(np.array([0.5]), 2)


@layouts
def test_arrays_round_trip_keeps_content_and_identity(layout: Layout) -> None:
    stats = layout.make()
    stats.learn(*layout.batch(np.random.default_rng(1), 40))
    arrays, meta = stats.to_arrays()
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    assert meta["layout"] == stats.layout
    back = stats_from_arrays(arrays, meta)
    assert type(back) is type(stats) and back.allclose(stats, rtol=layout.rtol)
    assert back.snapshot_id == stats.snapshot_id
    # a loaded snapshot that learns forks: its id can never collide with the original's future
    contexts, items, rewards = layout.batch(np.random.default_rng(2), 3)
    back.learn(contexts, items, rewards)
    stats.learn(contexts, items, rewards)
    assert back.version == stats.version
    assert back.snapshot_id != stats.snapshot_id


@layouts
def test_save_and_load_through_a_non_local_filesystem(layout: Layout) -> None:
    stats = layout.make()
    stats.learn(*layout.batch(np.random.default_rng(4), 25))
    uri = f"memory://recsys-test/{layout.name}/snapshot.npz"
    stats.save(uri)
    loaded = type(stats).load(uri)
    assert loaded.allclose(stats, rtol=layout.rtol) and loaded.snapshot_id == stats.snapshot_id
    assert load_stats(uri).allclose(stats, rtol=layout.rtol)
    import fsspec

    fs = fsspec.filesystem("memory")
    leftovers = [p for p in fs.ls(f"/recsys-test/{layout.name}", detail=False) if ".tmp-" in p]
    assert leftovers == []


def test_load_refuses_another_layout_and_pickles(tmp_path) -> None:
    DenseStats.empty(ITEMS, DIM).save(tmp_path / "dense.npz")
    with pytest.raises(ValueError, match="not GraphStats arrays"):
        GraphStats.load(tmp_path / "dense.npz")
    np.savez(tmp_path / "evil.npz", __meta__=np.array([{"format": "x"}], dtype=object))
    with pytest.raises(ValueError, match="pickled objects"):
        load_stats(tmp_path / "evil.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"not a readable \.npz file"):
        DenseStats.load(tmp_path / "junk.npz")
    arrays, meta = DenseStats.empty(ITEMS, DIM).to_arrays()
    with pytest.raises(ValueError, match="unknown statistics layout 'tree'"):
        stats_from_arrays(arrays, {**meta, "layout": "tree"})
    with pytest.raises(ValueError, match="sxr is missing or not of shape"):
        DenseStats.from_arrays({**arrays, "sxr": arrays["sxr"][:2]}, meta)


@layouts
def test_snapshot_id_names_content(layout: Layout) -> None:
    a = layout.make()
    ids = {a.snapshot_id}
    batch = layout.batch(np.random.default_rng(5), 10)
    a.learn(*batch)
    ids.add(a.snapshot_id)
    copy = a.copy()
    assert copy.allclose(a) and copy.snapshot_id != a.snapshot_id
    a.decay(0.5)
    ids.add(a.snapshot_id)
    delta = a.delta_from_batch(*batch)
    a.merge_inplace(delta)
    ids.add(a.snapshot_id)
    merged = copy.merge(delta)
    ids |= {copy.snapshot_id, merged.snapshot_id, delta.snapshot_id}
    assert len(ids) == 7  # every distinct content had a distinct id


@layouts
def test_add_and_retire_items(layout: Layout) -> None:
    stats = layout.make()
    stats.learn(*layout.batch(np.random.default_rng(6), 30))
    before = stats.select(ITEMS[:3])
    stats.add_items([100, 101])
    assert {100, 101} <= set(stats.item_ids.tolist())
    assert stats.select(ITEMS[:3]).allclose(before)
    stats.retire_items([100, ITEMS[0]])
    assert 100 not in stats.item_ids and ITEMS[0] not in stats.item_ids
    assert stats.select(ITEMS[1:3]).allclose(before.select(ITEMS[1:3]))
    with pytest.raises(ValueError, match="already present"):
        stats.add_items([101])
    with pytest.raises(KeyError, match="retire_items: 1 unknown item id"):
        stats.retire_items([999])


@layouts
def test_decay_commutes_with_merge(layout: Layout) -> None:
    base = layout.make()
    d1 = base.delta_from_batch(*layout.batch(np.random.default_rng(7), 20))
    d2 = base.delta_from_batch(*layout.batch(np.random.default_rng(8), 20))
    left = base.copy()
    left.merge_inplace(d1)
    left.merge_inplace(d2)
    left.decay(0.3)
    right = base.copy()
    for d in (d1, d2):
        d.decay(0.3)
        right.merge_inplace(d)
    assert left.allclose(right, rtol=layout.rtol)
    with pytest.raises(ValueError, match="decay factor must be in"):
        base.decay(1.5)


def test_array_dataclasses_do_not_compare_arrays_with_eq() -> None:
    a = DenseStats.empty(ITEMS, DIM)
    b = a.copy()
    assert a != b and a == a  # identity, never an elementwise comparison that raises
    ctx = SoftContexts.of([[0, 1]], [[0.5, 0.5]])
    assert ctx == ctx and ctx != SoftContexts.of([[0, 1]], [[0.5, 0.5]])


def test_graph_merge_inplace_names_edges_outside_the_graph() -> None:
    stats = _graph()
    other = GraphStats.empty(ITEMS, N_CLUSTERS, [0], [2], lam=0.5)  # (0 + 2) % 3 != 0: an edge
    bad = GraphStats.empty(ITEMS, N_CLUSTERS, [1], [2], lam=0.5)  # (1 + 2) % 3 == 0: not one
    stats.merge_inplace(other)
    with pytest.raises(ValueError, match=r"not edges of this graph, e.g. \[\(1, 2\)\]"):
        stats.merge_inplace(bad)


def test_soft_contexts_slice_like_arrays() -> None:
    ctx = SoftContexts.of([[0, 1], [2, -1], [3, 0]], [[0.5, 0.5], [1.0, 0.0], [0.2, 0.8]])
    assert len(ctx[1:]) == 2 and ctx[1:].clusters.tolist() == [[2, -1], [3, 0]]
    assert ctx[np.array([2])].weights.tolist() == [[0.2, 0.8]]
    assert ctx[np.array([True, False, True])].clusters[:, 0].tolist() == [0, 3]
    assert ctx[1].clusters.shape == (1, 2)  # one request stays a batch of one


def test_files_written_before_snapshot_ids_still_load(tmp_path) -> None:
    """The layout of the previous release: no origin in the header, graph edges by item row."""
    from recsys.bandits.persistence import encode_npz

    dense = DenseStats.empty(ITEMS, DIM)
    dense.learn(*_dense_batch(np.random.default_rng(9), 20))
    old_dense = {"format": DenseStats.format, "dim": DIM, "lam": 0.5, "space": "",
                 "version": 7, "centred": False}
    arrays = {"items": ITEMS, "sxx": dense.sxx, "sxr": dense.sxr, "count": dense.count}
    (tmp_path / "dense.npz").write_bytes(encode_npz(old_dense, arrays))
    loaded = DenseStats.load(tmp_path / "dense.npz")
    assert loaded.version == 7 and np.array_equal(loaded.sxr, dense.sxr)
    graph = _graph()
    graph.learn(*_graph_batch(np.random.default_rng(10), 30))
    old_graph = {"format": GraphStats.format, "n_clusters": N_CLUSTERS, "lam": 0.5,
                 "weighting": "squared", "space": "", "version": 3, "skipped": graph.skipped}
    arrays = {"items": ITEMS, "edge_cluster": graph.edge_cluster,
              "edge_row": graph.edge_row.astype(np.int64), "sxx": graph.sxx, "sxr": graph.sxr,
              "count": graph.count}
    (tmp_path / "graph.npz").write_bytes(encode_npz(old_graph, arrays))
    assert load_stats(tmp_path / "graph.npz").allclose(graph)


@layouts
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 60))
def test_exposure_now_and_reward_later_add_up_to_one_learn(layout, seed, n) -> None:
    """DESIGN's freshness split: impressions learn their exposure part when served, clicks their
    reward part when they arrive, in either order; together they equal learning the joined
    examples (reward 0 where nothing was clicked)."""
    rng = np.random.default_rng(seed)
    contexts, items, rewards = layout.batch(rng, n)
    clicked = rng.random(n) < 0.3
    joined = np.where(clicked, rewards, 0.0)
    whole = layout.make().learn(contexts, items, joined)
    base = layout.make()
    exposure = base.delta_from_batch(contexts, items, None, part="exposure")
    reward = base.delta_from_batch(contexts[clicked], items[clicked], rewards[clicked],
                                   part="reward") if clicked.any() else None
    fresh = base.copy()
    for delta in ([reward] if reward is not None else []) + [exposure]:  # clicks may come first
        fresh.merge_inplace(delta)
    assert fresh.allclose(whole, rtol=layout.rtol, atol=1e-9)
    learned = layout.make().learn(contexts, items, None, part="exposure")
    if clicked.any():
        learned.learn(contexts[clicked], items[clicked], rewards[clicked], part="reward")
    assert learned.allclose(whole, rtol=layout.rtol, atol=1e-9)


def test_part_is_checked() -> None:
    stats = DenseStats.empty(ITEMS, DIM)
    x, items, r = _dense_batch(np.random.default_rng(0), 3)
    with pytest.raises(ValueError, match="part: expected one of"):
        stats.learn(x, items, r, part="clicks")
    with pytest.raises(ValueError, match="rewards: required for part='reward'"):
        stats.delta_from_batch(x, items, None, part="reward")
