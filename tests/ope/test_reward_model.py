"""Cross-fitted reward model: shapes, out-of-fold predictions, weighting, validation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsRegressor

from recsys.ope import RegressionModel


def data(n=3000, n_actions=4, len_list=2, seed=0):
    rng = np.random.default_rng(seed)
    context = rng.normal(size=(n, 3))
    action = rng.integers(n_actions, size=n)
    position = rng.integers(len_list, size=n)
    logit = 1.5 * context[:, 0] + 0.5 * action - 1.5 - 0.5 * position
    reward = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    return context, action, reward, position


def test_predictions_cover_every_action_and_position_and_learn_the_signal():
    context, action, reward, position = data()
    model = RegressionModel(LogisticRegression(), n_actions=4, len_list=2)
    q_hat = model.fit_predict(context, action, reward, position=position, n_folds=2, random_state=0)
    assert q_hat.shape == (3000, 4, 2)
    assert ((q_hat >= 0) & (q_hat <= 1)).all()
    factual = q_hat[np.arange(3000), action, position]
    # Informative: predicted rewards rank the observed clicks above chance.
    assert factual[reward == 1].mean() > factual[reward == 0].mean() + 0.05
    assert len(model.base_models_) == 2


def test_cross_fitting_predicts_each_round_with_a_model_that_did_not_see_it():
    rng = np.random.default_rng(1)
    n = 400
    context = rng.normal(size=(n, 2))  # distinct contexts: a 1-NN model memorises rewards
    action = np.zeros(n, dtype=int)
    reward = rng.random(n)
    model = RegressionModel(KNeighborsRegressor(n_neighbors=1), n_actions=1)
    in_sample = model.fit_predict(context, action, reward, n_folds=1)[:, 0, 0]
    np.testing.assert_allclose(in_sample, reward)
    crossed = model.fit_predict(context, action, reward, n_folds=2, random_state=0)[:, 0, 0]
    assert not np.isclose(crossed, reward).any()


def test_action_only_model_is_the_per_action_mean():
    rng = np.random.default_rng(2)
    action = rng.integers(3, size=600)
    reward = rng.random(600) + action
    q_hat = RegressionModel(Ridge(alpha=1e-9), n_actions=3).fit_predict(
        np.empty((600, 0)), action, reward
    )
    for a in range(3):
        assert q_hat[0, a, 0] == pytest.approx(reward[action == a].mean(), rel=1e-6)


def test_weighted_fitting_needs_pscore_and_action_dist():
    context, action, reward, position = data(n=200)
    model = RegressionModel(Ridge(), n_actions=4, len_list=2, fitting_method="iw")
    with pytest.raises(ValueError, match=r"^pscore: "):
        model.fit(context, action, reward, position=position)
    dist = np.full((200, 4, 2), 0.25)
    model.fit(
        context, action, reward, pscore=np.full(200, 0.25), position=position, action_dist=dist
    )
    assert model.predict(context).shape == (200, 4, 2)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"n_actions": 0}, "n_actions"),
        ({"fitting_method": "magic"}, "fitting_method"),
        ({"action_context": np.eye(3)}, "action_context"),
    ],
)
def test_hyperparameters_are_checked_at_fit(kwargs, argument):
    context, action, reward, position = data(n=100)
    params = {"n_actions": 4, "len_list": 2, **kwargs}
    with pytest.raises(ValueError, match=rf"^{argument}: "):
        RegressionModel(Ridge(), **params).fit(context, action, reward, position=position)


def test_data_errors_name_the_argument():
    context, action, reward, position = data(n=100)
    model = RegressionModel(Ridge(), n_actions=4, len_list=2)
    with pytest.raises(ValueError, match=r"^action: "):
        model.fit(context, action + 4, reward, position=position)
    with pytest.raises(ValueError, match=r"^position: "):
        model.fit(context, action, reward)
    with pytest.raises(ValueError, match=r"^reward: "):
        model.fit(context, action, reward[:-1], position=position)
    with pytest.raises(RuntimeError, match="not fitted"):
        RegressionModel(Ridge(), n_actions=4).predict(context)


class WeightRecorder(RegressorMixin, BaseEstimator):
    """A regressor that remembers the sample weights it was fitted with (and predicts 0)."""

    def fit(self, X, y, sample_weight=None):
        self.sample_weight_ = None if sample_weight is None else np.array(sample_weight, float)
        self.n_rows_ = len(y)
        return self

    def predict(self, X):
        return np.zeros(len(X))


# Four rounds, two actions, two positions. π_e(a | x_i, k) per round, for positions 0 and 1:
HAND_ACTION = np.array([0, 1, 1, 0])
HAND_POSITION = np.array([0, 0, 1, 1])
HAND_PSCORE = np.array([0.5, 0.25, 0.8, 0.4])
HAND_ACTION_DIST = np.array(
    [
        [[0.6, 0.3], [0.4, 0.7]],  # round 0: π_e(0|·,0)=0.6, π_e(1|·,0)=0.4, at k=1: 0.3, 0.7
        [[0.1, 0.5], [0.9, 0.5]],  # round 1
        [[0.2, 0.25], [0.8, 0.75]],  # round 2
        [[0.7, 0.4], [0.3, 0.6]],  # round 3
    ]
)
# OBP's definitions, evaluated by hand at the logged (action, position) of each round:
#   π_e(a_i | x_i, k_i) = 0.6, 0.9, 0.75, 0.4
#   iw   = π_e / π_b             = 0.6/0.5, 0.9/0.25, 0.75/0.8, 0.4/0.4
#   mrdr = π_e (1 − π_b) / π_b²  = 0.6·0.5/0.25, 0.9·0.75/0.0625, 0.75·0.2/0.64, 0.4·0.6/0.16
# Position 0's model is fitted on rounds 0 and 1, position 1's on rounds 2 and 3.
HAND_WEIGHTS = {
    "iw": ([1.2, 3.6], [0.9375, 1.0]),
    "mrdr": ([1.2, 10.8], [0.234375, 1.5]),
}


@pytest.mark.parametrize("fitting_method", ["iw", "mrdr"])
def test_weighted_fitting_uses_the_hand_computed_sample_weights(fitting_method):
    model = RegressionModel(
        WeightRecorder(), n_actions=2, len_list=2, fitting_method=fitting_method
    )
    model.fit(
        np.zeros((4, 1)),
        HAND_ACTION,
        np.array([1.0, 0.0, 1.0, 0.0]),
        pscore=HAND_PSCORE,
        position=HAND_POSITION,
        action_dist=HAND_ACTION_DIST,
    )
    for k, expected in enumerate(HAND_WEIGHTS[fitting_method]):
        np.testing.assert_allclose(model.base_models_[k].sample_weight_, expected, rtol=1e-12)


def test_normal_fitting_passes_no_weights():
    model = RegressionModel(WeightRecorder(), n_actions=2, len_list=2)
    model.fit(np.zeros((4, 1)), HAND_ACTION, np.ones(4), position=HAND_POSITION)
    assert [m.sample_weight_ for m in model.base_models_] == [None, None]
    assert [m.n_rows_ for m in model.base_models_] == [2, 2]
