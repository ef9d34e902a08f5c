"""Fit the simulator's user and item parameters to logged slates ("mirroring" real users).

The likelihood is the simulator's own listwise choice: for each logged request, the click (or no
click) is categorical over the shown items plus "no click",

    P(slot j) = exp(s_j + log θ_{pos_j}) / (1 + Σ_k exp(s_k + log θ_{pos_k})),  P(none) = 1 / (...)

with s = ⟨user_factor, item_factor⟩ + item_bias. The no-click utility is fixed at 0 and θ of the
first position at 1 (both are otherwise unidentifiable). Slots may be missing (``-1``): a log that
records one shown item per row, as the Open Bandit Dataset does, is a slate of one at its
position. Fitted with full-batch Adam in torch; ``to_simulator`` returns a ``SlateSimulator`` with
these parameters so policies can be evaluated against users that behave like the logged ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import torch
from sklearn.base import BaseEstimator

from recsys.validation import message
from simulators.model import SimulatorConfig, SlateSimulator


def _check_logs(user_index, slates, positions, clicked, n_users, n_items, n_positions):
    slates = np.asarray(slates)
    if slates.ndim != 2:
        raise ValueError(message("slates", "(n, slate_size) item ids", f"shape {slates.shape}"))
    n, k = slates.shape
    positions = np.broadcast_to(np.arange(k), (n, k)) if positions is None else positions
    positions = np.asarray(positions)
    if positions.shape != slates.shape:
        raise ValueError(
            message("positions", f"the shape of slates {slates.shape}", positions.shape)
        )
    user_index = np.zeros(n, dtype=np.int64) if user_index is None else np.asarray(user_index)
    clicked = np.asarray(clicked)
    for name, array in (("user_index", user_index), ("clicked", clicked)):
        if array.shape != (n,):
            raise ValueError(message(name, f"shape ({n},)", f"shape {array.shape}"))
    shown = slates >= 0
    if (slates >= n_items).any():
        raise ValueError(message("slates", f"item ids < n_items ({n_items})", slates.max()))
    if ((positions < 0) & shown).any() or (positions >= n_positions).any():
        raise ValueError(
            message("positions", f"positions of shown slots in [0, {n_positions})",
                    f"values in [{positions[shown].min()}, {positions.max()}]")
        )
    if user_index.min() < 0 or user_index.max() >= n_users:
        raise ValueError(
            message("user_index", f"ids in [0, {n_users})",
                    f"values in [{user_index.min()}, {user_index.max()}]")
        )
    if clicked.min() < -1 or clicked.max() >= k:
        raise ValueError(
            message("clicked", f"a slot index in [0, {k}) or -1 for no click",
                    f"values in [{clicked.min()}, {clicked.max()}]")
        )
    valid = clicked >= 0
    if not shown[np.flatnonzero(valid), clicked[valid]].all():
        raise ValueError(message("clicked", "shown slots", "an empty slot (-1 in slates)"))
    return user_index, slates, positions, clicked


class SlateChoiceModel(BaseEstimator):
    """Listwise choice model of clicks on slates, fitted by maximum likelihood.

    Hyperparameters: ``n_users``, ``n_items``, ``n_positions``, ``dim`` (latent size), ``l2``
    (penalty on factors and biases, per row), ``max_iter``, ``learning_rate``, ``random_state``.
    Learned: ``user_factors_``, ``item_factors_``, ``item_bias_``, ``examination_`` (θ per
    position, θ_0 = 1), ``loss_curve_``.
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        n_positions: int,
        dim: int = 4,
        l2: float = 1e-3,
        max_iter: int = 300,
        learning_rate: float = 0.05,
        random_state: int = 0,
    ) -> None:
        self.n_users = n_users
        self.n_items = n_items
        self.n_positions = n_positions
        self.dim = dim
        self.l2 = l2
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.random_state = random_state

    def _utilities(self, params, users, slates, positions):
        u, v, bias, log_exam, intercept = params
        safe = slates.clamp(min=0)
        s = (u[users][:, None, :] * v[safe]).sum(-1) + bias[safe] + intercept
        exam = torch.cat([torch.zeros(1, dtype=log_exam.dtype), log_exam])
        s = s + exam[positions.clamp(min=0)]
        s = torch.where(slates >= 0, s, torch.full_like(s, -torch.inf))
        return torch.cat([torch.zeros(len(s), 1, dtype=s.dtype), s], dim=1)  # col 0 = no click

    def fit(
        self, user_index: Any, slates: Any, positions: Any = None, clicked: Any = None
    ) -> SlateChoiceModel:
        """Maximise the listwise likelihood of ``clicked`` (slot index, -1 none)."""
        if clicked is None:
            raise ValueError(message("clicked", "the slot index clicked, or -1", "None"))
        # Full-batch steps on logs of this size are dominated by thread hand-offs, not flops.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._fit(user_index, slates, positions, clicked)
        finally:
            torch.set_num_threads(threads)

    def _fit(self, user_index, slates, positions, clicked) -> SlateChoiceModel:
        users, slates, positions, clicked = _check_logs(
            user_index, slates, positions, clicked, self.n_users, self.n_items, self.n_positions
        )
        gen = torch.Generator().manual_seed(self.random_state)
        dt = torch.float32
        u = (0.1 * torch.randn(self.n_users, self.dim, generator=gen, dtype=dt)).requires_grad_()
        v = (0.1 * torch.randn(self.n_items, self.dim, generator=gen, dtype=dt)).requires_grad_()
        rate = max((clicked >= 0).mean(), 1e-4) / max((slates >= 0).sum(1).mean(), 1)
        # An unpenalised intercept carries the overall click rate, so the penalty shrinks item
        # biases towards the average item rather than towards a 50% click rate.
        intercept = torch.tensor(float(np.log(rate)), dtype=dt).requires_grad_()
        bias = torch.zeros(self.n_items, dtype=dt).requires_grad_()
        log_exam = torch.zeros(self.n_positions - 1, dtype=dt).requires_grad_()
        params = [u, v, bias, log_exam, intercept]
        t_users = torch.as_tensor(users, dtype=torch.long)
        t_slates = torch.as_tensor(slates, dtype=torch.long)
        t_pos = torch.as_tensor(np.ascontiguousarray(positions), dtype=torch.long)
        target = torch.as_tensor(clicked + 1, dtype=torch.long)
        opt = torch.optim.Adam(params, lr=self.learning_rate)
        n = len(target)
        self.loss_curve_ = []
        for _ in range(self.max_iter):
            opt.zero_grad()
            logits = self._utilities(params, t_users, t_slates, t_pos)
            nll = torch.nn.functional.cross_entropy(logits, target)
            penalty = self.l2 * (u.square().sum() + v.square().sum() + bias.square().sum()) / n
            loss = nll + penalty
            loss.backward()
            opt.step()
            self.loss_curve_.append(float(nll.detach()))
        self.user_factors_ = u.detach().numpy().astype(float)
        self.item_factors_ = v.detach().numpy().astype(float)
        self.item_bias_ = (bias + intercept).detach().numpy().astype(float)
        self.examination_ = np.exp(np.r_[0.0, log_exam.detach().numpy().astype(float)])
        return self

    def click_probabilities(
        self, user_index: Any, slates: Any, positions: Any = None
    ) -> np.ndarray:
        """(n, slate_size + 1): P(click slot j), last column P(no click)."""
        if not hasattr(self, "item_bias_"):
            raise RuntimeError("SlateChoiceModel is not fitted: call fit first")
        slates = np.asarray(slates)
        dummy = np.full(slates.shape[0], -1)
        users, slates, positions, _ = _check_logs(
            user_index, slates, positions, dummy, self.n_users, self.n_items, self.n_positions
        )
        params = [
            torch.as_tensor(self.user_factors_),
            torch.as_tensor(self.item_factors_),
            torch.as_tensor(self.item_bias_),
            torch.as_tensor(np.log(self.examination_[1:])),
            torch.tensor(0.0, dtype=torch.float64),
        ]
        with torch.no_grad():
            logits = self._utilities(
                params,
                torch.as_tensor(users, dtype=torch.long),
                torch.as_tensor(slates, dtype=torch.long),
                torch.as_tensor(np.ascontiguousarray(positions), dtype=torch.long),
            )
            probs = torch.softmax(logits.double(), dim=1).numpy()
        return np.concatenate([probs[:, 1:], probs[:, :1]], axis=1)

    def log_likelihood(self, user_index: Any, slates: Any, positions: Any, clicked: Any) -> float:
        """Mean log-likelihood per request of held-out logs."""
        probs = self.click_probabilities(user_index, slates, positions)
        clicked = np.asarray(clicked)
        chosen = np.where(clicked >= 0, clicked, probs.shape[1] - 1)
        return float(np.log(probs[np.arange(len(chosen)), chosen]).mean())

    def to_simulator(self, user_weights: np.ndarray | None = None) -> SlateSimulator:
        """A ``SlateSimulator`` whose users and items are the fitted ones (features = latents)."""
        if not hasattr(self, "item_bias_"):
            raise RuntimeError("SlateChoiceModel is not fitted: call fit first")
        config = SimulatorConfig(
            n_users=self.n_users,
            n_items=self.n_items,
            dim=self.dim,
            slate_size=min(self.n_positions, self.n_items),
            feature_noise=0.0,
            affinity=float(np.sqrt(self.dim)),  # the simulator divides by √d
            no_click_utility=0.0,
            seed=self.random_state,
        )
        sim = SlateSimulator(config)
        sim.user_latent = self.user_factors_.copy()
        sim.item_latent = self.item_factors_.copy()
        sim.item_features = self.item_factors_.copy()
        sim._user_feature_noise = np.zeros_like(sim.user_latent)
        sim.item_bias = self.item_bias_.copy()
        sim.examination = self.examination_[: config.slate_size].copy()
        if user_weights is not None:
            weights = np.asarray(user_weights, dtype=float)
            sim.user_weights = weights / weights.sum()
        return sim


