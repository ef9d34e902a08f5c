"""Running training specifications end to end in two steps: prepare the data of every (spec,
seed) (``prepare_jobs``: it reads every data file, so a missing or malformed one is reported before
Ray starts), then train all runs on Ray Train (or in-process), log each run to mlflow and register
one model version per specification (``train_jobs``): the seed with the best monitored validation
metric, or an explicit ``register_seed``, with its policy form (``offline.policy_form``) as a
version of ``<name>-policy``; the other seeds stay runs with unregistered models."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from offline.prepared import PreparedData
from offline.ray_training import Job, run_jobs
from offline.sources import prepare
from offline.spec import TrainSpec
from offline.training import RunResult, train_run
from recsys.config import Settings
from recsys.validation import message

if TYPE_CHECKING:
    from offline.run_tracking import Selection

Backend = Literal["ray", "local"]


@dataclass(eq=False)
class TrainedRun:
    """A finished run with the data it was trained on and where mlflow recorded it."""

    spec: TrainSpec
    result: RunResult
    data: PreparedData
    mlflow: dict[str, Any]
    registered: str | None = None
    """``models:/NAME/VERSION`` when this run is the one its experiment registered."""
    selection: str | None = None
    """Why this run was registered (the selection rule in words)."""
    policy: str | None = None
    """``models:/NAME/VERSION`` of the policy form registered next to the model."""


def data_key(spec: TrainSpec, seed: int) -> str:
    """Runs with the same data source, parameters, propensities and seed share prepared data."""
    identity = [spec.data.name, spec.data.params, spec.propensity.name, spec.propensity.params,
                spec.clip, seed]
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(eq=False)
class PreparedJobs:
    """Every seed of some specifications as a job, with their data (shared between jobs with
    the same ``data_key``)."""

    jobs: list[Job]
    data: dict[str, PreparedData]


def prepare_jobs(specs: Sequence[TrainSpec], settings: Settings) -> PreparedJobs:
    """The jobs of every seed of every spec, with their data prepared (needs no Ray)."""
    jobs: list[Job] = []
    prepared: dict[str, PreparedData] = {}
    for spec in specs:
        for seed in spec.seeds:
            key = data_key(spec, seed)
            if key not in prepared:
                prepared[key] = prepare(spec, seed, settings.data_dir, settings.lake_uri)
            jobs.append(Job(spec, seed, key))
    return PreparedJobs(jobs, prepared)


def train_jobs(
    prepared_jobs: PreparedJobs,
    settings: Settings,
    *,
    name: str,
    backend: Backend = "ray",
    num_workers: int | None = None,
    progress: bool = True,
    log_models: bool = True,
    extra_tags: dict[str, str] | None = None,
    register_seed: int | None = None,
) -> list[TrainedRun]:
    """Train every job (with ``backend="ray"``, Ray must be running); log each run to mlflow
    (the experiment must be set) and register one version per specification (unless its
    ``register`` is off or models are not logged)."""
    jobs, prepared = prepared_jobs.jobs, prepared_jobs.data
    if backend == "local":
        results = [train_run(job.spec, job.seed, prepared[job.data_key]) for job in jobs]
    elif backend == "ray":
        workers = num_workers or max(job.spec.num_workers for job in jobs)
        use_gpu = jobs[0].spec.use_gpu
        results = run_jobs(jobs, prepared, storage_path=settings.data_dir / "ray_train",
                           name=name, num_workers=workers, use_gpu=use_gpu, progress=progress)
    else:
        raise ValueError(message("backend", "'ray' or 'local'", repr(backend)))
    from offline.run_tracking import log_run

    trained = []
    for job, result in zip(jobs, results, strict=True):
        data = prepared[job.data_key]
        ids = log_run(result, job.spec, data, extra_tags=extra_tags, log_model=log_models)
        trained.append(TrainedRun(job.spec, result, data, ids))
    if log_models:
        for spec in _specs(jobs):
            if spec.register:
                register_selected([run for run in trained if run.spec is spec], register_seed)
    return trained


def _specs(jobs: Sequence[Job]) -> list[TrainSpec]:
    """The distinct specifications of ``jobs`` (by identity), in order."""
    seen: dict[int, TrainSpec] = {}
    for job in jobs:
        seen.setdefault(id(job.spec), job.spec)
    return list(seen.values())


def select_run(runs: Sequence[TrainedRun], register_seed: int | None = None
               ) -> tuple[TrainedRun, Selection]:
    """The run of one specification to register: ``register_seed``'s, else the best value of
    the monitored validation metric (ties and missing values: the first seed wins)."""
    from offline.run_tracking import Selection

    if not runs:
        raise ValueError(message("runs", "the runs of one specification", "none"))
    seeds = tuple(run.result.seed for run in runs)
    listed = ", ".join(map(str, seeds))
    if register_seed is not None:
        for run in runs:
            if run.result.seed == register_seed:
                return run, Selection(register_seed, f"chosen (register seed {register_seed}) "
                                      f"among seeds {listed}", seeds)
        raise ValueError(message("register_seed", f"one of the trained seeds ({listed})",
                                 register_seed))
    optimizer = runs[0].spec.optimizer
    monitor, sign = optimizer.monitor, (1.0 if optimizer.maximise else -1.0)

    def key(run: TrainedRun) -> float:
        value = run.result.metrics.get(monitor, float("nan"))
        return sign * value if np.isfinite(value) else -np.inf

    best = max(runs, key=key)  # max keeps the first of equal keys
    value = best.result.metrics.get(monitor, float("nan"))
    direction = "highest" if optimizer.maximise else "lowest"
    return best, Selection(best.result.seed, f"best {monitor} ({direction}, {value:.4f}) "
                           f"of seeds {listed}", seeds)


def register_selected(runs: Sequence[TrainedRun], register_seed: int | None = None
                      ) -> TrainedRun:
    """Register the selected run of one specification's runs (sets its ``registered``), and
    its policy form unless the spec's ``[train.policy]`` says not to (sets ``policy``); tag
    every run with the selection; returns the selected run."""
    from offline.policy_form import register_policy_form
    from offline.run_tracking import mark_selection, rebuild_model, register_run

    run, selection = select_run(runs, register_seed)
    run.registered = register_run(run.result, run.spec, run.data, run.mlflow, selection)
    run.selection = selection.rule
    if run.spec.policy.register:
        run.policy = register_policy_form(run.result, run.spec, run.data, run.mlflow, selection,
                                          run.registered, rebuild_model(run.result, run.data))
    mark_selection([r.mlflow["run_id"] for r in runs], run.mlflow["run_id"], selection)
    return run


def summarise(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation and count of a metric over seeds."""
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
        "n": len(array),
        "values": [float(v) for v in array],
    }


def export_user_table(run: TrainedRun, path: str | Path) -> Path:
    """The run's user embeddings as the serving app's user-feature table."""
    from offline.models import export_user_features
    from offline.run_tracking import rebuild_model

    model = rebuild_model(run.result, run.data)
    dataset = run.data.dataset
    user_ids = dataset.user_ids or tuple(str(u) for u in range(dataset.n_users))
    return export_user_features(model, path, list(user_ids))
