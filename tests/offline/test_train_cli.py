"""`recsys train` as a user runs it: end to end (a config file, Ray Train's TorchTrainer on a real
local Ray, simulated logs read back from the lake layout, and a real mlflow store holding the
runs and the registered model, which scores exactly as the trained weights do), and the mistakes
of a first try, reported in one line before Ray starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from recsys.cli import main

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


@pytest.mark.integration
def test_recsys_train_runs_on_ray_train_and_registers_one_version_and_its_policy_form(
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
        assert run.data.tags["recsys.data_source"] == "simulator-noisy-clicks"
        assert run.data.tags["recsys.ray_train_workers"] == "1"
        history = client.get_metric_history(run.info.run_id, "valid_recall_at_20")
        assert [m.step for m in history] == [0, 1, 2]
        assert "final_test_recall_at_20" in run.data.metrics
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert plots == {"plots/learning_curves.png"}
    selected = [run for run in runs if run.data.tags["recsys.selected"] == "true"]
    assert len(selected) == 1

    (version,) = client.search_model_versions("name='e2e-denoise-pld'")  # one per experiment
    assert version.run_id == selected[0].info.run_id
    assert version.tags["recsys.dataset_hash"] and version.tags["recsys.code_version"]
    assert f"models:/e2e-denoise-pld/{version.version}" in out
    assert "models:/m-" not in out
    (policy,) = client.search_model_versions("name='e2e-denoise-pld-policy'")
    assert policy.run_id == version.run_id
    assert f"models:/e2e-denoise-pld-policy/{policy.version}" in out

    # The registered model scores exactly as the weights Ray Train reported for that run.
    run = client.get_run(version.run_id)
    history = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=version.run_id, artifact_path="history.json")).read_text())
    assert history["metrics"]["best_epoch"] == run.data.metrics["final_best_epoch"]
    from offline.registry import load_id_maps, load_scoring_model, load_torch_model

    uri = f"models:/e2e-denoise-pld/{version.version}"
    pyfunc, torch_model, ids = load_scoring_model(uri), load_torch_model(uri), load_id_maps(uri)
    rows = np.arange(10)
    pairs = pd.DataFrame({"user_id": ids.user_ids[rows].astype(str),
                          "item_id": ids.item_ids[rows[::-1]]})
    expected = torch_model(rows, rows[::-1].copy())
    np.testing.assert_array_equal(pyfunc.predict(pairs)["score"].to_numpy(),
                                  expected.detach().numpy().astype(np.float32))

    table = pl.read_parquet(users)
    assert table.columns == ["user_id", "context_dense"]
    assert table.height == 60 and table["context_dense"].list.len().unique().to_list() == [8]


@pytest.mark.integration
def test_one_version_per_experiment_with_a_description_and_one_data_hash(tmp_path, capsys):
    """In process (no Ray): three seeds, one registered version (the chosen seed), its policy
    form under the name given on the command line, and the same data hash for every seed."""
    import mlflow

    from recsys.registry import load_policy_model

    config = tmp_path / "local.toml"
    config.write_text(CONFIG.replace("seeds = [0, 1]", "seeds = [0, 1, 2]")
                      .replace("noise_ratio = 0.2", "noise_ratio = 0.0")
                      .replace("epochs = 3", "epochs = 2"))
    data_dir = tmp_path / "data"
    code = main(["--data-dir", str(data_dir), "train", "--config", str(config), "--quiet",
                 "--backend", "local", "--register-seed", "2", "--policy-model", "slot"])
    out = capsys.readouterr().out
    assert code == 0, out
    mlflow.set_tracking_uri(f"sqlite:///{(data_dir / 'mlflow.db').resolve()}")
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("offline-e2e").experiment_id])
    by_seed = {int(run.data.tags["recsys.seed"]): run for run in runs}
    assert sorted(by_seed) == [0, 1, 2]
    assert len({run.data.tags["recsys.dataset_hash"] for run in runs}) == 1
    assert len({run.data.tags["recsys.split_hash"] for run in runs}) == 3
    assert not any(key in run.data.tags for run in runs
                   for key in ("data_source", "data.data_source", "recsys.data.data_source"))
    assert [by_seed[s].data.tags["recsys.selected"] for s in (0, 1, 2)] == [
        "false", "false", "true"]

    (version,) = client.search_model_versions("name='e2e-denoise-pld'")
    assert version.run_id == by_seed[2].info.run_id
    assert "Selected seed 2: chosen (register seed 2) among seeds 0, 1, 2" in version.description
    assert "pld objective" in version.description and "test_recall@20" in version.description
    assert "one version per" in client.get_registered_model("e2e-denoise-pld").description
    (policy,) = client.search_model_versions("name='slot'")
    assert policy.tags["recsys.raw_model"] == f"models:/e2e-denoise-pld/{version.version}"
    assert "softmax" in policy.description
    assert f"registered: models:/e2e-denoise-pld/{version.version} (seed 2;" in out
    assert f"policy form: models:/slot/{policy.version} (softmax)" in out
    assert "models:/m-" not in out
    for seed in (0, 1):  # the other seeds' models are their runs'
        assert f"model runs:/{by_seed[seed].info.run_id}/model" in out

    from offline.registry import load_id_maps, load_torch_model

    uri = f"models:/e2e-denoise-pld/{version.version}"
    raw, ids = load_torch_model(uri), load_id_maps(uri)
    loaded = load_policy_model(f"models:/slot/{policy.version}")
    users = ids.user_ids[:5].astype(str)
    np.testing.assert_allclose(loaded.policy.scores(users),
                               raw.score_all(np.arange(5)).detach().double().numpy(),
                               rtol=1e-5, atol=1e-6)
    assert loaded.policy.item_ids_.tolist() == ids.item_ids.tolist()


def _train(tmp_path: Path, config: str, capsys) -> tuple[int, str]:
    path = tmp_path / "config.toml"
    path.write_text(config)
    code = main(["--data-dir", str(tmp_path / "data"), "train", "--config", str(path)])
    return code, capsys.readouterr().err


@pytest.mark.usefixtures("services_never_started")
def test_train_without_a_config_file_says_how_to_give_one(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RECSYS_CONFIG", raising=False)
    assert main(["train"]) == 2
    assert capsys.readouterr().err == (
        "recsys train: needs a config file with a [train] table: pass --config FILE, e.g. "
        "recsys train --config offline/configs/coat_mf_ips.toml (more in offline/configs/)\n")


@pytest.mark.usefixtures("services_never_started")
def test_train_refuses_a_config_without_a_train_table(tmp_path, capsys) -> None:
    code, err = _train(tmp_path, "[mlflow]\nexperiment = 'x'\n", capsys)
    assert code == 2
    assert err.startswith(f"recsys train: {tmp_path / 'config.toml'} has no [train] table; ")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('name = "pld"', 'name = "pdl"'),
         "train.objective.name: expected an objective (naive, ips, snips, dr_jl, kbips, kbdr, "
         "bce, rel_ips, dr_clicks, bpr, tce, rce, pld, pld_bce), got 'pdl'; did you mean pld?"),
        (("warmup_epochs = 1", "warmup_epoch = 1"),
         "train.objective: expected keys among k, tau, warmup_epochs, got unknown keys "
         "['warmup_epoch']; did you mean warmup_epochs?"),
        (("warmup_epochs = 1", "warmup_epochs = -1"), "train.objective: "),
        (('name = "mf"', 'name = "fm"'), "train.model.name: expected a model (mf, two_tower), "
         "got 'fm'"),
        (("dim = 8", "dimm = 8"), "train.model: expected keys among dim, global_bias, "
         "init_std, got unknown keys ['dimm']; did you mean dim?"),
        (('source = "simulator_noisy_clicks"', 'source = "simulator_noisy_click"'),
         "train.data.source: expected a data source ("),
        (("[train.model]", "[train.propensity]\nestimator = 'popularty'\n[train.model]"),
         "train.propensity.estimator: expected a propensity estimator or none (none, "),
        (("[train.model]", "[train.propensity]\nestimator = 'none'\npower = 1\n[train.model]"),
         "train.propensity: expected keys among clip, got unknown keys ['power']"),
        (("epochs = 3", "epochs = 0"), "train.optimizer.epochs: expected an integer >= 1, got 0"),
        (("[train.optimizer]", "[train.optimizer]\nlearning_rate = 0.1"),
         "train.optimizer: expected keys among "),
        (("[train.optimizer]", "[train.policy]\nexploration = 'sofmax'\n[train.optimizer]"),
         "train.policy.exploration: expected one of ['greedy', 'epsilon_greedy', 'softmax'], "
         "got 'sofmax'; did you mean softmax?"),
        (("[train.optimizer]", "[train.policy]\ntemprature = 2\n[train.optimizer]"),
         "train.policy: expected keys among "),
    ],
)
@pytest.mark.usefixtures("services_never_started")
def test_a_config_mistake_is_one_line_before_ray_starts(tmp_path, capsys, change, message) -> None:
    code, err = _train(tmp_path, CONFIG.replace(*change), capsys)
    assert code == 2
    assert err.startswith(f"recsys train: {tmp_path / 'config.toml'}: {message}"), err
    assert err.count("\n") == 1


@pytest.mark.usefixtures("services_never_started")
def test_a_register_seed_that_is_not_trained_is_refused_before_ray_starts(tmp_path, capsys):
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    code = main(["--data-dir", str(tmp_path / "data"), "train", "--config", str(path),
                 "--register-seed", "5"])
    assert code == 2
    assert capsys.readouterr().err == (
        "recsys train: --register-seed: expected one of the trained seeds (0, 1), got 5\n")
    assert not (tmp_path / "data").exists()


@pytest.mark.usefixtures("services_never_started")
def test_a_missing_data_file_is_reported_before_ray_starts(tmp_path, capsys) -> None:
    config = CONFIG.replace('source = "simulator_noisy_clicks"',
                            f'source = "coat"\npath = "{tmp_path / "nowhere"}"')
    config = config.replace('name = "pld"\nwarmup_epochs = 1', 'name = "naive"')
    config = config.replace('monitor = "valid_recall@20"', 'monitor = "valid_mse"')
    code, err = _train(tmp_path, config, capsys)
    assert code == 2
    assert err == (f"recsys train: [train.data] path {tmp_path / 'nowhere'} does not exist (set "
                   "`path`, or RECSYS_SHARED_DATA to the folder holding coat/ and obd/)\n")


def test_a_typo_is_one_line_and_exit_status_2_without_a_traceback(tmp_path) -> None:
    """As a user sees it: a separate process, its whole output."""
    config = tmp_path / "typo.toml"
    config.write_text(CONFIG.replace('name = "pld"', 'name = "pdl"'))
    result = subprocess.run(
        [sys.executable, "-m", "recsys.cli", "--data-dir", str(tmp_path / "data"), "train",
         "--config", str(config)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"recsys train: {config}: train.objective.name: expected an objective (naive, ips, snips, "
        "dr_jl, kbips, kbdr, bce, rel_ips, dr_clicks, bpr, tce, rce, pld, pld_bce), got 'pdl'; "
        "did you mean pld?"]
