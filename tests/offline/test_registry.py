"""The mlflow registry layer on a real sqlite store: log with id maps, register, load back, same
scores on raw ids; the lineage tags (once each, one data hash whatever the seed); the choice of
the one run an experiment registers."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from offline.data.splits import split_per_user
from offline.dataset import Dataset, interactions_frame
from offline.models import BiasedMF, TwoTower
from offline.registry import (
    DATASET_HASH,
    LINEAGE_TAGS,
    SPLIT_HASH,
    IdMaps,
    code_version,
    lineage_tags,
    load_id_maps,
    load_scoring_model,
    load_torch_model,
    log_torch_model,
)
from offline.runner import select_run
from offline.spec import TrainSpec

USERS = tuple(f"u{i}" for i in range(6))
ITEMS = tuple(100 + 7 * j for j in range(8))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """One real mlflow store (sqlite + local artifacts) for the whole file: creating it is slow."""
    root = tmp_path_factory.mktemp("mlflow")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    experiment = mlflow.create_experiment("offline-registry", artifact_location=str(root / "art"))
    mlflow.set_experiment(experiment_id=experiment)
    yield root
    mlflow.set_tracking_uri(previous)


def _dataset(seed: int = 0) -> Dataset:
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 6, 40), rng.integers(0, 8, 40)
    frame = interactions_frame(users, items, rng.integers(1, 6, 40).astype(float))
    train, valid, test = split_per_user(frame, (0.7, 0.1, 0.2), seed)
    return Dataset(name="toy", task="rating", n_users=6, n_items=8, train=train, valid=valid,
                   test=test, user_ids=USERS, item_ids=ITEMS,
                   lineage={"data_source": "toy-source", "split": "per_user", "seed": str(seed),
                            "noise_ratio": "0.0"})


def _train(model: torch.nn.Module, dataset: Dataset) -> torch.nn.Module:
    """A few Adam steps, so the logged weights are not the initial ones."""
    train = dataset.train
    users = torch.tensor(train["user_id"].to_numpy())
    items = torch.tensor(train["item_id"].to_numpy())
    labels = torch.tensor(train["label"].to_numpy()).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(20):
        optimizer.zero_grad()
        torch.mean((model(users, items) - labels) ** 2).backward()
        optimizer.step()
    return model


def _models(dataset: Dataset) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    return {
        "mf": _train(BiasedMF(dataset.n_users, dataset.n_items, dim=4, global_bias=3.0), dataset),
        "two_tower": _train(TwoTower(rng.normal(size=(6, 3)), rng.normal(size=(8, 2)), dim=4,
                                     hidden=(5,)), dataset),
    }


def test_the_data_hash_is_the_same_for_every_split_seed_and_the_split_hash_is_not():
    a, b = _dataset(seed=0), _dataset(seed=1)
    assert a.split_fingerprint() != b.split_fingerprint()  # the seeds split differently
    assert a.fingerprint() == b.fingerprint()
    changed = dataclasses.replace(a, lineage={**a.lineage, "noise_ratio": "0.2"})
    assert changed.fingerprint() != a.fingerprint()  # the data specification is data
    fewer = dataclasses.replace(a, test=a.test[1:])
    assert fewer.fingerprint() != a.fingerprint()


def test_lineage_tags_name_each_fact_once():
    dataset = _dataset(seed=3)
    tags = lineage_tags(dataset)
    assert set(LINEAGE_TAGS) <= set(tags)
    assert tags["recsys.data_source"] == "toy-source" and tags["recsys.split"] == "per_user"
    assert tags[DATASET_HASH] == dataset.fingerprint()
    assert tags[SPLIT_HASH] == dataset.split_fingerprint()
    assert tags["recsys.code_version"] == code_version()  # recsys.registry.lineage's
    assert tags["recsys.data.noise_ratio"] == "0.0"
    assert all(key.startswith("recsys.") for key in tags)
    values = [key.rsplit(".", 1)[-1] for key in tags]
    assert len(values) == len(set(values)), tags  # no data_source and data.data_source
    assert "3" not in tags.values()  # the seed is the run's tag, not the data's


def test_id_maps_map_raw_ids_and_name_unknown_ones():
    ids = IdMaps.of(_dataset())
    assert ids.users(["u5", "u0"]).tolist() == [5, 0]
    assert ids.items(np.array([107, 100])).tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"user_id: expected raw ids .* 1 unknown, e.g. 'bob'"):
        ids.users(["u1", "bob"])
    with pytest.raises(ValueError, match="item_id: expected integer raw item ids"):
        ids.items(np.array(["a"]))
    with pytest.raises(ValueError, match="distinct"):
        IdMaps(np.array(["a", "a"], dtype=object), np.arange(2))


@pytest.mark.integration
def test_log_register_and_load_back_identical_scores_on_raw_ids(store):
    dataset = _dataset()
    tags = lineage_tags(dataset, split="random-80-10-10")
    ids = IdMaps.of(dataset)
    pairs = pd.DataFrame({"user_id": ["u0", "u5", "u3", "u3"],
                          "item_id": np.array([ITEMS[7], ITEMS[0], ITEMS[2], ITEMS[6]])})
    rows, cols = np.array([0, 5, 3, 3]), np.array([7, 0, 2, 6])
    client = mlflow.MlflowClient()
    for name, model in _models(dataset).items():
        registered = f"toy-{name}"
        with mlflow.start_run() as run:
            info = log_torch_model(model, name="model", ids=ids, registered_model_name=registered,
                                   tags=tags, description="what and why",
                                   input_example=pairs.head(2))
        assert model.training  # log_torch_model restores the mode it found
        version = client.get_model_version(registered, str(info.registered_model_version))
        assert version.description == "what and why"
        for key in LINEAGE_TAGS:
            assert version.tags[key] == tags[key], key
        assert client.get_run(run.info.run_id).data.tags[DATASET_HASH] == dataset.fingerprint()

        uri = f"models:/{registered}/{version.version}"
        with torch.no_grad():
            expected = model(torch.tensor(rows), torch.tensor(cols)).numpy()
            expected_all = model.score_all(torch.tensor([0, 5])).numpy()
        scoring = load_scoring_model(uri)
        outputs = scoring.metadata.signature.outputs.input_names()
        assert outputs == ["user_id", "item_id", "rank", "score"]  # a table, as returned
        scored = scoring.predict(pairs)
        assert scored["user_id"].tolist() == pairs["user_id"].tolist()
        assert scored["item_id"].tolist() == pairs["item_id"].tolist()
        assert np.array_equal(scored["score"].to_numpy(), expected)

        top = scoring.predict(pd.DataFrame({"user_id": ["u0", "u5"]}), params={"k": 3})
        assert list(top.columns) == ["user_id", "item_id", "rank", "score"]
        assert top["rank"].tolist() == [1, 2, 3] * 2
        assert top["user_id"].tolist() == ["u0"] * 3 + ["u5"] * 3
        best = np.argsort(-expected_all, axis=1, kind="stable")[:, :3]
        assert top["item_id"].to_numpy().reshape(2, 3).tolist() == np.array(ITEMS)[best].tolist()
        with pytest.raises(Exception, match=r"unknown, e\.g\. 'nobody'"):
            scoring.predict(pd.DataFrame({"user_id": ["nobody"]}))

        rebuilt = load_torch_model(uri)
        assert type(rebuilt) is type(model)
        with torch.no_grad():
            assert np.array_equal(rebuilt.score_all(torch.tensor([0, 5])).numpy(), expected_all)
        loaded_ids = load_id_maps(uri)
        assert tuple(loaded_ids.user_ids) == USERS and tuple(loaded_ids.item_ids) == ITEMS

        files = [p.name for p in (store / "art").rglob("*") if p.is_file()]
        assert {"weights.safetensors", "pyfunc_model.py", "id_maps.json"} <= set(files)
        assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))]


@pytest.mark.integration
def test_logging_needs_a_run_and_the_lineage_tags(store):
    model = BiasedMF(2, 2, dim=2)
    with pytest.raises(RuntimeError, match="active run"):
        log_torch_model(model, name="m", tags=lineage_tags(_dataset()))
    incomplete = {k: v for k, v in lineage_tags(_dataset()).items() if k != DATASET_HASH}
    with mlflow.start_run(), pytest.raises(ValueError, match="dataset_hash"):
        log_torch_model(model, name="m", tags=incomplete)


def _runs(monitor: str, values: dict[int, float]) -> list[SimpleNamespace]:
    spec = TrainSpec.from_table({"name": "x", "data": {"source": "coat"},
                                 "model": {"name": "mf"}, "objective": {"name": "naive"},
                                 "optimizer": {"monitor": monitor}})
    return [SimpleNamespace(spec=spec, result=SimpleNamespace(seed=seed, metrics={monitor: v}))
            for seed, v in values.items()]


def test_the_registered_run_is_the_best_on_the_monitored_metric_or_the_chosen_seed():
    run, selection = select_run(_runs("valid_mse", {0: 1.2, 1: 0.9, 2: float("nan")}))
    assert run.result.seed == 1 and selection.seed == 1
    assert selection.rule == "best valid_mse (lowest, 0.9000) of seeds 0, 1, 2"
    run, _ = select_run(_runs("valid_recall@20", {0: 0.1, 1: 0.3, 2: 0.3}))
    assert run.result.seed == 1  # the highest, first of equals
    run, selection = select_run(_runs("valid_mse", {0: 1.2, 1: 0.9}), register_seed=0)
    assert run.result.seed == 0 and selection.rule.startswith("chosen")
    with pytest.raises(ValueError, match=r"register_seed: expected one of the trained seeds "
                                         r"\(0, 1\), got 7"):
        select_run(_runs("valid_mse", {0: 1.2, 1: 0.9}), register_seed=7)
