"""Warm start from an offline model and re-cluster migration (recsys.bandits.warm_start)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from recsys.bandits import ClusterGraph, DenseStats, GraphStats, merge_parts
from recsys.bandits.clustering import build_cluster_graph
from recsys.bandits.warm_start import (
    cluster_transition,
    graph_prior,
    load_item_prior,
    migrate_graph_stats,
    save_item_prior,
    warm_dense_stats,
    warm_graph_stats,
)
from recsys.config import StreamSettings

RNG = np.random.default_rng(7)
DIM = 4
USERS = np.concatenate([RNG.normal(loc=c, scale=0.3, size=(60, DIM)) for c in np.eye(DIM) * 3])
ITEMS = RNG.normal(size=(30, DIM))
ITEM_IDS = np.arange(200, 230)
LAM, N0 = 0.7, 5.0


@pytest.fixture(scope="module")
def graph() -> ClusterGraph:
    return build_cluster_graph(USERS, ITEMS, item_ids=ITEM_IDS, n_clusters=4, top_w=8,
                               random_state=0, version="g1")


@pytest.fixture(scope="module")
def prior(graph: ClusterGraph) -> np.ndarray:
    return graph_prior(graph, USERS, ITEMS, link="sigmoid", scale=0.5)


def edge_values(stats: GraphStats, graph: ClusterGraph, values: np.ndarray) -> np.ndarray:
    """Per-edge ``values`` of ``stats`` (sorted edges) in the graph's edge order."""
    pos = stats._edge_positions(graph.edge_clusters, graph.edge_items, name="edges")
    return values[pos]


def graph_batch(graph: ClusterGraph, n: int, seed: int) -> tuple:
    """Events on graph edges: each user's nearest cluster (weight 1) and one of its items."""
    rng = np.random.default_rng(seed)
    ctx = graph.contexts(USERS[rng.integers(0, len(USERS), n)], calibration="k1")
    items = np.array([rng.choice(graph.edge_items[graph.edge_clusters == c])
                      for c in ctx.clusters[:, 0]])
    return ctx, items, rng.binomial(1, 0.4, n).astype(float)


# ---------------------------------------------------------------------- the documented prior


def test_graph_prior_is_the_offline_score_on_the_reward_scale(graph: ClusterGraph) -> None:
    rows = np.searchsorted(ITEM_IDS, graph.edge_items)
    centroid = np.einsum("ed,ed->e", graph.centroids[graph.edge_clusters], ITEMS[rows])
    # identity link: the members' mean score is the centroid's (a k-means centroid is the mean)
    np.testing.assert_allclose(graph_prior(graph, USERS, ITEMS), centroid, atol=1e-9)
    np.testing.assert_allclose(graph_prior(graph, None, ITEMS, offset=0.25), centroid + 0.25)
    bias = np.linspace(-1, 1, ITEMS.shape[0])
    np.testing.assert_allclose(graph_prior(graph, None, ITEMS, offset=bias, scale=2.0),
                               2 * centroid + bias[rows])
    sig = graph_prior(graph, USERS, ITEMS, link="sigmoid")
    assert np.all((sig > 0) & (sig < 1))
    with pytest.raises(ValueError, match="link"):
        graph_prior(graph, USERS, ITEMS, link="probit")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="item_embeddings"):
        graph_prior(graph, USERS, ITEMS[:-1])


def test_warm_graph_stats_equal_the_prior_before_any_event(graph, prior) -> None:
    stats = warm_graph_stats(graph, prior, strength=N0, lam=LAM)
    assert stats.sxx.sum() == stats.sxr.sum() == stats.count.sum() == 0  # evidence apart
    mean, var = stats.posterior()
    np.testing.assert_allclose(edge_values(stats, graph, mean), prior, rtol=1e-12)
    np.testing.assert_allclose(var, 1.0 / (LAM + N0))
    ctx = graph.contexts(USERS, calibration="k1")
    m, v, eligible = stats.moments(ctx)
    b, c = 0, ctx.clusters[0, 0]
    for item, p in zip(graph.edge_items[graph.edge_clusters == c],
                       prior[graph.edge_clusters == c], strict=True):
        col = stats.items.row_one(int(item))
        assert eligible[b, col] and m[b, col] == pytest.approx(p) and \
            v[b, col] == pytest.approx(1 / (LAM + N0))


