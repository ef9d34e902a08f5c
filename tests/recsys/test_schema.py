"""The lake schemas: frames are checked column by column, events become tables and back."""

from __future__ import annotations

import msgspec
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from recsys import events, schema
from recsys.events import Context, Feedback, Impression, Reward, SlateEntry
from recsys.ope import bandit_feedback_from_frame
from recsys.ope.dataframe import DEFAULT_COLUMNS
from recsys.schema import (
    FEEDBACK,
    IMPRESSIONS,
    PARTITIONING,
    REWARDS,
    USER_FEATURES,
    USER_FEATURES_WITH_CLUSTERS,
    conform,
    feedback_to_arrow,
    impressions_to_arrow,
    partition_expressions,
    polars_schema,
    read_user_features,
    read_user_table,
    rewards_to_arrow,
    validate_frame,
    write_user_features,
)
from simulators.logged_data import LOG_EXTRAS, collect_logs
from simulators.model import SimulatorConfig, SlateSimulator
from simulators.policies import SoftmaxPolicy

# float32-representable values, so contexts survive the lake's list<float32> exactly.
f32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)


@st.composite
def contexts(draw) -> Context:
    n = draw(st.integers(0, 3))
    return Context(
        dense=tuple(draw(st.lists(f32, max_size=5))),
        cluster_ids=tuple(draw(st.lists(st.integers(0, 10**12), min_size=n, max_size=n))),
        cluster_weights=tuple(draw(st.lists(st.floats(0, 1, width=32), min_size=n, max_size=n))),
    )


@st.composite
def impressions(draw) -> Impression:
    k = draw(st.integers(1, 4))
    items = draw(st.lists(st.integers(0, 10**12), min_size=k, max_size=k, unique=True))
    return Impression(
        request_id=draw(ids),
        event_time_ms=draw(st.integers(0, 2**50)),
        user_id=draw(ids),
        context=draw(contexts()),
        policy_name=draw(ids),
        policy_version=draw(st.integers(0, 99)),
        slate=tuple(
            SlateEntry(
                item_id=item,
                position=p,
                score=draw(st.floats(allow_nan=False, allow_infinity=False)),
                propensity=draw(st.floats(1e-9, 1.0)),
                propensity_se=draw(st.sampled_from([0.0, 1e-3, 0.25])),
            )
            for p, item in enumerate(items)
        ),
    )


def _context(row: dict) -> Context:
    return Context(
        dense=tuple(row["context_dense"]),
        cluster_ids=tuple(row["context_cluster_ids"]),
        cluster_weights=tuple(row["context_cluster_weights"]),
    )


def impressions_from_rows(frame: pl.DataFrame) -> list[Impression]:
    """The inverse of ``impressions_to_arrow``, written row by row on purpose (a reference)."""
    out: list[Impression] = []
    rows = frame.to_dicts()
    i = 0
    while i < len(rows):
        j = i
        while j < len(rows) and rows[j]["request_id"] == rows[i]["request_id"]:
            j += 1
        first = rows[i]
        out.append(
            Impression(
                request_id=first["request_id"],
                event_time_ms=first["event_time_ms"],
                user_id=first["user_id"],
                context=_context(first),
                policy_name=first["policy_name"],
                policy_version=first["policy_version"],
                slate=tuple(
                    SlateEntry(
                        item_id=r["item_id"],
                        position=r["position"],
                        score=r["score"],
                        propensity=r["propensity"],
                        propensity_se=r["propensity_se"],
                    )
                    for r in rows[i:j]
                ),
                schema_version=first["schema_version"],
            )
        )
        i = j
    return out


@given(st.lists(impressions(), min_size=1, max_size=6, unique_by=lambda e: e.request_id))
def test_impressions_round_trip_through_the_lake_table(batch):
    table = impressions_to_arrow(batch)
    assert table.schema.equals(IMPRESSIONS)
    assert table.num_rows == sum(len(e.slate) for e in batch)
    frame = validate_frame(pl.from_arrow(table), "impressions")
    assert impressions_from_rows(frame) == batch
    assert frame["kafka_offset"].null_count() == frame.height  # not from Kafka: null provenance


def _feedback(i: int) -> Feedback:
    return Feedback(
        request_id=f"r{i}",
        event_time_ms=1_700_000_000_000 + i,
        user_id=f"u{i % 3}",
        item_id=10 + i,
        position=i % 2,
        event_type=("click", "dwell", "rating")[i % 3],
        value=0.5 * i,
    )


