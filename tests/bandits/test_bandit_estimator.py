"""Policies are scikit-learn estimators (params, clone, generators) and round-trip through specs."""

from __future__ import annotations

import copy
import inspect
import json

import numpy as np
import pytest
from sklearn.base import clone

from recsys.bandits import (
    POLICY_CLASSES,
    DiagLinTS,
    DiagLinUCB,
    EpsilonGreedy,
    Greedy,
    InSlateTS,
    LinTS,
    LinUCB,
    SquareCB,
    policy_from_spec,
    policy_spec,
)

DIM, ITEMS, K = 3, np.arange(100, 108), 3

NON_DEFAULT = {
    DiagLinUCB: {"alpha": 0.3, "epsilon": 0.1},
    LinUCB: {"alpha": 0.7, "epsilon": 0.05},
    DiagLinTS: {"v": 0.4, "n_mc_draws": 7, "per_slot": True},
    InSlateTS: {"v": 2.0, "n_mc_draws": 0},
    LinTS: {"v": 0.9, "n_mc_draws": 11},
    EpsilonGreedy: {"epsilon": 0.2},
    Greedy: {},
    SquareCB: {"gamma": 12.5},
}
COMMON = {"lam": 2.0, "reward_range": (-1.0, 2.0), "exploration_floor": 0.01, "random_state": 4}
ALL = sorted(NON_DEFAULT, key=lambda cls: cls.__name__)


def make(cls, **extra):
    return cls(**{**NON_DEFAULT[cls], **COMMON, **extra})


def cold_draws(policy, n: int = 200) -> np.ndarray:
    """Items a cold-start policy shows (every score tied, so every policy randomises)."""
    return policy.recommend(np.ones((n, DIM)), k=K).items


def test_the_allow_list_is_every_policy() -> None:
    assert set(POLICY_CLASSES.values()) == set(NON_DEFAULT)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_get_params_comes_from_the_constructor_signature(cls) -> None:
    policy = make(cls)
    params = policy.get_params()
    names = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    assert sorted(params) == sorted(names)
    assert params == {**cls().get_params(), **NON_DEFAULT[cls], **COMMON}
    # the constructor stores what it is given, unchanged (scikit-learn's clone relies on it)
    reward_range = [-1, 2]
    assert make(cls, reward_range=reward_range).reward_range is reward_range
    rebuilt = cls(**cls().get_params())
    assert rebuilt.get_params() == cls().get_params()


def test_greedy_round_trips_its_own_params() -> None:
    """The bug this issue started from: Greedy's get_params had an ``epsilon`` it cannot take."""
    params = Greedy(exploration_floor=0.1).get_params()
    assert "epsilon" not in params
    assert Greedy(**params).get_params() == params
    with pytest.raises(ValueError, match="epsilon: expected a hyperparameter of Greedy"):
        Greedy().set_params(epsilon=0.3)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_clone_copies_params_and_shares_no_generator(cls) -> None:
    policy = make(cls).init(ITEMS, DIM)
    twin = clone(policy)
    assert type(twin) is cls and twin.get_params() == policy.get_params()
    assert not hasattr(twin, "stats_")  # clone copies hyperparameters, not learned state
    twin.init(ITEMS, DIM)
    first = cold_draws(policy)
    second = cold_draws(policy)
    assert not np.array_equal(first, second)  # the draws are random...
    np.testing.assert_array_equal(cold_draws(twin), first)  # ...yet the twin's are its own


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_an_int_seed_restarts_the_stream_at_every_init(cls) -> None:
    policy = make(cls).init(ITEMS, DIM)
    first = cold_draws(policy)
    policy.init(ITEMS, DIM)
    np.testing.assert_array_equal(cold_draws(policy), first)
    policy.use(policy.stats_)
    np.testing.assert_array_equal(cold_draws(policy), first)


def test_a_generator_random_state_is_used_as_is_and_clone_copies_it() -> None:
    gen = np.random.default_rng(5)
    untouched = copy.deepcopy(gen)
    policy = DiagLinTS(n_mc_draws=0, random_state=gen)
    twin = clone(policy)
    assert twin.random_state is not gen
    policy.init(ITEMS, DIM)
    twin.init(ITEMS, DIM)
    first = cold_draws(policy)
    assert gen.bit_generator.state != untouched.bit_generator.state  # the caller's stream moved
    np.testing.assert_array_equal(cold_draws(twin), first)  # the copy replays from the clone


def test_set_params_returns_self_and_rejects_unknown_names() -> None:
    policy = DiagLinUCB()
    assert policy.set_params(alpha=0.5, epsilon=0.2) is policy
    assert policy.get_params()["alpha"] == 0.5
    with pytest.raises(ValueError, match=r"bogus: expected a hyperparameter of DiagLinUCB \(one "
                                         r"of \['alpha', 'centred'"):
        policy.set_params(alpha=0.9, bogus=1)
    assert policy.alpha == 0.5  # nothing was set


