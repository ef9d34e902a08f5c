"""Offline torch models in the mlflow registry: logged as pyfunc "models from code" (no pickle).

A logged model holds ``offline/pyfunc_model.py`` (the code), ``config.json`` (model name and
constructor config) and ``weights.safetensors`` (the state dict, feature buffers included). Its
pyfunc scores a DataFrame of ``user_id``/``item_id`` pairs (one score per row) or, given only
``user_id``, returns each user's top ``k`` items (param ``k``, default 10).
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from offline.dataset import Dataset
from offline.models import MODELS, build_model, model_name
from recsys.validation import message

LINEAGE_TAGS: tuple[str, ...] = ("data_source", "split", "dataset_hash", "code_version")
FORMAT_VERSION = 1
DEFAULT_K = 10
_CODE = Path(__file__).with_name("pyfunc_model.py")


def code_version() -> str:
    """The git commit of this checkout, else the installed ``recsys`` version."""
    root = Path(__file__).resolve().parents[1]
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True)
        return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return importlib.metadata.version("recsys")


def lineage_tags(dataset: Dataset, split: str | None = None) -> dict[str, str]:
    """The lineage tags of a model trained on ``dataset``."""
    return {
        "data_source": str(dataset.lineage.get("data_source", dataset.name)),
        "split": str(split if split is not None else dataset.lineage.get("split", "")),
        "dataset_hash": dataset.fingerprint(),
        "code_version": code_version(),
    }


def write_model(model: nn.Module, directory: str | Path) -> dict[str, Path]:
    """Save ``model`` as ``config.json`` + ``weights.safetensors`` in ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"config": directory / "config.json", "weights": directory / "weights.safetensors"}
    paths["config"].write_text(json.dumps({
        "format_version": FORMAT_VERSION,
        "model": model_name(model),
        "config": model.config(),
        "arrays": list(type(model).array_names),  # type: ignore[attr-defined]
    }, indent=2))
    state = {key: value.detach().to("cpu").contiguous() for key, value in
             model.state_dict().items()}
    save_file(state, str(paths["weights"]))
    return paths


def read_model(config_path: str | Path, weights_path: str | Path) -> nn.Module:
    """Rebuild a model saved by :func:`write_model` (eval mode, on CPU)."""
    from safetensors.torch import load_file

    meta = json.loads(Path(config_path).read_text())
    if meta.get("format_version") != FORMAT_VERSION or meta.get("model") not in MODELS:
        raise ValueError(
            message(str(config_path), f"an offline model config (format {FORMAT_VERSION!r}, "
                    f"a model among {sorted(MODELS)})", f"format "
                    f"{meta.get('format_version')!r}, model {meta.get('model')!r}")
        )
    state = load_file(str(weights_path))
    missing = [name for name in meta["arrays"] if name not in state]
    if missing:
        raise ValueError(message(str(weights_path), f"the feature arrays {missing}", "none"))
    model = build_model(meta["model"], meta["config"], **{n: state[n] for n in meta["arrays"]})
    model.load_state_dict(state, strict=True)
    return model.eval()


def _ids(frame: pd.DataFrame, column: str, bound: int) -> np.ndarray:
    values = frame[column].to_numpy()
    if len(values) and (pd.isna(values).any() or values.min() < 0 or values.max() >= bound):
        raise ValueError(message(column, f"integers in [0, {bound})", "nulls or ids outside"))
    return values.astype(np.int64)


def score_frame(model: nn.Module, frame: pd.DataFrame, params: Mapping[str, Any] | None = None
                ) -> np.ndarray | pd.DataFrame:
    """Pyfunc ``predict``: scores of the rows' pairs, or each user's top ``k`` items (columns
    ``user_id``, ``item_id``, ``rank``, ``score``) when ``item_id`` is absent."""
    if "user_id" not in frame.columns:
        raise ValueError(
            message("frame", "a user_id column (and item_id to score pairs)",
                    f"columns {list(frame.columns)}")
        )
    n_users, n_items = model.n_users, model.n_items
    users = _ids(frame, "user_id", n_users)
    with torch.no_grad():
        if "item_id" in frame.columns and not frame["item_id"].isna().all():
            items = _ids(frame, "item_id", n_items)
            return model(torch.from_numpy(users), torch.from_numpy(items)).numpy()
        k = int((params or {}).get("k", DEFAULT_K))
        if k < 1:
            raise ValueError(message("k", "an integer >= 1", k))
        k = min(k, n_items)
        scores, items = torch.topk(model.score_all(torch.from_numpy(users)), k, dim=1)
    return pd.DataFrame({
        "user_id": np.repeat(users, k),
        "item_id": items.numpy().ravel(),
        "rank": np.tile(np.arange(1, k + 1), len(users)),
        "score": scores.numpy().ravel(),
    })


def _signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("long", "user_id"), ColSpec("long", "item_id", required=False)]),
        outputs=Schema([ColSpec("float")]),
        params=ParamSchema([ParamSpec("k", "long", DEFAULT_K)]),
    )


def _requirements() -> list[str]:
    names = ("mlflow", "torch", "safetensors", "numpy", "pandas", "polars")
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in names]


def log_torch_model(
    model: nn.Module,
    *,
    name: str,
    registered_model_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    input_example: pd.DataFrame | None = None,
) -> Any:
    """Log ``model`` in the active mlflow run as a pyfunc (optionally registering a version) and
    tag the run, the logged model and the version with the lineage tags. Returns its ModelInfo."""
    import mlflow

    if mlflow.active_run() is None:
        raise RuntimeError("log_torch_model needs an active run: call it inside mlflow.start_run()")
    tags = {key: str(value) for key, value in (tags or {}).items()}
    tags.setdefault("code_version", code_version())
    missing = [key for key in LINEAGE_TAGS if key not in tags]
    if missing:
        raise ValueError(f"tags must carry the lineage {list(LINEAGE_TAGS)}; missing {missing} "
                         "(offline.registry.lineage_tags(dataset) builds them)")
    if input_example is None:
        n = min(3, model.n_users, model.n_items)
        input_example = pd.DataFrame({"user_id": np.arange(n, dtype=np.int64),
                                      "item_id": np.arange(n, dtype=np.int64)[::-1].copy()})
    was_training = model.training
    model.eval()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            paths = write_model(model, tmp)
            info = mlflow.pyfunc.log_model(
                name=name,
                python_model=str(_CODE),
                artifacts={key: str(path) for key, path in paths.items()},
                signature=_signature(),
                input_example=input_example,
                pip_requirements=_requirements(),
                registered_model_name=registered_model_name,
                tags=tags,
            )
    finally:
        model.train(was_training)
    mlflow.set_tags(tags)
    if registered_model_name is not None:
        client = mlflow.MlflowClient()
        version = str(info.registered_model_version)
        for key, value in tags.items():
            client.set_model_version_tag(registered_model_name, version, key, value)
    return info


def load_scoring_model(uri: str) -> Any:
    """The pyfunc of a logged model (``models:/<name>/<version>``, ``runs:/...``, a path)."""
    import mlflow

    return mlflow.pyfunc.load_model(uri)


def load_torch_model(uri: str) -> nn.Module:
    """The torch model of a logged model, rebuilt from its config and safetensors weights."""
    import mlflow
    from mlflow.models import Model

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    flavor = Model.load(str(local)).flavors.get("python_function", {})
    artifacts = flavor.get("artifacts", {})
    if "config" not in artifacts or "weights" not in artifacts:
        raise ValueError(f"{uri} is not an offline torch model (no config/weights artifacts)")
    return read_model(local / artifacts["config"]["path"], local / artifacts["weights"]["path"])