def _reward(i: int) -> Reward:
    return Reward(
        request_id=f"r{i}",
        event_time_ms=1_700_000_000_000 + i,
        user_id=f"u{i % 3}",
        context=Context(dense=(0.5 * i, -1.0), cluster_ids=(i,), cluster_weights=(0.25,)),
        item_id=7 * i,
        position=i % 3,
        reward=float(i % 2),
        propensity=1.0 / (i + 1),
        policy_name="diag-linucb",
        policy_version=i,
        propensity_se=0.01 * i,
    )


def test_feedback_and_rewards_round_trip_with_kafka_provenance():
    feedback = [_feedback(i) for i in range(5)]
    table = feedback_to_arrow(feedback, "recsys.feedback", 2, np.arange(100, 105))
    assert table.schema.equals(FEEDBACK)
    frame = validate_frame(pl.from_arrow(table), "feedback")
    back = [
        Feedback(**{k: v for k, v in row.items() if not k.startswith("kafka_")})
        for row in frame.to_dicts()
    ]
    assert back == feedback
    assert frame["kafka_topic"].to_list() == ["recsys.feedback"] * 5
    assert frame["kafka_partition"].to_list() == [2] * 5
    assert frame["kafka_offset"].to_list() == [100, 101, 102, 103, 104]

    rewards = [_reward(i) for i in range(4)]
    table = rewards_to_arrow(rewards, "recsys.rewards", [0, 1, 0, 1], [5, 5, 6, 6])
    assert table.schema.equals(REWARDS)
    frame = validate_frame(pl.from_arrow(table), "rewards")
    skip = {*schema.PROVENANCE_COLUMNS, "context_dense", "context_cluster_ids"}
    skip.add("context_cluster_weights")
    back = [
        Reward(context=_context(row), **{k: v for k, v in row.items() if k not in skip})
        for row in frame.to_dicts()
    ]
    assert back == rewards
    assert frame["kafka_partition"].to_list() == [0, 1, 0, 1]


def test_event_batches_are_checked():
    with pytest.raises(
        TypeError, match=r"^events\[1\]: expected a recsys.events.Feedback, got Reward"
    ):
        feedback_to_arrow([_feedback(0), _reward(1)])
    with pytest.raises(
        ValueError, match=r"^kafka_topic, kafka_partition, kafka_offset: expected all"
    ):
        rewards_to_arrow([_reward(0)], kafka_topic="recsys.rewards")
    with pytest.raises(ValueError, match=r"^kafka_offset: expected one offset per event \(2\)"):
        rewards_to_arrow([_reward(0), _reward(1)], "recsys.rewards", 0, [1])
    too_big = msgspec.structs.replace(_reward(0), context=Context(dense=(1e39,)))
    with pytest.raises(ValueError, match=r"^context_dense: expected values that fit float32"):
        rewards_to_arrow([too_big])


def simulator_frame(n_requests: int = 300) -> pl.DataFrame:
    sim = SlateSimulator(SimulatorConfig(n_items=12, slate_size=3, seed=3))
    rng = np.random.default_rng(4)
    return collect_logs(sim, SoftmaxPolicy(sim.item_features, random_state=rng), n_requests, rng)


def test_simulator_frames_are_lake_reward_frames():
    frame = simulator_frame()
    validate_frame(frame, "rewards", LOG_EXTRAS)
    assert list(frame.schema.items())[: len(REWARDS)] == list(polars_schema("rewards").items())
    assert frame.select(schema.PROVENANCE_COLUMNS).null_count().row(0) == (frame.height,) * 3
    with pytest.raises(
        ValueError, match=r"rewards: expected only the schema's columns .*\['score', 'noise'\]"
    ):
        validate_frame(frame, "rewards")  # the simulator's extras must be declared


