"""The mlflow registry layer on a real sqlite store: log, register, load back, same scores."""

from __future__ import annotations

import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from offline.dataset import Dataset, interactions_frame
from offline.models import BiasedMF, TwoTower
from offline.registry import (
    LINEAGE_TAGS,
    code_version,
    lineage_tags,
    load_scoring_model,
    load_torch_model,
    log_torch_model,
)

REPO = Path(__file__).resolve().parents[2]


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


def _dataset() -> Dataset:
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 6, 40), rng.integers(0, 8, 40)
    frame = interactions_frame(users, items, rng.integers(1, 6, 40).astype(float))
    return Dataset(name="toy", task="rating", n_users=6, n_items=8, train=frame[:30],
                   valid=frame[30:35], test=frame[35:], lineage={"data_source": "toy-source"})


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


@pytest.mark.integration
def test_log_register_and_load_back_identical_scores(store):
    dataset = _dataset()
    tags = lineage_tags(dataset, split="random-80-10-10")
    pairs = pd.DataFrame({"user_id": np.array([0, 5, 3, 3], dtype=np.int64),
                          "item_id": np.array([7, 0, 2, 6], dtype=np.int64)})
    client = mlflow.MlflowClient()
    for name, model in _models(dataset).items():
        registered = f"toy-{name}"
        with mlflow.start_run() as run:
            info = log_torch_model(model, name="model", registered_model_name=registered,
                                   tags=tags, input_example=pairs.head(2))
        assert model.training  # log_torch_model restores the mode it found
        version = client.get_model_version(registered, str(info.registered_model_version))
        for key in LINEAGE_TAGS:
            assert version.tags[key] == tags[key], key
        assert client.get_run(run.info.run_id).data.tags["dataset_hash"] == dataset.fingerprint()
        assert tags["data_source"] == "toy-source" and tags["split"] == "random-80-10-10"

        uri = f"models:/{registered}/{version.version}"
        with torch.no_grad():
            expected = model(torch.tensor(pairs["user_id"].to_numpy()),
                             torch.tensor(pairs["item_id"].to_numpy())).numpy()
            expected_all = model.score_all(torch.tensor([0, 5])).numpy()
        scoring = load_scoring_model(uri)
        assert scoring.metadata.signature is not None
        assert np.array_equal(np.asarray(scoring.predict(pairs)), expected)

        top = scoring.predict(pd.DataFrame({"user_id": np.array([0, 5], dtype=np.int64)}),
                              params={"k": 3})
        assert top["rank"].tolist() == [1, 2, 3] * 2
        best = np.argsort(-expected_all, axis=1, kind="stable")[:, :3]
        assert top["item_id"].to_numpy().reshape(2, 3).tolist() == best.tolist()

        rebuilt = load_torch_model(uri)
        assert type(rebuilt) is type(model)
        with torch.no_grad():
            assert np.array_equal(rebuilt.score_all(torch.tensor([0, 5])).numpy(), expected_all)

        files = [p.name for p in (store / "art").rglob("*") if p.is_file()]
        assert "weights.safetensors" in files and "pyfunc_model.py" in files
        assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))]


@pytest.mark.integration
def test_logging_needs_a_run_and_the_lineage_tags(store):
    model = BiasedMF(2, 2, dim=2)
    with pytest.raises(RuntimeError, match="active run"):
        log_torch_model(model, name="m", tags={"data_source": "a", "split": "b",
                                               "dataset_hash": "c"})
    with mlflow.start_run(), pytest.raises(ValueError, match="dataset_hash"):
        log_torch_model(model, name="m", tags={"data_source": "a", "split": "b"})


def test_code_version_is_the_checkout_commit():
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert code_version() == head
