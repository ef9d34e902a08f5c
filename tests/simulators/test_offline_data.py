"""Simulated data sets in the lake layout: layout, read-back, propensities, truth, determinism."""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import re

import numpy as np
import polars as pl
import pytest

from recsys.lake import scan_lake
from recsys.schema import partition_expressions
from simulators.ground_truth import item_click_probabilities
from simulators.offline_data import (
    KAFKA_TOPIC,
    exposure_setup,
    noisy_clicks_setup,
    write_exposure_dataset,
    write_noisy_clicks_dataset,
)

SMALL_EXPOSURE = {"n_users": 40, "n_items": 30, "n_requests": 3000, "ms_per_request": 4000}
SMALL_NOISY = {"n_users": 40, "n_items": 30, "n_requests": 6000, "ms_per_request": 2000}
FILE = re.compile(
    r"^lake/rewards/event_date=\d{4}-\d{2}-\d{2}/event_hour=\d{1,2}/"
    r"simulator-p0-(\d{20})-(\d{20})\.parquet$"
)


@pytest.fixture(scope="module")
def exposure(tmp_path_factory):
    out = write_exposure_dataset(tmp_path_factory.mktemp("exposure"), seed=3, **SMALL_EXPOSURE)
    return out, json.loads((out / "manifest.json").read_text()), dict(np.load(out / "truth.npz"))


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    out = write_noisy_clicks_dataset(tmp_path_factory.mktemp("noisy"), seed=5, **SMALL_NOISY)
    return out, json.loads((out / "manifest.json").read_text()), dict(np.load(out / "truth.npz"))


def _at_pairs(matrix: np.ndarray, frame: pl.DataFrame) -> np.ndarray:
    return matrix[frame["user_id"].cast(pl.Int64).to_numpy(), frame["item_id"].to_numpy()]


def _read(out) -> pl.DataFrame:
    return scan_lake(out / "lake", "rewards").collect().sort("kafka_offset")


@pytest.mark.parametrize("which", ["exposure", "noisy"])
def test_files_follow_the_lake_layout_and_read_back_once(which, request):
    out, manifest, _ = request.getfixturevalue(which)
    files = sorted(p.relative_to(out).as_posix() for p in out.glob("lake/**/*.parquet"))
    assert files == sorted(manifest["files"]) and len(files) > 1  # several hour partitions
    ranges = sorted(tuple(int(g) for g in FILE.match(f).groups()) for f in files)
    assert ranges[0][0] == 0 and ranges[-1][1] == manifest["n_rows"] - 1
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(ranges))
    frame = _read(out)
    assert frame.height == manifest["n_rows"] == manifest["stats"]["n_rows"]
    assert frame["kafka_offset"].to_list() == list(range(frame.height))  # every row exactly once
    assert frame["kafka_topic"].unique().to_list() == [KAFKA_TOPIC]
    assert frame["kafka_partition"].unique().to_list() == [0]
    assert frame["request_id"].n_unique() == manifest["n_requests"]
    assert frame.schema["noise"] == pl.Boolean and frame.schema["score"] == pl.Float64
    derived = frame.select(partition_expressions())
    assert derived.equals(frame.select("event_date", "event_hour"))  # directory = event time
    users = frame["user_id"].cast(pl.Int64)
    assert users.min() >= 0 and users.max() < manifest["n_users"]
    assert frame["item_id"].max() < manifest["n_items"]


def test_exposure_propensity_is_the_policys_exact_exposure_probability(exposure):
    out, manifest, truth = exposure
    sim, policy, popularity, params = exposure_setup(3, **SMALL_EXPOSURE)
    users = np.arange(params["n_users"])
    expected = policy.action_dist(sim.user_features(users))[:, :, 0]
    np.testing.assert_allclose(truth["exposure_probability"], expected, rtol=1e-12)
    np.testing.assert_allclose(truth["item_popularity"], popularity)
    assert np.allclose(expected.sum(axis=1), 1.0)
    assert expected.min() >= params["epsilon"] / params["n_items"] * (1 - 1e-12)
    frame = _read(out)
    assert (frame["position"] == 0).all()  # one item per slate
    propensity = frame["propensity"].to_numpy()
    assert ((propensity > 0) & (propensity <= 1)).all()
    u = frame["user_id"].cast(pl.Int64).to_numpy()
    i = frame["item_id"].to_numpy()
    np.testing.assert_allclose(propensity, expected[u, i], rtol=1e-12)
    assert manifest["stats"]["logged_propensity_min"] == pytest.approx(propensity.min())
    shown = np.bincount(i, minlength=params["n_items"])
    assert shown.max() > 5 * np.median(shown)  # popularity skew, not a uniform log


def test_exposure_relevance_is_the_exact_single_item_click_probability(exposure):
    out, manifest, truth = exposure
    sim, *_ = exposure_setup(3, **SMALL_EXPOSURE)
    relevance = truth["relevance"]
    assert relevance.shape == (manifest["n_users"], manifest["n_items"])
    assert ((relevance > 0) & (relevance < 1)).all()
    np.testing.assert_allclose(relevance, item_click_probabilities(sim))
    users, items = np.array([0, 7, 39]), np.array([[2], [29], [11]])
    clicks = 1 - sim.click_probabilities(users, items)[:, -1]
    np.testing.assert_allclose(relevance[users, items[:, 0]], clicks)
    frame = _read(out)
    assert not frame["noise"].any()
    expected_ctr = (truth["exposure_probability"] * relevance).sum(axis=1) @ sim.user_weights
    ctr = frame["reward"].mean()
    assert ctr == pytest.approx(manifest["stats"]["ctr"])
    assert abs(ctr - expected_ctr) < 4 * np.sqrt(expected_ctr * (1 - expected_ctr) / frame.height)


