"""Doubly robust clicks (``dr_clicks``): the loss is the formula, its expectation is the
full-information loss under a wrong imputation, and it trains through ``train_run``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from offline import losses as L
from offline.dataset import Dataset, interactions_frame
from offline.objectives import DRClicks, TrainTensors, make_objective
from offline.objectives.dr_clicks import exposed_pairs
from offline.prepared import PreparedData
from offline.spec import TrainSpec
from offline.training import train_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Table(nn.Module):
    """A free logit per (user, item): any prediction or imputation can be set by hand."""

    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_users, n_items))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.logits.zero_()

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.logits[users, items]


def tensors(users, items, labels, propensity, n_users, n_items) -> TrainTensors:
    return TrainTensors(users=torch.tensor(users), items=torch.tensor(items),
                        labels=torch.tensor(labels, dtype=torch.float32), n_users=n_users,
                        n_items=n_items, propensity=torch.tensor(propensity, dtype=torch.float32))


def ready(data: TrainTensors, model: nn.Module, seed: int = 0, **hp: object) -> DRClicks:
    objective = make_objective("dr_clicks", **hp)
    assert isinstance(objective, DRClicks)
    objective.setup(model, data, torch.Generator().manual_seed(seed))
    return objective


def bce(logit: float, label: float) -> float:
    return -label * math.log(1 / (1 + math.exp(-logit))) - (1 - label) * math.log(
        1 - 1 / (1 + math.exp(-logit)))


def test_exposed_pairs_merge_exposures_and_turn_request_propensities_into_exposure_ones() -> None:
    # user 0: 3 rows (pair (0,0) twice: one click), user 1: 1 row
    data = tensors([0, 0, 0, 1], [0, 0, 1, 2], [1, 0, 0, 1], [0.5, 0.5, 0.2, 0.4], 2, 3)
    users, items, labels, p = exposed_pairs(data, "per_exposure")
    assert users.tolist() == [0, 0, 1] and items.tolist() == [0, 1, 2]
    assert labels.tolist() == [0.5, 0.0, 1.0]
    assert torch.allclose(p, torch.tensor([1 - 0.5**3, 1 - 0.8**3, 0.4]))
    assert torch.allclose(exposed_pairs(data, "per_pair")[3], torch.tensor([0.5, 0.2, 0.4]))


def test_loss_is_the_doubly_robust_formula_on_a_hand_made_batch() -> None:
    data = tensors([0, 0, 0, 1], [0, 0, 1, 2], [1, 0, 0, 1], [0.5, 0.5, 0.2, 0.4], 2, 3)
    model = Table(2, 3)
    with torch.no_grad():
        model.logits.copy_(torch.tensor([[0.3, -1.0, 0.7], [1.5, -0.2, 0.4]]))
    objective = ready(data, model, ratio=2.0)
    with torch.no_grad():
        objective.imputation_.module.logits.copy_(torch.tensor([[2.0, -2.0, 1.0],
                                                                [-1.0, 0.5, 3.0]]))
    batch = next(objective.batches(0, batch_size=3))
    assert batch["rows"].numel() == 3 and batch["sampled_users"].numel() == 6
    sampled = list(zip(batch["sampled_users"].tolist(), batch["sampled_items"].tolist(),
                       strict=True))
    assert set(sampled) <= {(0, 2), (1, 0), (1, 1)}  # never an exposed pair
    y = model.logits.detach().double().numpy()
    r = 1 / (1 + np.exp(-objective.imputation_.module.logits.detach().double().numpy()))
    exposed = {(0, 0): (0.5, 1 - 0.5**3), (0, 1): (0.0, 1 - 0.8**3), (1, 2): (1.0, 0.4)}
    # (1/UI)[Σ_exposed ê + (e − ê)/p + (N_unexposed / S) Σ_sampled ê], UI = 6, N_unexposed = 3
    expected = sum(bce(y[u, i], r[u, i]) + (bce(y[u, i], c) - bce(y[u, i], r[u, i])) / p
                   for (u, i), (c, p) in exposed.items())
    expected += 3 / len(sampled) * sum(bce(y[u, i], r[u, i]) for u, i in sampled)
    value = objective.loss(model, batch, 0)
    assert value.item() == pytest.approx(expected / 6, rel=1e-5)
    value.backward()
    assert model.logits.grad is not None and bool(model.logits.grad.abs().sum() > 0)


@pytest.mark.parametrize("propensity", ["per_exposure", "per_pair"])
def test_expected_loss_is_the_full_information_loss_with_a_wrong_imputation(
        propensity: str) -> None:
    """Logs of a skewed policy over 3 users × 4 items, 2 requests each, Monte Carlo over 20 seeds
    of 400 independent copies of those users each (one batch holds every copy's exposed pairs, so
    the loss is the mean of 400 independent DR estimates): the mean matches the full-information
    loss (1/UI) Σ BCE(ŷ, r) though the imputation is far off; the naive mean over exposed pairs and
    the imputation alone (DR without its correction) miss it."""
    copies, n_items, n_requests = 400, 4, 2
    relevance = np.array([[0.9, 0.1, 0.6, 0.2], [0.2, 0.8, 0.3, 0.7], [0.5, 0.4, 0.9, 0.05]])
    pi = np.array([[0.6, 0.25, 0.1, 0.05], [0.05, 0.1, 0.25, 0.6], [0.25, 0.6, 0.05, 0.1]])
    # right where exposure is likely, badly wrong where it is rare: the exposed pairs flatter it
    logits = np.where(pi >= 0.25, np.log(relevance / (1 - relevance)),
                      np.where(relevance > 0.5, -3.0, 3.0))
    kinds = np.tile(np.arange(3), copies)  # the type of each user
    n_users = kinds.size
    model = Table(n_users, n_items)
    with torch.no_grad():
        model.logits.copy_(torch.tensor(logits[kinds]))
    truth = L.bce_with_logits(torch.tensor(logits), torch.tensor(relevance)).mean().item()
    wrong = 2.5  # imputed relevance σ(2.5) ≈ 0.92 everywhere
    rng = np.random.default_rng(0)
    dr, naive, direct = [], [], []
    for seed in range(20):
        users = np.repeat(np.arange(n_users), n_requests)
        cdf = np.cumsum(pi[kinds[users]], axis=1)
        items = np.minimum((rng.random((users.size, 1)) > cdf).sum(axis=1), n_items - 1)
        exposure = pi[kinds[users], items]
        clicks = (rng.random(users.size) < relevance[kinds[users], items]).astype(np.float32)
        row_p = exposure if propensity == "per_exposure" else 1 - (1 - exposure) ** n_requests
        data = tensors(users.tolist(), items.tolist(), clicks.tolist(), row_p.tolist(),
                       n_users, n_items)
        objective = ready(data, model, seed=seed, ratio=4.0, propensity=propensity)
        with torch.no_grad():
            objective.imputation_.module.logits.fill_(wrong)
        batch = next(objective.batches(0, batch_size=n_users * n_items))
        with torch.no_grad():
            dr.append(objective.loss(model, batch, 0).item())
            predicted = model(batch["users"], batch["items"])
            naive.append(L.bce_with_logits(predicted, batch["labels"]).mean().item())
            direct.append(L.bce_with_logits(model.logits, torch.sigmoid(
                objective.imputation_.module.logits)).mean().item())
    se = np.std(dr, ddof=1) / math.sqrt(len(dr))
    assert abs(np.mean(dr) - truth) < 4 * se, (np.mean(dr), truth, se)
    assert np.mean(naive) < truth - 20 * se
    assert abs(np.mean(direct) - truth) > 20 * se


def test_hyperparameters_are_checked() -> None:
    assert make_objective("dr_clicks").get_params() == {
        "ratio": 1.0, "propensity": "per_exposure", "imputation": "error",
        "imputation_lr": 0.01, "imputation_weight_decay": 0.0}
    for hp, match in (({"ratio": 0}, "ratio"), ({"propensity": "pair"}, "propensity"),
                      ({"imputation": "clicks"}, "imputation"),
                      ({"imputation_lr": 0.0}, "imputation_lr")):
        with pytest.raises(ValueError, match=f"^{match}"):
            make_objective("dr_clicks", **hp)


def test_setup_refuses_what_it_cannot_train() -> None:
    ratings = tensors([0, 1], [0, 1], [4.0, 2.0], [0.5, 0.5], 2, 2)
    with pytest.raises(ValueError, match="0/1 click labels"):
        ready(ratings, Table(2, 2))
    no_propensity = TrainTensors(users=torch.tensor([0]), items=torch.tensor([0]),
                                 labels=torch.tensor([1.0]), n_users=2, n_items=2)
    with pytest.raises(ValueError, match=r"\[train.propensity\]"):
        ready(no_propensity, Table(2, 2))
    everything = tensors([0, 0], [0, 1], [1.0, 0.0], [0.5, 0.5], 1, 2)
    with pytest.raises(ValueError, match="every user-item pair is exposed"):
        ready(everything, Table(1, 2))


@pytest.mark.parametrize("imputation", ["error", "relevance"])
def test_imputation_step_moves_the_imputation_model_only(imputation: str) -> None:
    data = tensors([0, 0, 1, 1], [0, 1, 1, 2], [1, 0, 1, 0], [0.3, 0.2, 0.4, 0.1], 2, 3)
    model = Table(2, 3)
    with torch.no_grad():
        model.logits.fill_(0.5)
    objective = ready(data, model, imputation=imputation, imputation_lr=0.1)
    before = objective.imputation_.module.logits.detach().clone()
    batch = next(objective.batches(0, batch_size=8))
    objective.after_step(model, batch, 0)
    after = objective.imputation_.module.logits.detach()
    assert not torch.equal(before, after)
    assert torch.equal(model.logits.detach(), torch.full((2, 3), 0.5))
    stats = objective.epoch_stats()
    assert {"imputation_loss", "imputed_relevance_unexposed"} <= stats.keys()


def exposure_log(seed: int = 0, n_users: int = 40, n_items: int = 30, per_user: int = 24):
    """Shown items of a popularity-skewed policy, clicks from a rank-2 relevance: the 0/1 rows of a
    shown-feedback data set with their logged propensities and the true relevance."""
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=(n_users, 2)), rng.normal(size=(n_items, 2))
    relevance = 1 / (1 + np.exp(-(u @ v.T) - 1.0))
    pi = np.exp(1.5 * rng.normal(size=n_items))
    pi /= pi.sum()

    def frame(n):
        users = np.repeat(np.arange(n_users), n)
        items = rng.choice(n_items, size=users.size, p=pi)
        clicks = (rng.random(users.size) < relevance[users, items]).astype(float)
        return interactions_frame(users, items, clicks, propensity=pi[items])

    dataset = Dataset("exposures", "rating", n_users, n_items, frame(per_user), frame(6),
                      frame(6), true_relevance=relevance)
    return PreparedData(dataset)


def test_trains_through_train_run() -> None:
    spec = TrainSpec.from_table({
        "name": "tiny-dr-clicks",
        "data": {"source": "simulator_exposure"},
        "model": {"name": "mf", "dim": 4, "global_bias": 0.0},
        "objective": {"name": "dr_clicks", "ratio": 2.0},
        "optimizer": {"lr": 0.05, "epochs": 6, "batch_size": 128, "monitor": "valid_auc",
                      "patience": 0},
    })
    result = train_run(spec, 0, exposure_log())
    history = result.history
    assert len(history) == 6
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(np.isfinite(r["train_imputation_loss"]) for r in history)
    assert 0.0 < history[-1]["train_imputed_relevance_unexposed"] < 1.0
    for key in ("valid_auc", "test_true_recall@20", "test_true_relevance@20"):
        assert np.isfinite(result.metrics[key])
