"""Personalised loss-distribution denoising ``pld`` (Zhang et al. WWW 2025, as in the released
code) and its pointwise variant ``pld_bce``, implicit task.

``warmup_epochs`` of plain BPR, then user-uniform batches with a pool of ``k`` of the user's train
positives, one shared negative, personal losses without gradient, one candidate drawn with
softmax(−ℓ/τ) (``L.pld_choose``) and a BPR step on it; ``pld_bce`` scores candidates by
−log σ(s) and takes a BCE step.
"""

from __future__ import annotations

import torch
from torch import nn

from offline import losses as L
from offline.objectives.base import Batch, check_int, score_pairs, unwrap
from offline.objectives.implicit import ImplicitObjective
from offline.objectives.sampling import floyd_pools
from offline.objectives.tensors import TrainTensors
from recsys.validation import check_scalar


def score_pool(
    model: nn.Module, users: torch.Tensor, pool_items: torch.Tensor, negatives: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, k) scores of each user's candidate pool and (B,) of its shared negative in one
    forward call; one user lookup per user when the model has ``score_candidates``."""
    if hasattr(unwrap(model), "score_candidates"):  # its forward takes [B, C] candidates
        scores = model(users, torch.cat([pool_items, negatives.unsqueeze(1)], 1))
        return scores[:, :-1], scores[:, -1]
    pool, negative = score_pairs(
        model, (users.unsqueeze(1).expand_as(pool_items), pool_items), (users, negatives)
    )
    return pool, negative


class PLD(ImplicitObjective):
    """Personalised loss-distribution denoising (Zhang et al. WWW 2025), as in the released code."""

    name = "pld"

    def __init__(self, *, warmup_epochs: int = 5, k: int = 5, tau: float = 0.1) -> None:
        self.warmup_epochs = warmup_epochs
        self.k = k
        self.tau = tau

    def _check_params(self) -> None:
        check_int(self.warmup_epochs, "warmup_epochs", 0)
        check_int(self.k, "k", 1)  # the candidate pool size
        check_scalar(self.tau, "tau", 0.0, low_open=True)  # the softmax temperature

    def _warming_up(self, epoch: int) -> bool:
        return epoch < self.warmup_epochs

    def _setup(self, model: nn.Module, data: TrainTensors) -> None:
        super()._setup(model, data)
        # The noise flag of each train row in the user-sorted order the pools index, built once:
        # the pool statistics are then one gather per step.
        self._pool_noise = (None if data.noise is None
                            else data.noise[self._user_rows.to(data.noise.device)])

    def _make_batch(
        self, rows: torch.Tensor, epoch: int, generator: torch.Generator, batch_size: int
    ) -> Batch:
        if self._warming_up(epoch):
            return super()._make_batch(rows, epoch, generator, batch_size)
        size, k = batch_size, self.k
        pick = torch.randint(self._active_users.numel(), (size,), generator=generator)
        users = self._active_users[pick]
        offsets = floyd_pools(self._user_degree[users], k, generator)
        # Positions in the user-sorted order: items come from one gather; the rows (for the
        # statistics and the chosen pair) only where needed.
        positions = self._user_start[users].unsqueeze(1) + offsets
        return {
            "users": users,
            "pool_positions": positions,
            "pool_items": self._user_items[positions],
            "neg_items": self.sample_negatives(users, generator),
            "uniforms": torch.rand(size, generator=generator, dtype=torch.float64),
        }

    def _candidate_losses(
        self, pool_scores: torch.Tensor, negative_scores: torch.Tensor
    ) -> torch.Tensor:
        return L.bpr_loss(pool_scores, negative_scores.unsqueeze(1))

    def _step_loss(self, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        return L.bpr_loss(positive, negative).mean()

    def loss(self, model: nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        users, negatives = batch["users"], batch["neg_items"]
        if self._warming_up(epoch):
            value = self._step_loss(*score_pairs(model, (users, batch["pos_items"]),
                                                 (users, negatives)))
            return self._finish(value, batch["rows"])
        positions, pool_items = batch["pool_positions"], batch["pool_items"]
        size = pool_items.shape[0]
        # Personal losses without gradient (one user lookup per user), then an ordinary step on
        # the chosen pair; scoring the pool with gradient instead costs more in the backward
        # pass (measured: tests/benchmarks/bench_offline.py) than this second, small forward.
        with torch.no_grad():
            pool_scores, negative_scores = score_pool(model, users, pool_items, negatives)
            candidate_losses = self._candidate_losses(pool_scores, negative_scores)
            choice = L.pld_choose(candidate_losses, self.tau, batch["uniforms"])
        index = torch.arange(size, device=choice.device)
        # The step scores (user, chosen) and (user, negative) as a pool of one: one user lookup.
        chosen, negative = score_pool(model, users, pool_items[index, choice].unsqueeze(1),
                                      negatives)
        value = self._step_loss(chosen.squeeze(1), negative)
        chosen_rows = self._user_rows[positions[index.cpu(), choice.cpu()]]
        self._add("n_trained_pool", float(positions.numel()))
        if self._pool_noise is not None:
            self._add("n_noisy_pool", self._pool_noise[positions].sum())
        return self._finish(value, chosen_rows)


class PLDBCE(PLD):
    """PLD with pointwise candidate losses −log σ(s) and a BCE step (positive + one negative)."""

    name = "pld_bce"

    def _candidate_losses(
        self, pool_scores: torch.Tensor, negative_scores: torch.Tensor
    ) -> torch.Tensor:
        return L.bce_with_logits(pool_scores, torch.ones_like(pool_scores))

    def _step_loss(self, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            L.bce_with_logits(positive, torch.ones_like(positive)),
            L.bce_with_logits(negative, torch.zeros_like(negative)),
        ]).mean()
