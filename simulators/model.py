"""A parametric slate user simulator with a vectorised batch API.

Users and items have latent vectors; a policy only sees noisy, partial views of them (the
observable features). A request is one user arriving; the policy shows a slate of ``slate_size``
items and the user clicks according to one of two choice models (``choice_model``), both on the
utility s = affinity · ⟨u, v⟩ / √d + item bias − fatigue, the examination weight
θ_k = position_decay**k of position k and the no-click utility b:

* ``"mnl"`` (default): one listwise choice among the shown items plus "no click", at most one
  click per slate, items compete (Eide et al.'s slate likelihood with positions)::

      P(click slot k) = θ_k exp(s_k) / (exp(b) + Σ_j θ_j exp(s_j)),   P(no click) = exp(b) / (...)

* ``"pbm"``: the position-based click model. Each shown item is clicked independently with
  probability ``θ_k σ(s_k − b)`` (examination × attractiveness), so a slate can get several
  clicks and its expected clicks are a sum over slots: the reward is additive over positions,
  the assumption of slate off-policy estimators (independent-position IPS, pseudo-inverse),
  which are biased on MNL logs. One item alone at position 0 has the same click probability
  ``σ(s − b)`` in both models.

``click_noise`` ε is the same in both: with probability ε a request's clicks are replaced by one
accidental click on a shown item drawn uniformly (labelled ``noise``).

Every optional effect (popularity skew of who arrives, accidental clicks, preference drift, new
items, fatigue) is off by default and seeded. Requests in one batch are simultaneous: state that
effects change (drift, fatigue, item arrivals) moves between batches, never inside one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit

from recsys.validation import check_scalar, did_you_mean, message
from simulators.exposure import ExposureTable

CHOICE_MODELS = ("mnl", "pbm")
"""The click models ``SimulatorConfig.choice_model`` accepts (see the module)."""


@dataclass(frozen=True)
class SimulatorConfig:
    """Hyperparameters of the simulated world; ``seed`` fixes the world (latents, features)."""

    n_users: int = 1000
    n_items: int = 100
    dim: int = 16
    slate_size: int = 3
    observed_dims: int | None = None
    """How many latent dimensions the features expose (None: all)."""
    feature_noise: float = 0.5
    affinity: float = 1.0
    item_bias_std: float = 0.5
    choice_model: str = "mnl"
    """``"mnl"`` (one listwise choice per slate) or ``"pbm"`` (position-based: independent
    clicks per slot); see the module."""
    no_click_utility: float = 4.5
    """b in the choice model; the default gives a click-through rate of a few percent."""
    position_decay: float = 0.7
    popularity_bias: float = 0.0
    """Zipf exponent of user activity: > 0 makes a few users produce most requests."""
    click_noise: float = 0.0
    """Probability that a request ends in an accidental click on a random shown item."""
    drift_std: float = 0.0
    """Per-request random-walk step of a user's latent vector."""
    new_item_fraction: float = 0.0
    new_item_horizon: int = 100_000
    """New items arrive uniformly over this many requests."""
    fatigue_strength: float = 0.0
    fatigue_decay: float = 0.9
    """Exposure counts decay by this factor per request of the same user."""
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.choice_model, str) or self.choice_model not in CHOICE_MODELS:
            fix = (did_you_mean(self.choice_model, CHOICE_MODELS)
                   if isinstance(self.choice_model, str) else None)
            raise ValueError(message("choice_model", "one of 'mnl' (multinomial logit) or 'pbm' "
                                     "(position-based)", repr(self.choice_model), fix))
        positive = ("n_users", "n_items", "dim", "slate_size", "new_item_horizon")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(message(name, "an integer >= 1", getattr(self, name)))
        if self.slate_size > self.n_items:
            raise ValueError(
                message("slate_size", f"at most n_items ({self.n_items})", self.slate_size)
            )
        if self.observed_dims is not None and not 1 <= self.observed_dims <= self.dim:
            raise ValueError(
                message("observed_dims", f"an integer in [1, dim] = [1, {self.dim}]",
                        self.observed_dims)
            )
        for name in ("click_noise", "new_item_fraction"):
            check_scalar(getattr(self, name), name, 0.0, 1.0, high_open=True)
        check_scalar(self.position_decay, "position_decay", 0.0, 1.0, low_open=True)
        check_scalar(self.fatigue_decay, "fatigue_decay", 0.0, 1.0)
        for name in ("feature_noise", "drift_std", "fatigue_strength", "popularity_bias"):
            check_scalar(getattr(self, name), name, 0.0)


@dataclass(frozen=True, eq=False)
class Requests:
    """A batch of simultaneous requests."""

    user_id: np.ndarray  # (B,) int
    context: np.ndarray  # (B, n_features) float: what the policy may use
    time: np.ndarray  # (B,) int: global request counter
    available: np.ndarray  # (n_items,) bool: items that exist at this time

    def __len__(self) -> int:
        return int(self.user_id.shape[0])


