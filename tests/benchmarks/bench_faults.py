"""Recovery time per fault kind, from the fault to events flowing again, at 1M items x d = 32.

Starts an embedded broker (persistent data, so it can be killed and restarted on the same
directory and port) and a local Ray, runs the pipeline (2 learners, 2 shards, 1 joiner, 1 lake
writer: readers take half a CPU each of Ray's 2) on synthetic impressions and clicks over the
catalogue, and per trial: produces a backlog, checkpoints (the cut a recovery returns to),
produces more, takes one step, injects the fault, and steps until a step reads records again
after the pipeline has recovered (for the broker: after it serves again). Fault kinds:
ray.kill of a learner, a shard, a joiner, a lake writer; broker SIGKILL and restart (down for
``--broker-down`` s; the time to start the JVM is part of the figure, and "back → flowing" shows
the pipeline's own share); a learner SIGSTOPped (found after ``stream.actor_call_timeout_s``,
``--call-timeout``). The table gives the median of ``--repeat`` trials, the pipeline's own
restore time (the ``recovery.completed`` hook's duration), and the machine's cores and load
average (the figures are noisy on a shared machine).

Usage: python tests/benchmarks/bench_faults.py [--items 1000000] [--dim 32] [--repeat 3]
       [--quick] [--kinds learner,shard,joiner,lake,broker,sigstop]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from recsys.config import StreamSettings
from streaming.pipeline import StreamPipeline, Topics
from streaming.shards import dense_statistics
from streaming.topics import ensure_topics
from tests.benchmarks.bench_checkpoint import produce
from tests.benchmarks.text_table import print_table
from tests.faults.harness import RestartableBroker

KINDS = ("learner", "shard", "joiner", "lake", "broker", "sigstop")


class Trial:
    """One fault: when it was injected, when the pipeline recovered (hook), when the broker
    served again (broker faults), when a step read records again."""

    def __init__(self) -> None:
        self.fault_at = 0.0
        self.back_at: float | None = None
        self.recovered_at: float | None = None
        self.restore_s: float | None = None
        self.flowing_at: float | None = None

    def on_event(self, event: Any) -> None:
        if event.kind == "recovery.completed" and event.at_s >= self.fault_at:
            self.recovered_at = event.at_s
            self.restore_s = event.detail.get("duration_s")


def actor_pid(actor: Any) -> int:
    import ray

    return int(ray.get(actor.__ray_call__.remote(lambda _self: os.getpid()), timeout=60))


def step_until_flowing(pipeline: StreamPipeline, trial: Trial, needs_recovery: bool,
                       timeout_s: float = 600.0) -> None:
    """Step until a step reads records after the recovery (or after the broker is back)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # a step begun after the recovery (or after the broker is back) that reads records
        ready = trial.recovered_at is not None if needs_recovery else trial.back_at is not None
        n = pipeline.step()
        if n > 0 and ready:
            trial.flowing_at = time.monotonic()
            return
    raise RuntimeError(f"events did not flow again within {timeout_s:.0f}s of the fault")


