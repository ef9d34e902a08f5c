"""Offline torch models in the mlflow registry: logged as pyfunc "models from code" (no pickle).

A logged model holds ``offline/pyfunc_model.py`` (the code), ``config.json`` (model name and
constructor config), ``weights.safetensors`` (the state dict, feature buffers included) and
``id_maps.json`` (the raw id of every model row: ``user_ids[i]`` is user ``i``'s id in the data
source, a string; ``item_ids[j]`` item ``j``'s, an integer).

Its pyfunc takes RAW ids and always returns a table (the signature says so):

- a frame of ``user_id`` (string) and ``item_id`` (long) pairs → one row per pair, columns
  ``user_id``, ``item_id``, ``score`` (float);
- a frame of ``user_id`` only → each user's top ``k`` items (param ``k``, default 10), columns
  ``user_id``, ``item_id``, ``rank`` (1 = best), ``score``.

An id the model was not trained on is a ``ValueError`` naming it (a model row cannot be made up;
the policy form of the model, ``offline.policy_form``, scores unknown users with the mean user).

Lineage tags (``LINEAGE_TAGS``, set once each on the run, the logged model and the version):
``recsys.data_source``, ``recsys.split`` (the split method), ``recsys.dataset_hash`` (the data:
rows and data specification, the same for every seed, ``Dataset.fingerprint``),
``recsys.split_hash`` (which rows went to train/valid/test, ``Dataset.split_fingerprint``),
``recsys.code_version`` (the git commit, ``recsys.registry.lineage``), and ``recsys.data.<key>``
for every other lineage entry of the data set (noise ratio, lake offsets, world seed, ...). The
run's own tags (``recsys.seed``, ``recsys.model``, ...) are ``offline.run_tracking``'s.
"""

from __future__ import annotations

import importlib.metadata
import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from offline.dataset import Dataset
from offline.models import MODELS, build_model, model_name
from recsys.registry.lineage import code_version
from recsys.registry.mlflow_io import tag_logged_model
from recsys.validation import message

DATA_SOURCE = "recsys.data_source"
SPLIT = "recsys.split"
DATASET_HASH = "recsys.dataset_hash"
SPLIT_HASH = "recsys.split_hash"
CODE_VERSION = "recsys.code_version"
DATA_TAG_PREFIX = "recsys.data."
LINEAGE_TAGS: tuple[str, ...] = (DATA_SOURCE, SPLIT, DATASET_HASH, SPLIT_HASH, CODE_VERSION)
FORMAT_VERSION = 1
DEFAULT_K = 10
MODEL_ARTIFACTS = ("config", "weights", "id_maps")
_CODE = Path(__file__).with_name("pyfunc_model.py")


def lineage_tags(dataset: Dataset, split: str | None = None) -> dict[str, str]:
    """The lineage tags of a model trained on ``dataset`` (names in the module docstring); the
    data set's ``seed`` is the run's, tagged by the run, not here."""
    lineage = dict(dataset.lineage)
    tags = {
        DATA_SOURCE: str(lineage.pop("data_source", dataset.name)),
        SPLIT: str(split if split is not None else lineage.get("split", "")),
        DATASET_HASH: dataset.fingerprint(),
        SPLIT_HASH: dataset.split_fingerprint(),
        CODE_VERSION: code_version(),
    }
    lineage.pop("split", None)
    lineage.pop("seed", None)
    tags.update({f"{DATA_TAG_PREFIX}{key}": str(value) for key, value in lineage.items()})
    return tags


