"""``recsys reproduce``: the papers' experiments on the shipped configs, mean ± std over seeds.

- ``coat``: MF-Naive, IPS, SNIPS, DR-JL and KBIPS on Coat's missing-at-random test set (Schnabel
  et al. report MF-IPS MAE 0.860 / MSE 1.093 against MF-Naive 0.920 / 1.202).
- ``denoise``: BPR, T-CE and PLD on Coat as implicit feedback and on simulated clicks, with
  PLD-protocol noise at ratios 0.1 to 0.5 (Recall@20, NDCG@20, share of noisy positives trained on).
- ``simulator``: under strong popularity skew of the logging policy, scored against the
  simulator's true relevance (Recall@20 of the truly best items): on clicks alone, naive BCE
  against Rel-MF's propensity-corrected loss; on shown items with their outcomes, naive, IPS,
  SNIPS and DR-JL.

Each experiment prepares all its data first (without Ray, so a missing data file is reported before
Ray starts), then trains all its runs in one Ray Train fit, logs every run (with its model) as a
child of one mlflow parent run, registers one model version per cell (its best seed on the
monitored validation metric), checks its targets, and prints a table; all of it also goes to a
JSON results file.
"""

from __future__ import annotations

import importlib.resources
import json
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offline.runner import (
    Backend,
    PreparedJobs,
    TrainedRun,
    prepare_jobs,
    summarise,
    train_jobs,
)
from offline.spec import TrainSpec
from recsys.config import Settings

NOISE_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5)
SEEDS = (0, 1, 2, 3, 4)


def shipped_spec(config: str) -> TrainSpec:
    """The ``[train]`` table of a config shipped in ``offline/configs``."""
    text = importlib.resources.files("offline").joinpath("configs", f"{config}.toml").read_text()
    return TrainSpec.from_table(tomllib.loads(text)["train"])


@dataclass(frozen=True)
class Cell:
    """One row of an experiment's table: a method (a shipped config) under some overrides."""

    label: dict[str, Any]
    config: str
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """A set of cells, the metrics its table reports, and the targets it must reach."""

    name: str
    description: str
    cells: tuple[Cell, ...]
    metrics: tuple[str, ...]
    check: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


def _find(rows: list[dict[str, Any]], **label: Any) -> dict[str, Any]:
    for row in rows:
        if all(row["label"].get(k) == v for k, v in label.items()):
            return row
    raise KeyError(label)


def _mean(row: dict[str, Any], metric: str) -> float:
    return row["metrics"][metric]["mean"]


def _target(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"target": name, "passed": bool(passed), "detail": detail}


