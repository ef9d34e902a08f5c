"""An offline model's policy form: its scores with an explicit exploration rule, so it can be
served, evaluated off-policy and compared with the bandits (``recsys.policies.LinearScorePolicy``
in a ``recsys.registry`` "scores" model), registered next to the raw model.

The scores are the model's own, exactly, as ``⟨user vector, item vector⟩ + item bias``:

- biased MF, ``μ + b_u + b_i + ⟨p_u, q_i⟩``: user vector ``[p_u, μ + b_u]``, item vector
  ``[q_i, 1]``, item bias ``b_i`` (the per-user constant changes neither the ranking nor the
  softmax, but keeps the scores those of the model);
- two-tower, ``⟨u, v⟩ + b_i``: the towers' outputs for every user and item, and ``b_i``.

Contexts are raw user ids (the model's id maps; ``RequestBatch.user_ids``) and slates hold raw
item ids. A user the model was not trained on gets the mean user vector (the policy's cold-start
rule). The exploration rule comes from the ``[train.policy]`` table (``offline.spec.PolicySpec``):
softmax (Plackett-Luce over score / temperature) by default, greedy or ε-greedy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from offline.models import BiasedMF, TwoTower
from offline.registry import DATA_SOURCE, DATASET_HASH, IdMaps
from offline.spec import PolicySpec
from recsys.policies.linear import LinearScorePolicy
from recsys.validation import message

if TYPE_CHECKING:
    from offline.prepared import PreparedData
    from offline.run_tracking import Selection
    from offline.spec import TrainSpec
    from offline.training import RunResult

POLICY_ARTIFACT = "policy"
"""The artifact name of the policy form in the selected run (``runs:/RUN/policy``)."""


@torch.no_grad()
def linear_parts(model: nn.Module) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(user_vectors [n_users, d], item_vectors [n_items, d], item_bias [n_items])`` whose
    ``user_vectors @ item_vectors.T + item_bias`` are the model's scores (float64)."""
    model = model.eval()

    def plain(tensor: torch.Tensor) -> np.ndarray:
        return tensor.detach().to("cpu", torch.float64).numpy()

    if isinstance(model, BiasedMF):
        users = np.hstack([plain(model.user_factors.weight),
                           plain(model.user_bias.weight + model.global_bias)])
        items = np.hstack([plain(model.item_factors.weight), np.ones((model.n_items, 1))])
        return users, items, plain(model.item_bias.weight).ravel()
    if isinstance(model, TwoTower):
        return plain(model.user_vectors()), plain(model.item_vectors()), plain(model.item_bias)
    raise TypeError(message("model", "a BiasedMF or TwoTower model", type(model).__name__))


def policy_form(model: nn.Module, ids: IdMaps, policy: PolicySpec | None = None,
                random_state: int | None = None) -> LinearScorePolicy:
    """The fitted policy that scores as ``model`` does, on raw ids, with ``policy``'s
    exploration rule (the defaults of :class:`~offline.spec.PolicySpec` when None)."""
    policy = policy or PolicySpec()
    users, items, bias = linear_parts(model)
    ids.check(users.shape[0], items.shape[0])
    return LinearScorePolicy(**policy.policy_params(), random_state=random_state).fit(
        ids.item_ids, items, bias, user_ids=ids.user_ids.astype(str), user_vectors=users)


def _rule(policy: PolicySpec) -> str:
    if policy.exploration == "greedy":
        return "greedy (the k best scores)"
    if policy.exploration == "epsilon_greedy":
        return f"epsilon-greedy (a uniform slate with probability {policy.epsilon})"
    mix = f", mixed with a uniform slate w.p. {policy.epsilon}" if policy.epsilon else ""
    return f"softmax (Plackett-Luce over score / {policy.temperature}{mix})"


def describe_policy(spec: TrainSpec, result: RunResult, raw_model: str, tags: dict[str, str],
                    selection: Selection) -> str:
    """The policy version's description: which model, which exploration rule, how to call it."""
    return "\n\n".join([
        f"Policy form of {raw_model} ({spec.model.name}, {spec.objective.name} objective, seed "
        f"{result.seed}, on {tags[DATA_SOURCE]}, dataset {tags[DATASET_HASH]}): the model's "
        f"scores with the exploration rule {_rule(spec.policy)}, so slates carry propensities.",
        f"Selected seed {selection.seed}: {selection.rule}.",
        "Contexts: raw user ids (column user_id of a RequestBatch frame); a user the model was "
        "not trained on gets the mean user vector. Slates hold raw item ids. predict params: k, "
        "output ('slates' or 'action_dist'), seed.",
    ])


def register_policy_form(result: RunResult, spec: TrainSpec, data: PreparedData,
                         ids: dict[str, Any], selection: Selection, raw_model: str,
                         model: nn.Module) -> str:
    """Log the policy form of the selected run's ``model`` in that run and register it as a
    version of ``spec.policy_model_name`` (lineage tags of the run, a description); returns
    ``models:/NAME/VERSION``."""
    import mlflow

    from offline.registry import describe_registered_model
    from recsys.registry import log_policy_model, scored_model

    tags = {**ids["tags"], "recsys.raw_model": raw_model, "recsys.selection": selection.rule,
            "recsys.exploration": spec.policy.exploration}
    meta = {"source": "offline", "config": spec.name, "model": spec.model.name,
            "objective": spec.objective.name, "seed": int(result.seed),
            "run_id": ids["run_id"], "raw_model": raw_model,
            "dataset_hash": tags[DATASET_HASH]}
    policy = policy_form(model, IdMaps.of(data.dataset), spec.policy, random_state=result.seed)
    name = spec.policy_model_name
    nested = mlflow.active_run() is not None
    with mlflow.start_run(run_id=ids["run_id"], nested=nested):
        info = log_policy_model(scored_model(policy, meta), registered_model_name=name,
                                artifact_name=POLICY_ARTIFACT, tags=tags,
                                description=describe_policy(spec, result, raw_model, tags,
                                                            selection))
    describe_registered_model(name, (
        "Policies registered by `recsys train`/`reproduce` (offline models with an exploration "
        "rule over their scores; recsys.registry 'scores' models): each version's description "
        "names the raw model it was made from (tag recsys.raw_model) and its exploration rule."))
    return f"models:/{name}/{info.registered_model_version}"
