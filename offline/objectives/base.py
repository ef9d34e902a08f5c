"""The objective base class: scikit-learn hyperparameters, replayable batches and epoch
statistics, plus the model-calling helpers every family shares.

Hyperparameters follow scikit-learn: each objective's ``__init__`` takes them as keyword
arguments and stores them unchanged, so ``get_params``/``set_params``/``sklearn.base.clone``
work; ``check_params`` (called by ``make_objective`` and again by ``setup``) validates them.

Every epoch has ⌈N / batch_size⌉ steps in total; rank r of W takes steps r, r + W, ...; all
randomness comes from the generator passed to ``setup`` (one seed, then one stream per epoch and
rank), so an epoch can be replayed and ranks agree on the shuffle.
"""

from __future__ import annotations

import abc
import copy
import math
import numbers
from collections.abc import Iterator
from typing import ClassVar, Self

import numpy as np
import torch
from sklearn.base import BaseEstimator
from torch import nn

from offline.objectives.tensors import TrainTensors
from recsys.validation import message

Batch = dict[str, torch.Tensor]


def check_int(value: object, name: str, low: int) -> int:
    """An integer hyperparameter >= ``low`` (a bool or a float is refused)."""
    expected = f"an integer >= {low}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(message(name, expected, f"{value!r} of type {type(value).__name__}"))
    if value < low:
        raise ValueError(message(name, expected, repr(value)))
    return int(value)


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """A hyperparameter that names one of ``choices``."""
    if value not in choices:
        raise ValueError(message(name, f"one of {choices}", repr(value)))
    return str(value)


