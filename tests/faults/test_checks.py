"""The issue's fault-injection checks a–d on the real broker and real Ray: a kill during recovery,
three broker SIGKILLs and restarts, a 60 s broker outage, a SIGSTOPped learner.

Each check produces the seeded traffic at a pace, injects its faults at seeded random wall-clock
moments and otherwise only runs the pipeline (``harness.drive``: ``run_for``, then
``run_to_end``); nothing outside the pipeline restarts an actor or retries a call. It ends with
the statistics equal to the undisturbed run's, every lake offset once and the read_committed
rewards once each (``harness.end_checks``). A failure message carries the faults injected and
the pipeline's hook events.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time

import pytest
import ray

from tests.faults.harness import (
    SETTINGS,
    actor_pid,
    drive,
    end_checks,
    faulted_run,
    moments,
    report,
)

# Minutes on a loaded machine (the first check also starts the broker and the reference run).
pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(900)]

ROLES = {"learner": SETTINGS.learners, "shard": SETTINGS.shards, "joiner": SETTINGS.joiners,
         "lake": SETTINGS.joiners}
"""Each killable role and how many of it run."""


def _kill(pipeline, name: str) -> None:
    """ray.kill the actor that holds ``name`` now (the handle is looked up at the moment)."""
    assert pipeline.actors is not None
    ray.kill(pipeline.actors.get(name), no_restart=True)


def _replacement_killer(pipeline, name: str, delay_s: float):
    """An action that waits for ``name``'s replacement (a new handle) and kills it ``delay_s``
    later."""
    dead = pipeline.actors.get(name)

    def kill_replacement() -> None:
        deadline = time.monotonic() + 60.0
        while pipeline.actors is None or pipeline.actors.get(name) is dead:
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} was not replaced within 60 s")
            time.sleep(0.01)
        time.sleep(delay_s)
        _kill(pipeline, name)

    return kill_replacement


def test_a_kill_during_recovery_is_recovered(fault_broker, reference, ray_session,
                                             tmp_path) -> None:
    """Kill an actor; when its recovery starts, kill another one of the recovery's actors after a
    random delay (a second death while restoring); twice, with roles drawn at random."""
    rng = random.Random(1801)
    with faulted_run(fault_broker, tmp_path) as (pipeline, traffic, faults, hooks, topics):
        roles = rng.sample(sorted(ROLES), 2)  # two different roles
        first_kills = [f"{role}-{rng.randrange(ROLES[role])}" for role in roles]
        second: list[tuple[str, float]] = []

        def during_recovery(event) -> None:
            if event.kind != "recovery.started" or event.detail.get("attempt") != 1:
                return
            if len(second) >= len(first_kills) or hooks.kinds()["recovery.started"] > 2 * len(
                    second) + 1:
                return  # only the recoveries the planned kills started
            scope = list(event.detail["actors"])
            cause = set(event.detail["cause"].split(", "))
            others = [n for n in scope if n not in cause]
            if others:  # a healthy actor of the recovery, while it is settled or rolled back
                victim, delay = rng.choice(sorted(others)), rng.uniform(0.0, 1.0)
                action = lambda: _kill(pipeline, victim)  # noqa: E731
            else:  # the recovery's only actor: its replacement, once built, while restoring
                victim, delay = scope[0], rng.uniform(0.0, 0.3)
                action = _replacement_killer(pipeline, victim, delay)
                delay = 0.0
            second.append((victim, delay))
            faults.later(delay, f"kill {victim} during the recovery of {sorted(cause)}", action)

        hooks.callbacks.append(during_recovery)
        for moment, name in zip(moments(1801, 2, 1.5, 8.0), first_kills, strict=True):
            faults.at(moment, f"kill {name}", lambda name=name: _kill(pipeline, name))
        traffic.start()
        faults.start(traffic.started_at)
        drive(pipeline, traffic, faults)
        context = report(faults, hooks, pipeline)
        assert not faults.errors, context
        assert len(second) == len(first_kills), f"not every kill started a recovery\n{context}"
        assert hooks.kinds()["recovery.started"] >= 2 * len(first_kills), (
            f"the kills during recovery were not noticed\n{context}")
        end_checks(pipeline, reference, fault_broker.bootstrap, topics, tmp_path / "lake",
                   context=context)


def test_b_three_broker_kills_and_restarts_are_ridden_through(fault_broker, reference,
                                                              ray_session, tmp_path) -> None:
    """SIGKILL the broker and restart it on the same data directory and port, three times in one
    run, after random running times and for random down times."""
    rng = random.Random(1802)
    with faulted_run(fault_broker, tmp_path) as (pipeline, traffic, faults, hooks, topics):
        restarts: list[float] = []

        def crash_and_restart(down_s: float) -> None:
            fault_broker.kill()
            time.sleep(down_s)
            fault_broker.start()  # on the owner thread: same directory and ports
            restarts.append(time.monotonic())

        start = rng.uniform(1.0, 4.0)
        for i in range(3):
            down = rng.uniform(0.5, 3.0)
            faults.at(start, f"broker SIGKILL #{i + 1}, restart after {down:.1f}s",
                      lambda down=down: crash_and_restart(down))
            start += rng.uniform(1.0, 4.0)  # the next one right after a restart, or later
        traffic.start()
        faults.start(traffic.started_at)
        drive(pipeline, traffic, faults)
        context = report(faults, hooks, pipeline)
        assert not faults.errors and len(restarts) == 3, context
        end_checks(pipeline, reference, fault_broker.bootstrap, topics, tmp_path / "lake",
                   context=context)


def test_c_a_60s_broker_outage_is_ridden_through(fault_broker, reference, ray_session,
                                                  tmp_path) -> None:
    """SIGKILL the broker at a random moment, leave it down for 60 s, restart it."""
    assert SETTINGS.kafka_outage_budget_s > 90, "the budget must cover the outage"
    with faulted_run(fault_broker, tmp_path) as (pipeline, traffic, faults, hooks, topics):

        def outage() -> None:
            fault_broker.kill()
            time.sleep(60.0)
            fault_broker.start()

        faults.at(moments(1803, 1, 1.5, 6.0)[0], "broker SIGKILL, down for 60 s", outage)
        traffic.start()
        faults.start(traffic.started_at)
        drive(pipeline, traffic, faults, timeout_s=280.0)
        context = report(faults, hooks, pipeline)
        assert not faults.errors, context
        end_checks(pipeline, reference, fault_broker.bootstrap, topics, tmp_path / "lake",
                   context=context)
        kinds = hooks.kinds()  # ridden through; and seen as what it was, an outage
        assert kinds["kafka.unreachable"] >= 1 and kinds["kafka.reachable"] >= 1, (
            f"the outage was not reported by the hooks (kafka.unreachable, kafka.reachable)\n"
            f"{context}")


def test_d_a_sigstopped_learner_is_replaced(fault_broker, reference, ray_session,
                                            tmp_path) -> None:
    """SIGSTOP a learner's process for longer than stream.actor_call_timeout_s: the supervisor
    must give up on it and replace it; SIGCONT it afterwards (cleanup only)."""
    rng = random.Random(1804)
    frozen_s = SETTINGS.actor_call_timeout_s + 4.0
    with faulted_run(fault_broker, tmp_path) as (pipeline, traffic, faults, hooks, topics):
        name = f"learner-{rng.randrange(2)}"
        frozen: list[int] = []

        def freeze() -> None:
            pid = actor_pid(pipeline.actors.get(name))
            os.kill(pid, signal.SIGSTOP)
            frozen.append(pid)
            try:
                time.sleep(frozen_s)
            finally:
                with contextlib.suppress(ProcessLookupError):  # killed: nothing to thaw
                    os.kill(pid, signal.SIGCONT)

        faults.at(moments(1804, 1, 1.5, 6.0)[0], f"SIGSTOP {name} for {frozen_s:g}s", freeze)
        traffic.start()
        faults.start(traffic.started_at)
        drive(pipeline, traffic, faults)
        context = report(faults, hooks, pipeline)
        assert not faults.errors and frozen, context
        deadlines = [d for k, _, d in hooks.events if k == "actor.deadline"]
        assert any(d.get("actor") == name for d in deadlines), (
            f"no actor.deadline for the frozen {name}\n{context}")
        assert pipeline.recoveries >= 1, context
        end_checks(pipeline, reference, fault_broker.bootstrap, topics, tmp_path / "lake",
                   context=context)
