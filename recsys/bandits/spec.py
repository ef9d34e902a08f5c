"""A policy as JSON: class name + hyperparameters, for the model registry and configuration.

``policy_spec(policy)`` gives ``{"class": "DiagLinUCB", "params": {...}, "spec_version": 1}``
with JSON-safe values only (tuples become lists); ``policy_from_spec(spec)`` builds the policy
back. Only the policies of :data:`POLICY_CLASSES` can be built: a spec names a class from that
allow-list and is never used to import anything, so a stored spec cannot run arbitrary code. The
learned state (statistics) is not part of a spec; it travels as statistics snapshots.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from recsys.bandits.base import BasePolicy
from recsys.bandits.baselines import EpsilonGreedy, Greedy, SquareCB
from recsys.bandits.thompson import DiagLinTS, InSlateTS, LinTS
from recsys.bandits.ucb import DiagLinUCB, LinUCB
from recsys.validation import message

SPEC_VERSION = 1
"""Bumped when the layout of a spec changes; :func:`policy_from_spec` refuses other versions."""

POLICY_CLASSES: dict[str, type[BasePolicy]] = {
    cls.__name__: cls
    for cls in (DiagLinUCB, LinUCB, DiagLinTS, InSlateTS, LinTS, EpsilonGreedy, Greedy, SquareCB)
}
"""The allow-list of policies a spec may name."""

_SPEC_KEYS = frozenset({"class", "params", "spec_version"})


def _json_value(value: Any, name: str) -> Any:
    """``value`` as plain JSON (tuples become lists), or a ValueError that names the param."""
    if isinstance(value, np.random.Generator):
        raise ValueError(message(name, "an int seed or None in a policy spec", "a numpy Generator",
                                 "a generator's state is not a hyperparameter, so pass "
                                 "random_state=<int>"))
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        if not math.isfinite(value):
            raise ValueError(message(name, "a finite number in a policy spec (JSON has no NaN or "
                                     "infinity)", repr(value)))
        return float(value)
    if isinstance(value, list | tuple):
        return [_json_value(v, f"{name}[{i}]") for i, v in enumerate(value)]
    raise ValueError(message(name, "a JSON-safe value (None, bool, number, string or a list of "
                             "them) in a policy spec", f"{value!r} of type {type(value).__name__}"))


def policy_spec(policy: BasePolicy) -> dict[str, Any]:
    """The JSON-safe spec of ``policy``'s class and constructor hyperparameters."""
    cls = type(policy)
    if POLICY_CLASSES.get(cls.__name__) is not cls:
        raise ValueError(message("policy", f"one of {sorted(POLICY_CLASSES)}",
                                 f"{cls.__module__}.{cls.__qualname__}",
                                 "only recsys.bandits policies have specs"))
    params = {name: _json_value(value, name)
              for name, value in policy.get_params(deep=False).items()}
    return {"class": cls.__name__, "params": params, "spec_version": SPEC_VERSION}


def _tuple_params(cls: type[BasePolicy]) -> set[str]:
    """Constructor parameters whose default is a tuple (JSON turns them into lists)."""
    signature = inspect.signature(cls.__init__)
    return {name for name, p in signature.parameters.items() if isinstance(p.default, tuple)}


def _restored(value: Any) -> Any:
    return tuple(_restored(v) for v in value) if isinstance(value, list) else value


def policy_from_spec(spec: Mapping[str, Any] | str) -> BasePolicy:
    """A new, unfitted policy from a spec (a mapping or its JSON text); hyperparameters are
    checked here, so a bad spec fails when it is loaded, not at the first request."""
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as err:
            raise ValueError(message("spec", "JSON text", f"text that does not parse ({err})")
                             ) from None
    if not isinstance(spec, Mapping):
        raise TypeError(message("spec", "a mapping", type(spec).__name__))
    keys = set(spec)
    if keys != _SPEC_KEYS:
        raise ValueError(message("spec", f"the keys {sorted(_SPEC_KEYS)}", sorted(keys)))
    version = spec["spec_version"]
    if version != SPEC_VERSION or isinstance(version, bool):
        raise ValueError(message("spec_version", SPEC_VERSION, repr(version),
                                 "this spec was written by another version of recsys"))
    name = spec["class"]
    cls = POLICY_CLASSES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(message("class", f"one of {sorted(POLICY_CLASSES)}", repr(name)))
    params = spec["params"]
    if not isinstance(params, Mapping):
        raise TypeError(message("params", "a mapping", type(params).__name__))
    known = set(cls().get_params(deep=False))
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(message("params", f"hyperparameters of {name} (one of {sorted(known)})",
                                 f"unknown {unknown}"))
    tuples = _tuple_params(cls)
    policy = cls(**{key: _restored(value) if key in tuples else value
                    for key, value in params.items()})
    return policy.check_params()
