"""The mlflow registry layer: every policy (bandit snapshot, scored offline model, baseline) is
an mlflow pyfunc of one flavour, and loads back as a :class:`RegisteredPolicy`.

mlflow itself is imported only by the functions that talk to it, so importing this package is
cheap (serving and the bandits import it).
"""

from recsys.registry.lineage import code_version
from recsys.registry.mlflow_io import (
    check_registered,
    example_batch,
    load_policy_model,
    log_policy_model,
    policy_signature,
    predict_policy,
    resolve_version,
    tag_logged_model,
)
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
    "check_registered",
    "code_version",
    "example_batch",
    "load_policy_model",
    "log_policy_model",
    "policy_signature",
    "predict_policy",
    "resolve_version",
    "scored_model",
    "tag_logged_model",
]
