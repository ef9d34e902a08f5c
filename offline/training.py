"""One training run: a model, an objective and an optimiser over a prepared data set, with early
stopping on a validation metric. The same function runs in-process and inside a Ray Train worker
(``offline.ray_training``); with more than one worker the model arrives wrapped for
data-parallel training and each rank takes its share of every epoch's batches.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from offline.dataset import Dataset
from offline.evaluation import evaluate
from offline.models import build_model
from offline.objectives import TrainTensors, make_objective
from offline.prepared import PreparedData
from offline.spec import OptimizerSpec, TrainSpec


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


def evaluates(epoch: int, optim: OptimizerSpec) -> bool:
    """Whether the validation metric is computed after (0-based) ``epoch``: see
    ``OptimizerSpec.eval_schedule`` (geometric: epochs 1, 2, 4, … below ``eval_every``, then every
    ``eval_every``-th; the last epoch always)."""
    done = epoch + 1
    if done % optim.eval_every == 0 or done == optim.epochs:
        return True
    return (optim.eval_schedule == "geometric" and done < optim.eval_every
            and done & (done - 1) == 0)


def batch_rows(optim: OptimizerSpec, n_rows: int, world_size: int = 1) -> int:
    """Rows per step: ``optim.batch_size``, or for ``"full"`` (0) all ``n_rows`` in one step,
    each of ``world_size`` ranks taking an equal share."""
    if optim.batch_size == "full" or optim.batch_size == 0:
        return max(1, math.ceil(n_rows / world_size))
    return int(optim.batch_size)


def _improved(value: float, best: float | None, maximise: bool) -> bool:
    if not np.isfinite(value):
        return False
    return best is None or (value > best if maximise else value < best)


def l2_penalty(model: nn.Module, bias_scale: float) -> torch.Tensor:
    """Σ‖θ‖² over the model's weight tables, biases scaled by ``bias_scale``; scalars (the global
    bias) are not penalised."""
    terms = [
        (bias_scale if "bias" in name else 1.0) * parameter.pow(2).sum()
        for name, parameter in model.named_parameters()
        if parameter.dim() > 0
    ]
    return torch.stack(terms).sum()


def _with_validation_rows(data: PreparedData) -> PreparedData:
    """Train ∪ valid as the training split (the refit after early stopping).

    The propensities travel with the rows: with ``train_propensity`` (an estimator's) the
    validation rows' own (``valid_propensity``, else their column) are appended and the frame's
    ``propensity`` column is set to the result; without it, a column only one side has would
    leave nulls, so it is dropped (objectives then look the pairs up in the propensity matrix, or
    say they need propensities)."""
    dataset = data.dataset
    train = pl.concat([dataset.train, dataset.valid], how="diagonal_relaxed")
    if "noise" in train.columns:
        train = train.with_columns(pl.col("noise").fill_null(False))
    propensity = data.train_propensity
    if propensity is not None:
        valid_propensity = data.valid_propensity
        if valid_propensity is None and "propensity" in dataset.valid.columns:
            valid_propensity = dataset.valid["propensity"].to_numpy()
        if valid_propensity is None:
            raise ValueError(
                "refit needs the validation rows' propensities: the propensity estimator gave "
                "the train rows' but not the validation rows' (set optimizer.refit = false, or "
                "use an estimator that predicts any row)"
            )
        propensity = np.concatenate([np.asarray(propensity, dtype=np.float64),
                                     np.asarray(valid_propensity, dtype=np.float64)])
        train = train.with_columns(pl.Series("propensity", propensity, dtype=pl.Float64))
    elif "propensity" in train.columns and train["propensity"].null_count():
        train = train.drop("propensity")
    return dataclasses.replace(
        data,
        dataset=dataclasses.replace(dataset, train=train),
        train_propensity=propensity,
    )


@dataclass
class _Loop:
    """One model, objective and optimiser, stepping through epochs."""

    spec: TrainSpec
    data: PreparedData
    seed: int
    rank: int
    world_size: int
    device: torch.device
    wrap: Callable[[nn.Module], nn.Module] | None

    def __post_init__(self) -> None:
        spec, dataset = self.spec, self.data.dataset
        self.model = new_model(spec, dataset, self.seed).to(self.device)
        self.trained = self.wrap(self.model) if self.wrap is not None else self.model
        generator = torch.Generator().manual_seed(self.seed)  # the same on every rank
        self.objective = make_objective(spec.objective.name, **spec.objective.params)
        tensors = TrainTensors.from_dataset(
            dataset,
            propensity=self.data.train_propensity,
            propensity_matrix=self.data.propensity_matrix,
            device=self.device,
        )
        self.objective.setup(self.trained, tensors, generator)
        optim = spec.optimizer
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=optim.lr,
                                           weight_decay=optim.weight_decay)
        self.l2_scale = optim.l2 / max(dataset.train.height, 1)
        # Every rank takes the same number of steps (data-parallel gradients are averaged in
        # lockstep); with more than one rank the epoch's last, uneven steps are dropped.
        self.batch_size = batch_rows(optim, tensors.n_rows, self.world_size)
        self.steps_per_rank = min(
            self.objective.n_steps(self.batch_size, r, self.world_size)
            for r in range(self.world_size)
        )

    def epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch; its record (time, loss, the objective's statistics)."""
        optim = self.spec.optimizer
        self.model.train()
        started = time.perf_counter()
        total, steps = torch.zeros((), device=self.device), 0
        batches = self.objective.batches(epoch, self.batch_size, self.rank, self.world_size)
        for batch in itertools.islice(batches, self.steps_per_rank):
            loss = self.objective.loss(self.trained, batch, epoch)
            if self.l2_scale:
                loss = loss + self.l2_scale * l2_penalty(self.model, optim.l2_bias_scale)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.objective.after_step(self.trained, batch, epoch)
            total += loss.detach()
            steps += 1
        return {
            "epoch": float(epoch),
            "epoch_seconds": time.perf_counter() - started,
            "train_loss": float(total) / max(steps, 1),
            **{f"train_{k}": float(v) for k, v in self.objective.epoch_stats().items()
               if k != "loss"},
        }


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
    """Train ``spec``'s model with ``seed``; keep the weights of the best validation epoch (or,
    with ``optimizer.refit``, retrain on train ∪ valid for that many epochs) and score them on
    the test split. ``wrap`` makes the data-parallel model (Ray Train's ``prepare_model``);
    ``on_epoch`` sees each epoch's record (progress reporting)."""
    device = torch.device(device)
    optim = spec.optimizer
    loop = _Loop(spec, data, seed, rank, world_size, device, wrap)
    model = loop.model
    history: list[dict[str, float]] = []
    best_value: float | None = None
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    best_epoch, stale = 0, 0
    for epoch in range(optim.epochs):
        record = loop.epoch(epoch)
        if evaluates(epoch, optim):
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
    valid_metrics = evaluate(model, data, "valid")
    if optim.refit:
        refit = _Loop(spec, _with_validation_rows(data), seed, rank, world_size, device, wrap)
        for epoch in range(best_epoch + 1):
            refit.epoch(epoch)
        model, best_state = refit.model.eval(), refit.model.state_dict()
    metrics = {
        **valid_metrics,
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
        state={k: v.detach().cpu().clone() for k, v in best_state.items()},
        history=history,
        metrics=metrics,
        best_epoch=best_epoch,
        world_size=world_size,
    )