def test_the_ope_adapter_reads_a_schema_frame_without_a_columns_override():
    rewards = [_reward(i) for i in range(4)]
    feedback = bandit_feedback_from_frame(pl.from_arrow(rewards_to_arrow(rewards)))
    np.testing.assert_array_equal(feedback.reward, [e.reward for e in rewards])
    np.testing.assert_array_equal(feedback.action, [e.item_id for e in rewards])
    np.testing.assert_array_equal(feedback.position, [e.position for e in rewards])
    np.testing.assert_array_equal(feedback.pscore, [e.propensity for e in rewards])
    np.testing.assert_array_equal(feedback.context, [e.context.dense for e in rewards])

    frame = simulator_frame()
    logged = bandit_feedback_from_frame(frame)
    width = frame["context_dense"].list.len()[0]
    assert logged.context.shape == (frame.height, width) and width > 0
    np.testing.assert_array_equal(logged.context[-1], frame["context_dense"][-1].to_numpy())
    np.testing.assert_array_equal(logged.reward, frame["reward"].to_numpy())


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (
            lambda f: f.drop("propensity"),
            r"^rewards\.propensity: expected a Float64 column, got no such column",
        ),
        (
            lambda f: f.with_columns(pl.col("item_id").cast(pl.Int32)),
            r"^rewards\.item_id: expected dtype Int64, got Int32",
        ),
        (
            lambda f: f.with_columns(
                pl.when(pl.col("position") == 1)
                .then(None)
                .otherwise(pl.col("propensity"))
                .alias("propensity")
            ),
            r"^rewards\.propensity: expected no nulls \(a required column\), got 1 null values",
        ),
        (lambda f: f.with_columns(pl.lit(1).alias("click")), r"undeclared columns \['click'\]"),
    ],
)
def test_frames_that_break_the_schema_are_rejected_naming_the_column(change, pattern):
    frame = pl.from_arrow(rewards_to_arrow([_reward(i) for i in range(3)]))
    with pytest.raises(ValueError, match=pattern):
        validate_frame(change(frame), "rewards")


def test_every_problem_is_reported_at_once():
    frame = pl.from_arrow(rewards_to_arrow([_reward(0)]))
    broken = frame.drop("reward", "user_id").with_columns(pl.col("position").cast(pl.Float64))
    with pytest.raises(ValueError) as error:
        validate_frame(broken, "rewards")
    lines = str(error.value).splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "rewards.user_id",
        "rewards.position",
        "rewards.reward",
    ]


def test_declared_extras_are_checked_too():
    frame = pl.from_arrow(rewards_to_arrow([_reward(0)])).with_columns(pl.lit(1).alias("noise"))
    with pytest.raises(ValueError, match=r"^rewards\.noise: expected dtype Boolean, got Int32"):
        validate_frame(frame, "rewards", {"noise": pl.Boolean()})
    with pytest.raises(
        ValueError,
        match=r"^extra_columns: expected names outside the rewards schema, got \['reward'\]",
    ):
        validate_frame(frame, "rewards", {"reward": pl.Float64()})


def test_conform_casts_orders_and_fills_provenance():
    frame = pl.from_arrow(rewards_to_arrow([_reward(i) for i in range(3)]))
    loose = (
        frame.drop(*schema.PROVENANCE_COLUMNS)
        .with_columns(pl.col("item_id").cast(pl.Int32), pl.col("reward").cast(pl.Int8))
        .select(reversed(frame.columns[:-3]))
    )
    assert conform(loose, "rewards").equals(frame)
    unrecorded = conform(loose.drop("propensity_se"), "rewards")  # a source without the error
    assert unrecorded["propensity_se"].null_count() == 3
    assert unrecorded.drop("propensity_se").equals(frame.drop("propensity_se"))
    with pytest.raises(ValueError, match=r"^rewards: expected values that fit the schema's dtypes"):
        conform(frame.with_columns(pl.lit("x").alias("position")), "rewards")


def test_the_lake_layout_round_trips_through_hive_partitioned_parquet(tmp_path):
    table = rewards_to_arrow([_reward(i) for i in range(4)], "recsys.rewards", 0, range(4))
    frame = pl.from_arrow(table).with_columns(partition_expressions())
    assert frame["event_hour"].to_list() == [22] * 4  # 1_700_000_000_000 ms is 22:13 UTC
    pq.write_to_dataset(frame.to_arrow(), tmp_path, partition_cols=list(PARTITIONING.names))
    hive = pl.from_arrow(PARTITIONING.empty_table()).schema
    read = pl.scan_parquet(tmp_path, hive_partitioning=True, hive_schema=hive).collect()
    validate_frame(read, "rewards")
    assert read.sort("kafka_offset").drop(PARTITIONING.names).equals(pl.from_arrow(table))