def test_warm_dense_stats_equal_the_prior_before_any_event() -> None:
    mu = RNG.normal(size=(ITEMS.shape[0], DIM))
    for centred in (False, True):
        stats = warm_dense_stats(ITEM_IDS, mu, strength=N0, lam=LAM, centred=centred)
        theta, inv_d = stats.posterior()
        np.testing.assert_allclose(theta, mu, rtol=1e-12)
        np.testing.assert_allclose(inv_d, 1.0 / (LAM + N0))
        x = USERS[:5]
        mean, var, _ = stats.moments(x)
        np.testing.assert_allclose(mean, x @ mu.T, atol=1e-12)
        extra = 1.0 / LAM if centred else 0.0  # the centred intercept keeps its λ prior
        want = (x * x).sum(1, keepdims=True) / (LAM + N0) + extra
        np.testing.assert_allclose(var, np.broadcast_to(want, var.shape))


def test_strength_zero_is_a_cold_start(graph, prior) -> None:
    cold_graph = warm_graph_stats(graph, prior, strength=0.0, lam=LAM)
    assert cold_graph.prior_mean is None and cold_graph.allclose(graph.stats(lam=LAM))
    np.testing.assert_array_equal(cold_graph.posterior()[0], graph.stats(lam=LAM).posterior()[0])
    cold_dense = warm_dense_stats(ITEM_IDS, np.ones((30, DIM)), strength=0.0, lam=LAM)
    assert cold_dense.allclose(DenseStats.empty(ITEM_IDS, DIM, lam=LAM))
    assert graph.with_prior(prior, 0.0).stats(lam=LAM).prior_mean is None
    with pytest.raises(ValueError, match="strength"):
        warm_graph_stats(graph, prior, strength=-1.0)


def test_learning_after_a_warm_start_is_cold_learning_plus_the_prior(graph, prior) -> None:
    warm = warm_graph_stats(graph, prior, strength=N0, lam=LAM)
    cold = graph.stats(lam=LAM)
    for seed in range(3):
        batch = graph_batch(graph, 200, seed)
        warm.learn(*batch)
        cold.learn(*batch)
    for name in ("sxx", "sxr", "count"):  # the evidence is the same
        np.testing.assert_array_equal(getattr(warm, name), getattr(cold, name))
    mu = warm.prior_mean
    p = LAM + N0
    np.testing.assert_allclose(warm.posterior()[0], (p * mu + cold.sxr) / (p + cold.sxx))
    np.testing.assert_allclose(warm.posterior()[1], 1 / (p + cold.sxx))
    # dense, centred: slopes as the formula with the prior's λ + n0
    mu_d = RNG.normal(size=(30, DIM))
    w = warm_dense_stats(ITEM_IDS, mu_d, strength=N0, lam=LAM)
    c = DenseStats.empty(ITEM_IDS, DIM, lam=LAM)
    x, items, r = USERS[:200], RNG.choice(ITEM_IDS, 200), RNG.normal(size=200)
    w.learn(x, items, r)
    c.learn(x, items, r)
    np.testing.assert_array_equal(w.sxx, c.sxx)
    np.testing.assert_allclose(w.posterior()[0], (p * mu_d + c.sxr) / (p + c.sxx))


# ---------------------------------------------------------------------- algebra and files


def test_deltas_and_shards_merge_exactly_with_a_prior(graph, prior) -> None:
    warm = warm_graph_stats(graph, prior, strength=N0, lam=LAM)
    template = warm.delta_template()
    assert template.prior_mean is None  # learners never hold the prior
    batches = [graph_batch(graph, 150, seed) for seed in range(4)]
    deltas = [template.delta_from_batch(*b) for b in batches]
    whole = warm.copy()
    for b in batches:
        whole.learn(*b)
    shards = warm.split(3)
    for delta in deltas:
        for shard in shards:
            held = np.intersect1d(delta.item_ids, shard.item_ids)
            shard.merge_inplace(delta.select(held))
    merged = merge_parts(shards)
    assert merged.allclose(whole) and merged.prior_strength == N0
    np.testing.assert_allclose(merged.posterior()[0], whole.posterior()[0])
    assert warm.merge(deltas[0]).allclose(warm.copy().learn(*batches[0]))
    other = warm_graph_stats(graph, prior, strength=N0 + 1, lam=LAM)
    with pytest.raises(ValueError, match="prior strengths"):
        warm.merge(other)
    # dense: shards of a warm start put back together keep prior and strength
    dense = warm_dense_stats(ITEM_IDS, RNG.normal(size=(30, DIM)), strength=N0, lam=LAM)
    delta = dense.delta_from_batch(USERS[:50], RNG.choice(ITEM_IDS, 50),
                                                    np.ones(50))
    parts = dense.split(2)
    for part in parts:
        part.merge_inplace(delta.select(np.intersect1d(delta.item_ids, part.item_ids)))
    back = merge_parts(parts)
    assert back.allclose(dense.merge(delta)) and back.prior_strength == N0