def _check_coat(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ips, naive = _find(rows, method="ips"), _find(rows, method="naive")
    mae, mse = _mean(ips, "test_mae"), _mean(ips, "test_mse")
    return [
        _target("MF-IPS MAE <= 0.860", mae <= 0.860, f"{mae:.4f}"),
        _target("MF-IPS MSE <= 1.093", mse <= 1.093, f"{mse:.4f}"),
        _target("MF-IPS beats MF-Naive on MAE and MSE",
                mae < _mean(naive, "test_mae") and mse < _mean(naive, "test_mse"),
                f"naive MAE {_mean(naive, 'test_mae'):.4f}, MSE {_mean(naive, 'test_mse'):.4f}"),
    ]


def _check_denoise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    targets = []
    for data in sorted({row["label"]["data"] for row in rows}):
        for ratio in NOISE_RATIOS:
            if ratio < 0.2:
                continue
            try:
                pld = _find(rows, data=data, noise_ratio=ratio, method="pld")
                others = [_find(rows, data=data, noise_ratio=ratio, method=m)
                          for m in ("bpr", "tce")]
            except KeyError:
                continue
            for metric in ("test_recall@20", "test_ndcg@20"):
                best_other = max(_mean(o, metric) for o in others)
                targets.append(_target(
                    f"{data} noise {ratio}: PLD beats BPR and T-CE on {metric}",
                    _mean(pld, metric) > best_other,
                    f"PLD {_mean(pld, metric):.4f} vs best other {best_other:.4f}"))
        if data == "simulator":
            for ratio in NOISE_RATIOS:
                try:
                    pld = _find(rows, data=data, noise_ratio=ratio, method="pld")
                    bpr = _find(rows, data=data, noise_ratio=ratio, method="bpr")
                except KeyError:
                    continue
                a, b = _mean(pld, "train_noisy_share"), _mean(bpr, "train_noisy_share")
                targets.append(_target(
                    f"simulator noise {ratio}: PLD trains on a clearly smaller noisy share "
                    "than BPR (<= 0.8x)", a <= 0.8 * b, f"PLD {a:.3f} vs BPR {b:.3f}"))
    return targets


def _check_simulator(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    targets = []
    for feedback, naive_method, methods in (("clicks", "bce", ("rel_ips",)),
                                            ("shown items", "naive", ("ips", "dr_jl"))):
        naive = _mean(_find(rows, feedback=feedback, method=naive_method), "test_true_recall@20")
        for method in methods:
            value = _mean(_find(rows, feedback=feedback, method=method), "test_true_recall@20")
            targets.append(_target(
                f"{feedback}: {method} beats {naive_method} on Recall@20 against the true "
                "relevance", value > naive, f"{value:.4f} vs {naive:.4f}"))
    return targets


def _denoise_cells() -> tuple[Cell, ...]:
    return tuple(
        Cell({"data": data, "noise_ratio": ratio, "method": method},
             f"denoise_{data}_{method}", {"data.noise_ratio": ratio})
        for data in ("coat", "simulator")
        for ratio in NOISE_RATIOS
        for method in ("bpr", "tce", "pld")
    )


EXPERIMENTS: dict[str, Experiment] = {
    "coat": Experiment(
        "coat",
        "Coat rating prediction, MNAR train / MAR test, shipped propensities",
        tuple(Cell({"method": m}, f"coat_mf_{m}")
              for m in ("naive", "ips", "snips", "dr_jl", "kbips")),
        ("test_mae", "test_mse", "test_auc"),
        _check_coat,
    ),
    "denoise": Experiment(
        "denoise",
        "Denoising with PLD-protocol noise: Coat (ratings >= 4) and simulated clicks",
        _denoise_cells(),
        ("test_recall@20", "test_ndcg@20", "train_noisy_share", "mean_epoch_seconds"),
        _check_denoise,
    ),
    "simulator": Experiment(
        "simulator",
        "Debiasing under strong exposure skew (simulator), scored against the true relevance",
        (*(Cell({"feedback": "clicks", "method": m}, f"simulator_clicks_{m}")
           for m in ("bce", "rel_ips")),
         *(Cell({"feedback": "shown items", "method": m}, f"simulator_exposure_{m}")
           for m in ("naive", "ips", "snips", "dr_jl")),
         Cell({"feedback": "shown items", "method": "dr_clicks"}, "simulator_clicks_dr")),
        ("test_true_recall@20", "test_true_relevance@20", "test_auc"),
        _check_simulator,
    ),
}


@dataclass(frozen=True)
class PreparedExperiment:
    """An experiment with one specification per cell and the data of every run."""

    experiment: Experiment
    seeds: tuple[int, ...]
    specs: list[TrainSpec]
    jobs: PreparedJobs
    seconds: float
    """How long preparing the data took (part of the experiment's time)."""


def prepare_experiment(experiment: Experiment, settings: Settings,
                       seeds: tuple[int, ...] = SEEDS) -> PreparedExperiment:
    """Every cell's specification for ``seeds`` and its data (needs no Ray)."""
    started = time.perf_counter()
    specs = [shipped_spec(cell.config).with_overrides({**cell.overrides, "seeds": list(seeds)})
             for cell in experiment.cells]
    jobs = prepare_jobs(specs, settings)
    return PreparedExperiment(experiment, tuple(seeds), specs, jobs,
                              time.perf_counter() - started)


def run_experiment(
    prepared: PreparedExperiment,
    settings: Settings,
    *,
    backend: Backend = "ray",
    num_workers: int | None = None,
    progress: bool = True,
    log_models: bool = True,
) -> dict[str, Any]:
    """Train every cell for every seed and aggregate; the experiment's result as a dict."""
    import mlflow

    experiment, specs, seeds = prepared.experiment, prepared.specs, prepared.seeds
    started = time.perf_counter() - prepared.seconds
    with mlflow.start_run(run_name=f"reproduce-{experiment.name}") as parent:
        runs = train_jobs(prepared.jobs, settings, name=f"reproduce-{experiment.name}",
                          backend=backend, num_workers=num_workers, progress=progress,
                          log_models=log_models,
                          extra_tags={"recsys.reproduce": experiment.name})
        rows = _aggregate(experiment, specs, runs)
        targets = experiment.check(rows)
        result = {
            "experiment": experiment.name,
            "description": experiment.description,
            "seeds": list(seeds),
            "rows": rows,
            "targets": targets,
            "seconds": time.perf_counter() - started,
            "mlflow_run_id": parent.info.run_id,
        }
        mlflow.log_dict(result, f"reproduce_{experiment.name}.json")
        mlflow.log_text(format_table(experiment, result), f"reproduce_{experiment.name}.md")
        mlflow.log_metric("targets_passed", sum(t["passed"] for t in targets))
        mlflow.log_metric("targets_total", len(targets))
    return result


def _aggregate(experiment: Experiment, specs: list[TrainSpec],
               runs: list[TrainedRun]) -> list[dict[str, Any]]:
    rows = []
    for cell, spec in zip(experiment.cells, specs, strict=True):
        mine = [run for run in runs if run.spec is spec]
        metrics = {}
        for metric in experiment.metrics:
            values = [run.result.metrics[metric] for run in mine if metric in run.result.metrics]
            if values:
                metrics[metric] = summarise(values)
        rows.append({"label": cell.label, "config": cell.config, "metrics": metrics,
                     "run_ids": [run.mlflow["run_id"] for run in mine],
                     "registered": next((run.registered for run in mine if run.registered),
                                        None)})
    return rows


def format_table(experiment: Experiment, result: dict[str, Any]) -> str:
    """The experiment's results as a Markdown table (mean ± std over seeds) and its targets."""
    label_keys = list(experiment.cells[0].label)
    header = [*label_keys, *experiment.metrics]
    lines = [f"### {experiment.name}: {experiment.description} "
             f"({len(result['seeds'])} seeds, mean ± std)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in result["rows"]:
        cells = [str(row["label"][k]) for k in label_keys]
        for metric in experiment.metrics:
            stats = row["metrics"].get(metric)
            cells.append(f"{stats['mean']:.4f} ± {stats['std']:.4f}" if stats else "—")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for target in result["targets"]:
        mark = "PASS" if target["passed"] else "MISS"
        lines.append(f"- {mark}: {target['target']} ({target['detail']})")
    lines.append(f"\n{result['seconds']:.0f} s")
    return "\n".join(lines)


def write_results(results: dict[str, Any], path: Path) -> Path:
    """All experiments' results as one JSON file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    return path
