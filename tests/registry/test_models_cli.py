"""``recsys models`` in-process: list, promote (both branches, dry run, JSON), rollback and
register a streaming checkpoint, on a real mlflow store in the data directory."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recsys.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A data directory whose store holds ``pol`` (v1 uniform = champion, v2 good, v3 bad) and
    a Parquet file of 3,000 uniformly logged one-item slates."""
    import mlflow

    from recsys.config import Settings
    from recsys.policies.baselines import uniform_policy
    from recsys.policies.linear import LinearScorePolicy
    from recsys.registry import baseline_model, log_policy_model, scored_model
    from recsys.tracking import configure_mlflow
    from simulators.logged_data import collect_logs
    from simulators.model import SimulatorConfig, SlateSimulator
    from simulators.policies import UniformPolicy

    root = tmp_path_factory.mktemp("models")
    previous = mlflow.get_tracking_uri()
    configure_mlflow(Settings(data_dir=root))
    config = SimulatorConfig(n_users=200, n_items=20, dim=4, slate_size=1, affinity=2.0,
                             no_click_utility=1.0, feature_noise=0.1, seed=0)
    sim = SlateSimulator(config)
    rng = np.random.default_rng(0)
    logs = root / "logs.parquet"
    collect_logs(sim, UniformPolicy(20, random_state=rng), 3000, rng).write_parquet(logs)
    items = np.arange(20)
    weights = sim.item_features * config.affinity / np.sqrt(config.dim)
    models = [baseline_model("uniform", uniform_policy(items))]
    for sign in (1, -1):
        policy = LinearScorePolicy(exploration="epsilon_greedy", epsilon=0.1, random_state=0)
        models.append(scored_model(policy.fit(items, sign * weights, sign * sim.item_bias)))
    for model in models:
        with mlflow.start_run():
            log_policy_model(model, registered_model_name="pol")
    mlflow.MlflowClient().set_registered_model_alias("pol", "champion", "1")
    yield root, logs
    mlflow.set_tracking_uri(previous)


def _models(data, *args: str) -> list[str]:
    return ["--data-dir", str(data[0]), "models", *args]


def _champion() -> str:
    from mlflow import MlflowClient

    return str(MlflowClient().get_model_version_by_alias("pol", "champion").version)


def test_promote_keeps_or_moves_the_champion_as_the_rule_says_and_rollback_returns(
        data, capsys) -> None:
    logs = ["--logs", str(data[1]), "--n-bootstrap", "200"]
    assert main(_models(data, "promote", "pol", "--challenger", "3", *logs)) == 1
    out = capsys.readouterr().out
    assert "kept: champion stays at models:/pol/1" in out and _champion() == "1"
    assert "verdict    pol/3 snips lower bound" in out and "does not exceed pol/1" in out
    assert main(_models(data, "promote", "pol", "--challenger", "2", "--dry-run", *logs)) == 0
    assert "dry run: champion would move to models:/pol/2" in capsys.readouterr().out
    assert _champion() == "1"
    assert main(_models(data, "promote", "pol", "--challenger", "2", "--json", *logs)) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["promote"] and decision["applied"] and _champion() == "2"
    assert decision["champion_version"] == "1" and decision["challenger_lower"] > decision[
        "champion_value"]

    assert main(_models(data, "list", "pol")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["version", "aliases", "kind", "latest", "estimate", "created"]
    assert lines[2].split()[:4] == ["models:/pol/2", "champion", "scores", "snips"]
    assert lines[1].split()[:3] == ["models:/pol/1", "-", "baseline"]
    assert main(_models(data, "rollback", "pol")) == 0
    assert capsys.readouterr().out.strip() == (
        "rolled back: champion models:/pol/2 -> models:/pol/1")
    assert _champion() == "1"
    assert main(_models(data, "rollback", "pol")) == 2
    err = capsys.readouterr().err
    assert err.startswith("recsys models: pol: expected a previous champion to roll back to")


def test_list_json_and_errors_are_one_line(data, capsys) -> None:
    assert main(["models", "list", "--json", "--data-dir", str(data[0])]) == 0  # flags after
    rows = json.loads(capsys.readouterr().out)
    assert [r["uri"] for r in rows] == ["models:/pol/1", "models:/pol/2", "models:/pol/3"]
    assert main(_models(data, "list", "poll")) == 2
    assert "did you mean pol?" in capsys.readouterr().err
    assert main(_models(data, "promote", "pol", "--challenger", "2")) == 2
    assert "expected logs to compare on or a comparison run id" in capsys.readouterr().err
    assert main(_models(data, "promote", "pol", "--challenger", "9", "--logs",
                        str(data[1]))) == 2
    assert "pol version: expected one of 1, 2, 3, got '9'" in capsys.readouterr().err


def test_promote_help_states_the_rule(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["models", "promote", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ("the challenger's lower interval bound of the estimator (registry.estimator, "
            "default snips) > the champion's estimate + margin") in text
    assert "held against the logging policy" in text


def test_register_a_streaming_checkpoint(data, tmp_path, capsys) -> None:
    from recsys.bandits import DenseStats, DiagLinUCB, policy_spec
    from recsys.checkpoint import Checkpoint, CheckpointStore

    store = CheckpointStore(str(tmp_path / "ckpt"))
    stats = DenseStats.empty(np.arange(12), 3)
    rng = np.random.default_rng(0)
    stats.learn(rng.normal(size=(40, 3)), rng.integers(0, 12, 40), rng.random(40))
    checkpoint_id = store.write(Checkpoint(
        stats={"shard-0": stats}, offsets={("imps", 0): 40}, cluster_id="c", partitions={
            "imps": 1}, meta={"policy": policy_spec(DiagLinUCB(alpha=0.5))}))
    args = _models(data, "register", "--checkpoint", checkpoint_id, "--name", "snap", "--uri",
                   str(tmp_path / "ckpt"))
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == (
        f"checkpoint {checkpoint_id} registered models:/snap/1")
    assert main(_models(data, "register", "--checkpoint", "nope", "--uri",
                        str(tmp_path / "ckpt"))) == 2
    assert capsys.readouterr().err.startswith("recsys models: ")
