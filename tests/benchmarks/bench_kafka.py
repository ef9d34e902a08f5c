"""Kafka throughput through the embedded broker with kafka-python: one producer, one consumer.

    .venv/bin/python tests/benchmarks/bench_kafka.py [--events 200000] [--starts 3] [--demo]

Prints one table: broker start-up time, events encoded+produced per second, records consumed per
second with and without decoding+validation (the raw row is the in-process peer that shows what the
codec costs), and optionally the wall time of `recsys demo` run as a user would.
Targets (issue 2): >= 30k events/s consumed and decoded; broker start-up <= 15 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

from recsys.producer import EventProducer
from simulators.synthetic_traffic import generate_traffic
from streaming.broker import EmbeddedKafka
from streaming.consumer import EventConsumer
from streaming.topics import ensure_topics

PARTITIONS = 4


def bench_startup(starts: int) -> list[float]:
    times = []
    for _ in range(starts):
        with EmbeddedKafka() as broker:
            times.append(broker.startup_seconds or float("nan"))
    return times


def bench_produce(bootstrap: str, topic: str, events: list) -> float:
    started = time.perf_counter()
    with EventProducer(bootstrap) as producer:
        for event in events:
            producer.send(event, topic=topic)
    return len(events) / (time.perf_counter() - started)


def bench_consume_decoded(bootstrap: str, topic: str, n: int) -> float:
    with EventConsumer(
        bootstrap, [(topic, p) for p in range(PARTITIONS)], expected_types={}
    ) as consumer:
        consumer.seek_to_beginning()
        started = time.perf_counter()
        got = 0
        while got < n:
            got += len(consumer.poll(timeout_ms=500))
        elapsed = time.perf_counter() - started
        assert consumer.dead_lettered == 0
    return n / elapsed


def bench_consume_raw(bootstrap: str, topic: str, n: int) -> float:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
    consumer.seek_to_beginning()
    started = time.perf_counter()
    got = 0
    while got < n:
        got += sum(len(r) for r in consumer.poll(timeout_ms=500, max_records=10_000).values())
    elapsed = time.perf_counter() - started
    consumer.close()
    return n / elapsed


def bench_demo() -> float:
    recsys = Path(sys.executable).with_name("recsys")
    started = time.perf_counter()
    result = subprocess.run([str(recsys), "demo", "--json"], capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"recsys demo failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    json.loads(result.stdout[result.stdout.index("{") :])
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--starts", type=int, default=3, help="broker start-ups to time")
    parser.add_argument("--repeats", type=int, default=3, help="consume passes to time")
    parser.add_argument("--demo", action="store_true", help="also time `recsys demo`")
    parser.add_argument("--quick", action="store_true", help="50k events, one start, one pass")
    args = parser.parse_args()
    if args.quick:
        args.events, args.starts, args.repeats = min(args.events, 50_000), 1, 1

    rows: list[tuple[str, str, str]] = []
    startups = bench_startup(args.starts)
    rows.append(
        (
            "broker start-up (start -> metadata served)",
            f"median {statistics.median(startups):.1f} s (max {max(startups):.1f} s, "
            f"n={len(startups)})",
            "<= 15 s",
        )
    )

    traffic = generate_traffic(args.events, seed=7)
    events = traffic.interleaved()
    with EmbeddedKafka() as broker:
        topic = "bench.events"
        ensure_topics(broker.bootstrap, {topic: PARTITIONS})
        produce = bench_produce(broker.bootstrap, topic, events)
        rows.append(
            ("produce: encode + send (lz4, acks=all), 1 producer", f"{produce:,.0f} events/s", "-")
        )
        decoded = [
            bench_consume_decoded(broker.bootstrap, topic, len(events)) for _ in range(args.repeats)
        ]
        raw = [bench_consume_raw(broker.bootstrap, topic, len(events)) for _ in range(args.repeats)]
        rows.append(
            (
                "consume + decode + validate, 1 consumer",
                f"{statistics.median(decoded):,.0f} events/s",
                ">= 30,000 events/s",
            )
        )
        rows.append(
            (
                "peer: raw kafka-python consume, no decoding",
                f"{statistics.median(raw):,.0f} records/s",
                "-",
            )
        )
    if args.demo:
        rows.append(
            ("`recsys demo` wall time (100k events, after install)", f"{bench_demo():.1f} s", "-")
        )

    print(
        f"\nKafka benchmark: {len(events):,} events ({len(traffic.impressions):,} impressions, "
        f"{len(traffic.feedback):,} feedback), {PARTITIONS} partitions, "
        f"mean record {_mean_size(events):.0f} B"
    )
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'result':<44}  target")
    print("-" * (width + 60))
    for name, result, target in rows:
        print(f"{name:<{width}}  {result:<44}  {target}")


def _mean_size(events: list) -> float:
    from recsys.events import encode

    sample = events[:: max(1, len(events) // 2000)]
    return sum(len(encode(e)) for e in sample) / len(sample)


if __name__ == "__main__":
    main()
