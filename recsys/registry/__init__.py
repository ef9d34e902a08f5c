"""The mlflow registry layer: every policy (bandit snapshot, scored offline model, baseline) is
an mlflow pyfunc of one flavour, and loads back as a :class:`RegisteredPolicy`.

mlflow itself is imported only by the functions that talk to it, so importing this package is
cheap (serving and the bandits import it).
"""

from recsys.registry.model import (
    KINDS,
    RegisteredPolicy,
    bandit_model,
    baseline_model,
    scored_model,
)

__all__ = [
    "KINDS",
    "RegisteredPolicy",
    "bandit_model",
    "baseline_model",
    "scored_model",
]
