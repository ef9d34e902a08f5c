"""Additivity of the statistics: deltas from any partition, in any order, equal one learn."""

from __future__ import annotations

from functools import reduce

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.bandits import DenseStats, DiagLinUCB
from recsys.bandits.graph import GraphStats, SoftContexts

ITEMS = np.array([3, 5, 8, 13, 21, 34])
DIM = 4
N_CLUSTERS = 5

batch_sizes = st.integers(min_value=1, max_value=120)
seeds = st.integers(min_value=0, max_value=2**31 - 1)
part_counts = st.integers(min_value=1, max_value=6)


def dense_batch(seed: int, n: int):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, DIM)), rng.choice(ITEMS, n), rng.random(n)


def random_partition(rng: np.random.Generator, n: int, parts: int) -> list[np.ndarray]:
    labels = rng.integers(0, parts, n)
    pieces = [np.flatnonzero(labels == p) for p in range(parts)]
    rng.shuffle(pieces)
    return [rng.permutation(p) for p in pieces]


@settings(max_examples=60, deadline=None)
@given(seed=seeds, n=batch_sizes, parts=part_counts, centred=st.booleans())
def test_dense_merge_of_partition_deltas_equals_learning_the_whole(seed, n, parts, centred) -> None:
    x, items, r = dense_batch(seed, n)
    base = DenseStats.empty(ITEMS, DIM, lam=0.5, centred=centred)
    whole = base.copy().learn(x, items, r)
    rng = np.random.default_rng(seed + 1)
    deltas = [base.delta_from_batch(x[p], items[p], r[p]) for p in random_partition(rng, n, parts)]
    merged = reduce(DenseStats.merge, deltas, base.copy())
    assert merged.allclose(whole)
    inplace = base.copy()
    for delta in deltas:
        inplace.merge_inplace(delta)
    assert inplace.allclose(whole)


@settings(max_examples=40, deadline=None)
@given(a=seeds, b=seeds, c=seeds, na=batch_sizes, nb=batch_sizes, nc=batch_sizes,
       centred=st.booleans())
def test_dense_merge_is_commutative_and_associative(a, b, c, na, nb, nc, centred) -> None:
    base = DenseStats.empty(ITEMS, DIM, centred=centred)
    da, db, dc = (base.delta_from_batch(*dense_batch(s, n)) for s, n in ((a, na), (b, nb), (c, nc)))
    assert da.merge(db).allclose(db.merge(da))
    assert da.merge(db).merge(dc).allclose(da.merge(db.merge(dc)))


@settings(max_examples=30, deadline=None)
@given(seed=seeds, n=batch_sizes, factor=st.floats(0.05, 1.0))
def test_decay_commutes_with_merge(seed, n, factor) -> None:
    base = DenseStats.empty(ITEMS, DIM, centred=True)
    x, items, r = dense_batch(seed, n)
    half = n // 2
    d1 = base.delta_from_batch(x[:half], items[:half], r[:half]) if half else base.copy()
    d2 = base.delta_from_batch(x[half:], items[half:], r[half:])
    left = d1.merge(d2).decay(factor)
    right = d1.copy().decay(factor).merge(d2.copy().decay(factor))
    assert left.allclose(right)


def graph_stats() -> GraphStats:
    rng = np.random.default_rng(0)
    pairs = {(int(c), int(i)) for c, i in zip(rng.integers(0, N_CLUSTERS, 40),
                                              rng.choice(ITEMS, 40), strict=True)}
    c, i = np.array(sorted(pairs)).T
    return GraphStats.empty(ITEMS, N_CLUSTERS, c, i, lam=1.0)


def graph_batch(seed: int, n: int, k: int = 2):
    rng = np.random.default_rng(seed)
    clusters = rng.integers(0, N_CLUSTERS, (n, k))
    weights = rng.random((n, k))
    return SoftContexts.of(clusters, weights), rng.choice(ITEMS, n), rng.random(n)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, n=batch_sizes, parts=part_counts)
def test_graph_merge_of_partition_deltas_equals_learning_the_whole(seed, n, parts) -> None:
    ctx, items, r = graph_batch(seed, n)
    base = graph_stats()
    whole = graph_stats().learn(ctx, items, r)
    rng = np.random.default_rng(seed + 1)
    deltas = []
    for p in random_partition(rng, n, parts):
        sub = SoftContexts.of(ctx.clusters[p], ctx.weights[p])
        deltas.append(base.delta_from_batch(sub, items[p], r[p]))
    merged = reduce(GraphStats.merge, deltas, base)
    assert merged.allclose(whole)
    assert sum(d.skipped for d in deltas) == whole.skipped
    rev = reduce(GraphStats.merge, deltas[::-1], base)
    assert rev.allclose(merged)


def test_learning_one_event_at_a_time_equals_one_batch() -> None:
    x, items, r = dense_batch(7, 50)
    batch = DiagLinUCB().init(ITEMS, DIM).learn(x, items, r)
    single = DiagLinUCB().init(ITEMS, DIM)
    for i in range(50):
        single.learn(x[i], items[i], r[i])
    assert single.stats_.allclose(batch.stats_)