@dataclass(frozen=True, eq=False)
class IdMaps:
    """The raw ids of a model's rows: ``user_ids[i]`` (str) is user ``i``, ``item_ids[j]`` (int)
    item ``j``; maps raw ids back to rows (vectorised hash lookups)."""

    user_ids: np.ndarray
    item_ids: np.ndarray

    def __post_init__(self) -> None:
        for name, values in (("user_ids", self.user_ids), ("item_ids", self.item_ids)):
            if len(pd.unique(values)) != len(values):
                raise ValueError(message(name, "distinct raw ids", "duplicates"))

    @classmethod
    def of(cls, dataset: Dataset) -> IdMaps:
        """The data set's id maps (an index is its own id where the source did not re-index)."""
        users = dataset.user_ids or tuple(str(u) for u in range(dataset.n_users))
        items = dataset.item_ids if dataset.item_ids is not None else range(dataset.n_items)
        return cls(np.asarray(users, dtype=object).astype(str).astype(object),
                   np.asarray(items, dtype=np.int64))

    @classmethod
    def identity(cls, n_users: int, n_items: int) -> IdMaps:
        """Raw ids equal to the row indices (``str(i)`` for users)."""
        return cls(np.arange(n_users).astype(str).astype(object), np.arange(n_items))

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "user_ids": [str(u) for u in self.user_ids],
                "item_ids": [int(i) for i in self.item_ids]}

    def write(self, path: str | Path) -> Path:
        Path(path).write_text(json.dumps(self.to_dict()))
        return Path(path)

    @classmethod
    def read(cls, path: str | Path) -> IdMaps:
        data = json.loads(Path(path).read_text())
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(message(str(path), f"id maps of format {FORMAT_VERSION}",
                                     f"format {data.get('format_version')!r}"))
        return cls(np.asarray(data["user_ids"], dtype=object),
                   np.asarray(data["item_ids"], dtype=np.int64))

    def check(self, n_users: int, n_items: int) -> None:
        """Refuse maps that do not cover the model's ``n_users`` × ``n_items`` rows."""
        if (len(self.user_ids), len(self.item_ids)) != (n_users, n_items):
            raise ValueError(message("id maps", f"{n_users} user and {n_items} item ids",
                                     f"{len(self.user_ids)} and {len(self.item_ids)}"))

    def users(self, raw: Sequence[Any]) -> np.ndarray:
        """Model rows of raw user ids (compared as strings); unknown ids raise ``ValueError``."""
        values = np.asarray(raw, dtype=object).astype(str)
        return _lookup("user_id", pd.Index(self.user_ids), values)

    def items(self, raw: Sequence[Any]) -> np.ndarray:
        """Model rows of raw item ids (integers); unknown ids raise ``ValueError``."""
        values = np.asarray(raw)
        if values.dtype.kind not in "iu":
            raise ValueError(message("item_id", "integer raw item ids", f"dtype {values.dtype}"))
        return _lookup("item_id", pd.Index(self.item_ids), values.astype(np.int64))


def _lookup(column: str, index: pd.Index, values: np.ndarray) -> np.ndarray:
    rows = index.get_indexer(values)
    unknown = rows < 0
    if unknown.any():
        shown = ", ".join(repr(v) for v in pd.unique(values[unknown])[:5].tolist())
        raise ValueError(message(column, f"raw ids the model was trained on ({len(index)} ids)",
                                 f"{int(unknown.sum())} unknown, e.g. {shown}",
                                 "score only known ids (the policy form handles new users)"))
    return rows.astype(np.int64)


def write_model(model: nn.Module, directory: str | Path, ids: IdMaps | None = None
                ) -> dict[str, Path]:
    """Save ``model`` as ``config.json`` + ``weights.safetensors`` + ``id_maps.json`` in
    ``directory`` (identity id maps when ``ids`` is None)."""
    from safetensors.torch import save_file

    ids = ids if ids is not None else IdMaps.identity(model.n_users, model.n_items)
    ids.check(model.n_users, model.n_items)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"config": directory / "config.json", "weights": directory / "weights.safetensors",
             "id_maps": directory / "id_maps.json"}
    paths["config"].write_text(json.dumps({
        "format_version": FORMAT_VERSION,
        "model": model_name(model),
        "config": model.config(),
        "arrays": list(type(model).array_names),  # type: ignore[attr-defined]
    }, indent=2))
    state = {key: value.detach().to("cpu").contiguous() for key, value in
             model.state_dict().items()}
    save_file(state, str(paths["weights"]))
    ids.write(paths["id_maps"])
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


