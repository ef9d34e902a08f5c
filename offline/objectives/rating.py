"""Rating-task objectives: observed rows with labels, batches of shuffled observed rows.

- ``naive``, ``ips``, ``snips`` (Schnabel et al. 2016);
- ``dr_jl`` (Wang et al. 2019): loss (1/|D|) Σ_D [ê + o·(e − ê)/p] over the batch's observed rows
  plus ``ratio``·B unobserved pairs drawn uniformly (exactly, never an observed pair), each part
  weighted by the population it stands for (N observed rows, U·I − N unobserved pairs) when
  ``population_weights`` (default; a plain mean over the batch's pairs otherwise, which on Coat
  over-weights the observed rows about 11-fold and trained worse: MAE 1.13 vs 0.99); ê is the
  pointwise loss of the prediction against the imputation model's output (its imputed label,
  through σ for ``bce``); the imputation model, a re-initialised copy of the prediction model, is
  fitted in ``after_step`` with its own Adam on Σ_observed (ê − e)²/p, as in the common
  implementations. With ``imputation_link = "squash"`` (default; ratings only) the imputed label
  is the imputation model's output through a sigmoid scaled to the training label range (the
  identity at the range's centre, saturating at its ends): fitted on the observed rows only,
  with weights 1/p up to ~250 on Coat, the unbounded imputation drifted to −3..9 on the
  unobserved pairs (−7..13 at ``imputation_lr`` 0.2), and the direct part (92 % of the
  population) pulled the predictions after it.

Stability (Wang et al.'s bias and variance of the DR estimate grow with the imputed error's
deviation e − ê and with 1/p̂): the squash bounds the first; ``clip`` (a propensity floor)
bounds the second. Both are needed for the predictions: on an observed row the DR gradient of
a squared loss is 2(ŷ − r̃) + 2(r̃ − y)/p (r̃ the imputed label), whose zero ŷ = r̃ + (y − r̃)/p
is far outside the rating range when p is small; at lr 0.05 on Coat the raw predictions reached
−22..27 with the squash alone and stayed in 0.8..4.8 with ``clip = 0.05`` as well (the shipped
``coat_mf_dr_jl`` config). ``valid_``/``test_clipped_share`` report what clipping the
predictions to the rating range hides.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import torch
from torch import nn

from offline import losses as L
from offline.objectives.base import Batch, Objective, check_choice, fresh_copy, score_pairs
from offline.objectives.sampling import ComplementSampler
from offline.objectives.tensors import TrainTensors
from recsys.validation import check_scalar, message


class RatingObjective(Objective):
    """Observed rows with labels, pointwise loss (``squared`` for ratings, ``bce`` for logits);
    ``clip`` floors the propensity of the IPS weights 1/p."""

    task = "rating"
    needs_propensity: ClassVar[bool] = False

    def __init__(self, *, pointwise_loss: str = "squared", clip: float | None = None) -> None:
        self.pointwise_loss = pointwise_loss
        self.clip = clip

    def _check_params(self) -> None:
        check_choice(self.pointwise_loss, "pointwise_loss", L.POINTWISE_LOSSES)
        if self.clip is not None:
            check_scalar(self.clip, "clip", 0.0, 1.0, low_open=True)

    def _setup(self, model: nn.Module, data: TrainTensors) -> None:
        binary = bool(((data.labels == 0) | (data.labels == 1)).all())
        if self.pointwise_loss == "bce" and not binary:
            raise ValueError(f"{self.name}: pointwise_loss='bce' needs 0/1 labels")
        self.inverse_propensity_: torch.Tensor | None = None
        if data.propensity is not None:
            self.inverse_propensity_ = L.inverse_propensity(data.propensity, self.clip).cpu()
        elif self.needs_propensity:
            raise ValueError(
                f"{self.name} needs propensities: give TrainTensors a propensity (per row) or a "
                "propensity_matrix (fit one with offline.propensity, or use naive)"
            )
        self._labels_cpu = data.labels.cpu()

    def _make_batch(
        self, rows: torch.Tensor, epoch: int, generator: torch.Generator, batch_size: int
    ) -> Batch:
        batch = {
            "rows": rows,
            "users": self._users_cpu[rows],
            "items": self._items_cpu[rows],
            "labels": self._labels_cpu[rows],
        }
        if self.inverse_propensity_ is not None:
            batch["inverse_propensity"] = self.inverse_propensity_[rows]
        return batch

    def _errors(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        prediction = model(batch["users"], batch["items"])
        return L.pointwise_loss(self.pointwise_loss, prediction, batch["labels"])

    def loss(self, model: nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        return self._finish(self._loss(model, batch), batch["rows"])

    @abc.abstractmethod
    def _loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The batch's loss (the statistics are recorded by ``loss``)."""


