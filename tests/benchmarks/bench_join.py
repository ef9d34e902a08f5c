"""Joiner benchmark: events/s through ``streaming.join.EventTimeJoiner`` alone (no Kafka, no Ray).

The log is the tests' generated log (``tests.streaming.event_log.generate_log``): requests every
~10 ms of event time, slates of ``--slate`` items, 30% of shown items with 1-3 feedback events,
arrival jittered within the allowed lateness (so feedback often comes before its impression), two
partitions fed round-robin in batches of ``--batch`` events with an ``advance`` after each and a
``flush`` at the end. Events/s counts impressions + feedback in; rewards/s counts records out
(one per shown item). Each figure is the median of ``--repeat`` fresh runs; generation is not
timed. Also timed: ``state_arrays`` and ``from_state_arrays`` of a joiner stopped half-way (the
joiner's share of a checkpoint).

Usage: python tests/benchmarks/bench_join.py [--quick] [--requests 100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from streaming.join import EventTimeJoiner
from tests.streaming.event_log import (
    LATENESS,
    MAPPING,
    WINDOW,
    generate_log,
    round_robin_batches,
)


def one_run(batches: list[tuple[int, list]]) -> tuple[float, int, int]:
    joiner = EventTimeJoiner(WINDOW, LATENESS, MAPPING)
    rewards = rejected = 0
    started = time.perf_counter()
    for partition, events in batches:
        rejected += len(joiner.add(events, partition))
        out = joiner.advance()
        rewards += len(out.rewards)
        rejected += len(out.rejected)
    out = joiner.flush()
    elapsed = time.perf_counter() - started
    return elapsed, rewards + len(out.rewards), rejected + len(out.rejected)


def checkpoint_times(batches: list[tuple[int, list]]) -> tuple[float, float, int, int]:
    joiner = EventTimeJoiner(WINDOW, LATENESS, MAPPING)
    for partition, events in batches[: len(batches) // 2]:
        joiner.add(events, partition)
        joiner.advance()
    started = time.perf_counter()
    arrays = joiner.state_arrays()
    saved = time.perf_counter() - started
    started = time.perf_counter()
    EventTimeJoiner.from_state_arrays(arrays)
    restored = time.perf_counter() - started
    size = sum(a.nbytes for a in arrays.values())
    return saved, restored, joiner.open_impressions, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--slate", type=int, default=10)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="10k requests, one run")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.repeat = 10_000, 1

    log = generate_log(0, n_requests=args.requests, partitions=2, slate_size=args.slate,
                       n_items=max(1_000, 2 * args.slate))
    batches = round_robin_batches(log, args.batch)
    n_events = log.n_events
    runs = [one_run(batches) for _ in range(args.repeat)]
    elapsed = statistics.median(r[0] for r in runs)
    rewards, rejected = runs[0][1], runs[0][2]
    assert rewards == len(log.truth) and rejected == 0, (rewards, len(log.truth), rejected)
    saved, restored, open_now, size = checkpoint_times(batches)

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"bench_join: {os.cpu_count()} cores, load average {load} (1, 5, 15 min)")
    print(f"log: {args.requests:,} requests x {args.slate} items, {n_events:,} events "
          f"({n_events - args.requests:,} feedback), window {WINDOW} ms, lateness {LATENESS} ms, "
          f"batches of {args.batch:,}, median of {args.repeat}")
    print(f"{'metric':<34}{'value':>14}")
    print(f"{'events in /s':<34}{n_events / elapsed:>14,.0f}")
    print(f"{'rewards out /s':<34}{rewards / elapsed:>14,.0f}")
    print(f"{'seconds per run':<34}{elapsed:>14.3f}")
    print(f"{'state_arrays (ms), half-way':<34}{saved * 1e3:>14.1f}")
    print(f"{'from_state_arrays (ms)':<34}{restored * 1e3:>14.1f}")
    print(f"{'open impressions at the cut':<34}{open_now:>14,}")
    print(f"{'state size (MB)':<34}{size / 1e6:>14.2f}")


if __name__ == "__main__":
    main()
