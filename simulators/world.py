"""The simulator as a *world* that logs can name, and the true value of a policy in it.

Logs produced by the simulator carry a ``world.json`` at their root (the lake root directory, or
beside a Parquet file as ``<file>.world.json``)::

    {"kind": "simulator", "config": {<SimulatorConfig fields>}, "user_id_prefix": ""}

The config's ``seed`` fixes the world (latents, features), so the file is enough to rebuild it.
``user_id_prefix`` says how the logs name simulator user ``i``: ``"{prefix}{i}"`` (``""`` for the
simulated data sets, ``"u"`` for users that came through the serving app,
``simulators.http_traffic.user_id_on_wire``), so a model trained on those logs is valued on
the ids it knows.
``recsys compare`` finds the file, looks the kind up in the ``recsys.worlds`` entry-point group
(``simulator`` = :func:`true_value`) and adds each candidate's true value to its estimates;
``recsys`` itself never imports this package.

The true value is ``simulators.ground_truth.policy_value`` in the world's initial state (no drift
or fatigue yet) with every item arrived: expected clicks per request over the users' arrival
weights, exact for slates of one item (from ``action_dist``), Monte Carlo over the policy's own
slates otherwise. Candidates are registered policies (``recsys.registry.RegisteredPolicy``):
their methods take a ``recsys.policies.RequestBatch``, here the batch of all users, user ``i``
with user id ``"{prefix}{i}"`` and dense context ``sim.user_features(i)``; their item ids must be
the simulator's integer items (a policy that may show others has no true value here: a
ValueError says so). A Thompson-sampling bandit draws the slates valued without its Monte Carlo
propensities (the value needs the slates, not their probabilities; that is most of the cost).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from recsys.bandits.slates import Slate
from recsys.policies import RequestBatch
from recsys.validation import did_you_mean, message
from simulators.ground_truth import PolicyValue, policy_value
from simulators.model import SimulatorConfig, SlateSimulator

__all__ = [
    "WORLD_FILE",
    "WORLD_KIND",
    "simulator_of",
    "true_policy_value",
    "true_value",
    "user_batch",
    "world_of",
    "write_world",
]

WORLD_FILE = "world.json"
WORLD_KIND = "simulator"


def _config_of(sim_or_config: SlateSimulator | SimulatorConfig) -> SimulatorConfig:
    if isinstance(sim_or_config, SlateSimulator):
        return sim_or_config.config
    if isinstance(sim_or_config, SimulatorConfig):
        return sim_or_config
    raise TypeError(message("sim_or_config", "a SlateSimulator or a SimulatorConfig",
                            type(sim_or_config).__name__))


def world_of(sim_or_config: SlateSimulator | SimulatorConfig, *, user_id_prefix: str = ""
             ) -> dict[str, Any]:
    """The JSON-safe description of the simulator's world (kind, config, how logs name users)."""
    return {"kind": WORLD_KIND, "config": dataclasses.asdict(_config_of(sim_or_config)),
            "user_id_prefix": str(user_id_prefix)}


