"""Propensity estimators: hand-computed cases, recovery of a known exposure model, real Coat."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from offline.dataset import Dataset, interactions_frame
from offline.propensity import (
    PROPENSITY_ESTIMATORS,
    LoggedPropensity,
    LogisticPropensity,
    NaiveBayesPropensity,
    PopularityPropensity,
    ShippedPropensity,
    _rowwise_kron,
    make_propensity,
)


def empty_frame() -> pl.DataFrame:
    return interactions_frame(np.zeros(0, np.int64), np.zeros(0, np.int64))


def make_dataset(train: pl.DataFrame, n_users: int, n_items: int, **side) -> Dataset:
    return Dataset(
        name="toy",
        task=side.pop("task", "rating"),
        n_users=n_users,
        n_items=n_items,
        train=train,
        valid=empty_frame(),
        test=empty_frame(),
        **side,
    )


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def synthetic_exposure(
    n_users: int, n_items: int, seed: int, interaction_scale: float = 0.0
) -> tuple[Dataset, np.ndarray]:
    """Observations drawn as Bernoulli(sigmoid(w·x)) on Gaussian user and item features."""
    rng = np.random.default_rng(seed)
    user_x = rng.normal(size=(n_users, 3))
    item_x = rng.normal(size=(n_items, 4))
    logit = -2.0 + (user_x @ rng.normal(size=3))[:, None] + (item_x @ rng.normal(size=4))[None, :]
    logit = logit + interaction_scale * user_x @ rng.normal(size=(3, 4)) @ item_x.T
    truth = sigmoid(logit)
    users, items = np.nonzero(rng.random(truth.shape) < truth)
    dataset = make_dataset(
        interactions_frame(users, items),
        n_users,
        n_items,
        task="implicit",
        user_features=user_x,
        item_features=item_x,
    )
    return dataset, truth


# -- registry -------------------------------------------------------------------------------------


def test_registry_names_and_factory() -> None:
    assert set(PROPENSITY_ESTIMATORS) == {
        "logged",
        "shipped",
        "popularity",
        "logistic",
        "naive_bayes",
    }
    for name, cls in PROPENSITY_ESTIMATORS.items():
        estimator = make_propensity(name)
        assert isinstance(estimator, cls) and estimator.name == name
        assert type(clone(estimator)) is cls  # scikit-learn get_params/set_params round trip
    assert make_propensity("popularity", power=2.0).power == 2.0
    with pytest.raises(ValueError, match=r"unknown propensity estimator 'ips'.*popularity"):
        make_propensity("ips")
    with pytest.raises(ValueError, match="bad parameters for 'popularity'"):
        make_propensity("popularity", exponent=1.0)


# -- popularity -----------------------------------------------------------------------------------


def test_popularity_hand_computed() -> None:
    # item counts 4, 1, 0, 2: the unseen item 2 counts as seen once
    items = np.array([0, 0, 0, 0, 1, 3, 3])
    users = np.array([0, 1, 2, 3, 0, 1, 2])
    dataset = make_dataset(interactions_frame(users, items), 4, 4)
    half = PopularityPropensity().fit(dataset)
    np.testing.assert_allclose(
        half.predict(np.array([3, 0, 1, 2]), np.array([0, 1, 2, 3])),
        [1.0, 0.5, 0.5, np.sqrt(0.5)],
        rtol=0,
        atol=1e-12,
    )
    linear = PopularityPropensity(power=1.0).fit(dataset)
    matrix = linear.predict_matrix()
    assert matrix.shape == (4, 4)
    np.testing.assert_allclose(matrix, np.tile([1.0, 0.25, 0.25, 0.5], (4, 1)), atol=1e-12)
    np.testing.assert_allclose(linear.predict_frame(dataset.train), [1, 1, 1, 1, 0.25, 0.5, 0.5])
    with pytest.raises(ValueError, match=r"^power: expected a finite real number >= 0"):
        PopularityPropensity(power=-1.0).fit(dataset)


# -- Naive Bayes ----------------------------------------------------------------------------------


def naive_bayes_dataset() -> Dataset:
    train = interactions_frame(
        np.array([0, 0, 1, 1]), np.array([0, 1, 2, 3]), np.array([1.0, 1.0, 2.0, 5.0])
    )
    mar = interactions_frame(
        np.array([0, 1, 0, 1]), np.array([4, 4, 3, 0]), np.array([1.0, 2.0, 2.0, 3.0])
    )
    return make_dataset(train, 2, 5, mar_sample=mar)


def test_naive_bayes_formula() -> None:
    # levels {1, 2, 3, 5}; P(O=1) = 4 / (2·5); Laplace smoothing 1 over 4 levels:
    # P(Y=r | O=1) = (3, 2, 1, 2) / 8 and P(Y=r) = (2, 3, 2, 1) / 8
    estimator = NaiveBayesPropensity(smoothing=1.0).fit(naive_bayes_dataset())
    p_observed = 4 / 10
    expected = {
        1.0: (3 / 8) * p_observed / (2 / 8),
        2.0: (2 / 8) * p_observed / (3 / 8),
        3.0: (1 / 8) * p_observed / (2 / 8),
        5.0: (2 / 8) * p_observed / (1 / 8),
    }
    labels = np.array([5.0, 1.0, 3.0, 2.0, 1.0])
    got = estimator.predict(np.array([0, 1, 0, 1, 1]), np.array([0, 1, 2, 3, 4]), labels)
    np.testing.assert_allclose(got, [expected[r] for r in labels], rtol=0, atol=1e-12)
    # the label column drives predict_frame
    np.testing.assert_allclose(
        estimator.predict_frame(naive_bayes_dataset().train),
        [expected[1.0], expected[1.0], expected[2.0], expected[5.0]],
        rtol=0,
        atol=1e-12,
    )


def test_naive_bayes_errors() -> None:
    dataset = naive_bayes_dataset()
    estimator = NaiveBayesPropensity().fit(dataset)
    with pytest.raises(ValueError, match="needs the label"):
        estimator.predict(np.array([0]), np.array([0]))
    with pytest.raises(ValueError, match=r"labels \[4\.0\] were not seen at fit"):
        estimator.predict(np.array([0]), np.array([0]), np.array([4.0]))
    with pytest.raises(ValueError, match="depend on the label"):
        estimator.predict_matrix()
    # without smoothing, rating 5 never occurs in the MAR sample: P(Y=5) = 0
    with pytest.raises(ValueError, match=r"\[5\.0\] never occur in mar_sample"):
        NaiveBayesPropensity(smoothing=0.0).fit(dataset)
    no_mar = make_dataset(dataset.train, 2, 5)
    with pytest.raises(ValueError, match=r"NaiveBayesPropensity needs dataset\.mar_sample") as err:
        NaiveBayesPropensity().fit(no_mar)
    assert "mar_sample_fraction > 0" in str(err.value) and "columns.mar" in str(err.value)


# -- logged and shipped ---------------------------------------------------------------------------


def test_logged_propensity() -> None:
    train = interactions_frame(
        np.array([0, 0, 1, 0]),
        np.array([1, 2, 0, 1]),
        propensity=np.array([0.2, 0.5, 1.0, 0.4]),
    )
    estimator = LoggedPropensity().fit(make_dataset(train, 2, 3, task="implicit"))
    np.testing.assert_allclose(estimator.predict_frame(train), [0.2, 0.5, 1.0, 0.4])
    # (0, 1) was logged twice: its mean logged propensity
    np.testing.assert_allclose(
        estimator.predict(np.array([0, 1, 0]), np.array([1, 0, 2])), [0.3, 1.0, 0.5]
    )
    with pytest.raises(ValueError, match="1 pairs were never logged"):
        estimator.predict(np.array([1]), np.array([2]))
    with pytest.raises(ValueError, match="needs a 'propensity' column"):
        estimator.predict_frame(train.drop("propensity"))
    for bad in (1.5, 0.0, np.nan):
        frame = train.with_columns(pl.lit(bad, dtype=pl.Float64).alias("propensity"))
        with pytest.raises(ValueError, match=r"must lie in \(0, 1\]"):
            estimator.predict_frame(frame)
    with pytest.raises(ValueError, match="LoggedPropensity needs a 'propensity' column"):
        LoggedPropensity().fit(make_dataset(train.drop("propensity"), 2, 3))


def test_shipped_propensity() -> None:
    train = interactions_frame(np.array([0, 1]), np.array([1, 2]))
    matrix = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    estimator = ShippedPropensity().fit(make_dataset(train, 2, 3, propensity_matrix=matrix))
    np.testing.assert_array_equal(estimator.predict(np.array([1, 0]), np.array([0, 2])), [0.4, 0.3])
    np.testing.assert_array_equal(estimator.predict_matrix(), matrix)
    with pytest.raises(ValueError, match=r"needs dataset\.propensity_matrix"):
        ShippedPropensity().fit(make_dataset(train, 2, 3))
    bad = matrix.copy()
    bad[0, 0] = 0.0
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\]"):
        ShippedPropensity().fit(make_dataset(train, 2, 3, propensity_matrix=bad))


def test_predict_validates_ids_and_fit() -> None:
    dataset = make_dataset(interactions_frame(np.array([0, 1]), np.array([1, 2])), 2, 3)
    with pytest.raises(NotFittedError):
        PopularityPropensity().predict(np.array([0]), np.array([0]))
    estimator = PopularityPropensity().fit(dataset)
    with pytest.raises(ValueError, match=r"item_id must lie in \[0, 3\)"):
        estimator.predict(np.array([0]), np.array([3]))
    with pytest.raises(ValueError, match=r"user_id must lie in \[0, 2\)"):
        estimator.predict(np.array([-1]), np.array([0]))
    with pytest.raises(ValueError, match="differ in shape"):
        estimator.predict(np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError, match="train is empty"):
        PopularityPropensity().fit(make_dataset(empty_frame(), 2, 3))


# -- logistic -------------------------------------------------------------------------------------


def test_logistic_recovers_known_exposure_model() -> None:
    dataset, truth = synthetic_exposure(120, 150, seed=1)
    estimator = LogisticPropensity().fit(dataset)
    predicted = estimator.predict_matrix()
    assert estimator.n_pairs_fit_ == 120 * 150 and estimator.intercept_correction_ == 0.0
    assert np.corrcoef(predicted.ravel(), truth.ravel())[0, 1] > 0.9
    assert abs(predicted.mean() - truth.mean()) < 0.1 * truth.mean()
    users = np.array([0, 5, 119])
    items = np.array([149, 3, 0])
    np.testing.assert_allclose(estimator.predict(users, items), predicted[users, items])


def test_logistic_subsampling_corrects_the_intercept() -> None:
    dataset, truth = synthetic_exposure(200, 150, seed=2)
    n_observed = dataset.train.height
    max_pairs = 2 * n_observed  # ~16,000 of the 30,000 pairs: unobserved pairs are subsampled
    estimator = LogisticPropensity(max_pairs=max_pairs).fit(dataset)
    predicted = estimator.predict_matrix()
    assert estimator.n_pairs_fit_ == max_pairs
    assert estimator.intercept_correction_ < 0  # negatives were kept at a lower rate
    assert np.corrcoef(predicted.ravel(), truth.ravel())[0, 1] > 0.9
    # without the correction the mean would be far too high (the sample is half positives)
    assert abs(predicted.mean() - truth.mean()) < 0.1 * truth.mean()
    # fewer budgeted pairs than observed ones: positives are subsampled as well
    tight = LogisticPropensity(max_pairs=n_observed).fit(dataset)
    assert tight.n_pairs_fit_ == n_observed
    tight_mean = tight.predict_matrix().mean()
    assert abs(tight_mean - truth.mean()) < 0.15 * truth.mean()


def test_logistic_interactions_and_ids() -> None:
    dataset, truth = synthetic_exposure(100, 120, seed=3, interaction_scale=0.8)
    with_interactions = LogisticPropensity(interactions=True).fit(dataset).predict_matrix()
    assert np.corrcoef(with_interactions.ravel(), truth.ravel())[0, 1] > 0.9
    with_ids = LogisticPropensity(include_ids=True, interactions=True).fit(dataset)
    matrix = with_ids.predict_matrix()
    assert matrix.shape == (100, 120) and ((matrix > 0) & (matrix < 1)).all()
    assert np.corrcoef(matrix.ravel(), truth.ravel())[0, 1] > 0.8


def test_rowwise_kron_matches_dense_outer_products() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 3)) * (rng.random((7, 3)) < 0.6)
    b = rng.normal(size=(7, 4)) * (rng.random((7, 4)) < 0.6)
    got = _rowwise_kron(sp.csr_matrix(a), sp.csr_matrix(b)).toarray()
    np.testing.assert_allclose(got, np.einsum("nu,ni->nui", a, b).reshape(7, 12))


def test_logistic_needs_features() -> None:
    dataset = make_dataset(interactions_frame(np.array([0, 1]), np.array([1, 2])), 2, 3)
    with pytest.raises(ValueError, match=r"needs dataset\.user_features and dataset\.item_f"):
        LogisticPropensity().fit(dataset)
    with pytest.raises(ValueError, match=r"^C: expected a finite real number > 0"):
        LogisticPropensity(C=0.0).fit(dataset)


# -- real Coat ------------------------------------------------------------------------------------


def load_coat(root: Path) -> tuple[Dataset, np.ndarray]:
    """Coat as a Dataset (train = MNAR ratings, 10% of the MAR ratings as mar_sample)."""
    coat = root / "coat"
    train = np.loadtxt(coat / "train.ascii")
    test = np.loadtxt(coat / "test.ascii")
    shipped = np.loadtxt(coat / "propensities.ascii")
    features = coat / "user_item_features"
    user_x = np.loadtxt(features / "user_features.ascii")
    item_x = np.loadtxt(features / "item_features.ascii")
    users, items = np.nonzero(train)
    test_users, test_items = np.nonzero(test)
    in_mar = np.random.default_rng(0).random(len(test_users)) < 0.1
    dataset = Dataset(
        name="coat",
        task="rating",
        n_users=train.shape[0],
        n_items=train.shape[1],
        train=interactions_frame(users, items, train[users, items]),
        valid=empty_frame(),
        test=interactions_frame(
            test_users[~in_mar], test_items[~in_mar], test[test_users, test_items][~in_mar]
        ),
        user_features=user_x,
        item_features=item_x,
        propensity_matrix=shipped,
        mar_sample=interactions_frame(
            test_users[in_mar], test_items[in_mar], test[test_users, test_items][in_mar]
        ),
    )
    return dataset, shipped


def test_coat_logistic_agrees_with_shipped(shared_data: Path) -> None:
    dataset, shipped = load_coat(shared_data)
    additive = LogisticPropensity().fit(dataset).predict_matrix()
    crossed = LogisticPropensity(interactions=True).fit(dataset).predict_matrix()
    r_additive = np.corrcoef(additive.ravel(), shipped.ravel())[0, 1]
    r_crossed = np.corrcoef(crossed.ravel(), shipped.ravel())[0, 1]
    print(f"Coat logistic vs shipped: additive r={r_additive:.3f}, interactions r={r_crossed:.3f}")
    assert r_additive > 0.3
    assert r_crossed > 0.9  # the authors' model has user × item feature interactions
    assert abs(crossed.mean() - shipped.mean()) < 0.1 * shipped.mean()
    np.testing.assert_array_equal(ShippedPropensity().fit(dataset).predict_matrix(), shipped)


def test_coat_naive_bayes_averages_to_the_observation_rate(shared_data: Path) -> None:
    dataset, _ = load_coat(shared_data)
    estimator = NaiveBayesPropensity(smoothing=0.0).fit(dataset)
    # Σ_r P(O=1 | Y=r) P(Y=r) = P(O=1) when nothing is smoothed or clipped
    assert (estimator.level_propensity_ < 1).all()
    np.testing.assert_allclose(
        (estimator.level_propensity_ * estimator.p_label_).sum(), 6960 / (290 * 300), rtol=1e-12
    )
    per_row = estimator.predict_frame(dataset.train)
    assert per_row.shape == (6960,) and ((per_row > 0) & (per_row <= 1)).all()
