"""From a specification's ``[train.data]`` and ``[train.propensity]`` tables to prepared data.

Data sources by name (``SOURCES``): the real data sets in ``../shared/data`` (``coat``,
``coat_implicit``, ``obd``, ``finn``), the Parquet lake the streaming pipeline writes (``lake``),
and simulated logs (``simulator_exposure``, ``simulator_noisy_clicks``). Simulated logs are
written by the simulator's ``recsys.datasets`` entry points into the lake layout and read back
like real logs, so this package never imports the simulator; they are cached by their parameters
under ``<data_dir>/datasets``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from offline.data import (
    coat_implicit_dataset,
    coat_rating_dataset,
    finn_dataset,
    inject_noise,
    lake_dataset,
    obd_dataset,
)
from offline.dataset import Dataset
from offline.prepared import PreparedData
from offline.propensity import make_propensity
from offline.spec import Component, SpecError, TrainSpec
from offline.weights import clip_propensities, inverse_propensity_weights, weight_summary
from recsys.validation import message

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


def simulated_dataset_dir(kind: str, params: dict[str, Any], seed: int, data_dir: Path) -> Path:
    """Write (once) and return the folder of a simulated data set from its entry point."""
    entry_points = {ep.name: ep for ep in importlib.metadata.entry_points(
        group=DATASET_ENTRY_POINTS)}
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
        truth = np.load(folder / "truth.npz")["relevance"]
        relevance = truth[np.ix_(lake.user_ids.astype(np.int64), lake.item_ids.astype(np.int64))]
        dataset = dataclasses.replace(
            lake.dataset, true_relevance=relevance,
            lineage={**lake.dataset.lineage, "data_source": kind, "world_seed": str(world_seed)},
        )
        return PreparedData(as_feedback(dataset, feedback, noise_ratio, seed))

    return load


SOURCES: dict[str, Callable[..., PreparedData]] = {
    "coat": _real(coat_rating_dataset, "coat"),
    "coat_implicit": _real(coat_implicit_dataset, "coat"),
    "obd": _real(obd_dataset, "obd"),
    "finn": _finn,
    "lake": _lake,
    "simulator_exposure": _simulated("simulator-exposure", "shown"),
    "simulator_exposure_clicks": _simulated("simulator-exposure", "clicks"),
    "simulator_noisy_clicks": _simulated("simulator-noisy-clicks", "clicks"),
}


def load_source(data: Component, seed: int, data_dir: Path, lake_uri: str) -> PreparedData:
    """The data set ``data`` names, split with ``seed``."""
    if data.name not in SOURCES:
        raise SpecError(message("train.data.name", f"one of {', '.join(SOURCES)}", repr(data.name)))
    try:
        return SOURCES[data.name](dict(data.params), seed, data_dir, lake_uri)
    except TypeError as exc:  # an unknown parameter of the builder
        raise SpecError(f"[train.data] source {data.name!r}: {exc}") from exc


def attach_propensities(prepared: PreparedData, estimator: Component, clip: float) -> PreparedData:
    """Fit the specification's propensity estimator on the training split and attach P(observed)
    for the train rows, the validation rows and (when not too large) every pair."""
    if estimator.name == "none":
        return prepared
    dataset = prepared.dataset
    model = make_propensity(estimator.name, **estimator.params).fit(dataset)

    def clipped(p: np.ndarray) -> np.ndarray:
        return clip_propensities(p, clip) if clip > 0 else p

    raw_train_p = model.predict_frame(dataset.train)
    train_p = clipped(raw_train_p)
    valid = dataset.valid
    if valid.height and "propensity" not in valid.columns:
        valid = valid.with_columns(pl.Series("propensity", clipped(model.predict_frame(valid))))
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
        propensity_matrix=matrix,
        propensity_summary={k: float(v) for k, v in summary.items()},
    )


def prepare(spec: TrainSpec, seed: int, data_dir: Path, lake_uri: str) -> PreparedData:
    """Data and propensities for one seed of ``spec``."""
    prepared = load_source(spec.data, seed, data_dir, lake_uri)
    return attach_propensities(prepared, spec.propensity, spec.clip)
