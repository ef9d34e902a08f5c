"""Lake sink throughput: decoded events into hive-partitioned Parquet, one process, no Kafka.

    .venv/bin/python tests/benchmarks/bench_lake.py [--events 200000] [--runs 3] [--quick]

Events come from the synthetic traffic generator (impressions with their slates and dense
contexts, click feedback) plus one joined reward per shown item, as ``ConsumedEvent``s over
4 partitions per topic. Each run feeds a fresh ``LakeSink`` (local temporary directory) in
batches of 10,000 (a consumer poll) and ends with ``flush()``; the time covers building the Arrow
columns, Parquet encoding (zstd) and the atomic file writes. The "columns only" row times the
``recsys.schema`` conversion alone, to show how the cost splits. Medians of ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Callable

from recsys.events import Reward
from recsys.schema import feedback_to_arrow, impressions_to_arrow, rewards_to_arrow
from recsys.topics import FEEDBACK, IMPRESSIONS, REWARDS
from simulators.synthetic_traffic import generate_traffic
from streaming.consumer import ConsumedEvent
from streaming.lake import LakeSink

PARTITIONS = 4
BATCH = 10_000


def as_consumed(events: list, topic: str) -> list[ConsumedEvent]:
    """Events as consumer polls return them: each batch holds one run of consecutive records per
    partition, offsets counting up per partition. (Spreading the events round-robin instead
    halves the column building's speed: the event objects of a partition then lie scattered in
    memory, which a real consumer, decoding a partition's records in a row, does not do.)"""
    run = BATCH // PARTITIONS
    next_offset = [0] * PARTITIONS
    out = []
    for i, event in enumerate(events):
        partition = (i // run) % PARTITIONS
        out.append(
            ConsumedEvent(event, topic, partition, next_offset[partition], event.event_time_ms)
        )
        next_offset[partition] += 1
    return out


def rewards_of(impressions: list, n: int) -> list[Reward]:
    """One joined reward per shown item of the first impressions, ``n`` in all."""
    out: list[Reward] = []
    for impression in impressions:
        for entry in impression.slate:
            out.append(
                Reward(
                    request_id=impression.request_id,
                    event_time_ms=impression.event_time_ms,
                    user_id=impression.user_id,
                    context=impression.context,
                    item_id=entry.item_id,
                    position=entry.position,
                    reward=0.0,
                    propensity=entry.propensity,
                    policy_name=impression.policy_name,
                    policy_version=impression.policy_version,
                )
            )
            if len(out) == n:
                return out
    return out


def run_sink(events: list[ConsumedEvent], max_records: int) -> tuple[float, int, int, int]:
    """Seconds to sink ``events`` and flush; rows, files and bytes written."""
    with tempfile.TemporaryDirectory(prefix="bench-lake-") as root:
        sink = LakeSink(root, max_records=max_records)
        started = time.perf_counter()
        for begin in range(0, len(events), BATCH):
            sink.write(events[begin : begin + BATCH])
        sink.flush()
        elapsed = time.perf_counter() - started
        stats = sink.counters()
    return elapsed, stats.rows_written, stats.files_written, stats.bytes_written


def run_columns(events: list, to_arrow: Callable) -> float:
    """Seconds to build the Arrow columns alone, one partition's run of a batch at a time."""
    run = BATCH // PARTITIONS
    started = time.perf_counter()
    for begin in range(0, len(events), run):
        to_arrow(events[begin : begin + run])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per topic (about)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-records", type=int, default=100_000, help="LakeSink max_records")
    parser.add_argument("--quick", action="store_true", help="50k events, one run")
    args = parser.parse_args()
    if args.quick:
        args.events, args.runs = min(args.events, 50_000), 1

    traffic = generate_traffic(2 * args.events, slate_size=5, dim=16, seed=3)
    impressions = traffic.impressions[: args.events]
    feedback = traffic.feedback
    rewards = rewards_of(impressions, args.events)
    workloads = {
        "impressions": (as_consumed(impressions, IMPRESSIONS), impressions, impressions_to_arrow),
        "feedback": (as_consumed(feedback, FEEDBACK), feedback, feedback_to_arrow),
        "rewards": (as_consumed(rewards, REWARDS), rewards, rewards_to_arrow),
    }
    # One reader of all three topics: a batch of each topic in turn.
    streams = [consumed for consumed, _, _ in workloads.values()]
    batches = [[s[b : b + BATCH] for b in range(0, len(s), BATCH)] for s in streams]
    mixed = [c for turn in itertools.zip_longest(*batches, fillvalue=[]) for b in turn for c in b]

    rows = []
    cases = [*workloads.items(), ("all three", (mixed, [], None))]
    for name, (consumed, events, to_arrow) in cases:
        sink_runs = [run_sink(consumed, args.max_records) for _ in range(args.runs)]
        seconds = statistics.median(r[0] for r in sink_runs)
        _, n_rows, n_files, n_bytes = sink_runs[0]
        columns = (
            statistics.median(run_columns(events, to_arrow) for _ in range(args.runs))
            if to_arrow
            else float("nan")
        )
        rows.append(
            (
                name,
                f"{len(consumed):,}",
                f"{n_rows:,}",
                f"{len(consumed) / seconds:,.0f}",
                f"{n_rows / seconds:,.0f}",
                f"{n_bytes / seconds / 1e6:,.1f}",
                f"{n_bytes / n_rows:,.1f}",
                f"{n_files}",
                "-" if to_arrow is None else f"{len(consumed) / columns:,.0f}",
            )
        )

    load = os.getloadavg()
    print(
        f"\nLake sink benchmark: one process, {os.cpu_count()} cores, load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; median of {args.runs} run(s); "
        f"batches of {BATCH:,}, {PARTITIONS} partitions per topic, max_records "
        f"{args.max_records:,}, zstd, local temporary directory"
    )
    header = (
        "table", "events", "rows", "events/s", "rows/s", "MB/s written", "B/row", "files",
        "columns only, events/s",
    )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths,
                                                                                 strict=True))))
    print("-" * (sum(widths) + 2 * (len(widths) - 1)))
    for row in rows:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths,
                                                                                      strict=True))))


if __name__ == "__main__":
    main()