# -- calling the model ----------------------------------------------------------------------------


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a data-parallel wrapper (DDP keeps it in ``.module``)."""
    if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        return model.module
    return model


def score_pairs(model: nn.Module, *pairs: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
    """Scores of several (users, items) groups in ONE forward call (data-parallel wrappers expect
    one forward per backward), each reshaped like its users."""
    users = torch.cat([u.reshape(-1) for u, _ in pairs])
    items = torch.cat([i.reshape(-1) for _, i in pairs])
    scores = model(users, items).split([u.numel() for u, _ in pairs])
    return [chunk.reshape(u.shape) for chunk, (u, _) in zip(scores, pairs, strict=True)]


def fresh_copy(model: nn.Module, seed: int) -> nn.Module:
    """A deep copy of ``model`` with re-initialised parameters (seeded, global RNG untouched):
    the auxiliary models (imputation, balancing weights) have the prediction model's shape."""
    clone = copy.deepcopy(unwrap(model))
    devices = sorted({p.device.index or 0 for p in clone.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if hasattr(clone, "reset_parameters"):
            clone.reset_parameters()
        else:
            for module in clone.modules():
                if module is not clone and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    clone.train()
    return clone


# -- base -----------------------------------------------------------------------------------------


class Objective(BaseEstimator, abc.ABC):
    """Sampling + loss + auxiliary updates of one training objective.

    Lifecycle: construct with hyperparameters, ``setup(model, data, generator)`` (binds the
    training data, builds samplers and auxiliary models; learned state ends in ``_``), then per
    epoch ``batches`` → ``loss`` (backpropagated by the trainer) → ``after_step``, and
    ``epoch_stats`` at the end of the epoch.
    """

    name: ClassVar[str]
    task: ClassVar[str]

    # -- hyperparameters --------------------------------------------------------------------------

    def check_params(self) -> Self:
        """Raise now if a hyperparameter is invalid (``setup`` checks them again)."""
        self._check_params()
        return self

    def _check_params(self) -> None:
        """Raise ``TypeError``/``ValueError`` for a hyperparameter of the wrong kind or range."""
        return None

    # -- setup and batches ------------------------------------------------------------------------

    def setup(self, model: nn.Module, data: TrainTensors, generator: torch.Generator) -> None:
        """Bind the training data, draw the run's seed, build samplers and auxiliary models."""
        self._check_params()
        self.data_ = data
        self.seed_ = int(torch.randint(0, 2**62, (1,), generator=generator))
        self.device_ = data.users.device  # batches live where the data lives
        self._users_cpu = data.users.cpu()
        self._items_cpu = data.items.cpu()
        self._reset_stats()
        self._setup(model, data)

    def _setup(self, model: nn.Module, data: TrainTensors) -> None:
        """Objective-specific setup."""
        return None

    def _generator(self, epoch: int, rank: int, stream: int) -> torch.Generator:
        """An independent, replayable random stream for (epoch, rank, stream)."""
        entropy = [self.seed_, stream, epoch + 2, rank + 2]  # epoch, rank >= -1 (shared streams)
        state = np.random.SeedSequence(entropy).generate_state(2)
        seed = (int(state[0]) << 31 ^ int(state[1])) % (2**63 - 1)
        return torch.Generator().manual_seed(seed)

    def _check_setup(self) -> TrainTensors:
        data = getattr(self, "data_", None)
        if data is None:
            raise RuntimeError(f"{self.name}: call setup(model, data, generator) first")
        return data

    def n_steps(self, batch_size: int, rank: int = 0, world_size: int = 1) -> int:
        """Steps rank ``rank`` takes in one epoch (the total over ranks is ⌈N / batch_size⌉)."""
        total = math.ceil(self._check_setup().n_rows / batch_size)
        return len(range(rank, total, world_size))

    def batches(
        self, epoch: int, batch_size: int, rank: int = 0, world_size: int = 1
    ) -> Iterator[Batch]:
        """This rank's batches of one epoch, reproducible from the setup generator."""
        n = self._check_setup().n_rows
        if batch_size < 1:
            raise ValueError(message("batch_size", "an integer >= 1", batch_size))
        if not (world_size >= 1 and 0 <= rank < world_size):
            raise ValueError(message("rank", f"0 <= rank < world_size = {world_size}", rank))
        total = math.ceil(n / batch_size)
        order = torch.randperm(n, generator=self._generator(epoch, -1, 0))
        sampler = self._generator(epoch, rank, 1)
        for step in range(rank, total, world_size):
            rows = order[step * batch_size : (step + 1) * batch_size]
            batch = self._make_batch(rows, epoch, sampler, batch_size)
            batch["step"] = torch.tensor(epoch * total + step)
            yield {key: value.to(self.device_) for key, value in batch.items()}

    @abc.abstractmethod
    def _make_batch(
        self, rows: torch.Tensor, epoch: int, generator: torch.Generator, batch_size: int
    ) -> Batch:
        """The batch for these shuffled train rows (CPU tensors; ``batch_size`` is the nominal
        size, for objectives that draw their own examples)."""

    # -- training ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        """The loss the trainer backpropagates through the model."""

    def after_step(self, model: nn.Module, batch: Batch, epoch: int) -> None:
        """Auxiliary updates with the objective's own optimizer (default: none)."""
        return None

    def auxiliary_modules(self) -> dict[str, nn.Module]:
        """Modules the objective trains itself (e.g. the imputation model)."""
        return {}

    # -- statistics -------------------------------------------------------------------------------

    def _reset_stats(self) -> None:
        self._sums: dict[str, torch.Tensor | float] = {}
        self._last: dict[str, float] = {}

    def _add(self, key: str, value: torch.Tensor | float) -> None:
        value = value.detach().double() if isinstance(value, torch.Tensor) else value
        self._sums[key] = self._sums.get(key, 0.0) + value

    def _record_trained(self, rows: torch.Tensor, key: str = "") -> None:
        """Count the train rows that received a gradient step (and how many are noise)."""
        self._add(f"n_trained{key}", float(rows.numel()))
        if self.data_.noise is not None:
            self._add(f"n_noisy{key}", self.data_.noise[rows].sum())

    def _finish(self, value: torch.Tensor, trained_rows: torch.Tensor) -> torch.Tensor:
        """Record the step (its loss and the rows it trained) and return its loss."""
        self._record_trained(trained_rows)
        self._add("loss_sum", value)
        self._add("n_steps", 1.0)
        return value

    def epoch_stats(self) -> dict[str, float]:
        """Statistics of the epoch just finished (then reset): mean loss, rows trained,
        ``noisy_share`` (share of trained positives that are truly noisy) when noise is known."""
        self._check_setup()
        sums = {key: float(value) for key, value in self._sums.items()}
        stats: dict[str, float] = dict(self._last)
        if sums.get("n_steps"):
            stats["loss"] = sums["loss_sum"] / sums["n_steps"]
            stats["steps"] = sums["n_steps"]
        for key in ("", "_pool"):
            trained = sums.get(f"n_trained{key}", 0.0)
            if trained:
                stats[f"n_trained{key}"] = trained
                if f"n_noisy{key}" in sums:
                    stats[f"noisy_share{key}"] = sums[f"n_noisy{key}"] / trained
        for key, value in sums.items():
            if key.startswith("mean_"):
                stats[key[5:]] = value / max(sums.get("n_steps", 1.0), 1.0)
        self._reset_stats()
        return stats
