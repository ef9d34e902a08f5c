"""Recording a finished training run in mlflow: its parameters, per-epoch metrics, plots and the
model (a pyfunc with its id maps and lineage tags, ``offline.registry``), and registering the run
an experiment selected as one model version with a description."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from offline.models import build_model
from offline.prepared import PreparedData
from offline.registry import IdMaps, lineage_tags, log_torch_model
from offline.spec import TrainSpec
from offline.training import RunResult, model_arrays
from offline.weights import inverse_propensity_weights, plot_weight_diagnostics

MODEL_NAME = "model"
"""The artifact name of a run's torch model (``runs:/RUN/model``)."""


def mlflow_metric_name(name: str) -> str:
    """mlflow refuses ``@`` in metric names: ``recall@20`` is logged as ``recall_at_20``."""
    return name.replace("@", "_at_")


def _metrics(values: dict[str, float], prefix: str = "") -> dict[str, float]:
    return {mlflow_metric_name(prefix + k): float(v) for k, v in values.items()
            if k != "epoch" and np.isfinite(v)}


def rebuild_model(result: RunResult, data: PreparedData) -> nn.Module:
    """The trained model of ``result`` as a torch module (config + weights)."""
    model = build_model(result.model_name, dict(result.model_config),
                        **model_arrays(data.dataset, result.model_name))
    model.load_state_dict(result.state)
    return model.eval()


def plot_learning_curves(result: RunResult, monitor: str, path: Path) -> Path:
    """Training loss and the monitored validation metric per epoch, best epoch marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.5))
    FigureCanvasAgg(figure)
    loss_axes, metric_axes = figure.subplots(1, 2)
    epochs = [row["epoch"] for row in result.history]
    loss_axes.plot(epochs, [row["train_loss"] for row in result.history])
    loss_axes.set(xlabel="epoch", ylabel="training loss", title="training loss")
    points = [(row["epoch"], row[monitor]) for row in result.history if monitor in row]
    if points:
        metric_axes.plot(*zip(*points, strict=True), marker=".")
        metric_axes.axvline(result.best_epoch, color="grey", linestyle="--", label="best")
        metric_axes.legend()
    metric_axes.set(xlabel="epoch", ylabel=monitor, title=f"{monitor} (early stopping)")
    figure.suptitle(f"{result.name}, seed {result.seed}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


RUN_TAGS = ("recsys.seed", "recsys.model", "recsys.objective", "recsys.ray_train_workers")
SELECTED = "recsys.selected"
"""Run tag: "true" on the run whose model was registered for its experiment, else "false"."""


def run_tags(result: RunResult, spec: TrainSpec, data: PreparedData,
             extra_tags: dict[str, str] | None = None) -> dict[str, str]:
    """A run's tags: the data's lineage (``offline.registry``, once each) and the run's own."""
    return {**lineage_tags(data.dataset), **(extra_tags or {}),
            "recsys.seed": str(result.seed), "recsys.model": spec.model.name,
            "recsys.objective": spec.objective.name,
            "recsys.ray_train_workers": str(result.world_size)}


def log_run(
    result: RunResult,
    spec: TrainSpec,
    data: PreparedData,
    *,
    extra_tags: dict[str, str] | None = None,
    log_model: bool = True,
) -> dict[str, Any]:
    """Log one run in a new mlflow run (the experiment must be set), its model logged but not
    registered (:func:`register_run` registers the experiment's selected run); returns its ids:
    ``run_id``, ``model_uri`` (``runs:/RUN/model``), ``logged_model_uri`` (mlflow's
    ``models:/m-…``, for registering) and the run's ``tags``."""
    import mlflow

    tags = run_tags(result, spec, data, extra_tags)
    nested = mlflow.active_run() is not None  # inside a `recsys reproduce` parent run
    with mlflow.start_run(run_name=f"{spec.name}-seed{result.seed}", nested=nested) as run:
        params = {**spec.flat_params(), "seed": result.seed}
        params.pop("seeds", None)
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        for row in result.history:
            step = int(row["epoch"])
            mlflow.log_metrics(_metrics(row), step=step)
        mlflow.log_metrics(_metrics(result.metrics, "final_"))
        if data.propensity_summary:
            mlflow.log_metrics(_metrics(data.propensity_summary, "propensity_"))
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            plot_learning_curves(result, spec.optimizer.monitor, folder / "learning_curves.png")
            if data.train_propensity is not None:
                plot_weight_diagnostics(
                    inverse_propensity_weights(data.train_propensity),
                    folder / "ips_weights.png",
                    title=f"IPS weights ({spec.propensity.name} propensities)",
                )
            mlflow.log_artifacts(str(folder), artifact_path="plots")
        mlflow.log_dict({"history": result.history, "metrics": result.metrics},
                        "history.json")
        info = None
        if log_model:
            info = log_torch_model(rebuild_model(result, data), name=MODEL_NAME,
                                   ids=IdMaps.of(data.dataset), tags=tags)
        else:
            mlflow.set_tags(tags)
        return {
            "run_id": run.info.run_id,
            "model_uri": f"runs:/{run.info.run_id}/{MODEL_NAME}" if info is not None else None,
            "logged_model_uri": info.model_uri if info is not None else None,
            "tags": tags,
        }


