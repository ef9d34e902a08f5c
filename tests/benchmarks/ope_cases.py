"""OPE inputs and estimator cases shared by the recsys side and the OBP side of the parity bench.

numpy only: imported both by ``bench_obp_parity.py`` (project venv) and by ``obp_runner.py``
(peers' venv), so both libraries evaluate exactly the same estimator list with the same
hyperparameters, through the same evaluation and timing loops (``evaluate``, ``time_cases``: the
timed region is the same library call on both sides). Large inputs are not shipped between the
processes: each side builds them with ``random_inputs`` from the same seed and prints ``digest``
of what it built, so the table can show that the two sides timed the same bytes.
"""

from __future__ import annotations

import hashlib
import time
from statistics import median
from types import ModuleType
from typing import Any

import numpy as np

# Which estimator-method arguments each kind of estimator takes (OBP's names).
ARGUMENTS: dict[str, tuple[str, ...]] = {
    "dm": ("action_dist", "estimated_rewards_by_reg_model", "position"),
    "ipw": ("reward", "action", "action_dist", "pscore", "position"),
    "ipw_estimated": ("reward", "action", "action_dist", "estimated_pscore", "position"),
    "dr": ("reward", "action", "action_dist", "estimated_rewards_by_reg_model", "pscore",
           "position"),
    "replay": ("reward", "action", "action_dist", "position"),
    "slate": ("slate_id", "reward", "position", "pscore_item_position",
              "evaluation_policy_pscore_item_position"),
}

SNIPW_CLIPPED = "SNIPW lambda_=10 (OBP ignores it)"

# (label, class name in both recsys.ope and obp.ope, constructor kwargs, argument kind)
CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("DM", "DirectMethod", {}, "dm"),
    ("IPW", "InverseProbabilityWeighting", {}, "ipw"),
    ("IPW lambda_=10", "InverseProbabilityWeighting", {"lambda_": 10.0}, "ipw"),
    ("IPW estimated pscore", "InverseProbabilityWeighting", {"use_estimated_pscore": True},
     "ipw_estimated"),
    ("SNIPW", "SelfNormalizedInverseProbabilityWeighting", {}, "ipw"),
    (SNIPW_CLIPPED, "SelfNormalizedInverseProbabilityWeighting", {"lambda_": 10.0}, "ipw"),
    ("DR", "DoublyRobust", {}, "dr"),
    ("DR lambda_=10", "DoublyRobust", {"lambda_": 10.0}, "dr"),
    ("SNDR", "SelfNormalizedDoublyRobust", {}, "dr"),
    ("Switch-DR lambda_=5", "SwitchDoublyRobust", {"lambda_": 5.0}, "dr"),
    ("DRos lambda_=1", "DoublyRobustWithShrinkage", {"lambda_": 1.0}, "dr"),
    ("DRos lambda_=0 (=DM)", "DoublyRobustWithShrinkage", {}, "dr"),
    ("Replay (deterministic pi_e)", "ReplayMethod", {}, "replay"),
    ("Slate IIPS", "SlateIndependentIPS", {"len_list": 3}, "slate"),
]

# OBP's slate estimators need the slate length up front (recsys accepts it too, and checks it).
OBP_ONLY_PARAMS: dict[str, dict[str, Any]] = {}
# Known, deliberate differences: the parameters recsys gets instead, so that the comparison pins
# down exactly what differs. OBP's SNIPW accepts lambda_ but never clips; recsys clips at lambda_.
# Comparing OBP's lambda_=10 with recsys's unclipped SNIPW checks that OBP ignores it (the
# clipped recsys number is tested against the definition in tests/ope).
RECSYS_PARAMS_BY_DESIGN: dict[str, dict[str, Any]] = {SNIPW_CLIPPED: {}}

# The estimators timed on the large problem: one per estimator class of issue 7's list.
TIMED = ["DM", "IPW", "SNIPW", "DR", "SNDR", "Switch-DR lambda_=5", "DRos lambda_=1"]


def random_inputs(
    n_rounds: int, n_actions: int, len_list: int, seed: int, with_extras: bool = True
) -> dict[str, np.ndarray]:
    """Logged rounds and an evaluation policy in OBP's shapes, from one seed.

    Propensities are spread over [0.002, 0.2] so importance weights reach well past the clipping
    thresholds of ``CASES``; ``with_extras`` adds the inputs that only the parity cases need
    (a deterministic ``action_dist`` for Replay and ``estimated_pscore``).
    """
    rng = np.random.default_rng(seed)
    action_dist = rng.random((n_rounds, n_actions, len_list))
    action_dist /= action_dist.sum(axis=1, keepdims=True)
    out = {
        "reward": rng.binomial(1, 0.3, size=n_rounds).astype(float),
        "action": rng.integers(n_actions, size=n_rounds),
        "position": rng.integers(len_list, size=n_rounds),
        "pscore": rng.uniform(0.002, 0.2, size=n_rounds),
        "action_dist": action_dist,
        "estimated_rewards_by_reg_model": rng.random((n_rounds, n_actions, len_list)),
    }
    if with_extras:
        out["estimated_pscore"] = np.clip(out["pscore"] * rng.uniform(0.8, 1.25, n_rounds), 0, 1)
        chosen = rng.integers(n_actions, size=(n_rounds, len_list))
        deterministic = np.zeros_like(action_dist)
        rows, slots = np.meshgrid(np.arange(n_rounds), np.arange(len_list), indexing="ij")
        deterministic[rows, chosen, slots] = 1.0
        # Make about half the logged actions match, so Replay has rounds to average.
        match = rng.random(n_rounds) < 0.5
        deterministic[match, :, out["position"][match]] = 0.0
        deterministic[match, out["action"][match], out["position"][match]] = 1.0
        out["deterministic_action_dist"] = deterministic
    return out


