"""The shipped experiment configs and `recsys reproduce`'s aggregation and target checks."""

from __future__ import annotations

import importlib.resources
import inspect

import pytest

from offline.models import MODELS
from offline.objectives import OBJECTIVES, make_objective
from offline.propensity import PROPENSITY_ESTIMATORS
from offline.reproduce import EXPERIMENTS, format_table, shipped_spec
from offline.runner import summarise
from offline.sources import SOURCES
from recsys.cli import main

CONFIGS = sorted(
    path.name.removesuffix(".toml")
    for path in importlib.resources.files("offline").joinpath("configs").iterdir()
    if path.name.endswith(".toml")
)


@pytest.mark.parametrize("config", CONFIGS)
def test_every_shipped_config_names_real_components(config: str) -> None:
    spec = shipped_spec(config)
    assert spec.data.name in SOURCES
    assert spec.model.name in MODELS
    assert spec.objective.name in OBJECTIVES
    make_objective(spec.objective.name, **spec.objective.params)  # hyperparameters validated
    assert spec.propensity.name == "none" or spec.propensity.name in PROPENSITY_ESTIMATORS
    accepted = inspect.signature(MODELS[spec.model.name]).parameters
    assert set(spec.model.params) <= set(accepted), spec.model.params


def test_every_experiment_cell_uses_a_shipped_config() -> None:
    for experiment in EXPERIMENTS.values():
        for cell in experiment.cells:
            assert cell.config in CONFIGS
            shipped_spec(cell.config).with_overrides(cell.overrides)


def _row(label: dict, **metrics: list[float]) -> dict:
    return {"label": label, "config": "x", "run_ids": [],
            "metrics": {k: summarise(v) for k, v in metrics.items()}}


def test_coat_targets_follow_the_paper_numbers() -> None:
    check = EXPERIMENTS["coat"].check
    naive = _row({"method": "naive"}, test_mae=[0.92, 0.92], test_mse=[1.20, 1.21])
    good = _row({"method": "ips"}, test_mae=[0.85, 0.86], test_mse=[1.09, 1.09])
    assert all(t["passed"] for t in check([naive, good]))
    bad = _row({"method": "ips"}, test_mae=[0.85, 0.86], test_mse=[1.10, 1.09])
    results = {t["target"]: t["passed"] for t in check([naive, bad])}
    assert results == {"MF-IPS MAE <= 0.860": True, "MF-IPS MSE <= 1.093": False,
                       "MF-IPS beats MF-Naive on MAE and MSE": True}


def test_denoise_targets_compare_pld_with_the_best_baseline_from_ratio_02() -> None:
    rows = []
    for ratio in (0.1, 0.2):
        for method, value in (("bpr", 0.10), ("tce", 0.12), ("pld", 0.11)):
            rows.append(_row({"data": "coat", "noise_ratio": ratio, "method": method},
                             **{"test_recall@20": [value], "test_ndcg@20": [value]}))
    targets = EXPERIMENTS["denoise"].check(rows)
    assert len(targets) == 2 and not any(t["passed"] for t in targets)  # T-CE wins at 0.2
    assert all("noise 0.2" in t["target"] for t in targets)


def test_table_shows_mean_and_std_over_seeds() -> None:
    experiment = EXPERIMENTS["coat"]
    rows = [_row({"method": m}, test_mae=[0.9, 0.8], test_mse=[1.2, 1.0], test_auc=[0.7, 0.7])
            for m in ("naive", "ips")]
    result = {"seeds": [0, 1], "rows": rows, "targets": experiment.check(rows), "seconds": 3}
    table = format_table(experiment, result)
    assert "| ips | 0.8500 ± 0.0707 | 1.1000 ± 0.1414 | 0.7000 ± 0.0000 |" in table
    assert "MISS: MF-IPS beats MF-Naive" in table


@pytest.mark.usefixtures("services_never_started")
def test_reproduce_reports_missing_data_before_ray_starts(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("RECSYS_SHARED_DATA", str(tmp_path / "nowhere"))
    assert main(["--data-dir", str(tmp_path / "data"), "reproduce", "coat", "--seeds", "0"]) == 2
    assert capsys.readouterr().err == (
        f"recsys reproduce: [train.data] path {tmp_path / 'nowhere' / 'coat'} does not exist (set "
        "`path`, or RECSYS_SHARED_DATA to the folder holding coat/ and obd/)\n")
    assert not (tmp_path / "data").exists()  # nor mlflow's store
