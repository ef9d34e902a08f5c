"""What a serving replica refuses to start with, and the default arms (no services needed)."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.bandits import DiagLinTS, DiagLinUCB, EpsilonGreedy, policy_from_spec, policy_spec
from recsys.config import Settings
from recsys.serving.service import build_policies, default_policies


def test_default_arms_log_positive_propensities() -> None:
    specs = default_policies(Settings())
    assert set(specs) == {"diag_lin_ts", "uniform"}
    ts = policy_from_spec(specs["diag_lin_ts"])
    assert isinstance(ts, DiagLinTS) and ts.n_mc_draws > 0 and ts.exploration_floor > 0
    uniform = policy_from_spec(specs["uniform"])
    assert isinstance(uniform, EpsilonGreedy) and uniform.epsilon == 1.0
    rng = np.random.default_rng(0)
    policies = build_policies(specs, {"diag_lin_ts": 0.5, "uniform": 0.5}, rng)
    assert all(p.random_state is rng for p in policies.values())  # one stream per replica


@pytest.mark.parametrize(("policy", "message"), [
    (DiagLinTS(n_mc_draws=0, exploration_floor=0.1), "must log propensities"),
    (DiagLinTS(n_mc_draws=50, exploration_floor=0.0), "exploration_floor > 0"),
])
def test_thompson_sampling_that_cannot_log_propensities_is_refused(policy, message) -> None:
    with pytest.raises(ValueError, match=message):
        build_policies({"ts": policy_spec(policy)}, {"ts": 1.0}, np.random.default_rng(0))


def test_traffic_must_name_served_policies() -> None:
    specs = {"ucb": policy_spec(DiagLinUCB(epsilon=0.1))}
    with pytest.raises(ValueError, match=r"\['ts'\] are not among the policies \['ucb'\]"):
        build_policies(specs, {"ts": 1.0}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least one"):
        build_policies({}, {}, np.random.default_rng(0))


def test_user_feature_table_rows_and_refusals(tmp_path) -> None:
    import polars as pl

    from recsys.serving.service import UserFeatures

    path = tmp_path / "users.parquet"
    pl.DataFrame({"user_id": ["u0", "u1"], "context_dense": [[1.0, 2.0], [3.0, 4.0]]},
                 schema={"user_id": pl.String, "context_dense": pl.List(pl.Float32)}
                 ).write_parquet(path)
    users = UserFeatures(str(path))
    np.testing.assert_array_equal(users.get("u1"), [3.0, 4.0])
    assert users.get("u9") is None
    ragged = tmp_path / "ragged.parquet"
    pl.DataFrame({"user_id": ["a", "b"],
                  "context_dense": [[1.0], [1.0, 2.0]]}).write_parquet(ragged)
    with pytest.raises(ValueError, match="contexts of one length"):
        UserFeatures(str(ragged))
    with pytest.raises(ValueError, match="expected a Parquet table"):
        UserFeatures(str(tmp_path / "missing.parquet"))