def test_merge_refuses_other_feature_spaces_and_priors() -> None:
    a = DenseStats.empty(ITEMS, DIM, space="emb-v1")
    with pytest.raises(ValueError, match="feature space"):
        a.merge(DenseStats.empty(ITEMS, DIM, space="emb-v2"))
    with pytest.raises(ValueError, match="dim"):
        a.merge(DenseStats.empty(ITEMS, DIM + 1, space="emb-v1"))
    with pytest.raises(ValueError, match="centred"):
        a.merge(DenseStats.empty(ITEMS, DIM, space="emb-v1", centred=True))
    p1 = DenseStats.empty(ITEMS, DIM, prior_mean=1.0)
    with pytest.raises(ValueError, match="prior"):
        p1.merge(DenseStats.empty(ITEMS, DIM, prior_mean=2.0))
    # one side with a prior is fine: deltas never carry one
    assert p1.merge(p1.delta_from_batch(*dense_batch(1, 10))).prior_mean is not None


def test_add_and_retire_items_keep_other_items_statistics(tmp_path) -> None:
    x, items, r = dense_batch(8, 200)
    stats = DenseStats.empty(ITEMS, DIM).learn(x, items, r)
    before = {int(i): stats.sxr[k].copy() for k, i in enumerate(stats.item_ids)}
    stats.add_items([1, 99], prior_mean=0.5)
    assert list(stats.item_ids) == sorted([*ITEMS, 1, 99])
    row99 = int(np.flatnonzero(stats.item_ids == 99)[0])
    assert stats.count[row99] == 0 and np.all(stats.prior_mean[row99] == 0.5)
    stats.retire_items([5, 1])
    for k, i in enumerate(stats.item_ids):
        if int(i) in before:
            np.testing.assert_array_equal(stats.sxr[k], before[int(i)])
    assert 5 not in stats.item_ids
    with pytest.raises(ValueError, match="already present"):
        stats.add_items([3])


def test_save_load_round_trip_and_versions(tmp_path) -> None:
    stats = DenseStats.empty(ITEMS, DIM, lam=0.3, space="v7", prior_mean=0.1)
    v0 = stats.version
    stats.learn(*dense_batch(9, 100))
    stats.decay(0.9)
    assert stats.version == v0 + 2
    stats.save(tmp_path / "s.npz")
    loaded = DenseStats.load(tmp_path / "s.npz")
    assert loaded.allclose(stats) and loaded.version == stats.version
    assert loaded.space == "v7" and loaded.lam == 0.3

    centred = DenseStats.empty(ITEMS, DIM, centred=True).learn(*dense_batch(10, 100))
    centred.save(tmp_path / "c.npz")
    assert DenseStats.load(tmp_path / "c.npz").allclose(centred)
    assert DenseStats.load(tmp_path / "c.npz").centred

    graph = graph_stats().learn(*graph_batch(3, 50))
    graph.save(tmp_path / "g.npz")
    assert GraphStats.load(tmp_path / "g.npz").allclose(graph)


def test_load_refuses_pickled_and_foreign_files(tmp_path) -> None:
    np.savez(tmp_path / "evil.npz", __meta__=np.array([{"format": "x"}], dtype=object))
    with pytest.raises(ValueError, match="pickled objects, which are never loaded"):
        DenseStats.load(tmp_path / "evil.npz")
    graph_stats().save(tmp_path / "g.npz")
    with pytest.raises(ValueError, match="not DenseStats arrays: format"):
        DenseStats.load(tmp_path / "g.npz")


def test_graph_add_edges_and_retire_items() -> None:
    stats = graph_stats().learn(*graph_batch(4, 300))
    total = stats.sxr.sum()
    existing = (int(stats.edge_cluster[0]), int(stats.edge_items[0]))
    with pytest.raises(ValueError, match="duplicate"):
        stats.add_edges([existing[0]], [existing[1]])
    stats.add_edges([0, 4], [77, 78])
    assert 77 in stats.item_ids and 78 in stats.item_ids
    assert stats.sxr.sum() == pytest.approx(total)
    gone = stats.edge_items == 8
    dropped = stats.sxr[gone].sum()
    stats.retire_items([8])
    assert 8 not in stats.item_ids and 8 not in stats.edge_items
    assert stats.sxr.sum() == pytest.approx(total - dropped)


@pytest.mark.parametrize("centred", [False, True])
def test_learn_one_equals_a_batch_of_one(centred: bool) -> None:
    x, items, r = dense_batch(11, 40)
    one = DiagLinUCB(centred=centred).init(ITEMS, DIM)
    batch = DiagLinUCB(centred=centred).init(ITEMS, DIM)
    one.score(x)  # warm the posterior cache: learn_one must refresh it
    for i in range(40):
        one.learn_one(x[i], int(items[i]), float(r[i]))
    batch.learn(x, items, r)
    assert one.stats_.allclose(batch.stats_)
    np.testing.assert_allclose(one.score(x), batch.score(x), atol=1e-12)