def score_frame(model: nn.Module, ids: IdMaps, frame: pd.DataFrame,
                params: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Pyfunc ``predict`` on raw ids: the rows' pairs with their ``score``, or, when ``item_id``
    is absent (or all null), each user's top ``k`` items with their ``rank`` and ``score``."""
    if "user_id" not in frame.columns:
        raise ValueError(
            message("frame", "a user_id column (and item_id to score pairs)",
                    f"columns {list(frame.columns)}")
        )
    raw_users = frame["user_id"].to_numpy()
    if pd.isna(raw_users).any():
        raise ValueError(message("user_id", "raw user ids", "nulls"))
    users = ids.users(raw_users)
    with torch.no_grad():
        if "item_id" in frame.columns and not frame["item_id"].isna().all():
            raw_items = frame["item_id"].to_numpy()
            if pd.isna(raw_items).any():
                raise ValueError(message("item_id", "an item id on every row (or none at all)",
                                         "some nulls"))
            items = ids.items(raw_items)
            scores = model(torch.from_numpy(users), torch.from_numpy(items)).numpy()
            return pd.DataFrame({"user_id": ids.user_ids[users], "item_id": ids.item_ids[items],
                                 "score": scores})
        k = int((params or {}).get("k", DEFAULT_K))
        if k < 1:
            raise ValueError(message("k", "an integer >= 1", k))
        k = min(k, model.n_items)
        scores, items = torch.topk(model.score_all(torch.from_numpy(users)), k, dim=1)
    return pd.DataFrame({
        "user_id": np.repeat(ids.user_ids[users], k),
        "item_id": ids.item_ids[items.numpy().ravel()],
        "rank": np.tile(np.arange(1, k + 1), len(users)),
        "score": scores.numpy().ravel(),
    })


def signature() -> Any:
    """The pyfunc's signature: raw ids in, a table out (pairs: no ``rank``; top-k: ranked)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "user_id"), ColSpec("long", "item_id", required=False)]),
        outputs=Schema([ColSpec("string", "user_id"), ColSpec("long", "item_id"),
                        ColSpec("long", "rank", required=False), ColSpec("float", "score")]),
        params=ParamSchema([ParamSpec("k", "long", DEFAULT_K)]),
    )


USAGE = (
    "Input: raw ids, a frame with `user_id` (string) and optionally `item_id` (long). Output: a "
    "table. With item_id, one row per pair: user_id, item_id, score. Without, each user's top k "
    f"items (params k, default {DEFAULT_K}): user_id, item_id, rank (1 = best), score. An id the "
    "model was not trained on is an error (id maps: the artifact id_maps.json)."
)


def _requirements() -> list[str]:
    names = ("mlflow", "torch", "safetensors", "numpy", "pandas", "polars")
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in names]


def log_torch_model(
    model: nn.Module,
    *,
    name: str,
    ids: IdMaps | None = None,
    registered_model_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    description: str | None = None,
    input_example: pd.DataFrame | None = None,
) -> Any:
    """Log ``model`` with its id maps in the active mlflow run as a pyfunc (optionally
    registering a version with ``description``) and tag the run, the logged model and the
    version with the lineage tags. Returns its ModelInfo."""
    import mlflow

    if mlflow.active_run() is None:
        raise RuntimeError("log_torch_model needs an active run: call it inside mlflow.start_run()")
    tags = {key: str(value) for key, value in (tags or {}).items()}
    tags.setdefault(CODE_VERSION, code_version())
    missing = [key for key in LINEAGE_TAGS if key not in tags]
    if missing:
        raise ValueError(f"tags must carry the lineage {list(LINEAGE_TAGS)}; missing {missing} "
                         "(offline.registry.lineage_tags(dataset) builds them)")
    ids = ids if ids is not None else IdMaps.identity(model.n_users, model.n_items)
    if input_example is None:
        n = min(3, model.n_users, model.n_items)
        input_example = pd.DataFrame({"user_id": ids.user_ids[:n].astype(str),
                                      "item_id": ids.item_ids[:n][::-1].copy()})
    was_training = model.training
    model.eval()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            paths = write_model(model, tmp, ids)
            info = mlflow.pyfunc.log_model(
                name=name,
                python_model=str(_CODE),
                artifacts={key: str(path) for key, path in paths.items()},
                signature=signature(),
                input_example=input_example,
                pip_requirements=_requirements(),
                registered_model_name=registered_model_name,
                tags=tags,
            )
    finally:
        model.train(was_training)
    tag_logged_model(info, registered_model_name, tags, description)
    return info


def register_version(model_uri: str, name: str, *, tags: Mapping[str, str] | None = None,
                     description: str | None = None) -> str:
    """Register a logged model (``models:/m-…`` or ``runs:/…``) as a new version of ``name``
    with ``tags`` and ``description``; returns the version number."""
    import mlflow

    tags = {key: str(value) for key, value in (tags or {}).items()}
    version = mlflow.register_model(model_uri, name, tags=tags)
    if description:
        mlflow.MlflowClient().update_model_version(name, version.version,
                                                   description=description)
    return str(version.version)


def describe_registered_model(name: str, description: str) -> None:
    """Give the registered model ``name`` a description unless it has one (what its versions
    are; each version's own description says what it was trained on)."""
    import mlflow

    client = mlflow.MlflowClient()
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, description=description)


def _local_artifacts(uri: str) -> dict[str, Path]:
    import mlflow
    from mlflow.models import Model

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    flavor = Model.load(str(local)).flavors.get("python_function", {})
    artifacts = flavor.get("artifacts", {})
    if "config" not in artifacts or "weights" not in artifacts:
        raise ValueError(f"{uri} is not an offline torch model (no config/weights artifacts)")
    return {key: local / value["path"] for key, value in artifacts.items()}


def load_scoring_model(uri: str) -> Any:
    """The pyfunc of a logged model (``models:/<name>/<version>``, ``runs:/...``, a path)."""
    import mlflow

    return mlflow.pyfunc.load_model(uri)


def load_torch_model(uri: str) -> nn.Module:
    """The torch model of a logged model, rebuilt from its config and safetensors weights."""
    paths = _local_artifacts(uri)
    return read_model(paths["config"], paths["weights"])


def load_id_maps(uri: str) -> IdMaps:
    """The raw ids of a logged model's users and items."""
    paths = _local_artifacts(uri)
    if "id_maps" not in paths:
        raise ValueError(f"{uri} was logged without id maps (an offline model older than them)")
    return IdMaps.read(paths["id_maps"])
