"""Implicit-task objectives: positives only, negatives drawn exactly uniformly among the user's
non-positives.

- ``bce``, ``bpr``; ``rel_ips`` (Rel-MF, Saito et al. WSDM 2020: clicks reweighted by their
  exposure propensity);
- ``tce`` (T-CE, Wang et al. WSDM 2021: drop the largest-loss share of each batch, growing
  linearly to ``max_drop_rate`` over ``num_gradual`` global steps); ``rce`` (R-CE: losses
  weighted by detached σ(s)^β, or (1 − σ(s))^β for negatives, or σ(s_pos − s_neg)^β on BPR).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from offline import losses as L
from offline.objectives.base import Batch, Objective, check_choice, check_int, score_pairs
from offline.objectives.sampling import ComplementSampler
from offline.objectives.tensors import TrainTensors
from recsys.validation import check_scalar

BASES: tuple[str, ...] = ("bpr", "bce")
"""The losses T-CE and R-CE truncate or reweight: pairwise BPR or pointwise BCE."""


class ImplicitObjective(Objective):
    """Positives-only train rows; negatives uniform over each user's non-positive items.
    Batches are (user, positive, one negative) triples unless a subclass says otherwise."""

    task = "implicit"

    def _setup(self, model: nn.Module, data: TrainTensors) -> None:
        if not bool((data.labels == 1).all()):
            raise ValueError(
                f"{self.name} trains on positives only (all labels 1.0); drop the non-positive "
                "rows or use a rating-task objective with pointwise_loss='bce'"
            )
        self._positives = ComplementSampler(self._users_cpu * data.n_items + self._items_cpu,
                                            segment=data.n_items, n_owners=data.n_users)
        users_with_positives = torch.unique(self._users_cpu)
        full = self._positives.free(users_with_positives) == 0
        if bool(full.any()):
            raise ValueError(
                f"{self.name}: user(s) {users_with_positives[full][:5].tolist()} have every item "
                "as a positive; no negative can be sampled for them"
            )
        order = torch.argsort(self._users_cpu, stable=True)
        degree = torch.bincount(self._users_cpu, minlength=data.n_users)
        self._user_rows = order
        self._user_items = self._items_cpu[order]
        self._user_start = torch.cumsum(degree, 0) - degree
        self._user_degree = degree
        self._active_users = users_with_positives

    def sample_negatives(self, users: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One item per entry of ``users``, uniform over that user's non-positive items."""
        return self._positives.sample(users.reshape(-1), generator).reshape(users.shape)

    def _negative_users(self, users: torch.Tensor) -> torch.Tensor:
        """The user of each negative to draw for the batch's positives: one each (B,)."""
        return users

    def _make_batch(
        self, rows: torch.Tensor, epoch: int, generator: torch.Generator, batch_size: int
    ) -> Batch:
        users = self._users_cpu[rows]
        return {
            "rows": rows,
            "users": users,
            "pos_items": self._items_cpu[rows],
            "neg_items": self.sample_negatives(self._negative_users(users), generator),
        }

    def _scores(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of (user, positive) (B,) and (user, negative) (B,) or (B, n)."""
        users, negatives = batch["users"], batch["neg_items"]
        negative_users = users if negatives.ndim == 1 else users.unsqueeze(1).expand_as(negatives)
        positive, negative = score_pairs(
            model, (users, batch["pos_items"]), (negative_users, negatives)
        )
        return positive, negative


class BPR(ImplicitObjective):
    """−log σ(s_pos − s_neg) with one uniform negative per positive."""

    name = "bpr"

    def loss(self, model: nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        positive, negative = self._scores(model, batch)
        return self._finish(L.bpr_loss(positive, negative).mean(), batch["rows"])


class PairwiseOrPointwise(ImplicitObjective):
    """Objectives on BPR triples or on BCE over each positive and ``n_negatives`` negatives;
    ``fixed_base`` names the loss, else the ``base`` hyperparameter does."""

    fixed_base: ClassVar[str | None] = None

    def __init__(self, *, n_negatives: int = 1) -> None:
        self.n_negatives = n_negatives

    def _base(self) -> str:
        return self.fixed_base or self.base

    def _check_params(self) -> None:
        if self.fixed_base is None:
            check_choice(self.base, "base", BASES)
        check_int(self.n_negatives, "n_negatives", 1)

    def _negative_users(self, users: torch.Tensor) -> torch.Tensor:
        """One negative per positive (B,) for BPR, ``n_negatives`` (B, n) for BCE."""
        if self._base() == "bpr":
            return users
        return users.unsqueeze(1).expand(-1, self.n_negatives)

    def _pointwise(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels) of positives then negatives, flattened."""
        positive, negative = self._scores(model, batch)
        logits = torch.cat([positive, negative.reshape(-1)])
        labels = torch.cat([torch.ones_like(positive), torch.zeros_like(negative.reshape(-1))])
        return logits, labels


class BCE(PairwiseOrPointwise):
    """BCE on each positive and ``n_negatives`` sampled negatives."""

    name = "bce"
    fixed_base = "bce"

    def loss(self, model: nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        logits, labels = self._pointwise(model, batch)
        return self._finish(L.bce_with_logits(logits, labels).mean(), batch["rows"])


class RelIPS(PairwiseOrPointwise):
    """Unbiased pointwise loss for clicks under exposure bias (Rel-MF, ``L.rel_ips_loss``) on
    each click, with its exposure propensity floored at ``clip``; sampled non-clicked pairs are
    plain negatives. Naive BCE treats every unclicked pair as irrelevant and so learns exposure ×
    relevance."""

    name = "rel_ips"
    fixed_base = "bce"

    def __init__(self, *, n_negatives: int = 1, clip: float = 0.05) -> None:
        super().__init__(n_negatives=n_negatives)
        self.clip = clip

    def _check_params(self) -> None:
        super()._check_params()
        check_scalar(self.clip, "clip", 0.0, 1.0, low_open=True)

    def _setup(self, model: nn.Module, data: TrainTensors) -> None:
        super()._setup(model, data)
        if data.propensity is None:
            raise ValueError(f"{self.name} needs the exposure propensity of each click: set "
                             "[train.propensity] (e.g. estimator = \"popularity\")")
        self._inverse = L.inverse_propensity(data.propensity.cpu(), self.clip)

    def loss(self, model: nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        positive, negative = self._scores(model, batch)
        weight = self._inverse[batch["rows"]].to(positive.device, positive.dtype)
        negative = negative.reshape(-1)
        value = torch.cat([
            L.rel_ips_loss(positive, weight),
            L.bce_with_logits(negative, torch.zeros_like(negative)),
        ]).mean()
        return self._finish(value, batch["rows"])


class TCE(PairwiseOrPointwise):
    """Truncated loss (T-CE): drop the drop_rate(t) share of largest losses in each batch."""

    name = "tce"

    def __init__(
        self,
        *,
        base: str = "bpr",
        max_drop_rate: float = 0.2,
        num_gradual: int = 30000,
        n_negatives: int = 1,
    ) -> None:
        super().__init__(n_negatives=n_negatives)
        self.base = base
        self.max_drop_rate = max_drop_rate
        self.num_gradual = num_gradual

    def _check_params(self) -> None:
        super()._check_params()
        check_scalar(self.max_drop_rate, "max_drop_rate", 0.0, 1.0, high_open=True)
        check_int(self.num_gradual, "num_gradual", 0)

    def loss(self, model: nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        rate = L.drop_rate_schedule(int(batch["step"]), self.max_drop_rate, self.num_gradual)
        self._last["drop_rate"] = rate
        if self._base() == "bpr":
            positive, negative = self._scores(model, batch)
            value, keep = L.truncated_loss(L.bpr_loss(positive, negative), rate)
            return self._finish(value, batch["rows"][keep])
        logits, labels = self._pointwise(model, batch)
        value, keep = L.truncated_loss(L.bce_with_logits(logits, labels), rate)
        n_positive = batch["rows"].numel()
        return self._finish(value, batch["rows"][keep[:n_positive]])


class RCE(PairwiseOrPointwise):
    """Reweighted loss (R-CE): losses weighted by the detached predicted agreement to the β."""

    name = "rce"

    def __init__(self, *, base: str = "bpr", beta: float = 0.25, n_negatives: int = 1) -> None:
        super().__init__(n_negatives=n_negatives)
        self.base = base
        self.beta = beta

    def _check_params(self) -> None:
        super()._check_params()
        check_scalar(self.beta, "beta", 0.0)

    def loss(self, model: nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        if self._base() == "bpr":
            positive, negative = self._scores(model, batch)
            value = L.reweighted_bpr(positive, negative, self.beta).mean()
        else:
            logits, labels = self._pointwise(model, batch)
            value = L.reweighted_bce(logits, labels, self.beta).mean()
        return self._finish(value, batch["rows"])