def test_noisy_clicks_carry_labels_at_the_implied_rate(noisy):
    out, manifest, truth = noisy
    params = manifest["params"]
    frame = _read(out)
    k, n_items = params["slate_size"], params["n_items"]
    assert frame.height == params["n_requests"] * k
    assert np.allclose(frame["propensity"].to_numpy(), 1 / n_items)
    assert frame.filter(pl.col("noise"))["reward"].min() == 1.0  # only clicks are noise
    per_request = frame.group_by("request_id").agg(pl.col("reward").sum())["reward"]
    assert per_request.max() == 1.0  # one choice per slate
    n_noisy = int(frame["noise"].sum())
    eps, n = params["click_noise"], params["n_requests"]
    assert abs(n_noisy / n - eps) < 4 * np.sqrt(eps * (1 - eps) / n)
    clicks = int(frame["reward"].sum())
    share = n_noisy / clicks
    assert share == pytest.approx(manifest["stats"]["noise_share_of_clicks"])
    assert share == pytest.approx(manifest["stats"]["expected_noise_share"], abs=0.04)
    relevance, click_probability = truth["relevance"], truth["click_probability"]
    assert relevance.shape == (params["n_users"], n_items)
    assert ((relevance > 0) & (relevance < 1)).all()
    np.testing.assert_allclose(click_probability, (1 - eps) * relevance + eps)
    sim, *_ = noisy_clicks_setup(5, **SMALL_NOISY)
    np.testing.assert_allclose(click_probability, item_click_probabilities(sim))
    clean = frame.filter((pl.col("reward") > 0) & ~pl.col("noise"))
    noise = frame.filter(pl.col("noise"))
    assert (
        _at_pairs(relevance, clean).mean() > _at_pairs(relevance, noise).mean() + 0.05
    )  # noise is not preference


def test_writes_are_deterministic_under_the_seed(tmp_path, exposure):
    out, manifest, truth = exposure
    again = write_exposure_dataset(tmp_path / "again", seed=3, **SMALL_EXPOSURE)
    for name in manifest["files"]:
        assert (again / name).read_bytes() == (out / name).read_bytes()
    assert (again / "manifest.json").read_text() == (out / "manifest.json").read_text()
    again_truth = np.load(again / "truth.npz")
    for name, array in truth.items():
        np.testing.assert_array_equal(again_truth[name], array)
    other = write_exposure_dataset(tmp_path / "other", seed=4, **SMALL_EXPOSURE)
    assert (
        not _read(other).select("item_id", "reward").equals(_read(out).select("item_id", "reward"))
    )


@pytest.mark.parametrize(
    ("writer", "params", "message"),
    [
        (write_exposure_dataset, {"n_user": 10}, r"unknown parameter.*n_user"),
        (write_exposure_dataset, {"n_users": 0}, r"^n_users: expected a value > 0"),
        (write_exposure_dataset, {"n_requests": 10.5}, r"^n_requests: expected an integer"),
        (write_exposure_dataset, {"skew": -1.0}, r"^skew: expected a value > 0"),
        (write_exposure_dataset, {"epsilon": 0.0}, r"^epsilon: expected a value > 0"),
        (write_exposure_dataset, {"epsilon": 1.5}, r"^epsilon: expected a value in \(0, 1\]"),
        (write_exposure_dataset, {"popularity_correlation": 2.0}, r"^popularity_correlation"),
        (write_exposure_dataset, {"personalization": float("nan")}, r"^personalization: .*finite"),
        (write_noisy_clicks_dataset, {"click_noise": 0.0}, r"^click_noise: expected .*\(0, 1\)"),
        (write_noisy_clicks_dataset, {"slate_size": 2}, r"^slate_size: expected a value >= 3"),
        (write_noisy_clicks_dataset, {"n_items": 2}, r"^slate_size: expected at most n_items"),
        (write_noisy_clicks_dataset, {"position_decay": 0.0}, r"position_decay"),
        (write_noisy_clicks_dataset, {"dim": "16"}, r"^dim: expected a number"),
    ],
)
def test_bad_parameters_are_refused_by_name(tmp_path, writer, params, message):
    with pytest.raises(ValueError, match=message):
        writer(tmp_path, seed=0, **params)
    assert not any(tmp_path.iterdir())  # nothing written before the parameters are checked


def test_bad_seed_and_existing_data_set_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"^seed: expected an integer >= 0"):
        write_noisy_clicks_dataset(tmp_path / "a", seed=-1)
    small = {"n_users": 5, "n_items": 6, "n_requests": 50}
    out = write_noisy_clicks_dataset(tmp_path / "b", seed=1, **small)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_noisy_clicks_dataset(out, seed=2, **small)
    write_exposure_dataset(out, seed=2, overwrite=True, **small)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "exposure" and manifest["seed"] == 2
    assert _read(out).height == 50  # the old data set's files are gone


def test_entry_points_load_the_writers():
    found = {ep.name: ep for ep in importlib.metadata.entry_points(group="recsys.datasets")}
    assert found["simulator-exposure"].load() is write_exposure_dataset
    assert found["simulator-noisy-clicks"].load() is write_noisy_clicks_dataset
