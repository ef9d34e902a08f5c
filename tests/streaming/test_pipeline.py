"""The whole streaming pipeline on the real broker and real Ray: exactly once, across stops and
actor deaths.

The truth is ``learn(part="both")`` on the true joined examples of a generated log (with
duplicates, late, unmapped, not-in-slate and orphan events mixed in) or, when the log is produced
in two parts, on what the pure joiner emits for the partitions' streams as produced; the pipeline
must reach it undisturbed, after a stop and a restart with more events, and after an actor is
killed mid-run.

The fault injections (an actor of each role killed mid-run, the broker stopped and restarted under
the pipeline) are marked ``faults``: minutes of a loaded machine, run by ``make test-faults``. The
normal suite keeps actor deaths of every role through the supervisor's tests
(tests/streaming/test_supervisor.py) and the broker's restart on its address (test_broker.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from recsys.checkpoint import CheckpointStore
from recsys.config import StreamSettings
from recsys.lake import scan_lake
from streaming.join import EventTimeJoiner
from streaming.pipeline import StreamPipeline, Topics
from streaming.shards import dense_statistics
from tests.streaming.event_log import (
    LATENESS,
    MAPPING,
    WINDOW,
    Log,
    dense_contexts,
    generate_log,
    produce_log,
    truth_stats,
)

pytestmark = pytest.mark.integration

N_ITEMS, DIM = 50, 3
SETTINGS = StreamSettings(
    learners=2, shards=2, joiners=1, batch_size=500, window_ms=WINDOW,
    allowed_lateness_ms=LATENESS, reward_mapping="add_to_cart=0.5,click=1,purchase=1,skip=0",
    dim=DIM, checkpoint_interval_s=3600.0,
)


def _topics(unique_topics) -> tuple[Topics, dict[str, str]]:
    names = unique_topics({"imps": 2, "fbs": 2, "rewards": 2, "dead": 1})
    return Topics(names["imps"], names["fbs"], names["rewards"], names["dead"]), names


def _pipeline(kafka_bootstrap, topics: Topics, tmp_path, lake: bool = False) -> StreamPipeline:
    template = dense_statistics(np.arange(N_ITEMS), DIM)
    return StreamPipeline(
        kafka_bootstrap, SETTINGS, template, str(tmp_path / "checkpoints"),
        lake_uri=str(tmp_path / "lake") if lake else None, topics=topics,
    )


def _part(log: Log, keep) -> Log:
    """The requests of ``log`` for which ``keep(index)`` holds (a prefix or a suffix)."""
    wanted = {rid for rid, _ in log.truth if keep(int(rid.split("-")[1]))}
    part = Log({p: [] for p in log.impressions}, {p: [] for p in log.feedback})
    for source, target in ((log.impressions, part.impressions), (log.feedback, part.feedback)):
        for p, keyed in source.items():
            target[p] = [(k, e) for k, e in keyed if e.request_id in wanted]
    part.truth = {key: v for key, v in log.truth.items() if key[0] in wanted}
    return part


def _truth(log: Log):
    return truth_stats(dense_statistics(np.arange(N_ITEMS), DIM), log, dense_contexts)


def _joined_truth(*parts: Log):
    """``learn`` on the joiner's rewards for the parts produced one after the other: a split
    log is another log (a later part's feedback can be late against the earlier part's clock)."""
    joiner = EventTimeJoiner(WINDOW, LATENESS, MAPPING)
    for part in parts:
        for p in part.impressions:
            joiner.add([e for _, e in part.impressions[p]], p)
            joiner.add([e for _, e in part.feedback[p]], p)
    rewards = joiner.flush().rewards
    base = dense_statistics(np.arange(N_ITEMS), DIM)
    return base.learn(dense_contexts(rewards), np.array([r.item_id for r in rewards]),
                      np.array([r.reward for r in rewards]))


def test_pipeline_reaches_the_truth_and_lands_every_event_in_the_lake(
        kafka_bootstrap, unique_topics, ray_session, tmp_path) -> None:
    topics, names = _topics(unique_topics)
    log = generate_log(21, n_requests=400, partitions=2)
    produce_log(kafka_bootstrap, log, names)
    pipeline = _pipeline(kafka_bootstrap, topics, tmp_path, lake=True)
    try:
        assert pipeline.start() is None  # nothing to restore: starts at the beginning
        pipeline.run_to_end()
        assert pipeline.statistics().allclose(_truth(log), rtol=1e-9, atol=1e-12)
        impressions = scan_lake(tmp_path / "lake", "impressions").collect()
        shown = sum(len(e.slate) for keyed in log.impressions.values() for _, e in keyed)
        assert impressions.height == shown
        assert scan_lake(tmp_path / "lake", "feedback").collect().height == sum(
            map(len, log.feedback.values()))
        assert pipeline.store.list() == [pipeline.coordinator.last.checkpoint_id]
    finally:
        pipeline.stop(checkpoint=False)


def test_a_restarted_pipeline_resumes_from_its_checkpoint(
        kafka_bootstrap, unique_topics, ray_session, tmp_path) -> None:
    topics, names = _topics(unique_topics)
    log = generate_log(22, n_requests=400, partitions=2, messy=True)
    first_half, second_half = _part(log, lambda r: r < 200), _part(log, lambda r: r >= 200)
    produce_log(kafka_bootstrap, first_half, names)
    pipeline = _pipeline(kafka_bootstrap, topics, tmp_path)
    pipeline.start()
    pipeline.run_to_end()
    checkpoint_id = pipeline.coordinator.last.checkpoint_id
    pipeline.stop()  # checkpoints again, at the same offsets
    produce_log(kafka_bootstrap, second_half, names)
    resumed = _pipeline(kafka_bootstrap, topics, tmp_path)
    try:
        restored = resumed.start()
        assert restored is not None and restored.checkpoint_id > checkpoint_id
        assert resumed.statistics().allclose(_truth(first_half), rtol=1e-9, atol=1e-12)
        resumed.run_to_end()
        assert resumed.statistics().allclose(_joined_truth(first_half, second_half), rtol=1e-9,
                                             atol=1e-12)
    finally:
        resumed.stop(checkpoint=False)


@pytest.mark.faults
@pytest.mark.parametrize("role", ["learners", "shards", "joiners"])
def test_killing_an_actor_rolls_back_to_the_checkpoint_and_loses_nothing(
        kafka_bootstrap, unique_topics, ray_session, tmp_path, role) -> None:
    import ray

    topics, names = _topics(unique_topics)
    log = generate_log(23, n_requests=400, partitions=2, messy=True)
    first, rest = _part(log, lambda r: r < 150), _part(log, lambda r: r >= 150)
    produce_log(kafka_bootstrap, first, names)
    pipeline = _pipeline(kafka_bootstrap, topics, tmp_path)
    try:
        pipeline.start()
        pipeline.run_to_end()  # a checkpoint after the first 150 requests
        produce_log(kafka_bootstrap, rest, names)
        for _ in range(3):  # some of the rest is learned, and lost with the actor
            pipeline.step()
        ray.kill(getattr(pipeline.actors, role)[0], no_restart=True)
        pipeline.run_to_end()
        assert pipeline.recoveries == 1
        assert pipeline.statistics().allclose(_joined_truth(first, rest), rtol=1e-9, atol=1e-12)
    finally:
        pipeline.stop(checkpoint=False)


class _CrashingStore(CheckpointStore):
    """A store whose next write dies after the parts are written and before the manifest: what
    a coordinator killed mid-checkpoint leaves behind."""

    crash_next = False

    def _write_part(self, directory, filename, meta, arrays):
        entry = super()._write_part(directory, filename, meta, arrays)
        if self.crash_next and filename.startswith("state-"):
            self.crash_next = False
            raise SystemExit("coordinator killed while writing a checkpoint")
        return entry


def test_a_coordinator_killed_mid_checkpoint_leaves_the_previous_cut(
        kafka_bootstrap, unique_topics, ray_session, tmp_path) -> None:
    topics, names = _topics(unique_topics)
    log = generate_log(24, n_requests=300, partitions=2, messy=True)
    first, rest = _part(log, lambda r: r < 100), _part(log, lambda r: r >= 100)
    produce_log(kafka_bootstrap, first, names)
    pipeline = _pipeline(kafka_bootstrap, topics, tmp_path)
    pipeline.store = pipeline.coordinator.store = _CrashingStore(tmp_path / "checkpoints")
    pipeline.start()
    pipeline.run_to_end()
    good = pipeline.coordinator.last.checkpoint_id
    produce_log(kafka_bootstrap, rest, names)
    pipeline.store.crash_next = True
    with pytest.raises(SystemExit, match="coordinator killed"):
        pipeline.run_to_end()
    pipeline.stop(checkpoint=False)  # the driver is gone: its actors go with it
    assert pipeline.store.list() == [good]  # the interrupted cut is not a checkpoint
    resumed = _pipeline(kafka_bootstrap, topics, tmp_path)
    try:
        assert resumed.start().checkpoint_id == good
        resumed.run_to_end()
        assert resumed.statistics().allclose(_joined_truth(first, rest), rtol=1e-9, atol=1e-12)
    finally:
        resumed.stop(checkpoint=False)


@pytest.mark.faults
def test_a_broker_restart_under_the_pipeline_loses_nothing(ray_session, tmp_path) -> None:
    """The pipeline's own broker (persistent data) is stopped mid-run and started again on the
    same address: the clients reconnect, and the statistics still equal the truth."""
    from streaming.broker import EmbeddedKafka
    from streaming.topics import ensure_topics

    broker = EmbeddedKafka(data_dir=tmp_path / "kafka").start()
    try:
        bootstrap = broker.bootstrap
        names = {"imps": "r.imps", "fbs": "r.fbs", "rewards": "r.rewards", "dead": "r.dead"}
        ensure_topics(bootstrap, {"r.imps": 2, "r.fbs": 2, "r.rewards": 2, "r.dead": 1})
        topics = Topics("r.imps", "r.fbs", "r.rewards", "r.dead")
        log = generate_log(25, n_requests=300, partitions=2, messy=True)
        first, rest = _part(log, lambda r: r < 150), _part(log, lambda r: r >= 150)
        produce_log(bootstrap, first, names)
        pipeline = _pipeline(bootstrap, topics, tmp_path)
        try:
            pipeline.start()
            pipeline.run_to_end()
            produce_log(bootstrap, rest, names)
            pipeline.step()
            broker.stop()
            for _ in range(3):  # polls while the broker is down (prefetched records only)
                pipeline.step()
            broker.start()  # from this thread: the JVM dies with the thread that started it
            assert broker.bootstrap == bootstrap
            pipeline.run_to_end()
            assert pipeline.statistics().allclose(_joined_truth(first, rest), rtol=1e-9,
                                                  atol=1e-12)
        finally:
            pipeline.stop(checkpoint=False)
    finally:
        broker.stop()


def _difference(whole, part):
    """The statistics ``whole`` − ``part`` (sums are additive): what the later events added."""
    out = whole.copy()
    for name, value in out._sums().items():
        value -= part._sums()[name]
    return out


def test_items_are_retired_and_added_while_the_pipeline_runs(
        kafka_bootstrap, unique_topics, ray_session, tmp_path) -> None:
    topics, names = _topics(unique_topics)
    log = generate_log(26, n_requests=300, partitions=2)
    first, rest = _part(log, lambda r: r < 150), _part(log, lambda r: r >= 150)
    late_items = np.arange(40, N_ITEMS)
    produce_log(kafka_bootstrap, first, names)
    pipeline = _pipeline(kafka_bootstrap, topics, tmp_path)
    try:
        pipeline.start()
        assert pipeline.retire_items(late_items) == late_items.size
        pipeline.run_to_end()
        early = _joined_truth(first)
        assert pipeline.statistics().allclose(early.select(np.arange(40)), rtol=1e-9, atol=1e-12)
        assert pipeline.add_items(late_items) == late_items.size  # back, with zero statistics
        produce_log(kafka_bootstrap, rest, names)
        pipeline.run_to_end()
        whole = _joined_truth(first, rest)
        learned = pipeline.statistics()
        assert learned.select(np.arange(40)).allclose(whole.select(np.arange(40)), rtol=1e-9,
                                                      atol=1e-12)
        assert learned.select(late_items).allclose(
            _difference(whole, early).select(late_items), rtol=1e-9, atol=1e-9)
        with pytest.raises(KeyError, match="retire_items: 1 unknown item id"):
            pipeline.retire_items([999])
    finally:
        pipeline.stop(checkpoint=False)
