"""The training loop, the [train] specification and the evaluation, in-process on small data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from offline.dataset import Dataset, interactions_frame
from offline.prepared import PreparedData
from offline.spec import Component, OptimizerSpec, SpecError, TrainSpec
from offline.training import _Loop, _with_validation_rows, evaluates, train_run


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


def test_refit_without_a_train_propensity_column_uses_the_estimators_propensities() -> None:
    """The train frame has no propensity column; the estimator attaches the train rows' as an
    array and the validation rows' as a column: the refit on train ∪ valid used to leave nulls
    in the concatenated column and crash ("propensity must lie in (0, 1]")."""
    from offline.sources import attach_propensities

    source = _ratings()
    dataset = source.dataset
    bare = Dataset("bare", "rating", dataset.n_users, dataset.n_items,
                   dataset.train.drop("propensity"), dataset.valid.drop("propensity"),
                   dataset.test.drop("propensity"))
    data = attach_propensities(PreparedData(bare), Component("popularity"), 0.0)
    assert "propensity" not in data.dataset.train.columns
    assert data.train_propensity is not None and "propensity" in data.dataset.valid.columns
    merged = _with_validation_rows(data)
    expected = np.concatenate([data.train_propensity, data.valid_propensity])
    np.testing.assert_allclose(merged.train_propensity, expected)
    np.testing.assert_allclose(merged.dataset.train["propensity"].to_numpy(), expected)
    spec = TrainSpec.from_table(_table(objective={"name": "ips"}, optimizer={
        "lr": 0.05, "epochs": 3, "batch_size": 64, "monitor": "valid_snips_mse", "refit": True}))
    result = train_run(spec, 0, data)
    assert np.isfinite(result.metrics["test_mse"])


def _overfitting(seed: int = 1, n_users: int = 30, n_items: int = 20) -> PreparedData:
    """Noisy train labels, noiseless validation labels: at lr 0.05 MF's validation error is
    lowest at epoch 2 (0-based 1), then it fits the noise."""
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=(n_users, 2)), rng.normal(size=(n_items, 2))
    truth = 3 + (u @ v.T)

    def frame(n, sd):
        users, items = rng.integers(0, n_users, n), rng.integers(0, n_items, n)
        return interactions_frame(users, items, truth[users, items] + sd * rng.normal(size=n))

    return PreparedData(Dataset("overfit", "rating", n_users, n_items, frame(150, 1.5),
                                frame(200, 0.0), frame(50, 0.0)))


def test_evaluation_schedule_is_geometric_below_eval_every() -> None:
    def evaluated(**kw):
        optim = OptimizerSpec(epochs=45, eval_every=10, **kw)
        return [epoch + 1 for epoch in range(optim.epochs) if evaluates(epoch, optim)]

    assert evaluated() == [1, 2, 4, 8, 10, 20, 30, 40, 45]
    assert evaluated(eval_schedule="every") == [10, 20, 30, 40, 45]
    with pytest.raises(SpecError, match="eval_schedule"):
        OptimizerSpec(eval_schedule="sometimes")


@pytest.mark.usefixtures("one_torch_thread")
def test_early_stopping_sees_a_model_that_is_best_in_its_first_epochs() -> None:
    data = _overfitting()
    optimizer = {"lr": 0.05, "weight_decay": 0.0, "epochs": 30, "batch_size": "full",
                 "monitor": "valid_mse", "eval_every": 10, "patience": 2}
    model = {"name": "mf", "dim": 8}
    geometric = train_run(TrainSpec.from_table(_table(model=model, optimizer=optimizer)), 0, data)
    every = train_run(TrainSpec.from_table(
        _table(model=model, optimizer={**optimizer, "eval_schedule": "every"})), 0, data)
    assert geometric.best_epoch == 1  # epoch 2, not the first eval_every-th
    assert every.best_epoch == 9
    assert geometric.metrics["valid_mse"] < every.metrics["valid_mse"] - 0.2
    # patience counts evaluations: best at the 2nd, stale at the 3rd and 4th (epochs 4, 8)
    assert geometric.metrics["epochs_run"] == 8


@pytest.mark.usefixtures("one_torch_thread")
def test_full_batch_takes_every_train_row_in_one_step() -> None:
    data = _ratings()
    for size in ("full", 0):
        spec = TrainSpec.from_table(_table(optimizer={"epochs": 2, "batch_size": size,
                                                      "monitor": "valid_mse"}))
        assert TrainSpec.from_table(spec.to_table()) == spec
        result = train_run(spec, 0, data)
        assert [row["train_steps"] for row in result.history] == [1.0, 1.0]
    for bad in (-1, "half", True):
        with pytest.raises(SpecError, match="batch_size"):
            TrainSpec.from_table(_table(optimizer={"batch_size": bad}))


def coat_like(seed: int = 0, n_users: int = 80, n_items: int = 60) -> PreparedData:
    """Coat-like ratings 1-5 missing not at random (high ratings observed more, propensities
    down to ~0.005, i.e. IPS weights up to ~200), a uniform test sample."""
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=(n_users, 2)), rng.normal(size=(n_items, 2))
    noise = 0.5 * rng.normal(size=(n_users, n_items))
    truth = np.clip(np.rint(3 + 1.2 * (u @ v.T) + noise), 1, 5)
    p = 1 / (1 + np.exp(-(-3.0 + 1.0 * (truth - 3))))
    users, items = np.nonzero(rng.random(p.shape) < p)
    order = rng.permutation(users.size)
    users, items = users[order], items[order]
    n_valid = users.size // 10

    def frame(us, it, **extra):
        return interactions_frame(us, it, truth[us, it], **extra)

    test_users, test_items = rng.integers(0, n_users, 500), rng.integers(0, n_items, 500)
    return PreparedData(Dataset(
        "coat_like", "rating", n_users, n_items,
        frame(users[n_valid:], items[n_valid:], propensity=p[users[n_valid:], items[n_valid:]]),
        frame(users[:n_valid], items[:n_valid], propensity=p[users[:n_valid], items[:n_valid]]),
        frame(test_users, test_items)))


def _dr_jl_run(data: PreparedData, **objective):
    """DR-JL at lr 0.05, full batch, 60 epochs: (raw predictions over every pair, imputed labels
    over every pair, the run)."""
    from offline.run_tracking import rebuild_model

    spec = TrainSpec.from_table(_table(
        objective={"name": "dr_jl", **objective}, model={"name": "mf", "dim": 4},
        optimizer={"lr": 0.05, "weight_decay": 0.0, "epochs": 60, "batch_size": "full",
                   "eval_every": 20, "patience": 0, "monitor": "valid_snips_mse"}))
    result = train_run(spec, 0, data)
    users = torch.arange(data.dataset.n_users)
    with torch.no_grad():
        raw = rebuild_model(result, data).score_all(users)
    # the imputation model after the same training (the same seeded run again)
    loop = _Loop(spec, data, 0, 0, 1, torch.device("cpu"), None)
    for epoch in range(spec.optimizer.epochs):
        loop.epoch(epoch)
    imputation = loop.objective.imputation_
    with torch.no_grad():
        imputed = imputation.label(imputation.module.score_all(users))
    return raw, imputed, result


@pytest.mark.usefixtures("one_torch_thread")
def test_dr_jl_imputation_stays_in_the_rating_range_and_the_clipped_share_is_reported() -> None:
    data = coat_like()
    raw, imputed, result = _dr_jl_run(data)
    assert float(imputed.min()) >= 1.0 and float(imputed.max()) <= 5.0
    assert {"valid_clipped_share", "test_clipped_share"} <= set(result.metrics)
    assert 0.0 <= result.metrics["test_clipped_share"] <= 1.0
    assert result.metrics["test_clipped_share"] == pytest.approx(
        float(((raw < 1) | (raw > 5)).double().mean()), abs=0.02)  # test: 500 random pairs
    assert all("valid_clipped_share" in row for row in result.history if "valid_mse" in row)
    # Unbounded, the imputation model leaves the range on the same data.
    _, imputed, _ = _dr_jl_run(data, imputation_link="identity")
    assert float(imputed.min()) < 0.5 or float(imputed.max()) > 5.5


@pytest.mark.usefixtures("one_torch_thread")
def test_shipped_dr_jl_config_keeps_coat_predictions_in_range(shared_data, tmp_path) -> None:
    """The shipped DR-JL settings on Coat at lr 0.05 (20 epochs: unfloored, the divergence starts
    by epoch 20): raw predictions stay within a point of 1-5; without the propensity floor
    they leave it (what the floor is for)."""
    if not (shared_data / "coat").is_dir():
        pytest.skip(f"Coat not found at {shared_data / 'coat'}")
    from offline.reproduce import shipped_spec
    from offline.sources import prepare

    spec = shipped_spec("coat_mf_dr_jl").with_overrides({
        "data.path": str(shared_data / "coat"), "optimizer.epochs": 20,
        "optimizer.patience": 0, "optimizer.refit": False})
    data = prepare(spec, 0, tmp_path, str(tmp_path / "lake"))
    users = torch.arange(data.dataset.n_users)

    def raw_range(run_spec):
        """The raw predictions' range over every pair after epochs 10, 15 and 20."""
        loop = _Loop(run_spec, data, 0, 0, 1, torch.device("cpu"), None)
        low, high = np.inf, -np.inf
        for epoch in range(run_spec.optimizer.epochs):
            loop.epoch(epoch)
            if epoch >= 9 and (epoch + 1) % 5 == 0:
                with torch.no_grad():
                    raw = loop.model.eval().score_all(users)
                low, high = min(low, float(raw.min())), max(high, float(raw.max()))
        return low, high

    low, high = raw_range(spec)
    assert low >= 0.0 and high <= 6.0, (low, high)
    low, high = raw_range(spec.with_overrides({"objective.clip": 1e-6}))
    assert low < -2.0 or high > 8.0, (low, high)


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
