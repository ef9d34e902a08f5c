"""From a specification's ``[train.data]`` and ``[train.propensity]`` tables to prepared data.

Data sources by name (``SOURCES``): the real data sets in ``../shared/data`` (``coat``,
``coat_implicit``, ``obd``, ``finn``), the Parquet lake the streaming pipeline writes (``lake``),
any interaction table a user brings (``table``: Parquet or CSV with a column mapping, see
``offline.data.table``), and simulated logs (``simulator_exposure``, ``simulator_noisy_clicks``).

Installed packages add data sets through the ``recsys.datasets`` entry points; ``[train.data]
source = "<entry point name>"`` names one directly (the spec's name check knows the installed
names; a built-in name wins over an entry point of the same name). An entry point names one of
two shapes of callable:

- a **writer** (the default; the simulator's): ``write(out_dir, seed=..., overwrite=True,
  **params)`` writes the data set once into ``out_dir`` in the lake layout (``lake/`` and, when
  the truth is known, ``truth.npz`` with a ``relevance`` matrix) and is read back like real logs,
  so this package never imports the writer's; folders are cached by their parameters under
  ``<data_dir>/datasets``. Read-back keys: ``feedback`` (``"clicks"`` or ``"shown"``),
  ``noise_ratio``, ``split`` and ``world_seed`` (the writer's seed); the rest go to the writer.
- a **loader** marked with ``@dataset_loader``: ``load(seed=..., **params)`` returns an
  ``offline.dataset.Dataset`` (or a ``PreparedData``) directly; every ``[train.data]`` key but
  ``source`` is passed to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import polars as pl

from offline.data import (
    coat_implicit_dataset,
    coat_rating_dataset,
    finn_dataset,
    gowalla_dataset,
    inject_noise,
    lake_dataset,
    obd_dataset,
)
from offline.data.table import table_dataset
from offline.dataset import Dataset
from offline.prepared import PreparedData
from offline.propensity import make_propensity
from offline.spec import Component, SpecError, TrainSpec
from offline.weights import clip_propensities, inverse_propensity_weights, weight_summary
from recsys.validation import did_you_mean, message

DATASET_ENTRY_POINTS = "recsys.datasets"
MAX_PROPENSITY_MATRIX = 50_000_000
"""Largest n_users × n_items for which a dense propensity matrix is built."""


def shared_data_dir() -> Path:
    """The real data sets: ``$RECSYS_SHARED_DATA``, else ``../shared/data`` from here."""
    return Path(os.environ.get("RECSYS_SHARED_DATA", "../shared/data"))


def _path(params: dict[str, Any], default: str) -> Path:
    path = Path(params.pop("path", shared_data_dir() / default))
    if not path.exists():
        raise SpecError(
            f"[train.data] path {path} does not exist (set `path`, or RECSYS_SHARED_DATA to the "
            "folder holding coat/ and obd/)"
        )
    return path


def _real(builder: Callable[..., Dataset], default: str) -> Callable[..., PreparedData]:
    def load(params: dict[str, Any], seed: int, data_dir: Path, lake_uri: str) -> PreparedData:
        path = _path(params, default)
        return PreparedData(builder(path, seed=seed, **params))

    return load


def _finn(params: dict[str, Any], seed: int, data_dir: Path, lake_uri: str) -> PreparedData:
    path = Path(params.pop("path"))
    return PreparedData(finn_dataset(path, seed=seed, **params))


FEEDBACK = ("clicks", "shown")


def as_feedback(dataset: Dataset, feedback: str, noise_ratio: float, seed: int) -> Dataset:
    """Logged rewards as training data: ``"shown"`` keeps every shown item with its 0/1 outcome
    and logged propensity (a rating task); ``"clicks"`` keeps each clicked pair once (implicit
    feedback, accidental clicks marked noise) with PLD-protocol noise at ``noise_ratio``."""
    if feedback not in FEEDBACK:
        raise SpecError(message("train.data.feedback", f"one of {FEEDBACK}", repr(feedback)))
    lineage = {**dataset.lineage, "feedback": feedback, "noise_ratio": str(noise_ratio)}
    if feedback == "shown":
        return dataclasses.replace(dataset, task="rating", lineage=lineage)

    def clicks(frame: pl.DataFrame) -> pl.DataFrame:
        if "noise" not in frame.columns:
            frame = frame.with_columns(pl.lit(False).alias("noise"))
        return (frame.filter(pl.col("label") > 0)
                .group_by("user_id", "item_id", maintain_order=True)
                .agg(pl.col("label").first(), pl.col("noise").all())
                .select("user_id", "item_id", "label", "noise"))

    train, valid, test = (clicks(f) for f in (dataset.train, dataset.valid, dataset.test))
    # A pair clicked in train is not a held-out target (the split is over log rows).
    valid = valid.join(train, on=["user_id", "item_id"], how="anti")
    test = test.join(pl.concat([train, valid]), on=["user_id", "item_id"], how="anti")
    if noise_ratio > 0:
        interacted = pl.concat([train, valid, test]).select("user_id", "item_id")
        clicked_noise = train.select("user_id", "item_id", pl.col("noise").alias("clicked"))
        train = (inject_noise(train.drop("noise"), interacted, dataset.n_items, noise_ratio, seed)
                 .join(clicked_noise, on=["user_id", "item_id"], how="left")
                 .with_columns(pl.col("noise") | pl.col("clicked").fill_null(False))
                 .drop("clicked"))
    return dataclasses.replace(dataset, task="implicit", train=train, valid=valid.drop("noise"),
                               test=test.drop("noise"), lineage=lineage)


def _lake(params: dict[str, Any], seed: int, data_dir: Path, lake_uri: str) -> PreparedData:
    uri = params.pop("uri", lake_uri)
    feedback = params.pop("feedback", "clicks")
    noise_ratio = float(params.pop("noise_ratio", 0.0))
    lake = lake_dataset(uri, seed=seed, **params)
    return PreparedData(as_feedback(lake.dataset, feedback, noise_ratio, seed))


def dataset_entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """The installed ``recsys.datasets`` entry points by name (writers and loaders)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=DATASET_ENTRY_POINTS)}


