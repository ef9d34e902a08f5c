"""What a comparison leaves behind: the table, the forest plot, one mlflow run and version tags."""

from __future__ import annotations

import json
import math

import pytest

from recsys.comparison.report import (
    ESTIMATE_TAG,
    INTERVAL_TAG,
    RUN_TAG,
    forest_plot,
    format_table,
    load_comparison,
    log_comparison,
    metric_key,
)
from recsys.comparison.result import CandidateResult, Comparison, Estimate


def _candidate(name: str, kind: str, values: dict[str, tuple[float, float, float]], *,
               truth: float | None = None, model: str | None = None,
               version: str | None = None) -> CandidateResult:
    return CandidateResult(
        name, kind, f"models:/{model}/{version}" if model else None, model, version,
        {e: Estimate(e, *v) for e, v in values.items()},
        {"effective_sample_size": 1234.0, "max_weight": 20.0}, truth)


def _comparison(model: str | None = None) -> Comparison:
    return Comparison(
        [_candidate("logging", "baseline", {"snips": (0.30, 0.28, 0.32), "dr": (0.30, 0.28, 0.32)}),
         _candidate("m@champion", "online", {"snips": (0.50, 0.45, 0.55), "dr": (0.51, 0.44, 0.57)},
                    truth=0.52, model=model, version="1" if model else None),
         _candidate("uniform", "baseline", {"snips": (0.20, 0.18, 0.22), "dr": (math.nan,) * 3},
                    truth=0.21)],
        n_requests=5000, n_rows=15000, len_list=3, n_actions=40, alpha=0.05, n_bootstrap=200,
        logs={"source": "parquet", "path": "x.parquet", "range_ms": [None, None]},
        estimators=["snips", "dr"])


def test_the_table_shows_every_estimate_with_its_interval_truth_and_ess() -> None:
    lines = format_table(_comparison()).splitlines()
    assert lines[0].split() == ["candidate", "kind", "version", "snips", "dr", "truth", "ESS"]
    assert lines[2].split() == ["m@champion", "online", "-", "0.5000", "[0.4500,", "0.5500]",
                                "0.5100", "[0.4400,", "0.5700]", "0.5200", "1,234"]
    assert lines[3].split()[6:8] == ["-", "0.2100"]  # no dr for uniform, its truth
    assert lines[-1] == ("5,000 requests, 15,000 logged rows, slates of 3; 95% bootstrap "
                         "intervals (200 resamples)")


def test_the_forest_plot_is_written(tmp_path) -> None:
    path = forest_plot(_comparison(), tmp_path / "plots" / "comparison.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_metric_keys_are_names_mlflow_takes() -> None:
    assert metric_key("m@champion", "snips") == "m_champion.snips"
    assert metric_key("models:/a/1", "switch-dr") == "models_/a/1.switch-dr"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One real sqlite store for the file (creating one is slow)."""
    import mlflow

    root = tmp_path_factory.mktemp("report")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    mlflow.set_experiment(experiment_id=mlflow.create_experiment(
        "report", artifact_location=str(root / "artifacts")))
    yield root
    mlflow.set_tracking_uri(previous)


def test_one_comparison_run_with_table_plot_metrics_and_version_tags(store) -> None:
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    client.create_registered_model("m")
    client.create_model_version("m", source=str(store / "nowhere"))
    comparison = _comparison(model="m")
    run_id = log_comparison(comparison, primary="snips")

    run = client.get_run(run_id)
    assert run.info.run_name.startswith("compare-") and run.data.tags["recsys.kind"] == "comparison"
    assert run.data.params["n_requests"] == "5000" and run.data.params["estimators"] == "snips,dr"
    assert run.data.params["logs.source"] == "parquet" and run.data.params["alpha"] == "0.05"
    metrics = run.data.metrics
    assert metrics["m_champion.snips"] == 0.5 and metrics["m_champion.snips.lower"] == 0.45
    assert metrics["m_champion.true_value"] == 0.52 and "uniform.dr" not in metrics
    assert {a.path for a in client.list_artifacts(run_id)} == {
        "comparison.csv", "comparison.json", "comparison.png"}
    table = mlflow.artifacts.load_text(f"runs:/{run_id}/comparison.csv").splitlines()
    assert len(table) == 1 + 6 and table[0].startswith("candidate,kind,estimator,value")
    assert json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/comparison.json"))[
        "n_requests"] == 5000

    tags = client.get_model_version("m", "1").tags
    assert (tags[ESTIMATE_TAG], tags[INTERVAL_TAG], tags[RUN_TAG]) == ("0.5", "[0.45, 0.55]",
                                                                       run_id)
    back = load_comparison(run_id)
    assert back.result("m@champion").estimates["snips"] == Estimate("snips", 0.5, 0.45, 0.55)


def test_a_run_that_is_no_comparison_is_a_clear_error(store) -> None:
    import mlflow

    from recsys.registry.promotion import PromotionError

    with mlflow.start_run() as run:
        pass
    with pytest.raises(PromotionError, match="expected a run written by `recsys compare`"):
        load_comparison(run.info.run_id)