def inject(kind: str, pipeline: StreamPipeline, broker: RestartableBroker, trial: Trial,
           args: argparse.Namespace) -> None:
    """Inject one fault of ``kind`` and step until events flow again."""
    import ray

    assert pipeline.actors is not None
    if kind in ("learner", "shard", "joiner", "lake"):
        victim = pipeline.actors.get(f"{kind}-0")
        trial.fault_at = time.monotonic()
        ray.kill(victim, no_restart=True)
        step_until_flowing(pipeline, trial, needs_recovery=True)
    elif kind == "sigstop":
        pid = actor_pid(pipeline.actors.get("learner-0"))
        trial.fault_at = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        try:
            step_until_flowing(pipeline, trial, needs_recovery=True)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    elif kind == "broker":
        def restart() -> None:  # on the broker's owner thread (the JVM dies with its thread)
            broker.start()
            trial.back_at = time.monotonic()

        trial.fault_at = time.monotonic()
        broker.kill()
        timer = threading.Timer(args.broker_down, restart)
        timer.start()  # the pipeline keeps stepping (and may recover) while the broker is down
        try:
            step_until_flowing(pipeline, trial, needs_recovery=False)
        finally:
            timer.join()
    else:
        raise ValueError(f"unknown fault kind {kind!r}: one of {', '.join(KINDS)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--requests", type=int, default=4_000,
                        help="requests per backlog chunk (two chunks per trial)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--call-timeout", type=float, default=10.0,
                        help="stream.actor_call_timeout_s (a SIGSTOPped actor is found after it)")
    parser.add_argument("--broker-down", type=float, default=2.0,
                        help="seconds the broker stays down before its restart")
    parser.add_argument("--quick", action="store_true", help="10k items, 1 repetition")
    args = parser.parse_args()
    if args.quick:
        args.items, args.repeat, args.requests = 10_000, 1, 1_000
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"--kinds: unknown {unknown}; choose from {', '.join(KINDS)}")

    import ray

    stream = StreamSettings(learners=2, shards=2, joiners=1, dim=args.dim, n_items=args.items,
                            checkpoint_interval_s=1e9, window_ms=1_000, allowed_lateness_ms=100,
                            actor_call_timeout_s=args.call_timeout, stuck_reader_s=30.0)
    trials: dict[str, list[Trial]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        broker = RestartableBroker(Path(tmp) / "kafka")
        broker.start()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=6 * 2**30, logging_level="WARNING")
        try:
            suffix = uuid.uuid4().hex[:8]
            topics = Topics(f"b.imps.{suffix}", f"b.fbs.{suffix}", f"b.rewards.{suffix}",
                            f"b.dead.{suffix}")
            ensure_topics(broker.bootstrap, {topics.impressions: 2, topics.feedback: 2,
                                             topics.rewards: 2, topics.dead_letter: 1})
            template = dense_statistics(range(args.items), args.dim)
            pipeline = StreamPipeline(broker.bootstrap, stream, template, f"{tmp}/checkpoints",
                                      lake_uri=f"{tmp}/lake", topics=topics)
            current: list[Trial] = []
            pipeline.hooks.subscribe(lambda e: current and current[-1].on_event(e))
            started = time.perf_counter()
            pipeline.start()
            start_s = time.perf_counter() - started
            produced = 0
            for round_ in range(args.repeat):
                for kind in kinds:
                    produce(broker.bootstrap, topics, args.requests, args.items, args.dim,
                            produced, seed=produced)
                    produced += args.requests
                    pipeline.run_to_end(timeout_s=600)  # the cut the recovery returns to
                    produce(broker.bootstrap, topics, args.requests, args.items, args.dim,
                            produced, seed=produced)
                    produced += args.requests
                    pipeline.step()
                    trial = Trial()
                    current.append(trial)
                    inject(kind, pipeline, broker, trial, args)
                    trials[kind].append(trial)
                    print(f"  round {round_ + 1} {kind}: "
                          f"{trial.flowing_at - trial.fault_at:.2f} s", flush=True)
            pipeline.stop(checkpoint=False)
        finally:
            with contextlib.suppress(Exception):
                ray.shutdown()
            broker.close()

    def median(values: list[float | None]) -> str:
        known = [v for v in values if v is not None]
        return f"{statistics.median(known):.2f} s" if known else "-"

    def fault_to(at: Callable[[Trial], float | None]) -> Callable[[Trial], float | None]:
        return lambda t: None if at(t) is None else at(t) - t.fault_at  # type: ignore[operator]

    names = {"learner": "ray.kill learner-0", "shard": "ray.kill shard-0",
             "joiner": "ray.kill joiner-0", "lake": "ray.kill lake-0",
             "broker": f"broker SIGKILL, restart after {args.broker_down:g} s",
             "sigstop": f"SIGSTOP learner-0 (call deadline {args.call_timeout:g} s)"}
    rows = []
    for kind in kinds:
        ts = trials[kind]
        rows.append([
            names[kind], str(len(ts)),
            median([fault_to(lambda t: t.flowing_at)(t) for t in ts]),
            median([t.restore_s for t in ts]),
            median([None if t.back_at is None else t.flowing_at - t.back_at for t in ts]),
        ])
    load = os.getloadavg()
    print(f"\nbench_faults: {args.items:,} items x d={args.dim}, 2 learners, 2 shards, 1 joiner, "
          f"1 lake writer, {args.requests:,} requests per backlog chunk; pipeline start "
          f"{start_s:.1f} s; {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f} (1, 5, 15 min)")
    print_table(rows, ["fault", "trials", "fault → flowing (median)",
                       "restore (recovery.completed)", "broker back → flowing"])


if __name__ == "__main__":
    main()