class Naive(RatingObjective):
    """Mean pointwise loss over observed rows (biased under MNAR observation)."""

    name = "naive"

    def _loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return L.naive_loss(self._errors(model, batch))


class IPS(RatingObjective):
    """Σ loss/p over the batch / batch size (Schnabel et al. 2016)."""

    name = "ips"
    needs_propensity = True

    def _loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return L.ips_loss(self._errors(model, batch), batch["inverse_propensity"])


class SNIPS(RatingObjective):
    """Σ loss/p / Σ 1/p over the batch (self-normalised IPS)."""

    name = "snips"
    needs_propensity = True

    def _loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return L.snips_loss(self._errors(model, batch), batch["inverse_propensity"])


def check_imputation_params(lr: object, weight_decay: object) -> None:
    """The imputation model's Adam settings (``imputation_lr``, ``imputation_weight_decay``)."""
    check_scalar(lr, "imputation_lr", 0.0, low_open=True)
    check_scalar(weight_decay, "imputation_weight_decay", 0.0)


IMPUTATION_LINKS = ("squash", "identity")


def squash(raw: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``raw`` squashed into (low, high) by a scaled sigmoid with slope 1 at the centre, so it is
    close to the identity in the middle of the range and saturates at its ends."""
    width = high - low
    return low + width * torch.sigmoid((raw - (low + high) / 2) * 4.0 / width)


class Imputation:
    """A doubly robust objective's imputation model: a re-initialised copy of the prediction
    model with its own Adam, giving ê (the prediction's loss against the imputed label).
    ``label_range`` (low, high) squashes the imputed label of a ``squared`` loss into that range
    (see the module docstring); None leaves it unbounded."""

    def __init__(self, model: nn.Module, seed: int, pointwise_loss: str, lr: float,
                 weight_decay: float, *, label_range: tuple[float, float] | None = None) -> None:
        self.module = fresh_copy(model, seed)
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=lr,
                                          weight_decay=weight_decay)
        self.pointwise_loss = pointwise_loss
        if label_range is not None and not label_range[0] < label_range[1]:
            raise ValueError(message("label_range", "low < high", repr(label_range)))
        self.label_range = label_range

    def label(self, imputation: torch.Tensor) -> torch.Tensor:
        """The imputed label of the imputation model's raw output (σ for ``bce``, squashed into
        ``label_range`` when given, else the output itself)."""
        if self.pointwise_loss == "bce":
            return torch.sigmoid(imputation)
        if self.label_range is not None:
            return squash(imputation, *self.label_range)
        return imputation

    def imputed(self, prediction: torch.Tensor, imputation: torch.Tensor) -> torch.Tensor:
        """ê: the prediction's loss against the imputed label (``label``)."""
        return L.pointwise_loss(self.pointwise_loss, prediction, self.label(imputation))

    def dr_loss(
        self,
        model: nn.Module,
        batch: Batch,
        weights: torch.Tensor,
        n_observed: float | None = None,
        n_unobserved: float | None = None,
    ) -> torch.Tensor:
        """The DR loss of the batch's observed rows and sampled pairs (``L.doubly_robust_loss``)."""
        users, items = batch["users"], batch["items"]
        sampled = (batch["sampled_users"], batch["sampled_items"])
        prediction, sampled_prediction = score_pairs(model, (users, items), sampled)
        errors = L.pointwise_loss(self.pointwise_loss, prediction, batch["labels"])
        with torch.no_grad():
            imputed_observed, imputed_sampled = score_pairs(self.module, (users, items), sampled)
        return L.doubly_robust_loss(
            errors,
            self.imputed(prediction, imputed_observed),
            self.imputed(sampled_prediction, imputed_sampled),
            weights,
            n_observed,
            n_unobserved,
        )

    def update(self, model: nn.Module, batch: Batch, weights: torch.Tensor) -> torch.Tensor:
        """One Adam step of the imputation model on ``L.imputation_loss``; that loss."""
        users, items = batch["users"], batch["items"]
        with torch.no_grad():
            prediction = model(users, items)
            errors = L.pointwise_loss(self.pointwise_loss, prediction, batch["labels"])
        loss = L.imputation_loss(self.imputed(prediction, self.module(users, items)), errors,
                                 weights)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss


class DRJL(RatingObjective):
    """Doubly robust joint learning (Wang et al. 2019) with uniformly sampled unobserved pairs."""

    name = "dr_jl"
    needs_propensity = True

    def __init__(
        self,
        *,
        pointwise_loss: str = "squared",
        clip: float | None = None,
        ratio: float = 1.0,
        population_weights: bool = True,
        imputation_lr: float = 0.01,
        imputation_weight_decay: float = 0.0,
        imputation_link: str = "squash",
    ) -> None:
        super().__init__(pointwise_loss=pointwise_loss, clip=clip)
        self.ratio = ratio
        self.population_weights = population_weights
        self.imputation_lr = imputation_lr
        self.imputation_weight_decay = imputation_weight_decay
        self.imputation_link = imputation_link

    def _check_params(self) -> None:
        super()._check_params()
        check_scalar(self.ratio, "ratio", 0.0, low_open=True)
        if not isinstance(self.population_weights, bool):
            raise TypeError(message("population_weights", "a bool", repr(self.population_weights)))
        check_imputation_params(self.imputation_lr, self.imputation_weight_decay)
        check_choice(self.imputation_link, "imputation_link", IMPUTATION_LINKS)

    def _setup(self, model: nn.Module, data: TrainTensors) -> None:
        super()._setup(model, data)
        n_pairs = data.n_users * data.n_items
        self._observed = ComplementSampler(self._users_cpu * data.n_items + self._items_cpu,
                                           segment=n_pairs, n_owners=1)
        if int(self._observed.free(torch.zeros(1, dtype=torch.long))) == 0:
            raise ValueError(f"{self.name}: every user-item pair is observed; nothing to impute")
        label_range = None
        if self.imputation_link == "squash" and self.pointwise_loss == "squared":
            low, high = float(data.labels.min()), float(data.labels.max())
            if low < high:
                label_range = (low, high)
        self.imputation_ = Imputation(model, self.seed_ % (2**31) + 1, self.pointwise_loss,
                                      self.imputation_lr, self.imputation_weight_decay,
                                      label_range=label_range)

    def _make_batch(
        self, rows: torch.Tensor, epoch: int, generator: torch.Generator, batch_size: int
    ) -> Batch:
        batch = super()._make_batch(rows, epoch, generator, batch_size)
        n_sampled = max(1, round(self.ratio * rows.numel()))
        keys = self._observed.sample(torch.zeros(n_sampled, dtype=torch.long), generator)
        n_items = self.data_.n_items
        batch["sampled_users"], batch["sampled_items"] = keys // n_items, keys % n_items
        return batch

    def _loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        populations: tuple[float | None, float | None] = (None, None)
        if self.population_weights:
            data = self.data_
            populations = (data.n_rows, data.n_users * data.n_items - data.n_rows)
        return self.imputation_.dr_loss(model, batch, batch["inverse_propensity"], *populations)

    def after_step(self, model: nn.Module, batch: Batch, epoch: int) -> None:
        loss = self.imputation_.update(model, batch, batch["inverse_propensity"])
        self._add("mean_imputation_loss", loss)
