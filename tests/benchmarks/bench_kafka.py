"""Kafka throughput through the embedded broker, one process, for each client library
(``kafka.client``: kafka-python and confluent-kafka) on the same data.

    .venv/bin/python tests/benchmarks/bench_kafka.py [--events 400000] [--partitions 2]
        [--repeats 3] [--clients kafka-python,confluent] [--starts 1] [--encode] [--demo]
        [--quick]

Prints one table. Per client and fetch setting: raw records read per second through
``recsys.kafka_clients`` (``make_consumer``: what the readers get before decoding) and events
read, decoded and validated per second through ``streaming.consumer.EventConsumer``. Per client:
records produced per second (pre-encoded bytes, ``EventProducer.send_raw`` then flush) and, with
``--encode``, events encoded and produced per second (``EventProducer.send``). Each figure is
the median of ``--repeats`` runs (min-max beside it) with the process's CPU time per record;
producing writes to a fresh topic each run. Also broker start-up time and, with ``--demo``, the
wall time of `recsys demo`.
Targets (issue 2): >= 30k events/s consumed and decoded; broker start-up <= 15 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from kafka.admin import KafkaAdminClient

from recsys.events import encode
from recsys.kafka_clients import CLIENTS, FetchSettings, make_consumer
from recsys.producer import EventProducer
from simulators.synthetic_traffic import generate_traffic
from streaming.broker import EmbeddedKafka
from streaming.consumer import EventConsumer
from streaming.topics import ensure_topics
from tests.benchmarks.text_table import print_table


@dataclass(frozen=True)
class Fetch:
    """One fetch configuration: what the consumer asks the broker for, and records per poll."""

    name: str
    settings: FetchSettings
    max_records: int

    def describe(self) -> str:
        s = self.settings
        min_bytes = (f"{s.fetch_min_bytes >> 20} MiB" if s.fetch_min_bytes >= 1 << 20
                     else f"{s.fetch_min_bytes} B")
        return (f"{self.name} ({self.max_records // 1000}k/poll, "
                f"{s.max_partition_fetch_bytes >> 20}/{s.fetch_max_bytes >> 20} MiB, min "
                f"{min_bytes}, wait {s.fetch_max_wait_ms} ms, "
                f"CRC {'on' if s.check_crcs else 'off'})")


# The project's settings (EventConsumer's defaults; readers poll stream.batch_size = 10k records).
PROJECT = Fetch("project", FetchSettings(), 10_000)
# Larger fetches: the broker fills a fetch (1 MiB at least, 100 ms at most) and one poll takes
# more records, so fewer round trips and fewer Python calls per record.
LARGE = Fetch("large", FetchSettings(max_partition_fetch_bytes=32 << 20,
                                     fetch_max_bytes=64 << 20, fetch_min_bytes=1 << 20,
                                     fetch_max_wait_ms=100), 50_000)
FETCHES = [PROJECT, LARGE,
           replace(LARGE, name="large", settings=replace(LARGE.settings, check_crcs=False))]


def read_raw(bootstrap: str, topic: str, partitions: int, n: int, client: str,
             fetch: Fetch) -> Rate:
    consumer = make_consumer(bootstrap, [(topic, p) for p in range(partitions)],
                             {"client": client}, fetch=fetch.settings)
    try:
        clock = Clock()
        got = 0
        while got < n:
            got += sum(len(b) for b in consumer.poll(timeout_ms=500,
                                                     max_records=fetch.max_records))
        return clock.rate(n)
    finally:
        consumer.close()


def read_decoded(bootstrap: str, topic: str, partitions: int, n: int, client: str,
                 fetch: Fetch) -> Rate:
    with EventConsumer(bootstrap, [(topic, p) for p in range(partitions)], expected_types={},
                       fetch=fetch.settings, client=client) as consumer:
        clock = Clock()
        got = 0
        while got < n:
            got += len(consumer.poll(timeout_ms=500, max_records=fetch.max_records))
        result = clock.rate(n)
        assert consumer.dead_lettered == 0
    return result


def produce(bootstrap: str, topic: str, events: list, values: list[bytes] | None,
            client: str) -> Rate:
    """Records (or events, when ``values`` is None: encode too) sent and acknowledged per s."""
    with EventProducer(bootstrap, client=client) as producer:
        producer.warm([topic])
        clock = Clock()
        if values is None:
            for event in events:
                producer.send(event, topic=topic)
        else:
            for event, value in zip(events, values, strict=True):
                producer.send_raw(topic, event.key, value)
        producer.flush()
        result = clock.rate(len(events))
        assert producer.acked == len(events), (producer.acked, len(events))
    return result


def bench_startup(starts: int) -> list[float]:
    times = []
    for _ in range(starts):
        with EmbeddedKafka() as broker:
            times.append(broker.startup_seconds or float("nan"))
    return times


def bench_demo() -> float:
    recsys = Path(sys.executable).with_name("recsys")
    started = time.perf_counter()
    result = subprocess.run([str(recsys), "demo", "--json"], capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"recsys demo failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    json.loads(result.stdout[result.stdout.index("{") :])
    return elapsed


@dataclass(frozen=True)
class Rate:
    """Items per wall-clock second, and this process's CPU time per item (all its threads,
    librdkafka's included): the CPU figure moves less than the rate on a loaded machine."""

    per_s: float
    cpu_us: float