def test_schema_version_follows_the_event_contract():
    assert schema.SCHEMA_VERSION == events.SCHEMA_VERSION
    for table in (IMPRESSIONS, FEEDBACK, REWARDS):
        assert table.metadata[b"recsys.schema_version"] == str(events.SCHEMA_VERSION).encode()
    with pytest.raises(
        ValueError,
        match=r"^name: expected one of \['feedback', 'impressions', 'rewards'\], got 'clicks'",
    ):
        schema.arrow_schema("clicks")
    assert isinstance(schema.arrow_schema("feedback"), pa.Schema)


def test_the_ope_adapter_defaults_are_rewards_columns():
    assert set(DEFAULT_COLUMNS.values()) <= set(REWARDS.names)


@pytest.mark.parametrize("root", ["local", "memory"])
def test_the_user_feature_table_round_trips_local_and_remote(tmp_path, root):
    rng = np.random.default_rng(0)
    ids = [f"u{i}" for i in rng.permutation(7)]
    features = rng.normal(size=(7, 3))
    path = tmp_path / "users.parquet" if root == "local" else f"memory://uf-{rng.integers(1 << 30)}"
    write_user_features(path, ids, features)
    read_ids, matrix = read_user_features(path)
    assert read_ids == ids
    np.testing.assert_array_equal(matrix, features.astype(np.float32).astype(np.float64))
    if root == "local":
        assert pq.read_schema(path).equals(USER_FEATURES, check_metadata=False)


def test_bad_user_feature_tables_are_refused_naming_what_is_wrong(tmp_path):
    path = tmp_path / "users.parquet"
    with pytest.raises(ValueError, match=r"^user_ids: expected one id per row of features \(2\)"):
        write_user_features(path, ["a"], np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"^user_ids: expected distinct ids, got 'a' more"):
        write_user_features(path, ["a", "b", "a"], np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"^features: expected finite values"):
        write_user_features(path, ["a", "b"], np.array([[0.0], [1e39]]))
    with pytest.raises(ValueError, match=r"^user_features_uri: expected a Parquet table"):
        read_user_features(tmp_path / "missing.parquet", name="user_features_uri")
    ragged = pl.DataFrame({"user_id": ["a", "b"], "context_dense": [[1.0], [1.0, 2.0]]})
    ragged.write_parquet(path)
    with pytest.raises(ValueError, match=r"^path: expected contexts of one length, got lengths 1"):
        read_user_features(path)


def test_cluster_memberships_round_trip_in_one_table_and_bad_ones_are_refused(tmp_path):
    path = tmp_path / "users.parquet"
    ids, dense = ["a", "b", "c"], np.arange(6.0).reshape(3, 2)
    cluster_ids = np.array([[0, 2], [1, 0], [2, 1]])
    weights = np.array([[0.75, 0.25], [0.5, 0.5], [1.0, 0.0]])
    write_user_features(path, ids, dense, clusters=(cluster_ids, weights))
    assert pq.read_schema(path).equals(USER_FEATURES_WITH_CLUSTERS, check_metadata=False)
    read_ids, matrix, clusters = read_user_table(path)
    assert read_ids == ids and clusters is not None
    np.testing.assert_array_equal(matrix, dense)
    assert [clusters.of(i) for i in range(3)] == [
        ((0, 2), (0.75, 0.25)), ((1, 0), (0.5, 0.5)), ((2, 1), (1.0, 0.0))]
    assert read_user_features(path)[0] == ids  # the plain reader ignores the clusters
    write_user_features(path, ids, dense)
    assert read_user_table(path)[2] is None

    with pytest.raises(ValueError, match=r"^clusters: expected ids and weights of shape \[3, k\]"):
        write_user_features(path, ids, dense, clusters=(cluster_ids, weights[:, :1]))
    with pytest.raises(ValueError, match=r"^clusters ids: expected integers >= 0"):
        write_user_features(path, ids, dense, clusters=(-cluster_ids, weights))
    with pytest.raises(ValueError, match=r"^clusters weights: expected finite values"):
        write_user_features(path, ids, dense, clusters=(cluster_ids, weights + np.inf))
    unpaired = pl.DataFrame({"user_id": ["a"], "context_dense": [[1.0]],
                             "context_cluster_ids": [[0, 1]], "context_cluster_weights": [[1.0]]})
    unpaired.write_parquet(path)
    with pytest.raises(ValueError, match=r"^users: expected one cluster weight per cluster id"):
        read_user_table(path, name="users")