@dataclass(frozen=True)
class Selection:
    """Which seed of an experiment is registered, and why."""

    seed: int
    rule: str
    """In words: ``best valid_mse (lowest) of seeds 0, 1, 2`` or ``chosen: --register-seed 1``."""
    seeds: tuple[int, ...]


HEADLINE = ("test_mae", "test_mse", "test_auc", "test_recall@20", "test_ndcg@20",
            "test_true_recall@20", "test_true_relevance@20")


def headline_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The test metrics a description shows (those the run has)."""
    return {k: float(metrics[k]) for k in HEADLINE if k in metrics and np.isfinite(metrics[k])}


def describe(spec: TrainSpec, data: PreparedData, result: RunResult, selection: Selection,
             tags: dict[str, str]) -> str:
    """The model version's description: what was trained on what, the selection, the headline
    metrics and how to call it."""
    from offline.registry import DATA_SOURCE, DATASET_HASH, SPLIT, SPLIT_HASH, USAGE

    dataset = data.dataset
    propensity = ("no propensities" if spec.propensity.name == "none"
                  else f"{spec.propensity.name} propensities")
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in headline_metrics(result.metrics).items())
    return "\n\n".join([
        f"{spec.model.name} model ({result.model_config}) trained with the "
        f"{spec.objective.name} objective ({propensity}) on {tags[DATA_SOURCE]} "
        f"(dataset {tags[DATASET_HASH]}, split {tags[SPLIT]} {tags[SPLIT_HASH]}: "
        f"{dataset.train.height}/{dataset.valid.height}/{dataset.test.height} rows, "
        f"{dataset.n_users} users, {dataset.n_items} items); config {spec.name}.",
        f"Selected seed {selection.seed}: {selection.rule}; best epoch {result.best_epoch}. "
        "The other seeds are runs of the same experiment with unregistered models.",
        f"Test metrics: {metrics or 'none'}.",
        USAGE,
    ])


def register_run(result: RunResult, spec: TrainSpec, data: PreparedData, ids: dict[str, Any],
                 selection: Selection) -> str:
    """Register the run's logged model as a version of ``spec.name`` with a description and the
    run's tags plus the selection's; returns ``models:/NAME/VERSION``."""
    from offline.registry import describe_registered_model, register_version

    tags = {**ids["tags"], "recsys.selection": selection.rule,
            "recsys.seeds": ",".join(map(str, selection.seeds))}
    version = register_version(ids["logged_model_uri"], spec.name, tags=tags,
                               description=describe(spec, data, result, selection, ids["tags"]))
    describe_registered_model(spec.name, (
        f"Offline {spec.model.name} models of the training config {spec.name!r} "
        f"({spec.objective.name} objective): one version per training experiment (`recsys "
        "train`, or a `recsys reproduce` cell), its selected seed; the version descriptions say "
        "what each was trained on. Their policy "
        f"forms (exploration rule over the scores) are versions of {spec.policy_model_name!r}."))
    return f"models:/{spec.name}/{version}"


def mark_selection(run_ids: list[str], selected: str | None, selection: Selection) -> None:
    """Tag every run of an experiment with whether its model was the one registered."""
    import mlflow

    client = mlflow.MlflowClient()
    for run_id in run_ids:
        client.set_tag(run_id, SELECTED, "true" if run_id == selected else "false")
        client.set_tag(run_id, "recsys.selection", selection.rule)
