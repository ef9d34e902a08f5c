"""``recsys compare`` in-process: registered models and built-ins on the same simulator logs, the
true values from the logs' world, one mlflow run, search by replay, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recsys.cli import main

N_ITEMS, DIM = 20, 4
START_MS = 1_700_000_000_000


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A data directory whose store holds ``pol`` (v1 good, alias champion; v2 bad) and a
    Parquet file of 3,000 uniformly logged one-item slates with its world.json."""
    import mlflow

    from recsys.config import Settings
    from recsys.policies.linear import LinearScorePolicy
    from recsys.registry import log_policy_model, scored_model
    from recsys.tracking import configure_mlflow
    from simulators.logged_data import collect_logs
    from simulators.model import SimulatorConfig, SlateSimulator
    from simulators.policies import UniformPolicy
    from simulators.world import world_of

    root = tmp_path_factory.mktemp("compare")
    previous = mlflow.get_tracking_uri()
    configure_mlflow(Settings(data_dir=root))
    config = SimulatorConfig(n_users=200, n_items=N_ITEMS, dim=DIM, slate_size=1, affinity=2.0,
                             no_click_utility=1.0, feature_noise=0.1, seed=0)
    sim = SlateSimulator(config)
    rng = np.random.default_rng(0)
    logs = root / "logs.parquet"
    collect_logs(sim, UniformPolicy(N_ITEMS, random_state=rng), 3000, rng,
                 start_time_ms=START_MS, ms_per_request=10).write_parquet(logs)
    (root / "logs.parquet.world.json").write_text(json.dumps(world_of(sim)))
    weights = sim.item_features * config.affinity / np.sqrt(DIM)
    for sign in (1, -1):
        policy = LinearScorePolicy(exploration="epsilon_greedy", epsilon=0.1, random_state=0)
        with mlflow.start_run():
            log_policy_model(scored_model(policy.fit(np.arange(N_ITEMS), sign * weights,
                                                     sign * sim.item_bias)),
                             registered_model_name="pol")
    mlflow.MlflowClient().set_registered_model_alias("pol", "champion", "1")
    yield root, logs
    mlflow.set_tracking_uri(previous)


def _compare(data, *args: str) -> list[str]:
    root, logs = data
    return ["--data-dir", str(root), "compare", *args, "--logs", str(logs), "--n-bootstrap",
            "200"]


def test_candidates_are_ranked_as_their_true_values_in_one_run(data, capsys) -> None:
    from mlflow import MlflowClient

    start = str(START_MS + 10 * 1000)  # popularity learns from the first 1,000 requests
    assert main(_compare(data, "models:/pol@champion", "models:/pol/2", "uniform", "logging",
                         "popularity", "--start", start, "--estimators", "snips,dr",
                         "--json")) == 0
    out = json.loads(capsys.readouterr().out)
    results = {c["name"]: c for c in out["candidates"]}
    assert list(results) == ["pol@champion", "pol/2", "uniform", "logging", "popularity"]
    assert [results[n]["kind"] for n in results] == ["offline", "offline", "baseline",
                                                     "baseline", "baseline"]
    assert results["pol@champion"]["model_version"] == "1" and out["n_requests"] == 2000
    assert "notes" not in out["logs"]  # popularity was fitted before the range
    assert results["logging"]["true_value"] is None
    assert results["popularity"]["true_value"] is not None
    # Popularity's true value is close to uniform's: rank the clearly separated ones.
    truths = {n: results[n]["true_value"] for n in ("pol@champion", "pol/2", "uniform")}
    snips = {n: results[n]["estimates"]["snips"]["value"] for n in truths}
    assert sorted(truths, key=truths.get) == sorted(snips, key=snips.get) == [
        "pol/2", "uniform", "pol@champion"]
    for name in ("pol@champion", "pol/2"):
        low, high = (results[name]["estimates"]["snips"][b] for b in ("lower", "upper"))
        assert low <= truths[name] <= high
    client = MlflowClient()
    assert client.get_run(out["run_id"]).data.tags["recsys.kind"] == "comparison"
    for version in ("1", "2"):
        tags = client.get_model_version("pol", version).tags
        assert tags["recsys.latest_comparison_run"] == out["run_id"]


def test_the_table_says_when_popularity_saw_the_evaluation_rewards(data, capsys) -> None:
    assert main(_compare(data, "uniform", "popularity", "--no-log")) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["candidate", "kind", "version", "ips", "snips", "dr", "truth",
                              "ESS"]
    assert out[1].startswith("uniform ") and out[2].startswith("popularity ")
    assert any(line.startswith("note: popularity is fitted on the evaluation logs") for line in out)
    assert not any(line.startswith("mlflow run") for line in out)


@pytest.mark.parametrize(("args", "error"), [
    (["models:/poll/1"], "model: expected a registered model, got 'poll'; did you mean pol?"),
    (["models:/pol@champ"], "pol alias: expected one of ['champion'], got 'champ'; did you mean "
                            "champion?"),
    (["models:/pol/9"], "pol version: expected one of 1, 2, got '9'"),
    (["unifrom"], "did you mean uniform?"),
    (["uniform", "--estimators", "snps"], "--estimators: expected names among ips, snips, dm, "
                                          "dr, sndr, switch-dr, iips, pi, got 'snps'; did you "
                                          "mean snips?"),
    (["uniform", "--start", "2030-01-01T00:00:00Z"], "logs: expected rows in ["),
    (["uniform", "--start", "yesterday"], "--start: expected epoch milliseconds or an ISO time"),
])
def test_what_the_user_can_fix_is_one_line_and_exit_2(data, capsys, args, error) -> None:
    assert main(_compare(data, *args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("recsys compare: ") and err.count("\n") == 1
    assert error in err


def test_search_ranks_configurations_and_registers_the_best(data, capsys) -> None:
    from mlflow import MlflowClient

    from recsys.bandits import DiagLinUCB, policy_spec

    base = json.dumps(policy_spec(DiagLinUCB(alpha=0.1)))
    assert main(_compare(data, "--search", "alpha=0.1,5", "--policy", base, "--register-best",
                         "searched", "--json")) == 0
    search = json.loads(capsys.readouterr().out)["search"]
    assert [row["config"] for row in search["ranking"]] in (["alpha=0.1", "alpha=5"],
                                                             ["alpha=5", "alpha=0.1"])
    assert search["registered"] == "models:/searched/1"
    version = MlflowClient().get_model_version("searched", "1")
    assert version.tags["recsys.policy_kind"] == "bandit"
    assert version.tags["recsys.search_config"] == search["ranking"][0]["config"]
