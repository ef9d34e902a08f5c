"""Training runs on Ray Train: one ``TorchTrainer`` fit trains a list of jobs (a specification and
a seed each) on ``num_workers`` data-parallel workers, reporting each finished run as a Ray Train
checkpoint (weights in safetensors, history and metrics in JSON) that the driver reads back.

Batching runs into one fit pays Ray Train's start-up (worker group, process group: seconds) once
per experiment instead of once per seed. Workers push per-epoch records to a small progress
actor that the driver polls for its progress bar. The same code runs on a Ray cluster unchanged:
the prepared data travel through the object store and checkpoints go to ``storage_path``.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from safetensors.torch import load_file, save_file

from offline.prepared import PreparedData
from offline.spec import TrainSpec
from offline.training import RunResult, train_run
from recsys.progress import ProgressBar, progress_bar

WEIGHTS_FILE = "model.safetensors"
RUN_FILE = "run.json"


@dataclass(frozen=True)
class Job:
    """One training run: a specification, a seed and the key of its prepared data."""

    spec: TrainSpec
    seed: int
    data_key: str


def save_result(result: RunResult, folder: str | Path) -> None:
    """A run's weights (safetensors) and everything else (JSON) into ``folder``."""
    folder = Path(folder)
    save_file({k: v.contiguous() for k, v in result.state.items()}, str(folder / WEIGHTS_FILE))
    meta = {
        "name": result.name,
        "seed": result.seed,
        "model_name": result.model_name,
        "model_config": result.model_config,
        "history": result.history,
        "metrics": result.metrics,
        "best_epoch": result.best_epoch,
        "world_size": result.world_size,
    }
    (folder / RUN_FILE).write_text(json.dumps(meta))


def load_result(folder: str | Path) -> RunResult:
    """The run saved in ``folder`` by ``save_result``."""
    folder = Path(folder)
    meta = json.loads((folder / RUN_FILE).read_text())
    return RunResult(state=load_file(str(folder / WEIGHTS_FILE)), **meta)


@ray.remote(num_cpus=0)
class TrainingProgress:
    """Collects per-epoch records from the rank-0 worker for the driver's progress bar."""

    def __init__(self) -> None:
        self._events: list[dict[str, Any]] = []

    def push(self, event: dict[str, Any]) -> None:
        self._events.append(event)

    def drain(self) -> list[dict[str, Any]]:
        events, self._events = self._events, []
        return events


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's worker function: train every job in order, report each as a checkpoint."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(config.get("threads_per_worker", 1))))
    device = ray.train.torch.get_device()
    data: dict[str, PreparedData] = {key: ray.get(ref) for key, ref in config["data"].items()}
    progress = config.get("progress")
    wrap = ray.train.torch.prepare_model if world > 1 else None
    for index, job in enumerate(config["jobs"]):
        spec = TrainSpec.from_table(job["spec"])

        def on_epoch(record: dict[str, float], index: int = index) -> None:
            if progress is not None and rank == 0:
                progress.push.remote({"job": index, **record})

        result = train_run(spec, job["seed"], data[job["data_key"]], rank=rank,
                           world_size=world, device=device, wrap=wrap, on_epoch=on_epoch)
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if rank == 0:
                save_result(result, folder)
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report({"job": index}, checkpoint=checkpoint)


def _poll(tracker: Any, bar: ProgressBar, jobs: Sequence[Job], done: threading.Event) -> None:
    """Advance the bar by epochs; a run that stops early skips its remaining epochs."""
    current = 0
    while not done.wait(0.5):
        try:
            events = ray.get(tracker.drain.remote(), timeout=5)
        except Exception:  # the bar is a convenience: never fail a training for it
            continue
        for event in events:
            while current < event["job"]:
                bar.update(sum(j.spec.optimizer.epochs for j in jobs[: current + 1]) - bar.n)
                current += 1
            job = jobs[event["job"]]
            bar.update(1)
            metric = job.spec.optimizer.monitor
            shown = f"{metric}={event[metric]:.4f}" if metric in event else ""
            bar.set_postfix_str(f"{job.spec.name} seed {job.seed} epoch {int(event['epoch'])} "
                                f"{shown}", refresh=False)


def run_jobs(
    jobs: Sequence[Job],
    prepared: dict[str, PreparedData],
    *,
    storage_path: str | Path,
    name: str,
    num_workers: int = 1,
    use_gpu: bool | str = "auto",
    threads_per_worker: int = 1,
    progress: bool = True,
) -> list[RunResult]:
    """Train ``jobs`` in one Ray Train fit; their results in job order. Ray must be running."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not jobs:
        return []
    gpu = bool(ray.cluster_resources().get("GPU", 0)) if use_gpu == "auto" else bool(use_gpu)
    refs = {key: ray.put(value) for key, value in prepared.items()}
    tracker = TrainingProgress.remote()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "jobs": [{"spec": j.spec.to_table(), "seed": j.seed, "data_key": j.data_key}
                     for j in jobs],
            "data": refs,
            "progress": tracker,
            "threads_per_worker": threads_per_worker,
        },
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=gpu),
        run_config=RunConfig(
            name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6}",
            storage_path=str(Path(storage_path).resolve()),
            checkpoint_config=CheckpointConfig(num_to_keep=None),
        ),
    )
    total = sum(j.spec.optimizer.epochs for j in jobs)
    bar = progress_bar(total=total, desc=f"{name} ({len(jobs)} runs, {num_workers} worker(s))",
                       unit="epoch", disable=not progress, dynamic_ncols=True)
    done = threading.Event()
    poller = threading.Thread(target=_poll, args=(tracker, bar, jobs, done), daemon=True)
    poller.start()
    try:
        result = trainer.fit()
    finally:
        done.set()
        poller.join()
        bar.update(bar.total - bar.n)
        bar.close()
        ray.kill(tracker)
    by_job = {int(metrics["job"]): checkpoint for checkpoint, metrics in result.best_checkpoints}
    missing = sorted(set(range(len(jobs))) - set(by_job))
    if missing:
        raise RuntimeError(f"Ray Train finished without the results of jobs {missing}")
    results = []
    for index in range(len(jobs)):
        with by_job[index].as_directory() as folder:
            results.append(load_result(folder))
    return results