@dataclass(frozen=True, eq=False)
class Responses:
    """What the users did with the slates of one batch."""

    clicked_position: np.ndarray  # (B,) int: the click (PBM: the top-most click), -1 for none
    clicks: np.ndarray  # (B, K) int8: one-hot of the click (PBM: any number of ones)
    noise: np.ndarray  # (B,) bool: the click was accidental (ground-truth noise label)
    click_probabilities: np.ndarray = field(repr=False)  # (B, K + 1), see click_probabilities


class SlateSimulator:
    """The world: latents, observable features, and the choice model. Stateful only through the
    optional effects; ``rng`` arguments make every random draw reproducible."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config = config or SimulatorConfig()
        world = np.random.default_rng(config.seed)
        d = config.dim
        self.user_latent = world.standard_normal((config.n_users, d))
        self.item_latent = world.standard_normal((config.n_items, d))
        self.item_bias = config.item_bias_std * world.standard_normal(config.n_items)
        obs = config.observed_dims or d
        self._user_feature_noise = config.feature_noise * world.standard_normal(
            (config.n_users, obs)
        )
        self.item_features = self.item_latent[:, :obs] + config.feature_noise * (
            world.standard_normal((config.n_items, obs))
        )
        ranks = np.arange(1, config.n_users + 1, dtype=float)
        activity = ranks ** (-config.popularity_bias)
        self.user_weights = activity[world.permutation(config.n_users)] / activity.sum()
        n_new = round(config.new_item_fraction * config.n_items)
        self.item_arrival = np.zeros(config.n_items, dtype=np.int64)
        if n_new:
            new = world.choice(config.n_items, size=n_new, replace=False)
            self.item_arrival[new] = world.integers(1, config.new_item_horizon + 1, size=n_new)
        self.examination = config.position_decay ** np.arange(config.slate_size)
        self.time = 0
        self._fatigue = None
        if config.fatigue_strength > 0:
            self._fatigue = ExposureTable(config.n_users, config.n_items, config.fatigue_decay)
        self._rng = np.random.default_rng(world.integers(2**63))

    # ----------------------------------------------------------------------------- observation
    @property
    def n_features(self) -> int:
        return self.item_features.shape[1]

    def user_features(self, user_id: np.ndarray | None = None) -> np.ndarray:
        """The noisy, partial view of user latents that policies see."""
        obs = self.n_features
        if user_id is None:
            return self.user_latent[:, :obs] + self._user_feature_noise
        return self.user_latent[user_id, :obs] + self._user_feature_noise[user_id]

    def available_items(self, time: int | None = None) -> np.ndarray:
        """Items that have arrived by ``time`` (default: now)."""
        return self.item_arrival <= (self.time if time is None else time)

    def sample_requests(self, n: int, rng: np.random.Generator | None = None) -> Requests:
        """Draw ``n`` simultaneous requests (users by activity weight)."""
        rng = rng or self._rng
        if self.config.popularity_bias == 0:
            users = rng.integers(self.config.n_users, size=n)
        else:
            users = rng.choice(self.config.n_users, size=n, p=self.user_weights)
        times = self.time + np.arange(n)
        return Requests(users, self.user_features(users), times, self.available_items())

    # ------------------------------------------------------------------------------ the model
    def utilities(self, user_id: np.ndarray, items: np.ndarray) -> np.ndarray:
        """s for each (user, item) pair; ``items`` is (B, K) or (B,) matching ``user_id``."""
        u = self.user_latent[user_id]
        v = self.item_latent[items]
        dot = np.einsum("bd,bkd->bk" if items.ndim == 2 else "bd,bd->b", u, v)
        s = self.config.affinity * dot / np.sqrt(self.config.dim) + self.item_bias[items]
        if self._fatigue is not None:
            users = user_id[:, None] if items.ndim == 2 else user_id
            s = s - self.config.fatigue_strength * self._fatigue.level(users, items)
        return s

    def click_probabilities(self, user_id: np.ndarray, slates: np.ndarray) -> np.ndarray:
        """(B, K + 1) click probabilities of each slot, accidental clicks included (they are what
        the logs record); the last column is P(no click at all).

        MNL: the listwise choice's probabilities, rows sum to 1 (at most one click). PBM: column
        k is P(slot k is clicked) = (1 − ε) θ_k σ(s_k − b) + ε / K, clicks are independent given
        no accident, the last column is (1 − ε) Π_k (1 − θ_k σ(s_k − b)); rows need not sum to 1.
        """
        slates = self._slates_of(user_id, slates)
        k = slates.shape[1]
        eps = self.config.click_noise
        if self.config.choice_model == "pbm":
            return self._with_pbm_noise(self._pbm_probabilities(user_id, slates))
        s = self.utilities(user_id, slates)
        weights = np.exp(s) * self.examination[:k]
        no_click = np.full((len(user_id), 1), np.exp(self.config.no_click_utility))
        probs = np.concatenate([weights, no_click], axis=1)
        probs /= probs.sum(axis=1, keepdims=True)
        if eps:
            probs *= 1 - eps
            probs[:, :k] += eps / k
        return probs

    def expected_clicks(self, user_id: np.ndarray, slates: np.ndarray) -> np.ndarray:
        """(B,) expected clicks of each slate in the current state, accidental clicks included:
        the value every ground truth uses. MNL: 1 − P(no click); PBM: Σ_k P(slot k clicked)."""
        probs = self.click_probabilities(user_id, slates)
        if self.config.choice_model == "pbm":
            return probs[:, :-1].sum(axis=1)
        return 1.0 - probs[:, -1]

    def respond(
        self, requests: Requests, slates: np.ndarray, rng: np.random.Generator | None = None
    ) -> Responses:
        """Users click on their slates (see the module); then time and the optional effects move
        on."""
        rng = rng or self._rng
        slates = np.asarray(slates)
        self._check_slates(requests, slates)
        if self.config.choice_model == "pbm":
            return self._respond_pbm(requests, slates, rng)
        probs = self.click_probabilities(requests.user_id, slates)
        n, k = slates.shape
        eps = self.config.click_noise
        pref = probs if not eps else (probs - np.r_[np.full(k, eps / k), 0.0]) / (1 - eps)
        u = rng.random(n)[:, None]
        choice = (pref.cumsum(axis=1) < u).sum(axis=1)  # in [0, k]; k means no click
        noise = np.zeros(n, dtype=bool)
        if eps:
            noise = rng.random(n) < eps
            choice[noise] = rng.integers(k, size=int(noise.sum()))
        choice = np.minimum(choice, k)
        clicked = np.where(choice < k, choice, -1)
        clicks = np.zeros((n, k), dtype=np.int8)
        rows = np.flatnonzero(clicked >= 0)
        clicks[rows, clicked[rows]] = 1
        self._advance(requests, slates, rng)
        return Responses(clicked, clicks, noise, probs)

    def _respond_pbm(
        self, requests: Requests, slates: np.ndarray, rng: np.random.Generator
    ) -> Responses:
        """Independent Bernoulli clicks per slot; an accidental request gets one random click."""
        clean = self._pbm_probabilities(requests.user_id, slates)
        probs = self._with_pbm_noise(clean)
        n, k = slates.shape
        clicks = (rng.random((n, k)) < clean).astype(np.int8)
        noise = np.zeros(n, dtype=bool)
        eps = self.config.click_noise
        if eps:
            noise = rng.random(n) < eps
            rows = np.flatnonzero(noise)
            clicks[rows] = 0
            clicks[rows, rng.integers(k, size=rows.size)] = 1
        clicked = np.where(clicks.any(axis=1), clicks.argmax(axis=1), -1)
        self._advance(requests, slates, rng)
        return Responses(clicked, clicks, noise, probs)

    def _pbm_probabilities(self, user_id: np.ndarray, slates: np.ndarray) -> np.ndarray:
        """(B, K) θ_k σ(s_k − b): the PBM's click probabilities without accidents."""
        s = self.utilities(user_id, slates)
        return self.examination[: slates.shape[1]] * expit(s - self.config.no_click_utility)

    def _with_pbm_noise(self, clean: np.ndarray) -> np.ndarray:
        """(B, K + 1) ``click_probabilities`` of the PBM from its accident-free (B, K) ones."""
        k = clean.shape[1]
        probs = np.concatenate([clean, np.prod(1.0 - clean, axis=1, keepdims=True)], axis=1)
        eps = self.config.click_noise
        if eps:
            probs *= 1 - eps
            probs[:, :k] += eps / k
        return probs

    def _slates_of(self, user_id: np.ndarray, slates: np.ndarray) -> np.ndarray:
        slates = np.asarray(slates)
        if slates.ndim != 2 or slates.shape[0] != len(user_id):
            raise ValueError(
                message("slates", f"shape ({len(user_id)}, slate_size)", f"shape {slates.shape}")
            )
        return slates

    def _check_slates(self, requests: Requests, slates: np.ndarray) -> None:
        if slates.ndim != 2 or slates.shape[0] != len(requests):
            raise ValueError(
                message("slates", f"shape ({len(requests)}, slate_size)", f"shape {slates.shape}")
            )
        if slates.min() < 0 or slates.max() >= self.config.n_items:
            raise ValueError(
                message("slates", f"item ids in [0, n_items) = [0, {self.config.n_items})",
                        f"ids in [{slates.min()}, {slates.max()}]")
            )
        if not requests.available.all() and not requests.available[slates].all():
            raise ValueError(
                message("slates", "items that have arrived", "items that have not arrived yet",
                        "pass requests.available to the policy")
            )

    def _advance(self, requests: Requests, slates: np.ndarray, rng: np.random.Generator) -> None:
        """Between batches: drift the users who came, add exposures, move the clock."""
        cfg = self.config
        if cfg.drift_std:
            counts = np.bincount(requests.user_id, minlength=cfg.n_users)
            seen = np.flatnonzero(counts)
            steps = np.sqrt(counts[seen])[:, None] * rng.standard_normal((seen.size, cfg.dim))
            self.user_latent[seen] += cfg.drift_std * steps
        if self._fatigue is not None:
            self._fatigue.expose(requests.user_id, slates)
        self.time += len(requests)
