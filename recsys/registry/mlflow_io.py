"""Registered policies in mlflow: log (and register) one, load one back, resolve an alias.

Every policy is logged as the same pyfunc "model from code" (``pyfunc_policy.py``) with the
policy bundle as its one artifact, a signature (request columns in, the slates table out, params
``k``/``output``/``seed``), an input example and pinned requirements. Its ``predict`` takes a
pandas frame of requests (the columns of ``RequestBatch.to_pandas()``; any subset the policy
needs, e.g. only ``user_id`` or only ``context_dense``) and params:

* ``k``: slate size (default: ``meta["slate_size"]`` of the policy, else 5);
* ``output``: ``"slates"`` (a long frame ``request``, ``position``, ``item_id``, ``score``,
  ``propensity``, ``propensity_se``) or ``"action_dist"`` (OBP's ``[n, n_items, k]`` array whose
  columns are the policy's ``item_ids_``);
* ``seed``: restart the policy's random stream first (``-1``: keep it), so that two loads give
  identical slates.

mlflow is imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import importlib.metadata
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from recsys.policies.batch import RequestBatch
from recsys.registry.lineage import code_version
from recsys.registry.model import RegisteredPolicy
from recsys.validation import did_you_mean, message

DEFAULT_K = 5
OUTPUTS = ("slates", "action_dist")
SLATE_COLUMNS = ("request", "position", "item_id", "score", "propensity", "propensity_se")
ARTIFACT_KEY = "policy"
_CODE = Path(__file__).with_name("pyfunc_policy.py")


# ---------------------------------------------------------------------------- predict
def default_k(model: RegisteredPolicy) -> int:
    """The slate size ``predict`` uses when no ``k`` is given."""
    k = model.meta.get("slate_size", DEFAULT_K)
    return int(k) if isinstance(k, int) and not isinstance(k, bool) and k >= 1 else DEFAULT_K


def predict_policy(model: RegisteredPolicy, frame: pd.DataFrame,
                   params: Mapping[str, Any] | None = None) -> pd.DataFrame | np.ndarray:
    """The pyfunc's ``predict``: slates (a long frame) or ``action_dist`` for ``frame``'s
    requests (see the module doc for the params)."""
    params = dict(params or {})
    unknown = sorted(set(params) - {"k", "output", "seed"})
    if unknown:
        raise ValueError(message("params", "only k, output and seed", f"also {unknown}"))
    k = params.get("k")
    k = default_k(model) if k is None else k
    output = params.get("output") or "slates"
    if output not in OUTPUTS:
        raise ValueError(message("output", f"one of {list(OUTPUTS)}", repr(output),
                                 did_you_mean(str(output), OUTPUTS)))
    seed = params.get("seed")
    if seed is not None and int(seed) >= 0:
        model.reseed(int(seed))
    if isinstance(k, float) and k.is_integer():
        k = int(k)
    batch = RequestBatch.from_frame(frame)
    if output == "action_dist":
        return model.action_dist(batch, k)
    slate = model.recommend(batch, k)
    n, width = slate.items.shape
    return pd.DataFrame({
        "request": np.repeat(np.arange(n, dtype=np.int64), width),
        "position": np.tile(np.arange(width, dtype=np.int64), n),
        "item_id": slate.items.astype(np.int64).ravel(),
        "score": slate.scores.astype(np.float64).ravel(),
        "propensity": slate.propensities.astype(np.float64).ravel(),
        "propensity_se": slate.propensity_se.astype(np.float64).ravel(),
    })


def example_batch(model: RegisteredPolicy, n: int = 2) -> RequestBatch:
    """A small batch of requests the policy can score (the logged input example)."""
    policy, layout = model.policy, model.layout
    if layout == "graph":
        from recsys.bandits.graph import SoftContexts

        active = np.unique(policy.stats_.edge_cluster)[:64]  # their candidates: a full slate
        clusters = np.broadcast_to(active, (n, active.size))
        weights = np.full(clusters.shape, 1.0 / max(active.size, 1))
        return RequestBatch.of([""] * n, clusters=SoftContexts.of(clusters, weights))
    if layout in ("dense", "full"):
        dim = (policy.stats_.dim if model.kind == "bandit"
               else policy.item_vectors_.shape[1])
        return RequestBatch.of([""] * n, dense=np.zeros((n, dim)))
    if layout == "user":
        users = policy.user_ids_[:n]
        return RequestBatch.of(np.resize(users, n))
    return RequestBatch.of([""] * n)


def policy_signature(k: int = DEFAULT_K) -> Any:
    """Request columns in, the slates table out, params ``k``, ``output`` and ``seed``."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([
        ColSpec("string", "user_id", required=False),
        ColSpec(Array("double"), "context_dense", required=False),
        ColSpec(Array("long"), "context_cluster_ids", required=False),
        ColSpec(Array("double"), "context_cluster_weights", required=False),
    ])
    outputs = Schema([ColSpec("long", "request"), ColSpec("long", "position"),
                      ColSpec("long", "item_id"), ColSpec("double", "score"),
                      ColSpec("double", "propensity"), ColSpec("double", "propensity_se")])
    params = ParamSchema([ParamSpec("k", "long", int(k)), ParamSpec("output", "string", "slates"),
                          ParamSpec("seed", "long", -1)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def _requirements() -> list[str]:
    names = ("mlflow", "numpy", "pandas", "polars", "scikit-learn")
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in names]


def standard_tags(model: RegisteredPolicy) -> dict[str, str]:
    """The tags every registered policy carries (callers add their lineage)."""
    return {"recsys.policy_kind": model.kind,
            "recsys.policy_class": str(model.spec.get("class", "")),
            "recsys.code_version": code_version()}


# ---------------------------------------------------------------------------- log / load
def log_policy_model(model: RegisteredPolicy, *, registered_model_name: str | None = None,
                     artifact_name: str = "policy", tags: Mapping[str, Any] | None = None,
                     description: str | None = None,
                     input_example: RequestBatch | None = None) -> Any:
    """Log ``model`` in the active run as the policy pyfunc (registering a version when
    ``registered_model_name`` is given) and tag the run, the logged model and the version;
    ``description`` goes on the version. Returns mlflow's ``ModelInfo``."""
    import mlflow

    if not isinstance(model, RegisteredPolicy):
        raise TypeError(message("model", "a RegisteredPolicy (bandit_model, scored_model, "
                                "baseline_model)", type(model).__name__))
    if mlflow.active_run() is None:
        raise RuntimeError("log_policy_model needs an active run: call it inside "
                           "mlflow.start_run()")
    all_tags = {**standard_tags(model), **{str(k): str(v) for k, v in (tags or {}).items()}}
    example = (input_example if input_example is not None else example_batch(model)).to_pandas()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = model.save(Path(tmp) / ARTIFACT_KEY)
        info = mlflow.pyfunc.log_model(
            name=artifact_name,
            python_model=str(_CODE),
            artifacts={ARTIFACT_KEY: str(bundle)},
            signature=policy_signature(default_k(model)),
            input_example=example,
            pip_requirements=_requirements(),
            registered_model_name=registered_model_name,
            tags=all_tags,
        )
    tag_logged_model(info, registered_model_name, all_tags, description)
    return info


def tag_logged_model(info: Any, registered_model_name: str | None, tags: Mapping[str, str],
                     description: str | None = None) -> None:
    """Set ``tags`` on the active run and, when the model was registered, on its version (with
    ``description``): the one place a logged model's lineage reaches the registry."""
    import mlflow

    mlflow.set_tags(dict(tags))
    if registered_model_name is None:
        return
    client = mlflow.MlflowClient()
    version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(registered_model_name, version, key, value)
    if description:
        client.update_model_version(registered_model_name, version, description=description)


def check_registered(name: str, *, version: str | None = None, alias: str | None = None
                     ) -> None:
    """Raise ValueError naming what exists when model ``name`` (and its ``version`` or
    ``alias``) is not in the registry."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        known = sorted(m.name for m in client.search_registered_models())
        raise ValueError(message("model", "a registered model", repr(name),
                                 did_you_mean(name, known) or
                                 f"registered: {', '.join(known) or 'none'}")) from None
    if alias is not None:
        aliases = sorted(model.aliases or {})
        if alias not in aliases:
            raise ValueError(message(f"{name} alias", f"one of {aliases}" if aliases else
                                     "an alias (this model has none)", repr(alias),
                                     did_you_mean(alias, aliases)))
    if version is None:
        return
    try:
        client.get_model_version(name, version)
    except MlflowException:
        found = client.search_model_versions(f"name='{name}'")
        versions = sorted((str(v.version) for v in found), key=int)
        raise ValueError(message(f"{name} version", f"one of {', '.join(versions) or 'none'}",
                                 repr(version))) from None


def resolve_version(uri: str) -> tuple[str, str]:
    """``(NAME, VERSION)`` of ``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` or
    ``models:/NAME/latest``, as the registry holds them now."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    expected = "models:/NAME/VERSION or models:/NAME@ALIAS"
    if not isinstance(uri, str) or not uri.startswith("models:/"):
        raise ValueError(message("uri", expected, repr(uri)))
    client = mlflow.MlflowClient()
    try:
        resolved = get_model_name_and_version(client, uri)
        if len(resolved) == 2:
            client.get_model_version(*resolved)  # a version number is only parsed: check it
    except MlflowException as err:
        raise ValueError(message("uri", f"{expected} that the registry holds", repr(uri),
                                 err.message)) from None
    if len(resolved) != 2:
        raise ValueError(message("uri", expected, f"{uri!r} (a logged model id, not a "
                                 "registered version)"))
    return str(resolved[0]), str(resolved[1])


def _local_artifacts(uri: str) -> Path | None:
    """The model's folder when ``uri`` names a logged model whose artifacts are on this disk
    (read in place: no copy of a large snapshot)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        if uri.startswith("models:/") and not uri.startswith("models:/m-"):
            name, version = resolve_version(uri)
            source = client.get_model_version(name, version).source
        else:
            source = uri
        if not source.startswith("models:/m-"):
            return None
        location = client.get_logged_model(source.removeprefix("models:/")).artifact_location
    except (MlflowException, ValueError, AttributeError):  # any doubt: download instead
        return None
    parsed = urlparse(location)
    if parsed.scheme not in ("", "file"):
        return None
    path = Path(parsed.path if parsed.scheme == "file" else location)
    return path if (path / "MLmodel").is_file() else None


def _bundle_dir(model_dir: Path, uri: str) -> Path:
    from mlflow.models import Model

    flavor = Model.load(str(model_dir)).flavors.get("python_function", {})
    artifact = flavor.get("artifacts", {}).get(ARTIFACT_KEY)
    if not artifact:
        raise ValueError(message(uri, "a recsys policy model (a 'policy' artifact)",
                                 f"artifacts {sorted(flavor.get('artifacts', {}))}"))
    return model_dir / artifact["path"]


def load_policy_model(uri: str) -> RegisteredPolicy:
    """The :class:`RegisteredPolicy` logged at ``uri`` (``models:/NAME/VERSION``,
    ``models:/NAME@ALIAS``, ``models:/m-…``, ``runs:/…``, a path); ``name``/``version`` are set
    for registry uris (an alias is resolved once, so name, version and content agree)."""
    import mlflow

    name = version = None
    if uri.startswith("models:/") and not uri.startswith("models:/m-"):
        name, version = resolve_version(uri)
        uri = f"models:/{name}/{version}"
    local = _local_artifacts(uri)
    if local is not None:
        model = RegisteredPolicy.load(_bundle_dir(local, uri))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            downloaded = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
            model = RegisteredPolicy.load(_bundle_dir(downloaded, uri))
    model.name, model.version = name, version
    return model
