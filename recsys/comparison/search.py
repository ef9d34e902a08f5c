"""Search over bandit configurations: ``--search alpha=0.1,0.5,1 --search lam=1,10`` → a ranking.

Each ``--search NAME=V1,V2,...`` entry names a hyperparameter of the base policy's class (a
:data:`recsys.bandits.POLICY_CLASSES` spec) and the values to try; the grid is their Cartesian
product, each configuration the base spec with those values. Every configuration is replayed
through the same logs with the same acceptance coins (``recsys.comparison.replay``, common
random numbers) and the table lists them best first, so the best can be registered as a
candidate (``ReplayResult.policy`` of its replay, or ``policy_from_spec`` of its spec).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl
from numpy.typing import ArrayLike

from recsys.bandits import POLICY_CLASSES, policy_from_spec, policy_spec
from recsys.comparison.replay import replay_events, replay_value
from recsys.validation import did_you_mean, message

__all__ = [
    "MAX_CONFIGURATIONS",
    "configuration_specs",
    "label",
    "parse_search",
    "rank_configurations",
    "search_grid",
]

_INT = re.compile(r"[+-]?\d+")
_BOOLS = {"true": True, "false": False}
MAX_CONFIGURATIONS = 1000
"""A grid larger than this is refused (each configuration is one replay of the logs)."""


def _spec(base_spec: Mapping[str, Any] | str) -> dict[str, Any]:
    """The base spec as a checked mapping (``policy_from_spec`` validates it)."""
    return policy_spec(policy_from_spec(base_spec))


def _value(token: str, name: str) -> int | float | bool:
    text = token.strip()
    if text.lower() in _BOOLS:
        return _BOOLS[text.lower()]
    if _INT.fullmatch(text):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not np.isfinite(number):
        raise ValueError(message(f"--search {name}", "finite numbers or true/false",
                                 repr(token)))
    return number


def parse_search(entries: Iterable[str], base_spec: Mapping[str, Any] | str
                 ) -> dict[str, list[int | float | bool]]:
    """``["alpha=0.1,0.5", "lam=1,10"]`` → ``{"alpha": [0.1, 0.5], "lam": [1, 10]}``, names
    checked against the hyperparameters of the base spec's class."""
    spec = _spec(base_spec)
    cls = POLICY_CLASSES[spec["class"]]
    known = sorted(cls().get_params(deep=False))
    out: dict[str, list[int | float | bool]] = {}
    for entry in entries:
        name, sep, values = str(entry).partition("=")
        name = name.strip()
        if not sep or not name or not values.strip():
            raise ValueError(message("--search", "NAME=V1,V2,... (e.g. alpha=0.1,0.5,1)",
                                     repr(entry)))
        if name not in known:
            raise ValueError(message("--search", f"a hyperparameter of {spec['class']} "
                                     f"(one of {known})", repr(name),
                                     did_you_mean(name, known)))
        if name in out:
            raise ValueError(message("--search", "each hyperparameter once",
                                     f"{name} twice", f"list its values in one entry: "
                                     f"{name}=V1,V2,..."))
        tokens = values.split(",")
        if any(not t.strip() for t in tokens):
            raise ValueError(message(f"--search {name}", "comma-separated values, none empty",
                                     repr(values)))
        parsed = [_value(t, name) for t in tokens]
        if len({(isinstance(v, bool), float(v)) for v in parsed}) != len(parsed):
            raise ValueError(message(f"--search {name}", "distinct values", repr(values)))
        out[name] = parsed
    return out


def search_grid(entries: Iterable[str], base_spec: Mapping[str, Any] | str
                ) -> list[dict[str, int | float | bool]]:
    """The Cartesian product of the ``--search`` entries, one hyperparameter dict per
    configuration (the base configuration alone when there are no entries); every
    configuration is checked by building its policy, so a bad value fails here."""
    axes = parse_search(entries, base_spec)
    grid = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
    if len(grid) > MAX_CONFIGURATIONS:
        raise ValueError(message("--search", f"at most {MAX_CONFIGURATIONS} configurations",
                                 len(grid), "search fewer values"))
    configuration_specs(base_spec, grid)
    return grid


def configuration_specs(base_spec: Mapping[str, Any] | str,
                        grid: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The base spec with each configuration's hyperparameters, each checked."""
    spec = _spec(base_spec)
    specs = []
    for config in grid:
        candidate = {**spec, "params": {**spec["params"], **config}}
        try:
            policy_from_spec(candidate)
        except (TypeError, ValueError) as err:
            raise type(err)(message("--search", f"a valid {spec['class']} configuration",
                                    label(config), str(err))) from None
        specs.append(candidate)
    return specs


def label(config: Mapping[str, Any]) -> str:
    """``alpha=0.1 lam=1``: a configuration as it was asked for (``base`` when empty)."""
    return " ".join(f"{k}={json.dumps(v)}" for k, v in config.items()) or "base"


def rank_configurations(
    logs: Any,
    base_spec: Mapping[str, Any] | str,
    grid: Sequence[Mapping[str, Any]],
    *,
    item_ids: ArrayLike | None = None,
    batch_size: int = 100,
    max_ratio: float | None = None,
    position: int | None = None,
    alpha: float = 0.05,
    random_state: int = 0,
) -> pl.DataFrame:
    """Replay every configuration of ``grid`` over ``base_spec`` through ``logs``; one row per
    configuration, best (highest replay value) first: ``config``, ``value``, ``lower``,
    ``upper``, ``n_accepted``, ``n_capped``, ``acceptance_rate`` and the full ``spec`` (JSON)."""
    specs = configuration_specs(base_spec, grid)
    events = replay_events(logs, position)  # read once, replayed by every configuration
    rows = []
    for config, spec in zip(grid, specs, strict=True):  # one replay per configuration
        result = replay_value(events, spec, item_ids=item_ids, batch_size=batch_size,
                              max_ratio=max_ratio, position=position, alpha=alpha,
                              random_state=random_state)
        rows.append({
            "config": label(config), "value": result.value, "lower": result.lower,
            "upper": result.upper, "n_accepted": result.n_accepted,
            "n_capped": result.n_capped, "acceptance_rate": result.acceptance_rate,
            "spec": json.dumps(spec, sort_keys=True),
        })
    schema = {"config": pl.String, "value": pl.Float64, "lower": pl.Float64,
              "upper": pl.Float64, "n_accepted": pl.Int64, "n_capped": pl.Int64,
              "acceptance_rate": pl.Float64, "spec": pl.String}
    return pl.DataFrame(rows, schema=schema).sort("value", descending=True, maintain_order=True)
