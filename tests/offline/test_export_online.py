"""The offline → online hand-off (offline.export_online): a small two-tower model trained here,
exported, and the files read back the way the stream (ClusterGraph.load, GraphStats.for_stream)
and the serving app (UserFeatures) read them; `recsys train --export-online` end to end with
the real mlflow store, and `recsys export-online` on the model it registered."""

from __future__ import annotations

import importlib.metadata
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from offline.export_online import ExportOptions, Previous, export_online, offline_embeddings
from offline.models import BiasedMF, TwoTower
from recsys.bandits import ClusterGraph, GraphStats, load_stats
from recsys.bandits.warm_start import warm_graph_stats
from recsys.cli import main
from recsys.config import StreamSettings
from recsys.schema import read_user_features
from recsys.serving.service import UserFeatures

N_USERS, N_ITEMS, DIM = 120, 40, 4
USER_IDS = [f"u{i}" for i in range(N_USERS)]
ITEM_IDS = np.arange(1000, 1000 + N_ITEMS)


def train_two_tower(seed: int = 0, steps: int = 150) -> TwoTower:
    """A two-tower (ids only) fitted with BCE to clicks of a three-group latent world."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 3, N_USERS)
    likes = rng.random((3, N_ITEMS)) < 0.3
    clicks = torch.as_tensor(likes[group] ^ (rng.random((N_USERS, N_ITEMS)) < 0.05),
                             dtype=torch.float32)
    model = TwoTower(np.zeros((N_USERS, 0)), np.zeros((N_ITEMS, 0)), dim=DIM, hidden=())
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    users = torch.arange(N_USERS)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model.score_all(users),
                                                                   clicks)
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def model() -> TwoTower:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # no oversubscription on a small machine
    try:
        return train_two_tower()
    finally:
        torch.set_num_threads(threads)


def moved(model: TwoTower, seed: int) -> TwoTower:
    """A "new model": the same one with its user embeddings moved (another space)."""
    import copy

    other = copy.deepcopy(model)
    with torch.no_grad():
        other.user_ids.weight += 0.5 * torch.randn(other.user_ids.weight.shape,
                                                   generator=torch.Generator().manual_seed(seed))
    return other


def test_export_writes_what_the_stream_and_serving_read(model, tmp_path: Path) -> None:
    lines: list[str] = []
    options = ExportOptions(n_clusters=3, top_n=10, top_k=2, calibration="normalised",
                            strength=4.0, link="sigmoid")
    result = export_online(model, USER_IDS, ITEM_IDS, tmp_path, options, model_uri="m:1",
                           progress=lines.append)
    assert any("k-means" in line for line in lines) and any("wrote" in line for line in lines)
    graph = ClusterGraph.load(tmp_path / "graph.npz")
    assert graph.warm and graph.prior_strength == 4.0 and graph.calibration == "normalised"
    assert graph.n_edges == 3 * 10 and set(graph.edge_items) <= set(ITEM_IDS)
    # the prior is the members' mean offline click probability on each edge (from the model)
    users, _, _ = offline_embeddings(model)
    member = graph.contexts(users, calibration="k1").clusters[:, 0]
    with torch.no_grad():
        prob = torch.sigmoid(model.score_all(torch.arange(N_USERS))).numpy().astype(float)
    for e in range(graph.n_edges):
        c, j = graph.edge_clusters[e], graph.edge_items[e] - 1000
        assert graph.edge_prior[e] == pytest.approx(prob[member == c, j].mean(), rel=1e-4)
    # each cluster's edges are its best items by the offline score
    for c in range(3):
        mine = np.sort(graph.edge_items[graph.edge_clusters == c] - 1000)
        best = np.argsort(-(graph.centroids[c] @ offline_embeddings(model)[1].T
                            + model.item_bias.detach().numpy()))[:10]
        assert len(np.intersect1d(mine, best)) >= 8  # the centroid score ignores the bias
    # the stream starts warm from the graph file alone
    stats = GraphStats.for_stream(StreamSettings(layout="graph", graph_file=tmp_path /
                                                 "graph.npz"))
    assert stats.allclose(warm_graph_stats(graph, graph.edge_prior, strength=4.0,
                                           calibration="normalised"))
    assert stats.weighting == "linear"
    # the serving app's table: dense embeddings and the soft memberships
    ids, dense = read_user_features(tmp_path / "users.parquet")
    assert ids == USER_IDS
    np.testing.assert_allclose(dense, users, rtol=1e-6, atol=1e-6)
    table = UserFeatures(str(tmp_path / "users.parquet"))
    ctx = graph.contexts(users, top_k=2, calibration="normalised")
    row = table.context("u7")
    assert row is not None and row.cluster_ids == tuple(ctx.clusters[7])
    np.testing.assert_allclose(row.cluster_weights, ctx.weights[7], rtol=1e-6)
    assert table.context("nobody") is None
    settings = tomllib.loads((tmp_path / "online.toml").read_text())
    assert Path(settings["stream"]["graph_file"]) == tmp_path / "graph.npz"
    assert Path(settings["serve"]["user_features_uri"]) == tmp_path / "users.parquet"
    assert json.loads((tmp_path / "online.json").read_text())["n_edges"] == result.n_edges
    assert "item_prior" not in result.files  # sigmoid: no linear dense prior


def test_clear_errors(model, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"top-n.*40"):
        export_online(model, USER_IDS, ITEM_IDS, tmp_path, ExportOptions(top_n=41),
                      progress=lambda _: None)
    with pytest.raises(ValueError, match="clusters"):
        export_online(model, USER_IDS, ITEM_IDS, tmp_path, ExportOptions(n_clusters=500),
                      progress=lambda _: None)
    with pytest.raises(ValueError, match="embeddings"):
        export_online(torch.nn.Linear(3, 1), USER_IDS, ITEM_IDS, tmp_path,
                      progress=lambda _: None)
    with pytest.raises(ValueError, match="ids"):
        export_online(model, USER_IDS[:-1], ITEM_IDS, tmp_path, progress=lambda _: None)


def test_mf_identity_link_writes_the_dense_prior(tmp_path: Path) -> None:
    torch.manual_seed(0)
    mf = BiasedMF(N_USERS, N_ITEMS, dim=DIM)
    result = export_online(mf, USER_IDS, ITEM_IDS, tmp_path,
                           ExportOptions(n_clusters=4, top_n=5, link="identity", strength=2.0),
                           progress=lambda _: None)
    from recsys.bandits import DenseStats

    stream = StreamSettings(n_items=N_ITEMS + 1000, dim=DIM, prior_file=tmp_path /
                            "item_prior.npz")
    theta = DenseStats.for_stream(stream).posterior()[0]
    np.testing.assert_allclose(theta[1000:], mf.item_factors.weight.detach().numpy(),
                               rtol=1e-6)
    assert result.files["item_prior"].endswith("item_prior.npz")


def test_a_new_model_migrates_the_online_statistics(model, tmp_path: Path) -> None:
    old_dir, new_dir = tmp_path / "v1", tmp_path / "v2"
    opts = ExportOptions(n_clusters=3, top_n=12, strength=3.0)
    export_online(model, USER_IDS, ITEM_IDS, old_dir, opts, progress=lambda _: None)
    old_graph = ClusterGraph.load(old_dir / "graph.npz")
    stats = old_graph.stats()
    table = UserFeatures(str(old_dir / "users.parquet"))
    rng = np.random.default_rng(1)
    users = rng.integers(0, N_USERS, 300)
    clusters = np.array([table.context(USER_IDS[u]).cluster_ids[0] for u in users])
    items = np.array([rng.choice(old_graph.edge_items[old_graph.edge_clusters == c])
                      for c in clusters])
    stats.learn((clusters[:, None], np.ones((300, 1))), items, rng.binomial(1, 0.3, 300))
    stats.save(tmp_path / "old_stats.npz")
    result = export_online(moved(model, 1), USER_IDS, ITEM_IDS, new_dir,
                           ExportOptions(n_clusters=4, top_n=12, strength=3.0),
                           previous=Previous(old_dir / "graph.npz", old_dir / "users.parquet",
                                             tmp_path / "old_stats.npz"),
                           progress=lambda _: None)
    m = result.migration
    assert m is not None and m["evidence_in"] == 300
    assert m["evidence_in"] == pytest.approx(m["evidence_moved"] + m["evidence_dropped"])
    migrated = load_stats(new_dir / "migrated_stats.npz")
    assert migrated.count.sum() == pytest.approx(m["evidence_moved"])
    assert migrated.prior_strength == 3.0 and migrated.n_clusters == 4


def _with_export_online_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Until the package is reinstalled, its metadata lacks the entry point pyproject.toml
    declares: add that declared one (read from pyproject.toml) to what the CLI finds."""
    found = importlib.metadata.entry_points(group="recsys.commands")
    if "export-online" in found.names:
        return
    declared = tomllib.loads(Path("pyproject.toml").read_text())["project"]["entry-points"]
    point = importlib.metadata.EntryPoint(
        "export-online", declared["recsys.commands"]["export-online"], "recsys.commands")
    real = importlib.metadata.entry_points

    def entry_points(**kwargs):  # type: ignore[no-untyped-def]
        out = real(**kwargs)
        if kwargs.get("group") == "recsys.commands":
            return importlib.metadata.EntryPoints([*out, point])
        return out

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def _log_registered(model: TwoTower, data_dir: Path, name: str) -> str:
    """Log and register ``model`` in the data directory's real mlflow store (as `recsys train`
    does); returns ``models:/NAME/1``."""
    import mlflow

    from offline.registry import IdMaps, log_torch_model
    from recsys.config import load_settings
    from recsys.registry.lineage import code_version
    from recsys.tracking import configure_mlflow

    configure_mlflow(load_settings(cli={"data_dir": str(data_dir)}, environ={}))
    tags = {"recsys.data_source": "generated", "recsys.split": "none",
            "recsys.dataset_hash": "0", "recsys.split_hash": "0",
            "recsys.code_version": code_version()}
    with mlflow.start_run():
        log_torch_model(model, name="model", registered_model_name=name, tags=tags,
                        ids=IdMaps(np.asarray(USER_IDS, dtype=object), ITEM_IDS))
    return f"models:/{name}/1"


