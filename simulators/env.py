"""The simulator as a ``gymnasium.Env``: one request per step, for agents written against Gym.

Observation: the arriving user's observable features. Action: a slate (``MultiDiscrete`` of
``slate_size`` item ids, distinct). Reward: 1 for a click, 0 otherwise. ``info`` carries the
clicked position (-1 for none), the accidental-click label and the true click probabilities, so an
agent's regret can be measured. For throughput use ``SlateSimulator``'s batch API instead.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from recsys.validation import message
from simulators.model import Requests, SimulatorConfig, SlateSimulator


class SlateRecommendationEnv(gym.Env):
    """One episode = ``episode_length`` requests from the same simulated world."""

    metadata = {"render_modes": []}  # noqa: RUF012 (gymnasium's convention)

    def __init__(self, config: SimulatorConfig | None = None, episode_length: int = 100) -> None:
        if episode_length < 1:
            raise ValueError(message("episode_length", "an integer >= 1", episode_length))
        self.config = config or SimulatorConfig()
        self.episode_length = episode_length
        self.sim = SlateSimulator(self.config)
        n_features = self.sim.n_features
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (n_features,), np.float64)
        self.action_space = gym.spaces.MultiDiscrete(
            np.full(self.config.slate_size, self.config.n_items)
        )
        self._request: Requests | None = None
        self._steps = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode; ``seed`` re-seeds the request and choice stream (not the world)."""
        super().reset(seed=seed)
        self._steps = 0
        return self._next_observation(), {}

    def _next_observation(self) -> np.ndarray:
        self._request = self.sim.sample_requests(1, self.np_random)
        return self._request.context[0].astype(np.float64)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._request is None:
            raise RuntimeError("call reset() before step()")
        slate = np.asarray(action, dtype=np.int64).reshape(1, -1)
        if slate.shape[1] != self.config.slate_size or len(set(slate[0].tolist())) != slate.size:
            raise ValueError(
                message("action", f"{self.config.slate_size} distinct item ids", slate[0])
            )
        response = self.sim.respond(self._request, slate, self.np_random)
        clicked = int(response.clicked_position[0])
        info = {
            "clicked_position": clicked,
            "noise": bool(response.noise[0]),
            "click_probabilities": response.click_probabilities[0],
            "user_id": int(self._request.user_id[0]),
        }
        self._steps += 1
        truncated = self._steps >= self.episode_length
        return self._next_observation(), float(clicked >= 0), False, truncated, info
