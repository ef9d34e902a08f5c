"""One training run: a model, an objective and an optimiser over a prepared data set, with early
stopping on a validation metric. The same function runs in-process and inside a Ray Train worker
(``offline.ray_training``); with more than one worker the model arrives wrapped for
data-parallel training and each rank takes its share of every epoch's batches.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from offline.dataset import Dataset
from offline.evaluation import evaluate
from offline.models import build_model
from offline.objectives import TrainTensors, make_objective
from offline.spec import TrainSpec


@dataclass(frozen=True, eq=False)
class PreparedData:
    """A data set with the propensities its objective needs, computed once per experiment."""

    dataset: Dataset
    train_propensity: np.ndarray | None = None
    """P(observed) of each train row, clipped as the spec says."""
    propensity_matrix: np.ndarray | None = None
    """(n_users, n_items) P(observed), for objectives that sample unobserved pairs."""
    valid_propensity: np.ndarray | None = None
    """P(observed) of each validation row (self-normalised validation errors)."""
    user_ids: tuple[str, ...] | None = None
    """Original user ids by contiguous id (exporting a user-feature table needs them)."""
    propensity_summary: dict[str, float] = field(default_factory=dict)


@dataclass(eq=False)
class RunResult:
    """What a run produced: the best model's weights, its metrics and the per-epoch history."""

    name: str
    seed: int
    model_name: str
    model_config: dict[str, Any]
    state: dict[str, torch.Tensor]
    history: list[dict[str, float]]
    metrics: dict[str, float]
    best_epoch: int
    world_size: int = 1

    @property
    def mean_epoch_seconds(self) -> float:
        times = [row["epoch_seconds"] for row in self.history]
        return float(np.mean(times)) if times else float("nan")


def model_arrays(dataset: Dataset, model_name: str) -> dict[str, np.ndarray]:
    """Side arrays a model is built with (the two-tower model needs the feature matrices)."""
    if model_name != "two_tower":
        return {}
    if dataset.user_features is None or dataset.item_features is None:
        raise ValueError(
            f"model two_tower needs user and item features; data set {dataset.name!r} has none "
            "(use model name = \"mf\")"
        )
    return {"user_features": dataset.user_features, "item_features": dataset.item_features}


def new_model(spec: TrainSpec, dataset: Dataset, seed: int) -> nn.Module:
    """The spec's model for ``dataset``, initialised from ``seed``."""
    torch.manual_seed(seed)
    config = {"n_users": dataset.n_users, "n_items": dataset.n_items, **spec.model.params}
    if spec.model.name == "two_tower":
        config.pop("n_users"), config.pop("n_items")
    if spec.model.name == "mf" and dataset.task == "rating" and "global_bias" not in config:
        config["global_bias"] = float(dataset.train["label"].mean())
    return build_model(spec.model.name, config, **model_arrays(dataset, spec.model.name))


def _improved(value: float, best: float | None, maximise: bool) -> bool:
    if not np.isfinite(value):
        return False
    return best is None or (value > best if maximise else value < best)


def train_run(
    spec: TrainSpec,
    seed: int,
    data: PreparedData,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device = "cpu",
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> RunResult:
    """Train ``spec``'s model with ``seed``; keep the weights of the best validation epoch and
    score them on the test split. ``wrap`` makes the data-parallel model (Ray Train's
    ``prepare_model``); ``on_epoch`` sees each epoch's record (progress reporting)."""
    dataset = data.dataset
    device = torch.device(device)
    model = new_model(spec, dataset, seed).to(device)
    trained = wrap(model) if wrap is not None else model
    generator = torch.Generator().manual_seed(seed)  # the same on every rank: disjoint slices
    objective = make_objective(spec.objective.name, **spec.objective.params)
    tensors = TrainTensors.from_dataset(
        dataset,
        propensity=data.train_propensity,
        propensity_matrix=data.propensity_matrix,
        device=device,
    )
    objective.setup(trained, tensors, generator)
    optim = spec.optimizer
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    # Every rank takes the same number of steps (data-parallel gradients are averaged in lockstep);
    # with more than one rank the epoch's last, uneven steps are dropped.
    steps_per_rank = min(
        objective.n_steps(optim.batch_size, r, world_size) for r in range(world_size)
    )
    history: list[dict[str, float]] = []
    best_value: float | None = None
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    best_epoch, stale = 0, 0
    for epoch in range(optim.epochs):
        model.train()
        started = time.perf_counter()
        total, steps = torch.zeros((), device=device), 0
        for batch in itertools.islice(
            objective.batches(epoch, optim.batch_size, rank, world_size), steps_per_rank
        ):
            loss = objective.loss(trained, batch, epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            objective.after_step(trained, batch, epoch)
            total += loss.detach()
            steps += 1
        record: dict[str, float] = {
            "epoch": float(epoch),
            "epoch_seconds": time.perf_counter() - started,
            "train_loss": float(total) / max(steps, 1),
            **{f"train_{k}": float(v) for k, v in objective.epoch_stats().items()},
        }
        last = epoch == optim.epochs - 1
        if (epoch + 1) % optim.eval_every == 0 or last:
            model.eval()
            record.update(evaluate(model, data, "valid"))
            if optim.monitor not in record:
                raise ValueError(
                    f"monitor {optim.monitor!r} is not a validation metric of this data set; "
                    f"available: {sorted(k for k in record if k.startswith('valid_'))}"
                )
            value = record[optim.monitor]
            if _improved(value, best_value, optim.maximise):
                best_value, best_epoch, stale = value, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if optim.patience and stale >= optim.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    metrics = {
        **evaluate(model, data, "valid"),
        **evaluate(model, data, "test"),
        "best_epoch": float(best_epoch),
        "epochs_run": float(len(history)),
        "mean_epoch_seconds": float(np.mean([r["epoch_seconds"] for r in history])),
    }
    noisy = [r["train_noisy_share"] for r in history if "train_noisy_share" in r]
    if noisy:
        metrics["train_noisy_share"] = float(np.mean(noisy))
    return RunResult(
        name=spec.name,
        seed=seed,
        model_name=spec.model.name,
        model_config=model.config(),
        state={k: v.detach().cpu() for k, v in best_state.items()},
        history=history,
        metrics=metrics,
        best_epoch=best_epoch,
        world_size=world_size,
    )