def source_names() -> list[str]:
    """Every name ``[train.data] source`` takes: ``SOURCES`` and the installed entry points."""
    return [*SOURCES, *(name for name in dataset_entry_points() if name not in SOURCES)]


F = TypeVar("F", bound=Callable[..., Any])


def dataset_loader(function: F) -> F:
    """Mark a ``recsys.datasets`` entry point as a loader: ``function(seed=..., **params)``
    returns a ``Dataset`` or ``PreparedData`` (unmarked entry points are writers)."""
    function.recsys_dataset = "loader"  # type: ignore[attr-defined]
    return function


def is_loader(entry: object) -> bool:
    """Whether a loaded entry point is a loader (``@dataset_loader``) rather than a writer."""
    return getattr(entry, "recsys_dataset", "writer") == "loader"


def simulated_dataset_dir(kind: str, params: dict[str, Any], seed: int, data_dir: Path) -> Path:
    """Write (once) and return the folder of a simulated data set from its entry point."""
    entry_points = dataset_entry_points()
    if kind not in entry_points:
        raise SpecError(
            f"no data set writer {kind!r} in the {DATASET_ENTRY_POINTS!r} entry points "
            f"(installed: {sorted(entry_points)}); is the project installed (pip install -e .)?"
        )
    key = hashlib.sha256(json.dumps([kind, seed, params], sort_keys=True).encode()).hexdigest()
    out = data_dir / "datasets" / f"{kind}-seed{seed}-{key[:10]}"
    if not (out / "manifest.json").is_file():
        entry_points[kind].load()(out, seed=seed, overwrite=True, **params)
    return out


def _simulated(kind: str, feedback: str) -> Callable[..., PreparedData]:
    def load(params: dict[str, Any], seed: int, data_dir: Path, lake_uri: str) -> PreparedData:
        noise_ratio = float(params.pop("noise_ratio", 0.0))
        split = params.pop("split", "user")
        world_seed = int(params.pop("world_seed", 0))
        folder = simulated_dataset_dir(kind, params, world_seed, data_dir)
        lake = lake_dataset(folder / "lake", split=split, seed=seed,
                            name=kind.replace("-", "_"))
        relevance = None
        if (folder / "truth.npz").is_file():
            truth = np.load(folder / "truth.npz")["relevance"]
            relevance = truth[np.ix_(lake.user_ids.astype(np.int64),
                                     lake.item_ids.astype(np.int64))]
        dataset = dataclasses.replace(
            lake.dataset, true_relevance=relevance,
            lineage={**lake.dataset.lineage, "data_source": kind, "world_seed": str(world_seed)},
        )
        return PreparedData(as_feedback(dataset, feedback, noise_ratio, seed))

    return load


def _entry_point_source(name: str, params: dict[str, Any], seed: int, data_dir: Path,
                        lake_uri: str) -> PreparedData:
    """A data set from the ``recsys.datasets`` entry point ``name``: a loader's return value,
    or a writer's folder read back (``feedback`` defaults to ``"clicks"``)."""
    entry = dataset_entry_points()[name].load()
    if not is_loader(entry):
        feedback = params.pop("feedback", "clicks")
        return _simulated(name, feedback)(params, seed, data_dir, lake_uri)
    result = entry(seed=seed, **params)
    if isinstance(result, Dataset):
        return PreparedData(result)
    if isinstance(result, PreparedData):
        return result
    raise SpecError(message(f"train.data.source {name!r}", "a loader returning an "
                            "offline.dataset.Dataset or PreparedData", type(result).__name__))


