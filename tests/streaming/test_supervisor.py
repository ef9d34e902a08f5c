"""The supervisor: its pieces alone (backoff, outage clock, what is transient, hooks), then the
whole pipeline on the real broker and real Ray healing itself with no code outside it
restarting anything: a kill during a recovery, a learner frozen with SIGSTOP, a reader whose
fetching stopped, a learner killed in window mode. Each ends with statistics equal to the truth.
The frozen learner waits out actor and reader deadlines: a fault check, run by ``make
test-faults`` (like the issue's SIGSTOP check d, tests/faults/test_checks.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import replace

import numpy as np
import pytest
from kafka.errors import KafkaConnectionError, KafkaTimeoutError, ProducerFencedError

from streaming.supervisor import (
    ActorsFailed,
    Backoff,
    Hooks,
    OutageClock,
    PipelineEvent,
    PipelineFailed,
    is_transient,
)
from tests.waiting import wait_until

# -- the pieces --------------------------------------------------------------------------------


def test_backoff_doubles_from_the_first_wait_up_to_the_max_and_starts_again_after_reset() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5
    with pytest.raises(ValueError, match="recovery_backoff_s"):
        Backoff(2.0, 1.0)


def test_the_outage_clock_runs_from_the_first_failure_and_gives_up_beyond_its_budget() -> None:
    now = [100.0]
    clock = OutageClock(10.0, clock=lambda: now[0])
    assert clock.ok() is None and not clock.running
    assert clock.failing(KafkaTimeoutError("no answer")) == 0.0
    now[0] = 106.0
    assert clock.failing(KafkaTimeoutError("still none")) == 6.0
    assert clock.ok() == 6.0 and not clock.running
    now[0] = 200.0
    clock.failing("broker down")
    now[0] = 210.5
    with pytest.raises(PipelineFailed, match=r"10 s.*kafka_outage_budget_s = 10 s.*broker down"):
        clock.failing("broker down")


def test_kafka_timeouts_and_lost_brokers_are_transient_bugs_and_fencing_are_not() -> None:
    from ray.exceptions import RayTaskError

    assert is_transient(KafkaTimeoutError("Failed to get offsets by timestamps"))
    assert is_transient(KafkaConnectionError("Unable to bootstrap"))
    assert is_transient(ConnectionResetError())
    assert not is_transient(ValueError("a bug"))
    assert not is_transient(ProducerFencedError())
    inside = RayTaskError("end_offsets", "Traceback ...", KafkaTimeoutError("inside an actor"))
    assert is_transient(inside)
    assert not is_transient(RayTaskError("step", "Traceback ...", KeyError("a bug in an actor")))
    assert ActorsFailed(["learner-0"], "failed", inside).kafka
    assert not ActorsFailed(["learner-0"], "died").kafka


def test_hooks_deliver_events_until_unsubscribed_and_survive_a_failing_subscriber() -> None:
    hooks, seen = Hooks(), []
    unsubscribe = hooks.subscribe(seen.append)
    hooks.subscribe(lambda event: 1 / 0)  # logged, never raised
    event = hooks.emit("checkpoint.completed", checkpoint_id="ckpt-1", duration_s=0.5)
    assert seen == [event] and isinstance(event, PipelineEvent)
    assert event.detail == {"checkpoint_id": "ckpt-1", "duration_s": 0.5}
    unsubscribe()
    hooks.emit("checkpoint.started")
    assert len(seen) == 1
    with pytest.raises(ValueError, match="unknown pipeline event kind"):
        hooks.emit("checkpoint.exploded")


# -- the pipeline healing itself ---------------------------------------------------------------


def _events(pipeline) -> list[PipelineEvent]:
    events: list[PipelineEvent] = []
    pipeline.hooks.subscribe(events.append)
    return events


def _kinds(events: list[PipelineEvent]) -> list[str]:
    return [e.kind for e in events]


def _gone(pid: int, limit_s: float = 15.0) -> bool:
    """Whether process ``pid`` ended (or is a zombie) within ``limit_s``."""
    import time

    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().split(") ", 1)[1].startswith("Z"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.2)
    return False


def _step_until(pipeline, events: list[PipelineEvent], kind: str, actor: str,
                limit_s: float = 60.0) -> None:
    """Step the pipeline until it has recovered after a ``kind`` event about ``actor``."""
    import time

    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        pipeline.step()
        seen = [i for i, e in enumerate(events) if e.kind == kind and e.detail["actor"] == actor]
        if seen and "recovery.completed" in _kinds(events[seen[0]:]):
            return
    raise AssertionError(f"no {kind} for {actor} and recovery in {limit_s:g} s: "
                         f"{_kinds(events)}")


@pytest.mark.integration
def test_a_kill_during_recovery_is_recovered_by_itself_and_healthy_actors_stay(
        kafka_bootstrap, unique_topics, ray_session, tmp_path) -> None:
    import ray

    from tests.streaming.event_log import generate_log, produce_log
    from tests.streaming.test_pipeline import _joined_truth, _part, _pipeline, _topics

    topics, names = _topics(unique_topics)
    log = generate_log(31, n_requests=200, partitions=2, messy=True)
    first, rest = _part(log, lambda r: r < 80), _part(log, lambda r: r >= 80)
    produce_log(kafka_bootstrap, first, names)
    pipeline = _pipeline(kafka_bootstrap, topics, tmp_path)
    events = _events(pipeline)
    try:
        pipeline.start()
        pipeline.run_to_end()
        produce_log(kafka_bootstrap, rest, names)
        for _ in range(3):
            pipeline.step()
        shard0, joiner = pipeline.actors.shards[0], pipeline.actors.joiners[0]

        def second_kill(event: PipelineEvent) -> None:  # a kill while the recovery runs
            if event.kind == "recovery.started" and event.detail["attempt"] == 1:
                ray.kill(pipeline.actors.shards[1], no_restart=True)

        unsubscribe = pipeline.hooks.subscribe(second_kill)
        pipeline.recover(["learner-0"])  # what a step does when it finds learner-0 dead
        unsubscribe()
        kinds = _kinds(events)
        assert "recovery.failed" in kinds and kinds[-1] == "recovery.completed"
        assert events[-1].detail["scope"] == "local"
        assert pipeline.failed_recoveries >= 1 and pipeline.recoveries == 1
        # only the dead were rebuilt: the healthy shard rolled back in memory, the joiner stayed
        assert pipeline.actors.shards[0] is shard0 and pipeline.actors.joiners[0] is joiner
        assert ray.get(shard0.counters.remote())["rollbacks"] >= 1
        pipeline.run_to_end()
        assert pipeline.statistics().allclose(_joined_truth(first, rest), rtol=1e-9, atol=1e-12)
    finally:
        pipeline.stop(checkpoint=False)


@pytest.mark.faults
@pytest.mark.integration
def test_a_frozen_learner_and_a_reader_that_stopped_fetching_are_replaced(
        kafka_bootstrap, unique_topics, ray_session, tmp_path) -> None:
    import ray

    from tests.streaming.event_log import generate_log, produce_log
    from tests.streaming.test_pipeline import _joined_truth, _part, _pipeline, _topics

    topics, names = _topics(unique_topics)
    log = generate_log(32, n_requests=180, partitions=2, messy=True)
    first, second, third = (_part(log, lambda r: r < 60), _part(log, lambda r: 60 <= r < 120),
                            _part(log, lambda r: r >= 120))
    produce_log(kafka_bootstrap, first, names)
    pipeline = _pipeline(kafka_bootstrap, topics, tmp_path)
    pipeline.settings = replace(pipeline.settings, actor_call_timeout_s=3.0, stuck_reader_s=2.0)
    pipeline.calls.timeout_s = 3.0
    pipeline._stuck_every_s = 0.5
    events = _events(pipeline)
    pid = None
    try:
        pipeline.start()
        pipeline.run_to_end()
        pid = ray.get(pipeline.actors.learners[1].__ray_call__.remote(lambda self: os.getpid()))
        os.kill(pid, signal.SIGSTOP)  # frozen: alive to the OS, deaf to Ray
        produce_log(kafka_bootstrap, second, names)
        _step_until(pipeline, events, "actor.deadline", "learner-1")  # killed and replaced
        assert pipeline.health()["deadline_kills"] >= 1 and pipeline.recoveries >= 1
        # the frozen process is gone: a SIGCONT cannot let it send stale deltas
        assert _gone(pid), f"the frozen learner's process {pid} still exists"

        # the joiner's consumer stops fetching (as after a broker restart): stuck, rebuilt
        pipeline.run_to_end()
        joiner = pipeline.actors.joiners[0]
        ray.get(joiner.__ray_call__.remote(
            lambda self: setattr(self._consumer, "poll", lambda *args, **kwargs: [])))
        produce_log(kafka_bootstrap, third, names)
        _step_until(pipeline, events, "reader.stuck", "joiner-0")
        assert pipeline.actors.joiners[0] is not joiner and pipeline.stuck_readers >= 1
        pipeline.run_to_end()
        assert pipeline.statistics().allclose(_joined_truth(first, second, third), rtol=1e-9,
                                              atol=1e-12)
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        pipeline.stop(checkpoint=False)


@pytest.mark.integration
def test_window_mode_learns_the_joined_rewards_through_the_whole_pipeline(
        kafka_bootstrap, unique_topics, ray_session, tmp_path) -> None:
    import ray

    from recsys.config import StreamSettings
    from streaming.pipeline import StreamPipeline
    from streaming.shards import dense_statistics
    from tests.streaming.event_log import dense_contexts, generate_log, produce_log
    from tests.streaming.test_joiner import rewards_in
    from tests.streaming.test_pipeline import DIM, N_ITEMS, SETTINGS, _part, _topics

    topics, names = _topics(unique_topics)
    log = generate_log(33, n_requests=200, partitions=2, messy=True)
    first, rest = _part(log, lambda r: r < 100), _part(log, lambda r: r >= 100)
    settings: StreamSettings = replace(SETTINGS, update_mode="window")
    pipeline = StreamPipeline(kafka_bootstrap, settings, dense_statistics(np.arange(N_ITEMS), DIM),
                              str(tmp_path / "checkpoints"), topics=topics)
    try:
        produce_log(kafka_bootstrap, first, names)
        pipeline.start()
        pipeline.run_to_end()
        produce_log(kafka_bootstrap, rest, names)
        pipeline.run_to_end()  # the joiners' rewards of the first part are read now
        ray.kill(pipeline.actors.learners[0], no_restart=True)
        pipeline.run_to_end()
        assert pipeline.recoveries == 1
        rewards = rewards_in(kafka_bootstrap, topics.rewards, "read_committed")
        assert len(rewards) > 100
        assert len({(r.request_id, r.item_id) for r in rewards}) == len(rewards)
        truth = dense_statistics(np.arange(N_ITEMS), DIM).learn(
            dense_contexts(rewards), np.array([r.item_id for r in rewards]),
            np.array([r.reward for r in rewards]))
        assert pipeline.statistics().allclose(truth, rtol=1e-9, atol=1e-12)
        counts = pipeline.counters()["learner-1"]["counts"]
        assert counts.get("unexpected_event_type", 0) == 0 and counts["rewards"] > 0
    finally:
        pipeline.stop(checkpoint=False)


def is_dead(actor) -> bool:
    """Whether ``actor`` is known dead: ``ray.kill`` is asynchronous, so a call made just after
    it may still reach the actor and be answered."""
    import ray

    try:
        ray.get(actor.__ray_ready__.remote(), timeout=10)
    except ray.exceptions.RayActorError:
        return True
    except ray.exceptions.GetTimeoutError:
        pass
    return False


@pytest.mark.integration
def test_a_recovery_takes_in_every_actor_that_died_not_one_per_attempt(
        kafka_bootstrap, unique_topics, ray_session, tmp_path) -> None:
    import ray

    from tests.streaming.event_log import generate_log, produce_log
    from tests.streaming.test_pipeline import _joined_truth, _pipeline, _topics

    topics, names = _topics(unique_topics)
    log = generate_log(34, n_requests=120, partitions=2, messy=True)
    produce_log(kafka_bootstrap, log, names)
    pipeline = _pipeline(kafka_bootstrap, topics, tmp_path)
    try:
        pipeline.start()
        pipeline.run_to_end()
        # a lost node takes several actors; the driver learns of one death first
        dead = [pipeline.actors.joiners[0], pipeline.actors.learners[1]]
        for actor in dead:
            ray.kill(actor, no_restart=True)
        for actor in dead:
            wait_until(lambda a=actor: is_dead(a), timeout_s=30, interval_s=0.1,
                       what="the killed actor to stop answering")
        events = _events(pipeline)
        pipeline.recover(["learner-1"])
        started = [e for e in events if e.kind == "recovery.started"]
        assert len(started) == 1 and {"joiner-0", "learner-1"} <= set(started[0].detail["actors"])
        assert "recovery.failed" not in _kinds(events)
        assert pipeline.actors.joiners[0] is not dead[0]  # rebuilt in the same attempt
        pipeline.run_to_end()
        assert pipeline.statistics().allclose(_joined_truth(log), rtol=1e-9, atol=1e-12)
    finally:
        pipeline.stop(checkpoint=False)