@pytest.mark.integration
def test_recsys_export_online_on_a_registered_model(model, tmp_path: Path, capsys,
                                                   monkeypatch) -> None:
    data_dir = tmp_path / "data"
    uri = _log_registered(model, data_dir, "tt-online")
    _with_export_online_command(monkeypatch)
    out_dir = tmp_path / "online"
    code = main(["--data-dir", str(data_dir), "export-online", "--model", uri, "--out",
                 str(out_dir), "--clusters", "4", "--top-n", "5", "--strength", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "k-means" in out and "stream.graph_file" in out
    graph = ClusterGraph.load(out_dir / "graph.npz")
    assert graph.n_clusters == 4 and graph.prior_strength == 2.0 and graph.version == uri
    assert set(graph.edge_items) <= set(ITEM_IDS)
    assert UserFeatures(str(out_dir / "users.parquet")).context("u0") is not None
    code = main(["--data-dir", str(data_dir), "export-online", "--model",
                 "models:/no-such-model/1", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "no-such-model" in err and "models:/NAME/VERSION" in err
    code = main(["--data-dir", str(data_dir), "export-online", "--model", uri,
                 "--out", str(tmp_path / "y"), "--top-n", "41"])
    err = capsys.readouterr().err
    assert code == 2 and "top-n" in err and "40" in err


def test_train_spec_takes_export_online() -> None:
    from offline.spec import TrainSpec

    table = {"name": "x", "export_online": "out/online", "data": {"source": "coat"},
             "model": {"name": "mf"}, "objective": {"name": "naive"}}
    spec = TrainSpec.from_table(table)
    assert spec.export_online == "out/online"
    assert TrainSpec.from_table(spec.to_table()).export_online == "out/online"
