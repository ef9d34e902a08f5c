"""The full slate simulator behind the environment protocol of ``recsys.bandits.regret``.

``recsys.bandits.regret.run_regret`` drives any object with ``n_actions``, ``dim``,
``contexts(n)``, ``expected_rewards(contexts)`` and ``sample_rewards(contexts, actions)``;
``recsys`` never imports ``simulators``, so this adapter is what the caller passes in.

Mapping (and why):

* **Context** = the observable user features the simulator gives a policy
  (``Requests.context``: a noisy, possibly partial view of the user's latent vector), optionally
  preceded by a constant 1 (``intercept=True``, the default) so that linear policies on plain,
  uncentred statistics can learn each item's base rate, as in ``LinearLogisticEnv``.
* **Action** = one item id; **reward** = 1 if the user clicks it, drawn by the simulator's own
  ``respond`` (listwise choice against "no click", click noise, and then time, drift and fatigue
  move on exactly as they would for a slate policy).
* **Slate of one item.** The harness recommends ``k = 1`` per round and credits one reward to one
  action, so every round shows a one-item slate at position 0 (examination weight θ₀ = 1). A
  longer slate would need per-slot credit assignment and a slate-level regret, which the harness
  does not have; the slate-level truth stays available in ``simulators.ground_truth``.
* **Expected rewards / regret.** ``expected_rewards`` is the simulator's exact click probability
  of every item shown alone at position 0 for the users of the batch (``click_probabilities`` on
  all items at once, in the state of that batch), so the harness's pseudo-regret is measured
  against the exact optimum for that user — the oracle of ``ground_truth.optimal_value`` with
  ``slate_size=1`` — not against realised clicks. A policy only sees noisy features, so a linear
  policy can have a small irreducible gap to this oracle; that gap is part of the regret.

The contexts and the rewards of one batch belong to the users drawn by the last ``contexts`` call,
so ``expected_rewards`` and ``sample_rewards`` must be given that batch (checked). Worlds in
which items arrive over time (``new_item_fraction > 0``) are rejected: the harness lets a policy
choose any of ``n_actions`` items at every round.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from recsys.validation import message
from simulators.model import Requests, SimulatorConfig, SlateSimulator


class SimulatorBanditEnv:
    """``SlateSimulator`` as a single-slot contextual bandit; ``seed`` fixes the request and click
    stream (the world itself is fixed by ``SimulatorConfig.seed``)."""

    def __init__(
        self,
        simulator: SlateSimulator | SimulatorConfig | None = None,
        *,
        intercept: bool = True,
        seed: int = 0,
    ) -> None:
        if not isinstance(simulator, SlateSimulator):
            simulator = SlateSimulator(simulator)
        if simulator.config.new_item_fraction > 0:
            raise ValueError(
                "SimulatorBanditEnv needs every item available at every round; "
                f"got new_item_fraction={simulator.config.new_item_fraction}"
            )
        self.sim = simulator
        self.intercept = bool(intercept)
        self.n_actions: int = simulator.config.n_items
        self.dim: int = simulator.n_features + int(self.intercept)
        self._rng = np.random.default_rng(seed)
        self._items = np.arange(self.n_actions)
        self._requests: Requests | None = None
        self._contexts: NDArray[np.float64] | None = None

    # ------------------------------------------------------------------ ground truth
    def all_contexts(self) -> NDArray[np.float64]:
        """Every user's context, [n_users, dim] (users form a finite population)."""
        x = self.sim.user_features().astype(np.float64)
        return np.concatenate([np.ones((x.shape[0], 1)), x], axis=1) if self.intercept else x

    def optimal_reward(self) -> float:
        """Expected clicks per round of the oracle (best item per user), current state; equals
        ``ground_truth.optimal_value(sim, slate_size=1)``."""
        from simulators.ground_truth import item_click_probabilities

        return float(self.sim.user_weights @ item_click_probabilities(self.sim).max(axis=1))

    def linear_floor(self) -> float:
        """Per-round regret of the greedy policy on the best linear fit of the true rewards.

        Per item, the exact click probabilities of all users are regressed (least squares,
        weighted by arrival probability, intercept included) on the users' contexts; greedy
        choice on those fits is roughly what a converged linear-reward policy does, so its regret
        is the level at which such a policy's per-round regret flattens (feature noise and the
        non-linear choice model put it above 0). A reference for plots and tests, not a bound.
        """
        from simulators.ground_truth import item_click_probabilities

        q = item_click_probabilities(self.sim)  # [n_users, n_items]
        w = self.sim.user_weights
        x = self.sim.user_features().astype(np.float64)
        x = np.concatenate([np.ones((x.shape[0], 1)), x], axis=1)
        sw = np.sqrt(w)[:, None]
        coef, *_ = np.linalg.lstsq(sw * x, sw * q, rcond=None)
        chosen = np.argmax(x @ coef, axis=1)
        return float(w @ (q.max(axis=1) - q[np.arange(q.shape[0]), chosen]))

    # ------------------------------------------------------------------ the protocol
    def contexts(self, n: int) -> NDArray[np.float64]:
        """Draw ``n`` simultaneous requests; their observable features, [n, dim]."""
        requests = self.sim.sample_requests(n, self._rng)
        x = requests.context.astype(np.float64)
        if self.intercept:
            x = np.concatenate([np.ones((n, 1)), x], axis=1)
        self._requests, self._contexts = requests, x
        return x

    def users(self, contexts: NDArray[np.float64]) -> NDArray[np.int64]:
        """The simulator's user ids behind ``contexts`` (which must be the last batch drawn)."""
        if self._requests is None or self._contexts is None:
            raise RuntimeError("call contexts(n) first")
        same = contexts is self._contexts or (
            np.shape(contexts) == self._contexts.shape
            and np.array_equal(contexts, self._contexts)
        )
        if not same:
            raise ValueError(
                "contexts must be the batch returned by the last contexts(n) call: the simulator "
                "knows its users, not a function of arbitrary feature vectors"
            )
        return self._requests.user_id

    def expected_rewards(self, contexts: NDArray[np.float64]) -> NDArray[np.float64]:
        """Exact P(click) of every item shown alone at position 0, [n, n_actions], in the
        simulator's current state (fatigue and drift included)."""
        users = self.users(contexts)
        n = users.size
        slates = np.tile(self._items, n)[:, None]
        probs = self.sim.click_probabilities(np.repeat(users, self.n_actions), slates)
        return probs[:, 0].reshape(n, self.n_actions)

    def sample_rewards(
        self, contexts: NDArray[np.float64], actions: NDArray[np.int64]
    ) -> NDArray[np.float64]:
        """Show each request its one-item slate; 1.0 for a click. Moves the simulator on."""
        self.users(contexts)
        assert self._requests is not None
        actions = np.asarray(actions, dtype=np.int64)
        if actions.shape != (len(self._requests),):
            raise ValueError(message("actions", f"shape ({len(self._requests)},)",
                                     f"shape {actions.shape}"))
        response = self.sim.respond(self._requests, actions[:, None], self._rng)
        self._requests, self._contexts = None, None  # the state moved: this batch is spent
        return response.clicks[:, 0].astype(np.float64)
