"""Bandit snapshots registered from the running stream on a schedule (real Kafka, Ray and mlflow),
and a registration that fails is counted, never raised into the stream."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from recsys.bandits import DiagLinUCB, EpsilonGreedy, policy_spec
from recsys.checkpoint import CheckpointStore
from recsys.config import ServeSettings, Settings
from streaming.pipeline import StreamPipeline
from streaming.registrar import (
    RegistrationSchedule,
    SnapshotRegistrar,
    schedule_for,
    served_policy_spec,
)
from streaming.shards import dense_statistics
from tests.streaming.event_log import generate_log, produce_log
from tests.streaming.test_pipeline import N_ITEMS, SETTINGS, _topics
from tests.waiting import wait_until

UCB = policy_spec(DiagLinUCB(alpha=0.5))
UNIFORM = policy_spec(EpsilonGreedy(epsilon=1.0))


def _settings(tmp_path, every_s: float = 0.5) -> Settings:
    stream = replace(SETTINGS, checkpoint_interval_s=0.5, register_every_s=every_s,
                     checkpoints_keep=1000, checkpoint_uri=str(tmp_path / "checkpoints"))
    return Settings(data_dir=tmp_path / "data", stream=stream)


def test_the_served_learning_policy_is_the_checkpoints_policy() -> None:
    from recsys.serving.service import default_policies

    defaults = Settings()
    assert served_policy_spec(defaults) == default_policies(defaults)["diag_lin_ts"]
    greedy = policy_spec(EpsilonGreedy(epsilon=0.2))
    both = json.dumps({"ucb": UCB, "greedy": greedy, "control": UNIFORM})
    assert served_policy_spec(Settings(serve=ServeSettings(
        policies=both, traffic="ucb=0.2,greedy=0.3,control=0.5"))) == greedy
    assert served_policy_spec(Settings(serve=ServeSettings(
        policies=json.dumps({"control": UNIFORM}), traffic="control=1"))) is None
    assert schedule_for(Settings(), "unused") is None  # register_every_s = 0: on demand only
    with pytest.raises(ValueError, match=r"^every_s: expected seconds > 0, got 0.0"):
        RegistrationSchedule(Settings(), "unused")


def test_a_checkpoint_pruned_before_its_turn_gives_way_to_the_newest(tmp_path) -> None:
    from tests.registry.test_snapshots import _write

    settings = _settings(tmp_path)
    store = CheckpointStore(settings.checkpoint_uri, keep=1)
    pruned, newest = _write(store, 0), _write(store, 1)
    assert store.list() == [newest.checkpoint_id]
    result = SnapshotRegistrar(settings, settings.checkpoint_uri).register(pruned.checkpoint_id)
    assert result["ok"] and result["checkpoint_id"] == newest.checkpoint_id
    assert result["uri"] == "models:/recsys-bandit/1"


@pytest.mark.integration
def test_a_failed_registration_is_counted_and_the_next_one_still_runs(
        ray_session, tmp_path) -> None:
    settings = _settings(tmp_path, every_s=0.01)
    results = []
    schedule = RegistrationSchedule(settings, str(tmp_path / "empty"), on_result=results.append)
    try:
        for n, checkpoint_id in enumerate(["ckpt-000000000000", "ckpt-000000000001"], 1):
            wait_until(lambda c=checkpoint_id: schedule.after_checkpoint(c), timeout_s=5,
                       what="the interval to pass")
            schedule.poll(timeout_s=120)
            counts = schedule.counters()
            assert (counts["handed"], counts["failed"], counts["registered"]) == (n, n, 0)
            assert not counts["running"]
            assert f"{checkpoint_id}: CheckpointError: no complete checkpoint" in \
                counts["last_error"]
        assert [r["ok"] for r in results] == [False, False]
    finally:
        schedule.close()


@pytest.mark.integration
def test_the_running_pipeline_registers_its_checkpoints_as_versions(
        kafka_bootstrap, unique_topics, ray_session, tmp_path) -> None:
    from mlflow import MlflowClient

    from recsys.tracking import configure_mlflow

    settings = _settings(tmp_path, every_s=1.0)
    topics, names = _topics(unique_topics)
    produce_log(kafka_bootstrap, generate_log(31, n_requests=200, partitions=2), names)
    pipeline = StreamPipeline(
        kafka_bootstrap, settings.stream, dense_statistics(np.arange(N_ITEMS), SETTINGS.dim),
        settings.checkpoint_uri, topics=topics, policy_spec=UCB,
        registrar=RegistrationSchedule(settings, settings.checkpoint_uri),
    )
    try:
        pipeline.start()
        wait_until(lambda: pipeline.step() >= 0 and pipeline.registrar.registered >= 2,
                   timeout_s=240, what="two registered snapshots")
        counts = pipeline.counters()["registrations"]
    finally:
        pipeline.stop(checkpoint=False)
    assert counts["failed"] == 0, counts["last_error"]
    written = pipeline.store.list()

    configure_mlflow(settings)
    versions = MlflowClient().search_model_versions("name='recsys-bandit'")
    assert len(versions) >= 2
    assert counts["last_uri"] in {f"models:/recsys-bandit/{v.version}" for v in versions}
    for version in versions:
        assert version.tags["recsys.checkpoint_id"] in written
        assert json.loads(version.tags["recsys.policy_spec"]) == UCB  # from the checkpoint
        assert set(json.loads(version.tags["recsys.kafka_offsets"])) == {topics.impressions,
                                                                          topics.feedback}
    assert len({v.tags["recsys.checkpoint_id"] for v in versions}) == len(versions)
