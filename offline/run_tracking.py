"""Recording a finished training run in mlflow: its parameters, per-epoch metrics, plots and the
model (a registered pyfunc with lineage tags, ``offline.registry``)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from offline.models import build_model
from offline.prepared import PreparedData
from offline.registry import lineage_tags, log_torch_model
from offline.spec import TrainSpec
from offline.training import RunResult, model_arrays
from offline.weights import inverse_propensity_weights, plot_weight_diagnostics


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


def log_run(
    result: RunResult,
    spec: TrainSpec,
    data: PreparedData,
    *,
    extra_tags: dict[str, str] | None = None,
    log_model: bool = True,
) -> dict[str, Any]:
    """Log one run in a new mlflow run (the experiment must be set); returns its ids."""
    import mlflow

    tags = {**lineage_tags(data.dataset), **(extra_tags or {}),
            "seed": str(result.seed), "objective": spec.objective.name,
            "model": spec.model.name, "ray_train_workers": str(result.world_size)}
    for key, value in data.dataset.lineage.items():
        tags.setdefault(f"data.{key}", str(value))
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
            info = log_torch_model(
                rebuild_model(result, data),
                name="model",
                registered_model_name=spec.name if spec.register else None,
                tags=tags,
            )
        else:
            mlflow.set_tags(tags)
        return {
            "run_id": run.info.run_id,
            "model_uri": info.model_uri if info is not None else None,
            "model_version": getattr(info, "registered_model_version", None) if info else None,
        }
