"""`recsys train` end to end as a user runs it: a config file, Ray Train's TorchTrainer on a real
local Ray, simulated logs read back from the lake layout, and a real mlflow store holding the
runs and the registered model, which scores exactly as the trained weights do."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from recsys.cli import main

pytestmark = pytest.mark.integration

CONFIG = """
[mlflow]
experiment = "offline-e2e"

[train]
name = "e2e-denoise-pld"
seeds = [0, 1]
num_workers = 1

[train.data]
source = "simulator_noisy_clicks"
noise_ratio = 0.2
n_users = 60
n_items = 40
n_requests = 3000

[train.model]
name = "mf"
dim = 8

[train.objective]
name = "pld"
warmup_epochs = 1

[train.optimizer]
lr = 0.01
epochs = 3
batch_size = 128
monitor = "valid_recall@20"
"""


def test_recsys_train_runs_on_ray_train_and_registers_the_model(
    ray_session, tmp_path: Path, capsys
) -> None:
    import mlflow

    config = tmp_path / "e2e.toml"
    config.write_text(CONFIG)
    users = tmp_path / "users.parquet"
    data_dir = tmp_path / "data"
    code = main(["--data-dir", str(data_dir), "train", "--config", str(config), "--quiet",
                 "--export-user-features", str(users)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 run(s)" in out

    mlflow.set_tracking_uri(f"sqlite:///{(data_dir / 'mlflow.db').resolve()}")
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("offline-e2e")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    for run in runs:
        assert run.data.params["objective.name"] == "pld"
        assert run.data.tags["data_source"] == "simulator-noisy-clicks"
        assert run.data.tags["ray_train_workers"] == "1"
        history = client.get_metric_history(run.info.run_id, "valid_recall_at_20")
        assert [m.step for m in history] == [0, 1, 2]
        assert "final_test_recall_at_20" in run.data.metrics
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert plots == {"plots/learning_curves.png"}

    versions = client.search_model_versions("name='e2e-denoise-pld'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    version = max(versions, key=lambda v: int(v.version))
    assert version.tags["dataset_hash"] and version.tags["code_version"]

    # The registered model scores exactly as the weights Ray Train reported for that run.
    run = client.get_run(version.run_id)
    history = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=version.run_id, artifact_path="history.json")).read_text())
    assert history["metrics"]["best_epoch"] == run.data.metrics["final_best_epoch"]
    from offline.registry import load_scoring_model, load_torch_model

    pyfunc = load_scoring_model(f"models:/e2e-denoise-pld/{version.version}")
    torch_model = load_torch_model(f"models:/e2e-denoise-pld/{version.version}")
    pairs = pd.DataFrame({"user_id": np.arange(10, dtype=np.int64),
                          "item_id": np.arange(10, dtype=np.int64)[::-1].copy()})
    expected = torch_model(pairs["user_id"].to_numpy(), pairs["item_id"].to_numpy())
    np.testing.assert_array_equal(np.asarray(pyfunc.predict(pairs)).ravel(),
                                  expected.detach().numpy().astype(np.float32))

    table = pl.read_parquet(users)
    assert table.columns == ["user_id", "context_dense"]
    assert table.height == 60 and table["context_dense"].list.len().unique().to_list() == [8]


def test_recsys_train_refuses_a_config_without_a_train_table(tmp_path: Path, capsys) -> None:
    config = tmp_path / "plain.toml"
    config.write_text("[mlflow]\nexperiment = 'x'\n")
    assert main(["--data-dir", str(tmp_path), "train", "--config", str(config)]) == 2
    assert "has no [train] table" in capsys.readouterr().err
    config.write_text("[train]\nname = 'x'\n[train.data]\nsource = 'nowhere'\n"
                      "[train.model]\nname = 'mf'\n[train.objective]\nname = 'bpr'\n")
    assert main(["--data-dir", str(tmp_path), "train", "--config", str(config),
                 "--backend", "local"]) == 2
    assert "unknown source 'nowhere'" in capsys.readouterr().err
