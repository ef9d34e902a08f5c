"""The training loop, the [train] specification and the evaluation, in-process on small data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from offline.dataset import Dataset, interactions_frame
from offline.prepared import PreparedData
from offline.spec import SpecError, TrainSpec
from offline.training import train_run


def _table(**overrides):
    table = {
        "name": "tiny",
        "data": {"source": "coat"},
        "model": {"name": "mf", "dim": 4},
        "objective": {"name": "naive"},
        "optimizer": {"lr": 0.05, "epochs": 8, "batch_size": 64, "monitor": "valid_mse",
                      "patience": 0},
    }
    table.update(overrides)
    return table


def _ratings(seed: int = 0, n_users: int = 30, n_items: int = 20) -> PreparedData:
    """Ratings from a rank-2 model with noise: MF can learn them, so validation error falls."""
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=(n_users, 2)), rng.normal(size=(n_items, 2))
    truth = 3 + (u @ v.T)

    def frame(n):
        users, items = rng.integers(0, n_users, n), rng.integers(0, n_items, n)
        labels = truth[users, items] + 0.1 * rng.normal(size=n)
        return interactions_frame(users, items, labels, propensity=np.full(n, 0.5))

    return PreparedData(Dataset("tiny", "rating", n_users, n_items, frame(400), frame(100),
                                frame(100)))


def test_spec_round_trips_and_refuses_what_it_cannot_run() -> None:
    spec = TrainSpec.from_table(_table(propensity={"estimator": "shipped", "clip": 0.01}))
    assert TrainSpec.from_table(spec.to_table()) == spec
    assert spec.clip == 0.01 and spec.propensity.name == "shipped"
    assert spec.with_overrides({"data.noise_ratio": 0.3}).data.params == {"noise_ratio": 0.3}
    assert spec.flat_params()["model.dim"] == 4
    cases = [
        (_table(modle={}), "unknown keys"),
        ({k: v for k, v in _table().items() if k != "model"}, r"\[train.model\]"),
        (_table(optimizer={"monitor": "test_mse"}), "validation metric"),
        (_table(optimizer={"epochs": 0}), "epochs"),
        (_table(optimizer={"learning_rate": 1}), "unknown keys"),
        (_table(num_workers=0), "num_workers"),
        (_table(model={"dim": 3}), "needs `name`"),
    ]
    for table, message in cases:
        with pytest.raises(SpecError, match=message):
            TrainSpec.from_table(table)


@pytest.mark.usefixtures("one_torch_thread")
def test_training_learns_and_keeps_the_best_validation_epoch() -> None:
    data = _ratings()
    spec = TrainSpec.from_table(_table())
    result = train_run(spec, 0, data)
    valid = [row["valid_mse"] for row in result.history]
    assert len(result.history) == 8
    assert valid[result.best_epoch] == min(valid)
    assert min(valid) < valid[0]
    # The weights returned are those of the best epoch: re-scoring them gives its metric.
    assert result.metrics["valid_mse"] == pytest.approx(min(valid), rel=1e-6)
    assert {"test_mse", "test_mae", "valid_snips_mse"} <= set(result.metrics)


def test_same_seed_same_model_and_patience_stops_early() -> None:
    data = _ratings()
    spec = TrainSpec.from_table(_table())
    a, b = train_run(spec, 3, data), train_run(spec, 3, data)
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    c = train_run(spec, 4, data)
    assert not all(torch.equal(a.state[k], c.state[k]) for k in a.state)
    # An unattainable learning rate never improves after the first epoch: patience 2 stops it.
    impatient = spec.with_overrides({"optimizer.patience": 2, "optimizer.lr": 5.0,
                                     "optimizer.epochs": 30})
    stopped = train_run(impatient, 0, data)
    assert len(stopped.history) < 30
    assert len(stopped.history) - 1 - stopped.best_epoch == 2


def test_monitor_must_be_a_metric_of_the_data() -> None:
    spec = TrainSpec.from_table(_table(optimizer={"monitor": "valid_recall@20", "epochs": 1}))
    with pytest.raises(ValueError, match="valid_mse"):
        train_run(spec, 0, _ratings())


def test_implicit_training_reports_ranking_metrics_and_noisy_share() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items = 40, 30
    users = np.repeat(np.arange(n_users), 6)
    items = (users % 5) * 6 + np.tile(np.arange(6), n_users) % 6  # five taste groups
    noise = rng.random(users.size) < 0.2
    items = np.where(noise, rng.integers(0, n_items, users.size), items)
    frame = interactions_frame(users, items, noise=noise).unique(["user_id", "item_id"])
    train = frame.filter(frame["item_id"] % 6 > 1)
    valid = frame.filter(frame["item_id"] % 6 == 0).drop("noise")
    test = frame.filter(frame["item_id"] % 6 == 1).drop("noise")
    data = PreparedData(Dataset("toy", "implicit", n_users, n_items, train, valid, test))
    spec = TrainSpec.from_table(_table(objective={"name": "bpr"}, optimizer={
        "monitor": "valid_recall@20", "epochs": 3, "batch_size": 32, "lr": 0.01}))
    result = train_run(spec, 0, data)
    assert {"test_recall@20", "test_ndcg@20", "test_ndcg_uncapped@20"} <= set(result.metrics)
    assert 0 < result.metrics["train_noisy_share"] < 1


def test_two_tower_trains_on_features_and_exports_the_serving_user_table(tmp_path) -> None:
    from offline.runner import TrainedRun, export_user_table
    from recsys.serving.service import UserFeatures

    rng = np.random.default_rng(1)
    n_users, n_items = 25, 15
    users = np.repeat(np.arange(n_users), 4)
    items = rng.integers(0, n_items, users.size)
    frame = interactions_frame(users, items).unique(["user_id", "item_id"])
    user_ids = tuple(f"user-{u}" for u in range(n_users))
    train, held_out = frame.head(frame.height - 30), frame.tail(30)
    dataset = Dataset("features", "implicit", n_users, n_items, train, held_out.head(15),
                      held_out.tail(15), user_features=rng.normal(size=(n_users, 3)),
                      item_features=rng.normal(size=(n_items, 2)), user_ids=user_ids)
    spec = TrainSpec.from_table(_table(model={"name": "two_tower", "dim": 6, "hidden": [8]},
                                       objective={"name": "bpr"},
                                       optimizer={"monitor": "valid_recall@20", "epochs": 2}))
    data = PreparedData(dataset)
    result = train_run(spec, 0, data)
    path = export_user_table(TrainedRun(spec, result, data, {}), tmp_path / "users.parquet")
    table = UserFeatures(str(path))
    from offline.run_tracking import rebuild_model

    expected = rebuild_model(result, data).user_embeddings().detach().numpy()
    np.testing.assert_allclose(table.get("user-3"), expected[3], rtol=1e-6)
    assert table.get("3") is None