def _table(params: dict[str, Any], seed: int, data_dir: Path, lake_uri: str) -> PreparedData:
    """Any interaction table (``offline.data.table``), its keys checked with the closest names."""
    known = set(inspect.signature(table_dataset).parameters) - {"seed"}
    unknown = sorted(set(params) - known)
    if unknown:
        hints = "; ".join(filter(None, (did_you_mean(k, known) for k in unknown)))
        raise SpecError(message("train.data", f"keys of source 'table' among {sorted(known)}",
                                f"unknown keys {unknown}", hints or None))
    return PreparedData(table_dataset(seed=seed, **params))


SOURCES: dict[str, Callable[..., PreparedData]] = {
    "coat": _real(coat_rating_dataset, "coat"),
    "coat_implicit": _real(coat_implicit_dataset, "coat"),
    "obd": _real(obd_dataset, "obd"),
    "finn": _finn,
    "gowalla": _real(gowalla_dataset, "gowalla"),
    "lake": _lake,
    "table": _table,
    "simulator_exposure": _simulated("simulator-exposure", "shown"),
    "simulator_exposure_clicks": _simulated("simulator-exposure", "clicks"),
    "simulator_noisy_clicks": _simulated("simulator-noisy-clicks", "clicks"),
}


def load_source(data: Component, seed: int, data_dir: Path, lake_uri: str) -> PreparedData:
    """The data set ``data`` names (a ``SOURCES`` name or a ``recsys.datasets`` entry point),
    split with ``seed``."""
    names = source_names()
    if data.name not in names:
        raise SpecError(message("train.data.source", f"one of {', '.join(names)}",
                                repr(data.name), did_you_mean(data.name, names)))
    try:
        if data.name in SOURCES:
            return SOURCES[data.name](dict(data.params), seed, data_dir, lake_uri)
        return _entry_point_source(data.name, dict(data.params), seed, data_dir, lake_uri)
    except TypeError as exc:  # an unknown parameter of the builder
        raise SpecError(f"[train.data] source {data.name!r}: {exc}") from exc


def attach_propensities(prepared: PreparedData, estimator: Component, clip: float) -> PreparedData:
    """Fit the specification's propensity estimator on the training split and attach P(observed)
    for the train rows, the validation rows and (when not too large) every pair.

    The estimator sets the validation rows' ``propensity`` column too, replacing whatever the
    source shipped (so ``valid_snips_*`` weighs by the chosen estimator: Naive Bayes, not Coat's
    matrix); the logged estimator's ``predict_frame`` keeps the rows' own logged values. With
    ``"none"`` the data are left as the source made them."""
    if estimator.name == "none":
        return prepared
    dataset = prepared.dataset
    try:
        model = make_propensity(estimator.name, **estimator.params).fit(dataset)
    except ValueError as exc:  # the data lack what the estimator needs
        raise SpecError(f"train.propensity.estimator = {estimator.name!r} on data set "
                        f"{dataset.name!r}: {exc}") from None

    def clipped(p: np.ndarray) -> np.ndarray:
        return clip_propensities(p, clip) if clip > 0 else p

    raw_train_p = model.predict_frame(dataset.train)
    train_p = clipped(raw_train_p)
    valid, valid_p = dataset.valid, None
    if valid.height:
        try:
            valid_p = clipped(model.predict_frame(valid))
        except ValueError as exc:
            raise SpecError(f"train.propensity.estimator = {estimator.name!r}: the validation "
                            f"rows of {dataset.name!r}: {exc}") from None
        valid = valid.with_columns(pl.Series("propensity", valid_p, dtype=pl.Float64))
    matrix = None
    if not model.needs_label and dataset.n_users * dataset.n_items <= MAX_PROPENSITY_MATRIX:
        try:
            matrix = clipped(model.predict_matrix())
        except ValueError:
            matrix = None  # e.g. logged propensities exist only for logged pairs
    summary = weight_summary(
        inverse_propensity_weights(train_p), propensities=raw_train_p, clip=clip or None
    )
    return dataclasses.replace(
        prepared,
        dataset=dataclasses.replace(dataset, valid=valid),
        train_propensity=train_p,
        valid_propensity=valid_p,
        propensity_matrix=matrix,
        propensity_summary={k: float(v) for k, v in summary.items()},
    )


def prepare(spec: TrainSpec, seed: int, data_dir: Path, lake_uri: str) -> PreparedData:
    """Data and propensities for one seed of ``spec``."""
    prepared = load_source(spec.data, seed, data_dir, lake_uri)
    check_model_data(spec, prepared.dataset)
    return attach_propensities(prepared, spec.propensity, spec.clip)


def check_model_data(spec: TrainSpec, dataset: Dataset) -> None:
    """Refuse, before anything trains, a model whose side arrays the data set lacks (the
    two-tower model needs user and item features)."""
    from offline.models import MODELS

    missing = [name for name in getattr(MODELS.get(spec.model.name), "array_names", ())
               if getattr(dataset, name, None) is None]
    if missing:
        fix = ("set [train.data] user_features_path and item_features_path"
               if spec.data.name == "table" else 'use model name = "mf"')
        raise SpecError(message(f"train.model.name = {spec.model.name!r}",
                                f"a data set with {' and '.join(missing)}",
                                f"data set {dataset.name!r} without them", fix))
