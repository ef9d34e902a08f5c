"""Logged rewards as training data (clicks or shown items) and propensities attached to a split."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from offline.dataset import Dataset, interactions_frame
from offline.sources import as_feedback, attach_propensities
from offline.spec import Component, SpecError


def _logs() -> Dataset:
    # user 0 clicked item 1 twice in train (once accidentally) and again in test; item 2 unclicked.
    train = interactions_frame(np.array([0, 0, 0, 1, 1]), np.array([1, 1, 2, 3, 4]),
                               np.array([1.0, 1.0, 0.0, 1.0, 0.0]),
                               propensity=np.full(5, 0.5),
                               noise=np.array([False, True, False, False, False]))
    valid = interactions_frame(np.array([1, 1]), np.array([5, 3]), np.array([1.0, 1.0]),
                               propensity=np.full(2, 0.5), noise=np.array([False, False]))
    test = interactions_frame(np.array([0, 0]), np.array([1, 6]), np.array([1.0, 1.0]),
                              propensity=np.full(2, 0.25), noise=np.array([False, False]))
    return Dataset("logs", "implicit", 2, 20, train, valid, test)


def test_clicks_keep_each_clicked_pair_once_and_never_a_training_pair_as_a_target() -> None:
    data = as_feedback(_logs(), "clicks", noise_ratio=0.0, seed=0)
    assert data.task == "implicit"
    train = data.train.sort("user_id", "item_id")
    assert train.select("user_id", "item_id").rows() == [(0, 1), (1, 3)]
    assert train["noise"].to_list() == [False, False]  # one of its two clicks was genuine
    assert data.valid.select("user_id", "item_id").rows() == [(1, 5)]
    assert data.test.select("user_id", "item_id").rows() == [(0, 6)]


def test_clicks_with_noise_add_the_protocol_count_of_unseen_items() -> None:
    data = as_feedback(_logs(), "clicks", noise_ratio=1.0, seed=3)
    noisy = data.train.filter(pl.col("noise"))
    assert noisy.height == 2  # int(1.0 · 1) per user
    seen = {(0, 1), (0, 6), (1, 3), (1, 5)}
    assert not seen & set(noisy.select("user_id", "item_id").rows())


def test_shown_items_are_a_rating_task_and_bad_feedback_is_refused() -> None:
    data = as_feedback(_logs(), "shown", noise_ratio=0.0, seed=0)
    assert data.task == "rating" and data.train.height == 5
    with pytest.raises(SpecError, match=r"^train.data.feedback: expected one of"):
        as_feedback(_logs(), "views", noise_ratio=0.0, seed=0)


def test_propensities_are_clipped_and_summarised() -> None:
    from offline.prepared import PreparedData

    shown = as_feedback(_logs(), "shown", noise_ratio=0.0, seed=0)
    prepared = attach_propensities(PreparedData(shown), Component("logged"), clip=0.6)
    assert np.all(prepared.train_propensity == 0.6)  # 0.5 clipped up to 0.6
    assert prepared.propensity_summary["n"] == 5
    assert prepared.propensity_matrix is None  # logged propensities exist for logged pairs only


# -- the chosen estimator sets the validation propensities ----------------------------------------


def _naive_bayes_valid_propensities_are_the_models(dataset: Dataset) -> None:
    from offline.prepared import PreparedData
    from offline.propensity import NaiveBayesPropensity

    assert "propensity" in dataset.valid.columns  # what the source shipped
    prepared = attach_propensities(PreparedData(dataset), Component("naive_bayes"), clip=0.0)
    expected = NaiveBayesPropensity().fit(dataset).predict_frame(dataset.valid)
    valid = prepared.dataset.valid
    np.testing.assert_array_equal(valid["propensity"].to_numpy(), expected)
    np.testing.assert_array_equal(prepared.valid_propensity, expected)
    assert not np.array_equal(expected, dataset.valid["propensity"].to_numpy())
    np.testing.assert_array_equal(
        prepared.train_propensity, NaiveBayesPropensity().fit(dataset).predict_frame(dataset.train))


def test_naive_bayes_sets_the_validation_propensities_of_generated_coat(tmp_path) -> None:
    """The defect: validation rows kept Coat's shipped propensities under naive_bayes, so
    valid_snips_mse weighed by another model than the one training used."""
    from offline.data.coat import coat_rating_dataset
    from tests.offline.test_data_coat import make_coat

    make_coat(tmp_path, n_users=20, per_user=(10, 6))
    _naive_bayes_valid_propensities_are_the_models(
        coat_rating_dataset(tmp_path, valid_fraction=0.2, mar_sample_fraction=0.25))


def test_naive_bayes_sets_the_validation_propensities_of_real_coat(shared_data) -> None:
    from offline.data.coat import coat_rating_dataset

    _naive_bayes_valid_propensities_are_the_models(
        coat_rating_dataset(shared_data / "coat", mar_sample_fraction=0.05))


def test_a_logged_estimator_keeps_the_logged_validation_propensities() -> None:
    from offline.prepared import PreparedData

    shown = as_feedback(_logs(), "shown", noise_ratio=0.0, seed=0)
    prepared = attach_propensities(PreparedData(shown), Component("logged"), clip=0.0)
    assert prepared.dataset.valid["propensity"].to_list() == [0.5, 0.5]
    assert prepared.valid_propensity.tolist() == [0.5, 0.5]


def test_an_estimator_the_data_cannot_feed_is_a_spec_error_naming_it() -> None:
    from offline.prepared import PreparedData

    logs = _logs()
    no_mar = as_feedback(logs, "shown", noise_ratio=0.0, seed=0)
    with pytest.raises(SpecError, match=r"^train.propensity.estimator = 'naive_bayes' on data "
                                        r"set 'logs': NaiveBayesPropensity needs"):
        attach_propensities(PreparedData(no_mar), Component("naive_bayes"), clip=0.0)
    bare = no_mar.__class__(**{**no_mar.__dict__, "train": no_mar.train.drop("propensity")})
    with pytest.raises(SpecError, match=r"columns\.propensity"):
        attach_propensities(PreparedData(bare), Component("logged"), clip=0.0)


# -- recsys.datasets entry points: writers and loaders --------------------------------------------

LOADER_MODULE = '''
import numpy as np
from offline.dataset import Dataset, interactions_frame
from offline.sources import dataset_loader


@dataset_loader
def load(seed=0, n_users=3):
    frame = interactions_frame(np.arange(n_users), np.zeros(n_users, np.int64), np.ones(n_users))
    return Dataset("toy_loader", "implicit", n_users, 2, frame, frame.head(0), frame,
                   lineage={"seed": str(seed)})


@dataset_loader
def not_a_dataset(seed=0):
    return 42
'''


@pytest.fixture
def toy_entry_points(tmp_path, monkeypatch):
    """Two loader entry points (in a module on a temporary path) beside the installed ones:
    nothing is registered globally."""
    import importlib.metadata

    import offline.sources

    (tmp_path / "toy_datasets.py").write_text(LOADER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    installed = offline.sources.dataset_entry_points()
    group = offline.sources.DATASET_ENTRY_POINTS
    extra = {name: importlib.metadata.EntryPoint(name, f"toy_datasets:{attr}", group)
             for name, attr in (("toy-loader", "load"), ("toy-bad", "not_a_dataset"))}
    monkeypatch.setattr(offline.sources, "dataset_entry_points", lambda: {**installed, **extra})
    return installed


def test_a_loader_entry_point_is_a_source_by_its_name(toy_entry_points, tmp_path) -> None:
    from offline.sources import load_source, source_names
    from offline.spec import TrainSpec

    assert {"simulator-exposure", "simulator-noisy-clicks"} <= set(toy_entry_points)
    assert {"toy-loader", "simulator-exposure", "table", "coat"} <= set(source_names())
    table = {"data": {"source": "toy-loader", "n_users": 4}, "model": {"name": "mf"},
             "objective": {"name": "bpr"}}
    spec = TrainSpec.from_table(table)  # the name check knows the entry point
    prepared = load_source(spec.data, seed=7, data_dir=tmp_path, lake_uri="")
    assert prepared.dataset.name == "toy_loader" and prepared.dataset.n_users == 4
    assert prepared.dataset.lineage["seed"] == "7"
    with pytest.raises(SpecError, match=r"a loader returning an offline\.dataset\.Dataset"):
        load_source(Component("toy-bad"), seed=0, data_dir=tmp_path, lake_uri="")
    with pytest.raises(SpecError, match=r"source 'toy-loader': .*unexpected keyword"):
        load_source(Component("toy-loader", {"n_user": 4}), seed=0, data_dir=tmp_path,
                    lake_uri="")
    with pytest.raises(SpecError, match=r"^train.data.source: expected a data source \(.*"
                                        r"toy-loader.*did you mean toy-loader"):
        TrainSpec.from_table({**table, "data": {"source": "toy-loadr"}})


def test_a_writer_entry_point_is_a_source_by_its_name(tmp_path) -> None:
    """The simulator's writer, named directly: written once into the cache, read back like
    logs with the truth attached, as the built-in simulator sources are."""
    from offline.sources import SOURCES, load_source

    params = {"n_users": 30, "n_items": 20, "n_requests": 600, "feedback": "shown"}
    direct = load_source(Component("simulator-exposure", params), 0, tmp_path, "").dataset
    builtin = SOURCES["simulator_exposure"]({k: v for k, v in params.items() if k != "feedback"},
                                            0, tmp_path, "").dataset
    assert direct.task == "rating" and direct.true_relevance is not None
    assert direct.fingerprint() == builtin.fingerprint()
    assert len(list((tmp_path / "datasets").iterdir())) == 1  # one cached folder for both