def test_files_keep_the_prior(graph, prior, tmp_path) -> None:
    warm = warm_graph_stats(graph, prior, strength=N0, lam=LAM)
    warm.learn(*graph_batch(graph, 100, 1))
    warm.save(tmp_path / "g.npz")
    back = GraphStats.load(tmp_path / "g.npz")
    assert back.allclose(warm) and back.prior_strength == N0
    assert not back.allclose(graph.stats(lam=LAM).learn(*graph_batch(graph, 100, 1)))
    dense = warm_dense_stats(ITEM_IDS, RNG.normal(size=(30, DIM)), strength=N0, centred=True)
    dense.save(tmp_path / "d.npz")
    assert DenseStats.load(tmp_path / "d.npz").allclose(dense)
    # the graph file carries the warm start; stream.graph_file of it starts warm
    graph.with_prior(prior, N0).save(tmp_path / "graph.npz")
    loaded = ClusterGraph.load(tmp_path / "graph.npz")
    assert loaded.warm and loaded.prior_strength == N0
    np.testing.assert_array_equal(loaded.edge_prior, prior)
    stream = StreamSettings(layout="graph", graph_file=tmp_path / "graph.npz", lam=LAM)
    assert GraphStats.for_stream(stream).allclose(warm_graph_stats(graph, prior, strength=N0,
                                                                   lam=LAM))
    graph.save(tmp_path / "cold.npz")  # a file without a prior loads cold
    cold = ClusterGraph.load(tmp_path / "cold.npz")
    assert not cold.warm and cold.stats().prior_mean is None
    # dense: stream.prior_file
    mu = RNG.normal(size=(30, DIM))
    save_item_prior(tmp_path / "prior.npz", ITEM_IDS - 200, mu, strength=N0)
    ids, back_mu, strength = load_item_prior(tmp_path / "prior.npz")
    np.testing.assert_array_equal(back_mu, mu)
    np.testing.assert_array_equal(ids, ITEM_IDS - 200)
    assert strength == N0
    stream = StreamSettings(n_items=40, dim=DIM, lam=LAM, prior_file=tmp_path / "prior.npz")
    stats = DenseStats.for_stream(stream)
    assert stats.prior_strength == N0
    np.testing.assert_allclose(stats.posterior()[0][:30], mu)
    np.testing.assert_allclose(stats.posterior()[0][30:], 0.0)
    with pytest.raises(ValueError, match="dim"):
        DenseStats.for_stream(replace(stream, dim=DIM + 1))


# ---------------------------------------------------------------------- re-clustering


def relabelled(graph: ClusterGraph, perm: np.ndarray) -> ClusterGraph:
    """The same graph with cluster c called perm[c]."""
    inv = np.argsort(perm)
    return ClusterGraph(graph.centroids[inv], graph.item_ids, perm[graph.edge_clusters],
                        graph.edge_items, version="g2")


def test_migration_with_a_permutation_moves_everything(graph, prior) -> None:
    old = warm_graph_stats(graph, prior, strength=N0, lam=LAM)
    for seed in range(3):
        old.learn(*graph_batch(graph, 200, seed))
    perm = np.array([2, 0, 3, 1])
    new_graph = relabelled(graph, perm)
    t = cluster_transition(graph, new_graph, USERS, USERS)
    np.testing.assert_array_equal(t, np.eye(4)[perm])
    new, report = migrate_graph_stats(old, graph, new_graph, t)
    assert report.evidence_moved == pytest.approx(report.evidence_in) and \
        report.evidence_dropped == pytest.approx(0.0) and report.evidence_in == old.count.sum()
    pos = new._edge_positions(perm[old.edge_cluster], old.edge_items, name="moved")
    for name in ("sxx", "sxr", "count"):
        np.testing.assert_allclose(getattr(new, name)[pos], getattr(old, name))
    assert new.space == "g2" and new.prior_mean is None  # no new prior given: cold + evidence