def slate_inputs(n_slates: int, len_list: int, seed: int) -> dict[str, np.ndarray]:
    """Long-format slate logs (one entry per slate and slot) for the slate estimators."""
    rng = np.random.default_rng(seed)
    n = n_slates * len_list
    return {
        "slate_id": np.repeat(rng.permutation(n_slates), len_list),
        "position": np.tile(np.arange(len_list), n_slates),
        "reward": rng.binomial(1, 0.2, size=n).astype(float),
        "pscore_item_position": rng.uniform(0.01, 0.5, size=n),
        "evaluation_policy_pscore_item_position": rng.uniform(0.0, 1.0, size=n),
    }


def case_arguments(kind: str, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The keyword arguments of one estimator kind, taken from ``data``."""
    args = {name: data[name] for name in ARGUMENTS[kind] if name in data}
    if kind == "replay":
        args["action_dist"] = data["deterministic_action_dist"]
    return args


def digest(data: dict[str, np.ndarray]) -> str:
    """A short content hash of named arrays (names, dtypes, shapes and bytes)."""
    h = hashlib.blake2b(digest_size=8)
    for name in sorted(data):
        array = np.ascontiguousarray(data[name])
        h.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        h.update(memoryview(array).cast("B"))
    return h.hexdigest()


def make_estimator(module: ModuleType, label: str) -> tuple[Any, str]:
    """The estimator of case ``label`` from ``module`` (``recsys.ope`` or ``obp.ope``), and its
    argument kind."""
    _, class_name, params, kind = next(c for c in CASES if c[0] == label)
    if module.__name__.startswith("obp"):
        params = {**params, **OBP_ONLY_PARAMS.get(label, {})}
    elif label in RECSYS_PARAMS_BY_DESIGN:
        params = RECSYS_PARAMS_BY_DESIGN[label]
    return getattr(module, class_name)(**params), kind


def bounds(interval: dict[str, Any]) -> dict[str, float]:
    """An OBP interval dictionary as plain floats: mean, lower, upper."""
    lower = next(v for k, v in interval.items() if k.endswith("(lower)"))
    upper = next(v for k, v in interval.items() if k.endswith("(upper)"))
    return {"mean": float(interval["mean"]), "lower": float(lower), "upper": float(upper)}


def evaluate(
    module: ModuleType,
    data: dict[str, np.ndarray],
    labels: list[str],
    alpha: float,
    n_bootstrap_samples: int,
    random_state: int,
    legacy_state: bool = False,
) -> dict[str, dict[str, Any]]:
    """Point estimate and bootstrap interval of every case in ``labels`` on ``data``.

    ``legacy_state`` passes a fresh ``np.random.RandomState(random_state)`` instead of the int
    (both libraries accept either; recsys takes a different code path for each).
    """
    out = {}
    for label in labels:
        estimator, kind = make_estimator(module, label)
        args = case_arguments(kind, data)
        state = np.random.RandomState(random_state) if legacy_state else random_state
        interval = estimator.estimate_interval(
            alpha=alpha, n_bootstrap_samples=n_bootstrap_samples, random_state=state, **args
        )
        out[label] = {"point": float(estimator.estimate_policy_value(**args)),
                      **bounds(interval)}
    return out


def time_cases(
    module: ModuleType,
    data: dict[str, np.ndarray],
    labels: list[str],
    repeat: int,
    n_bootstrap_samples: int = 0,
    interval_labels: tuple[str, ...] = (),
    interval_repeat: int = 1,
) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds of ``estimate_policy_value`` (and of ``estimate_interval``
    for ``interval_labels``) over ``repeat`` runs; the timed region is the library call alone,
    input validation included, identically on both sides."""
    out: dict[str, dict[str, float]] = {}
    for label in labels:
        estimator, kind = make_estimator(module, label)
        args = case_arguments(kind, data)
        calls = [("point", repeat, lambda e=estimator, a=args: e.estimate_policy_value(**a))]
        if label in interval_labels and n_bootstrap_samples:
            calls.append(("interval", interval_repeat,
                          lambda e=estimator, a=args: e.estimate_interval(
                              n_bootstrap_samples=n_bootstrap_samples, random_state=0, **a)))
        for what, k, call in calls:
            walls, cpus = [], []
            for _ in range(k):
                wall, cpu = time.perf_counter(), time.process_time()
                call()
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
            out[f"{label} | {what}"] = {"wall": median(walls), "cpu": median(cpus), "repeat": k}
    return out
