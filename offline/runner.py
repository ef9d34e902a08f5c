"""Running training specifications end to end in two steps: prepare the data of every (spec,
seed) (``prepare_jobs``: it reads every data file, so a missing or malformed one is reported before
Ray starts), then train all runs on Ray Train (or in-process) and log each run to mlflow
(``train_jobs``)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from offline.prepared import PreparedData
from offline.ray_training import Job, run_jobs
from offline.sources import prepare
from offline.spec import TrainSpec
from offline.training import RunResult, train_run
from recsys.config import Settings
from recsys.validation import message

Backend = Literal["ray", "local"]


@dataclass(eq=False)
class TrainedRun:
    """A finished run with the data it was trained on and where mlflow recorded it."""

    spec: TrainSpec
    result: RunResult
    data: PreparedData
    mlflow: dict[str, Any]


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
) -> list[TrainedRun]:
    """Train every job (with ``backend="ray"``, Ray must be running); log each run to mlflow
    (the experiment must be set)."""
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
    return trained


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