def reproduction_report(
    model: SlateChoiceModel, user_index: Any, slates: Any, positions: Any, clicked: Any
) -> dict[str, pl.DataFrame]:
    """Held-out click rates per item and per position: observed vs the fitted model's expectation.

    Returns frames ``per_item`` and ``per_position`` (impressions, observed_ctr, predicted_ctr)
    and ``summary`` (impression-weighted absolute errors; mean log-likelihood per request against
    a constant model that knows the held-out click rate, a deliberately strong baseline).
    """
    slates = np.asarray(slates)
    positions = (
        np.broadcast_to(np.arange(slates.shape[1]), slates.shape)
        if positions is None
        else np.asarray(positions)
    )
    clicked = np.asarray(clicked)
    probs = model.click_probabilities(user_index, slates, positions)[:, :-1]
    shown = slates >= 0
    click_matrix = np.zeros(slates.shape)
    rows = np.flatnonzero(clicked >= 0)
    click_matrix[rows, clicked[rows]] = 1.0
    long = pl.DataFrame(
        {
            "item_id": slates[shown],
            "position": positions[shown],
            "observed": click_matrix[shown],
            "predicted": probs[shown],
        }
    )
    frames = {}
    for key in ("item_id", "position"):
        frames[f"per_{key.split('_')[0]}"] = (
            long.group_by(key)
            .agg(
                pl.len().alias("impressions"),
                pl.col("observed").mean().alias("observed_ctr"),
                pl.col("predicted").mean().alias("predicted_ctr"),
            )
            .sort(key)
        )
    base_rate = long["observed"].mean()
    per_slot = np.where(shown, base_rate, 0.0)
    no_click = np.clip(1 - per_slot.sum(1), 1e-12, 1)
    baseline_p = np.where(clicked >= 0, base_rate, no_click)
    summary = {"impressions": long.height, "observed_ctr": base_rate}
    for name, frame in frames.items():
        w = frame["impressions"].to_numpy()
        err = np.abs(frame["observed_ctr"].to_numpy() - frame["predicted_ctr"].to_numpy())
        summary[f"{name}_weighted_abs_error"] = float((w * err).sum() / w.sum())
    summary["log_likelihood"] = model.log_likelihood(user_index, slates, positions, clicked)
    summary["baseline_log_likelihood"] = float(np.log(baseline_p).mean())
    frames["summary"] = pl.DataFrame([summary])
    return frames