class Clock:
    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def rate(self, n: int) -> Rate:
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        return Rate(n / wall, cpu / n * 1e6)


def summary(runs: list[Rate], unit: str) -> str:
    rates = [r.per_s for r in runs]
    cpu = statistics.median(r.cpu_us for r in runs)
    spread = "" if len(runs) == 1 else f" ({min(rates):,.0f}-{max(rates):,.0f})"
    return f"{statistics.median(rates):,.0f} {unit}{spread}; CPU {cpu:.1f} us each"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--starts", type=int, default=1, help="broker start-ups to time")
    parser.add_argument("--demo", action="store_true", help="also time `recsys demo`")
    parser.add_argument("--encode", action="store_true",
                        help="also time encoding + producing events (EventProducer.send)")
    parser.add_argument("--quick", action="store_true", help="50k events, no start-ups, 1 run")
    args = parser.parse_args()
    if args.quick:
        args.events, args.starts, args.repeats = min(args.events, 50_000), 0, 1
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = sorted(set(clients) - set(CLIENTS))
    if unknown:
        parser.error(f"--clients: expected names among {', '.join(CLIENTS)}, got {unknown}")

    traffic = generate_traffic(args.events, seed=7)
    events = traffic.interleaved()[: args.events]
    values = [encode(e) for e in events]
    mean_size = sum(map(len, values)) / len(values)
    rows: list[list[str]] = []
    startups = bench_startup(args.starts)
    with EmbeddedKafka(startup_timeout_s=300) as broker:  # a loaded machine starts it slowly
        bootstrap = broker.bootstrap
        topic = f"bench.events.{uuid.uuid4().hex[:6]}"
        ensure_topics(bootstrap, {topic: args.partitions})
        produce(bootstrap, topic, events, values, clients[0])  # the data every read row reads
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        for client in clients:
            produce_rows = [("produce records (pre-encoded), acks=all, lz4", values)]
            if args.encode:
                produce_rows.append(("encode + produce events", None))
            for label, vals in produce_rows:
                runs = []
                for _ in range(args.repeats):
                    fresh = f"bench.produce.{uuid.uuid4().hex[:6]}"
                    ensure_topics(bootstrap, {fresh: args.partitions})
                    runs.append(produce(bootstrap, fresh, events, vals, client))
                    admin.delete_topics([fresh])
                rows.append([client, label, "linger 5 ms, batch 256 KiB",
                             summary(runs, "records/s" if vals else "events/s")])
            for fetch in FETCHES:
                raw = [read_raw(bootstrap, topic, args.partitions, len(events), client, fetch)
                       for _ in range(args.repeats)]
                rows.append([client, "read raw records", fetch.describe(),
                             summary(raw, "records/s")])
                decoded = [read_decoded(bootstrap, topic, args.partitions, len(events), client,
                                        fetch) for _ in range(args.repeats)]
                rows.append([client, "read + decode + validate (EventConsumer)",
                             fetch.describe(), summary(decoded, "events/s")])
        admin.close()
    if startups:
        rows.append(["-", "broker start-up (start -> metadata served), target <= 15 s", "-",
                     f"median {statistics.median(startups):.1f} s (n={len(startups)})"])
    if args.demo:
        rows.append(["-", "`recsys demo` wall time (100k events)", "-", f"{bench_demo():.1f} s"])

    load = os.getloadavg()
    print(f"\nKafka benchmark: {len(events):,} events (impressions and feedback, mean record "
          f"{mean_size:.0f} B), {args.partitions} partitions, one process, embedded broker; "
          f"{os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; "
          f"median of {args.repeats} (min-max)")
    print("Identical settings for both clients (recsys.kafka_clients maps each to the "
          "library's name for it).")
    print_table(rows, ["client", "measure", "settings", "result"])


if __name__ == "__main__":
    main()