def test_migration_preserves_total_evidence_by_the_rule(graph, prior) -> None:
    old = graph.stats(lam=LAM)
    for seed in range(3):
        old.learn(*graph_batch(graph, 200, seed))
    moved_users = USERS + RNG.normal(scale=1.0, size=USERS.shape)  # a new model's space
    new_graph = build_cluster_graph(moved_users, ITEMS, item_ids=ITEM_IDS, n_clusters=5,
                                    top_w=6, random_state=1, version="g2")
    t = cluster_transition(graph, new_graph, USERS, moved_users)
    np.testing.assert_allclose(t.sum(1), 1.0)
    new_prior = graph_prior(new_graph, moved_users, ITEMS)
    new, report = migrate_graph_stats(old, graph, new_graph, t, new_prior=new_prior,
                                      strength=2.0)
    for name, (total, moved, dropped) in report.sums.items():
        assert total == pytest.approx(moved + dropped)
        assert moved == pytest.approx(getattr(new, name).sum())
        assert total == pytest.approx(getattr(old, name).sum())
    assert 0 < report.evidence_dropped < report.evidence_in  # fewer edges: some has nowhere
    assert new.prior_strength == 2.0
    np.testing.assert_allclose(edge_values(new, new_graph, new.prior_mean), new_prior)
    # an old cluster with no users: its row is zero and what it would have moved is dropped
    only0 = np.zeros_like(t)
    only0[0] = t[0]
    _, r_only0 = migrate_graph_stats(old, graph, new_graph, only0)
    t0 = t.copy()
    t0[0] = 0.0
    _, r0 = migrate_graph_stats(old, graph, new_graph, t0)
    assert r_only0.evidence_moved > 0
    assert r0.evidence_moved == pytest.approx(report.evidence_moved - r_only0.evidence_moved)
    assert r0.evidence_dropped == pytest.approx(report.evidence_dropped
                                                + r_only0.evidence_moved)
    with pytest.raises(ValueError, match="transition"):
        migrate_graph_stats(old, graph, new_graph, t * 2)


def test_reset_keeps_only_the_new_prior(graph, prior) -> None:
    old = warm_graph_stats(graph, prior, strength=N0, lam=LAM)
    old.learn(*graph_batch(graph, 300, 0))
    new_graph = relabelled(graph, np.array([1, 2, 3, 0]))
    new_prior = graph_prior(new_graph, USERS, ITEMS, link="sigmoid")
    new, report = migrate_graph_stats(old, graph, new_graph, np.eye(4), new_prior=new_prior,
                                      strength=3.0, rule="reset")
    assert report.evidence_moved == 0 and report.evidence_dropped == report.evidence_in == 300
    assert new.allclose(warm_graph_stats(new_graph, new_prior, strength=3.0, lam=LAM))
    with pytest.raises(ValueError, match="rule"):
        migrate_graph_stats(old, graph, new_graph, np.eye(4), rule="keep")  # type: ignore


def test_items_added_to_a_warm_start_start_at_the_average_prior(graph, prior) -> None:
    warm = warm_graph_stats(graph, prior, strength=N0, lam=LAM)
    unlinked = int(np.setdiff1d(ITEM_IDS, graph.edge_items[graph.edge_clusters == 1])[0])
    warm.add_edges([0, 1], [999, unlinked])  # a new item, and a known item in a new cluster
    np.testing.assert_allclose(edge_values(warm, graph, warm.posterior()[0]), prior)
    for c, item in ((0, 999), (1, unlinked)):
        pos = warm._edge_positions(np.array([c]), np.array([item]), name="new")
        assert warm.posterior()[0][pos][0] == pytest.approx(prior[graph.edge_clusters == c].mean())
    dense = warm_dense_stats(ITEM_IDS, RNG.normal(size=(30, DIM)), strength=N0, lam=LAM)
    mu = dense.prior_mean.mean(axis=0)
    dense.add_items([500])
    np.testing.assert_allclose(dense.posterior()[0][dense.items.row_one(500)], mu)


def test_parameter_shards_keep_a_warm_start_through_deltas_and_checkpoints(graph, prior) -> None:
    """The streaming shards (streaming.shards) hold the prior, learners' deltas do not."""
    from recsys.bandits import shard_of, stats_from_arrays
    from streaming.shards import ParameterShard, shard_parts

    warm = warm_graph_stats(graph, prior, strength=N0, lam=LAM)
    shards = [ParameterShard(i, 3, *part) for i, part in enumerate(shard_parts(warm, 3))]
    template = stats_from_arrays(*warm.delta_template().to_arrays())
    truth = warm.copy()
    for seed in range(3):
        batch = graph_batch(graph, 200, seed)
        truth.learn(*batch)
        delta = template.delta_from_batch(*batch)
        owner = shard_of(delta.item_ids, 3)
        for s, shard in enumerate(shards):
            shard.apply([delta.select(delta.item_ids[owner == s]).to_arrays()])
    restored = [ParameterShard(i, 3, *part) for i, part in enumerate(shard_parts(warm, 3))]
    for old, new in zip(shards, restored, strict=True):
        arrays, meta = old.checkpoint()
        new.restore({k: v.copy() for k, v in arrays.items()}, meta)
    for fleet in (shards, restored):
        merged = merge_parts([stats_from_arrays(*s.snapshot(max_staleness_ms=0))
                              for s in fleet])
        assert merged.allclose(truth) and merged.prior_strength == N0
        np.testing.assert_allclose(merged.posterior()[0], truth.posterior()[0])
