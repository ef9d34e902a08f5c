"""Graph mode end to end: k-means graph, soft contexts, calibration options, learning."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.bandits import DiagLinTS, DiagLinUCB
from recsys.bandits.clustering import build_cluster_graph

RNG = np.random.default_rng(0)
USERS = np.concatenate([RNG.normal(loc=c, scale=0.3, size=(150, 4))
                        for c in np.eye(4) * 4])  # four well-separated user groups
ITEMS = RNG.normal(size=(40, 4))


@pytest.fixture(scope="module")
def graph():
    return build_cluster_graph(USERS, ITEMS, item_ids=np.arange(100, 140), n_clusters=4,
                               top_w=10, random_state=0, version="g1")


def test_graph_links_each_cluster_to_its_top_w_items(graph) -> None:
    assert graph.edge_clusters.size == 4 * 10
    sims = graph.centroids @ ITEMS.T
    for c in range(4):
        linked = np.sort(graph.edge_items[graph.edge_clusters == c] - 100)
        np.testing.assert_array_equal(linked, np.sort(np.argsort(-sims[c])[:10]))


def test_contexts_per_calibration(graph) -> None:
    k1 = graph.contexts(USERS[:50], top_k=3, calibration="k1")
    assert k1.clusters.shape == (50, 1) and np.all(k1.weights == 1.0)
    norm = graph.contexts(USERS[:50], top_k=3, calibration="normalised")
    np.testing.assert_allclose(norm.weights.sum(1), 1.0)
    raw = graph.contexts(USERS[:50], top_k=3, calibration="raw")
    assert np.all(raw.weights.sum(1) <= 1.0 + 1e-12)
    np.testing.assert_array_equal(norm.clusters[:, 0], k1.clusters[:, 0])
    with pytest.raises(ValueError, match="calibration"):
        graph.contexts(USERS[:2], calibration="bogus")


def test_candidates_are_the_graph_neighbours(graph) -> None:
    policy = DiagLinUCB(random_state=0).use(graph.stats())
    ctx = graph.contexts(USERS[:20], calibration="k1")
    scores = policy.score(ctx)
    for b in range(20):
        c = ctx.clusters[b, 0]
        neighbours = set(graph.edge_items[graph.edge_clusters == c].tolist())
        finite = set(policy.item_ids_[np.isfinite(scores[b])].tolist())
        assert finite == neighbours
    slate = policy.recommend(ctx, k=5)
    for b in range(20):
        assert set(slate.items[b].tolist()) <= set(
            graph.edge_items[graph.edge_clusters == ctx.clusters[b, 0]].tolist())


def test_normalised_soft_contexts_stay_calibrated_raw_ones_do_not(graph) -> None:
    """Every shown item is clicked with probability 0.3: the learned mean score should be 0.3.

    Raw soft weights with squared updates move it off the reward scale (the calibration pitfall:
    θ_e absorbs 1/x_c, the score re-weights by x_c, cross terms are dropped); normalised weights
    with the per-edge weighted mean, and K = 1, keep it on the reward scale.
    """
    rng = np.random.default_rng(1)
    users = USERS[rng.integers(0, USERS.shape[0], 20000)] + rng.normal(0, 1.5, (20000, 4))
    means = {}
    for calibration in ("normalised", "raw", "k1"):
        policy = DiagLinTS(v=1.0, n_mc_draws=0, lam=1e-3, random_state=2).use(
            graph.stats(lam=1e-3, calibration=calibration))
        ctx = graph.contexts(users, top_k=3, calibration=calibration, temperature=8.0)
        items = policy.recommend(ctx, k=1).items[:, 0]
        policy.learn(ctx, items, (rng.random(20000) < 0.3).astype(float))
        probe = graph.contexts(users[:2000], top_k=3, calibration=calibration, temperature=8.0)
        mean = policy.score(probe, exploit=True)
        means[calibration] = float(np.nanmean(np.where(np.isfinite(mean), mean, np.nan)))
    assert means["normalised"] == pytest.approx(0.3, abs=0.02)
    assert means["k1"] == pytest.approx(0.3, abs=0.02)
    assert abs(means["raw"] - 0.3) > 0.05


def test_graph_policy_learns_the_best_item_per_cluster(graph) -> None:
    rng = np.random.default_rng(3)
    stats = graph.stats(calibration="k1")
    best = {c: int(graph.edge_items[graph.edge_clusters == c][0]) for c in range(4)}
    policy = DiagLinTS(v=0.5, n_mc_draws=0, random_state=4).use(stats)
    for _ in range(30):
        users = USERS[rng.integers(0, USERS.shape[0], 500)]
        ctx = graph.contexts(users, calibration="k1")
        shown = policy.recommend(ctx, k=1).items[:, 0]
        is_best = shown == np.array([best[c] for c in ctx.clusters[:, 0]])
        policy.learn(ctx, shown, (rng.random(500) < np.where(is_best, 0.6, 0.2)).astype(float))
    ctx = graph.contexts(USERS, calibration="k1")
    top = policy.recommend(ctx, k=1).items[:, 0]
    assert np.mean(top == np.array([best[c] for c in ctx.clusters[:, 0]])) > 0.9


def test_cluster_graph_saves_and_loads_through_a_uri(tmp_path) -> None:
    from recsys.bandits import ClusterGraph

    graph = ClusterGraph(np.eye(2), np.array([3, 5, 8]), np.array([0, 1, 1]),
                         np.array([3, 5, 8]), version="emb-v2")
    graph.save("memory://graphs/g.npz")
    back = ClusterGraph.load("memory://graphs/g.npz")
    assert back.version == "emb-v2" and back.n_clusters == 2
    np.testing.assert_array_equal(back.edge_items, graph.edge_items)
    assert back.stats().allclose(graph.stats())
    from recsys.bandits import DenseStats

    DenseStats.empty([1], 2).save(tmp_path / "dense.npz")
    with pytest.raises(ValueError, match=r"expected 'recsys\.bandits\.ClusterGraph/1'"):
        ClusterGraph.load(tmp_path / "dense.npz")
