"""Open Bandit Dataset: the simulators' log frame on generated files (``recsys.obd`` reads them),
and the real-data OPE check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys.obd import load_action_dist, load_item_context
from simulators.obd import load_obd
from simulators.study import obd_check


def write_obd_layout(root: Path, n_rows: int = 60, n_items: int = 5, seed: int = 0) -> Path:
    """A tiny data folder in OBD's layout: obd/{random,bts}/all/{all,item_context}.csv."""
    rng = np.random.default_rng(seed)
    for policy, pscore in (("random", 1 / n_items), ("bts", None)):
        folder = root / "obd" / policy / "all"
        folder.mkdir(parents=True)
        frame = pl.DataFrame(
            {
                "": np.arange(n_rows),
                "timestamp": [f"2019-11-24 00:00:{i % 60:02d}.000001+00:00" for i in range(n_rows)],
                "item_id": rng.integers(n_items, size=n_rows),
                "position": rng.integers(1, 4, size=n_rows),
                "click": rng.binomial(1, 0.3, size=n_rows),
                "propensity_score": np.full(n_rows, pscore)
                if pscore
                else rng.uniform(0.05, 0.9, n_rows),
                **{f"user_feature_{j}": rng.choice(["a", "b"], n_rows) for j in range(4)},
                **{f"user-item_affinity_{j}": np.zeros(n_rows) for j in range(n_items)},
            }
        )
        frame.write_csv(folder / "all.csv")
        pl.DataFrame(
            {
                "": np.arange(n_items),
                "item_id": np.arange(n_items),
                "item_feature_0": rng.random(n_items),
            }
        ).write_csv(folder / "item_context.csv")
    dist = pl.DataFrame(
        {
            "item_id": np.repeat(np.arange(n_items), 3),
            "position_index": np.tile(np.arange(3), n_items),
            "probability": np.full(3 * n_items, 1 / n_items),
        }
    )
    dist.write_csv(root / "obd" / "bts_action_dist.csv")
    return root


def test_loader_on_generated_files(tmp_path):
    root = write_obd_layout(tmp_path)
    frame = load_obd(root, "random")
    assert frame.height == 60
    assert frame["request_id"].to_list() == [str(i) for i in range(60)]
    assert frame["policy_name"].unique().to_list() == ["obd_random"]
    assert frame["position"].min() >= 0 and frame["position"].max() <= 2
    assert frame["propensity"].to_list() == frame["propensity_score"].to_list()
    assert frame["reward"].to_list() == frame["click"].cast(pl.Float64).to_list()
    assert frame["event_time_ms"].dtype == pl.Int64
    assert load_item_context(root / "obd").columns[0] == "item_id"
    assert load_action_dist(root / "obd" / "bts_action_dist.csv").shape == (5, 3)
    table = obd_check(root, n_bootstrap_samples=20)
    assert table.height == 6 and table["estimate"].is_finite().all()


def test_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Open Bandit Dataset"):
        load_obd(tmp_path, "random")
    with pytest.raises(ValueError, match=r"^policy: expected one of \('random', 'bts'\)"):
        load_obd(tmp_path, "greedy")
    bad = tmp_path / "dist.csv"
    pl.DataFrame(
        {"item_id": [0, 1], "position_index": [0, 0], "probability": [0.5, 0.2]}
    ).write_csv(bad)
    with pytest.raises(ValueError, match="sum to 1"):
        load_action_dist(bad)
    pl.DataFrame({"item_id": [0, 1], "position_index": [0, 0], "probability": [0.5, 1.5]}
                 ).write_csv(bad)
    with pytest.raises(ValueError, match=r"line 3, column 'probability': expected a probability"):
        load_action_dist(bad)


def test_bernoulli_ts_value_from_random_logs(shared_data):
    """Estimate Bernoulli-TS from the uniform-random logs; truth = mean click of the bts logs.

    Both sides are small-sample (about 40 clicks each), so an estimator passes when it is within
    three combined standard errors of the truth; the relative errors are printed for the record.
    """
    table = obd_check(shared_data, n_bootstrap_samples=500, seed=0)
    print(table.select("estimator", "estimate", "truth", "relative_error"))
    truth, truth_se = table["truth"][0], table["truth_se"][0]
    assert truth == pytest.approx(0.0042)
    for row in table.iter_rows(named=True):
        half_width = (row["upper"] - row["lower"]) / 2
        estimator_se = half_width / 1.96
        assert abs(row["estimate"] - truth) < 3 * np.hypot(estimator_se, truth_se), row
        assert row["relative_error"] < 0.5, row