def write_world(root: str | Path, sim_or_config: SlateSimulator | SimulatorConfig, *,
                user_id_prefix: str = "") -> Path:
    """Write ``<root>/world.json`` (``root`` is created if needed); return the file's path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / WORLD_FILE
    world = world_of(sim_or_config, user_id_prefix=user_id_prefix)
    path.write_text(json.dumps(world, indent=2, sort_keys=True) + "\n")
    return path


def simulator_of(world: Mapping[str, Any]) -> SlateSimulator:
    """The simulator a world description names, every item arrived (see the module)."""
    if not isinstance(world, Mapping):
        raise TypeError(message("world", "a mapping (the logs' world.json)", type(world).__name__))
    if world.get("kind") != WORLD_KIND:
        raise ValueError(message("world.kind", repr(WORLD_KIND), repr(world.get("kind"))))
    config = world.get("config")
    if not isinstance(config, Mapping):
        raise ValueError(message("world.config", "a mapping of SimulatorConfig fields",
                                 type(config).__name__))
    fields = {f.name for f in dataclasses.fields(SimulatorConfig)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(message("world.config", "SimulatorConfig fields", f"unknown {unknown}",
                                 did_you_mean(unknown[0], fields)))
    sim = SlateSimulator(SimulatorConfig(**config))
    sim.time = int(sim.item_arrival.max())  # every item has arrived
    return sim


def user_batch(sim: SlateSimulator, user_id_prefix: str = "") -> RequestBatch:
    """One request per user: user id ``f"{user_id_prefix}{i}"``, dense context
    ``sim.user_features(i)``."""
    users = np.arange(sim.config.n_users)
    ids = np.char.add(str(user_id_prefix), users.astype(str))
    return RequestBatch.of(user_ids=ids, dense=sim.user_features(users))


class _OnUsers:
    """A registered policy (methods take a RequestBatch) as ``ground_truth``'s array policy,
    scoring the batch of all users whatever context array it is handed."""

    def __init__(self, policy: Any, batch: RequestBatch, n_items: int) -> None:
        for name in ("item_ids_", "action_dist", "recommend"):
            if not hasattr(policy, name):
                raise TypeError(message("policy", "a registered policy (item_ids_, "
                                        "recommend(batch, k), action_dist(batch, k))",
                                        f"{type(policy).__name__} without {name}"))
        ids = np.asarray(policy.item_ids_)
        if ids.size == 0 or not np.issubdtype(ids.dtype, np.integer) \
                or ids.min() < 0 or ids.max() >= n_items:
            got = f"dtype {ids.dtype}" if ids.size == 0 or not np.issubdtype(
                ids.dtype, np.integer) else f"ids in [{ids.min()}, {ids.max()}]"
            raise ValueError(message("policy.item_ids_", f"the simulator's items, integers in "
                                     f"[0, {n_items})", got))
        self._policy, self._batch, self._ids = policy, batch, ids.astype(np.int64)
        self._slates = _without_propensities(policy)

    @property
    def item_ids_(self) -> NDArray[np.int64]:
        return self._ids

    def _check(self, contexts: Any) -> None:
        if len(contexts) != len(self._batch):
            raise ValueError(message("contexts", f"the {len(self._batch)} users", len(contexts)))

    def action_dist(self, contexts: Any, k: int = 1, **_: Any) -> NDArray[np.float64]:
        self._check(contexts)
        return np.asarray(self._policy.action_dist(self._batch, k))

    def recommend(self, contexts: Any, k: int = 1, **_: Any) -> Slate:
        self._check(contexts)
        if self._slates is not None:
            return self._slates.recommend(self._policy.contexts(self._batch), k)
        return self._policy.recommend(self._batch, k)


def _without_propensities(policy: Any) -> Any:
    """A registered Thompson-sampling bandit's policy drawing the same slates without Monte Carlo
    propensities, or None for every other policy."""
    spec = getattr(policy, "spec", None)
    if getattr(policy, "kind", None) != "bandit" or not isinstance(spec, Mapping) \
            or not spec.get("params", {}).get("n_mc_draws"):
        return None
    from recsys.bandits import policy_from_spec

    quiet = {**spec, "params": {**spec["params"], "n_mc_draws": 0}}
    return policy_from_spec(quiet).use(policy.policy.stats_)


TRUTH_DRAWS = 25
"""Slates per user a random policy's true value averages: each draw covers every user, so the
standard error is a few thousandths; ``policy_value``'s default of 200 takes eight times longer."""


def true_policy_value(world: Mapping[str, Any], policy: Any, slate_size: int,
                      n_monte_carlo: int = TRUTH_DRAWS) -> PolicyValue:
    """The policy's true value in ``world`` with its standard error (0 when exact)."""
    sim = simulator_of(world)
    limit = sim.config.slate_size
    if isinstance(slate_size, bool) or not isinstance(slate_size, int | np.integer) \
            or not 1 <= slate_size <= limit:
        raise ValueError(message("slate_size", f"an integer in [1, {limit}] (the world's "
                                 "slate_size)", repr(slate_size)))
    batch = user_batch(sim, str(world.get("user_id_prefix", "")))
    adapter = _OnUsers(policy, batch, sim.config.n_items)
    return policy_value(sim, adapter, n_monte_carlo, int(slate_size))


def true_value(world: Mapping[str, Any], policy: Any, slate_size: int) -> float:
    """Expected clicks per request of ``policy`` in ``world`` (the ``recsys.worlds`` hook)."""
    return true_policy_value(world, policy, slate_size).value