def test_set_params_on_a_fitted_policy_checks_at_once_and_keeps_the_old_values() -> None:
    policy = DiagLinUCB(alpha=1.0, random_state=0).init(ITEMS, DIM)
    with pytest.raises(ValueError, match=r"alpha.*-2"):
        policy.set_params(alpha=-2.0)
    assert policy.alpha == 1.0
    np.testing.assert_allclose(policy.score(np.ones((1, DIM))), 1.0 * np.sqrt(DIM))
    with pytest.raises(ValueError, match=r"lam: expected the statistics' λ=1\.0, got lam=3\.0"):
        policy.set_params(lam=3.0)
    assert policy.lam == 1.0
    policy.set_params(alpha=2.0)
    np.testing.assert_allclose(policy.score(np.ones((1, DIM))), 2.0 * np.sqrt(DIM))


def test_set_params_random_state_rebuilds_the_generator() -> None:
    policy = Greedy(random_state=0).init(ITEMS, DIM)
    cold_draws(policy)
    policy.set_params(random_state=9)
    fresh = Greedy(random_state=9).init(ITEMS, DIM)
    np.testing.assert_array_equal(cold_draws(policy), cold_draws(fresh))


def test_repr_shows_changed_params() -> None:
    assert repr(DiagLinUCB(alpha=2.0)) == "DiagLinUCB(alpha=2.0)"


# ---------------------------------------------------------------------------- JSON specs
@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_spec_round_trip(cls) -> None:
    policy = make(cls)
    spec = policy_spec(policy)
    assert spec == {"class": cls.__name__, "spec_version": 1,
                    "params": {**policy.get_params(), "reward_range": [-1.0, 2.0]}}
    text = json.dumps(spec, allow_nan=False)  # plain JSON, no Python objects
    for source in (spec, text):
        back = policy_from_spec(source)
        assert type(back) is cls
        assert back.get_params() == policy.get_params()
        assert back.reward_range == (-1.0, 2.0)  # the tuple is restored
    rebuilt = policy_from_spec(text).init(ITEMS, DIM)
    np.testing.assert_array_equal(cold_draws(rebuilt), cold_draws(make(cls).init(ITEMS, DIM)))


def test_spec_converts_numpy_scalars() -> None:
    spec = policy_spec(DiagLinUCB(alpha=np.float32(0.5), random_state=np.int64(3)))
    assert spec["params"]["alpha"] == 0.5 and type(spec["params"]["alpha"]) is float
    assert type(spec["params"]["random_state"]) is int


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (DiagLinTS(random_state=np.random.default_rng(0)),
         "random_state: expected an int seed or None in a policy spec, got a numpy Generator"),
        (DiagLinUCB(reward_range=(0.0, np.inf)),
         r"reward_range\[1\]: expected a finite number in a policy spec"),
        (DiagLinUCB(alpha=object()), "alpha: expected a JSON-safe value"),
    ],
    ids=["generator", "infinite", "object"],
)
def test_spec_refuses_what_json_cannot_hold(policy, message) -> None:
    with pytest.raises(ValueError, match=message):
        policy_spec(policy)


def test_spec_refuses_policies_outside_the_allow_list() -> None:
    class Tweaked(DiagLinUCB):
        pass

    with pytest.raises(ValueError, match=r"only recsys\.bandits policies have specs"):
        policy_spec(Tweaked())


GOOD = {"class": "DiagLinUCB", "params": {"alpha": 0.5}, "spec_version": 1}


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ({**GOOD, "class": "os.system"}, ValueError,
         r"class: expected one of \['DiagLinTS'.*got 'os.system'"),
        ({**GOOD, "class": "BasePolicy"}, ValueError, "class: expected one of"),
        ({**GOOD, "params": {"alpha": 0.5, "bogus": 1}}, ValueError,
         r"params: expected hyperparameters of DiagLinUCB .* got unknown \['bogus'\]"),
        ({**GOOD, "spec_version": 2}, ValueError, "spec_version: expected 1, got 2"),
        ({**GOOD, "spec_version": True}, ValueError, "spec_version: expected 1, got True"),
        ({"class": "DiagLinUCB", "params": {}}, ValueError,
         r"spec: expected the keys \['class', 'params', 'spec_version'\]"),
        ({**GOOD, "params": {"alpha": -1.0}}, ValueError, r"alpha.*-1"),
        ({**GOOD, "params": [0.5]}, TypeError, "params: expected a mapping, got list"),
        ([GOOD], TypeError, "spec: expected a mapping, got list"),
        ("{not json", ValueError, "spec: expected JSON text"),
    ],
    ids=["import-path", "base-class", "unknown-param", "version", "bool-version", "keys",
         "bad-value", "params-list", "not-a-mapping", "bad-json"],
)
def test_bad_specs_say_what_is_wrong(spec, error, message) -> None:
    with pytest.raises(error, match=message):
        policy_from_spec(spec)
