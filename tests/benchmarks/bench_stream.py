"""Streaming learning from Kafka into parameter shards on Ray: throughput, freshness, memory.

    .venv/bin/python tests/benchmarks/bench_stream.py [--client kafka-python|confluent|both] \
        [--events 200000] [--repeat 3] [--clicks 200] [--load 10000] [--quick]

Prints one table per run (with the core count and the load average before and after), for each
Kafka client (``kafka.client``) on the same data and event counts:

* sustained impression + feedback events/s from Kafka into shard statistics, with 2 shards and
  1 or 2 learner actors (each learner owns co-partitioned partitions of both topics), the median
  of ``--repeat`` runs, next to what one process reaches just reading (raw records through the
  project's client layer, ``recsys.kafka_clients``) and reading + decoding + validating
  (``EventConsumer``);
* what decoding alone costs on one core (``decode`` per record and ``decode_batch``, the readers'
  path, CPU time) and the learner's own work alone on decoded events: together they show which
  of reading, decoding and learning is the limit;
* freshness: a click produced → the first shard snapshot (max_staleness_ms=0) that includes it,
  p50 and p99 over ``--clicks`` clicks, with the learners polling, idle and under ``--load``
  events/s of other traffic produced by another process;
* memory of one shard's statistics at 1M items × d = 32 (2 shards; centred float64 and float32),
  and with its published snapshot copy.

Targets (issue 18): >= 200k events/s with 2 learners and 2 shards on 2 cores; p99 <= 500 ms.
Uses $RECSYS_KAFKA_BOOTSTRAP if set, else starts the embedded broker. The broker, Ray and the
learners share the machine's cores: on a busy machine the rates are noisy (see the load average).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import threading
import time
import uuid
from contextlib import ExitStack

import numpy as np
import ray
from text_table import print_table

from recsys.bandits import shard_of
from recsys.events import (
    Context,
    Feedback,
    Impression,
    SlateEntry,
    decode,
    decode_batch,
    encode,
)
from recsys.kafka_clients import CLIENTS, make_consumer
from recsys.producer import EventProducer
from simulators.synthetic_traffic import generate_traffic
from streaming.consumer import ConsumedEvent, EventConsumer
from streaming.learner import LearnerActor, LearnerCore
from streaming.shards import (
    ParameterShard,
    dense_statistics,
    shard_parts,
    start_shards,
)
from streaming.topics import ensure_topics

PARTITIONS = 2
DIM = 32
N_ITEMS = 1_000
WINDOW_MS = 60_000
LATENESS_MS = 5_000
BATCH = 10_000  # stream.batch_size


def topics(bootstrap: str, tag: str) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    names = {"imps": f"bench.{tag}.imps.{suffix}", "fbs": f"bench.{tag}.fbs.{suffix}"}
    ensure_topics(bootstrap, {name: PARTITIONS for name in names.values()})
    return names


def produce(bootstrap: str, names: dict[str, str], n_events: int) -> int:
    traffic = generate_traffic(n_events, n_items=N_ITEMS, dim=DIM, seed=1)
    with EventProducer(bootstrap, client="confluent") as producer:  # the faster producer
        for event in traffic.interleaved():
            producer.send(event, topic=names["imps" if isinstance(event, Impression) else "fbs"])
        producer.flush()
    return traffic.n_events


def expected(names: dict[str, str]) -> dict[str, type]:
    return {names["imps"]: Impression, names["fbs"]: Feedback}


def assignment(names: dict[str, str], learners: int, k: int) -> list[tuple[str, int]]:
    return [(names[role], p) for p in range(k, PARTITIONS, learners) for role in ("imps", "fbs")]


def template() -> tuple:
    return dense_statistics(np.zeros(0, dtype=np.int64), DIM).to_arrays()  # open catalogue


def bench_read(bootstrap: str, names: dict[str, str], n: int, client: str) -> tuple[float, float]:
    """Records/s one process reads raw (the client layer's columnar polls, no decoding), and
    reads + decodes + validates (EventConsumer)."""
    tps = [(names[r], p) for r in ("imps", "fbs") for p in range(PARTITIONS)]
    raw = make_consumer(bootstrap, tps, {"client": client})
    started, got = time.perf_counter(), 0
    while got < n:
        got += sum(len(batch) for batch in raw.poll(timeout_ms=500, max_records=10_000))
    raw_rate = n / (time.perf_counter() - started)
    raw.close()
    with EventConsumer(bootstrap, tps, expected_types=expected(names),
                       client=client) as consumer:
        started, got = time.perf_counter(), 0
        while got < n:
            got += len(consumer.poll(timeout_ms=500))
        decoded_rate = n / (time.perf_counter() - started)
    return raw_rate, decoded_rate


def bench_one_process(bootstrap: str, names: dict[str, str], n: int, client: str
                      ) -> tuple[float, float]:
    """A learner's whole job in one process (read, decode, learn, 2 in-process shards): events/s
    of wall time and of the process's CPU time (the per-core capacity, less sensitive to other
    load on the machine)."""
    tps = [(names[r], p) for r in ("imps", "fbs") for p in range(PARTITIONS)]
    shards = [ParameterShard(i, 2, *part) for i, part in
              enumerate(shard_parts(dense_statistics(np.arange(N_ITEMS), DIM), 2))]
    core = LearnerCore(template(), 2, window_ms=WINDOW_MS, allowed_lateness_ms=LATENESS_MS)
    with EventConsumer(bootstrap, tps, expected_types=expected(names),
                       client=client) as consumer:
        started, cpu, got = time.perf_counter(), time.process_time(), 0
        while got < n:
            batch = consumer.poll(timeout_ms=500, max_records=BATCH)
            got += len(batch)
            for shard, deltas in zip(shards, core.process(batch), strict=True):
                shard.apply(deltas)
        return n / (time.perf_counter() - started), n / (time.process_time() - cpu)


def bench_decode(n: int) -> tuple[float, float]:
    """Events/s (CPU time, one core) of decoding + validating alone: ``decode`` record by
    record, and ``decode_batch`` in batches of 10k (what the readers use)."""
    values = [encode(e) for e in generate_traffic(n, n_items=N_ITEMS, dim=DIM, seed=1)
              .interleaved()]
    kept = []  # both keep the events, as a reader does (freeing each at once flatters)
    started = time.process_time()
    for start in range(0, len(values), BATCH):
        kept.append([decode(value) for value in values[start:start + BATCH]])
    one = len(values) / (time.process_time() - started)
    kept = []
    started = time.process_time()
    for start in range(0, len(values), BATCH):
        kept.append(decode_batch(values[start:start + BATCH]))
    return one, len(values) / (time.process_time() - started)


def bench_learn(bootstrap: str, names: dict[str, str], n: int, learners: int,
                client: str, per_batch: bool = False) -> float:
    """Events/s from Kafka into 2 shard actors with ``learners`` learner actors, flush included.

    Each learner drains its partitions in 1 s slices, or with ``per_batch`` polls one batch per
    driver round trip, all learners in lockstep (what ``StreamPipeline.step`` does)."""
    shards = start_shards(dense_statistics(np.arange(N_ITEMS), DIM), 2)
    actors = [LearnerActor.remote(bootstrap, assignment(names, learners, k), shards, template(),
                                  window_ms=WINDOW_MS, allowed_lateness_ms=LATENESS_MS,
                                  expected_types=expected(names),
                                  client_options={"client": client})
              for k in range(learners)]
    try:
        targets = ray.get([a.end_offsets.remote() for a in actors])
        started = time.perf_counter()
        pending = list(range(learners))
        read = 0
        while pending and not per_batch:
            steps = ray.get([actors[i].drain.remote(targets[i], 1.0) for i in pending])
            pending = [i for i, s in zip(pending, steps, strict=True) if not s.done]
        while per_batch and read < n:
            read += sum(ray.get([a.step.remote(BATCH) for a in actors]))
        ray.get([a.flush.remote() for a in actors])
        elapsed = time.perf_counter() - started
        learned = sum(ray.get(s.snapshot.remote(0))[0]["count"].sum() for s in shards)
        assert learned > 0, "nothing reached the shards"
        events = sum(s["events"] for s in ray.get([a.counters.remote() for a in actors]))
        assert events == n, f"learned from {events} events, produced {n}"
        return n / elapsed
    finally:
        for actor in [*actors, *shards]:
            ray.kill(actor)


def bench_learn_in_process(n: int) -> float:
    """Events/s of the learner's own work alone (decoded events → deltas → 2 in-process shards):
    what a learner would reach if reading and decoding records were free."""
    traffic = generate_traffic(n, n_items=N_ITEMS, dim=DIM, seed=1)
    events = [ConsumedEvent(e, "imps" if isinstance(e, Impression) else "fbs",
                            hash(e.request_id) % PARTITIONS, k, 0)
              for k, e in enumerate(traffic.interleaved())]
    shards = [ParameterShard(i, 2, *part) for i, part in
              enumerate(shard_parts(dense_statistics(np.arange(N_ITEMS), DIM), 2))]
    core = LearnerCore(template(), 2, window_ms=WINDOW_MS, allowed_lateness_ms=LATENESS_MS)
    started = time.perf_counter()
    for start in range(0, len(events), 10_000):
        for shard, deltas in zip(shards, core.process(events[start:start + 10_000]),
                                 strict=True):
            shard.apply(deltas)
    return len(events) / (time.perf_counter() - started)


def background_traffic(bootstrap: str, names: dict[str, str], rate: float, stop,
                       achieved) -> None:
    """Another process: synthetic impressions + feedback at about ``rate`` events/s (the rate
    reached goes to ``achieved``)."""
    traffic = generate_traffic(200_000, n_items=N_ITEMS, dim=DIM, seed=2)
    events = traffic.interleaved()
    with EventProducer(bootstrap) as producer:
        started, sent = time.perf_counter(), 0
        while not stop.is_set():
            for event in events[sent % len(events):][:500]:
                producer.send(event, topic=names["imps" if isinstance(event, Impression)
                                                else "fbs"])
            sent += 500
            achieved.value = sent / (time.perf_counter() - started)
            ahead = sent / rate - (time.perf_counter() - started)
            if ahead > 0:
                time.sleep(ahead)


def bench_freshness(bootstrap: str, clicks: int, client: str,
                    load: float = 0.0) -> tuple[list[float], float]:
    """Seconds from producing a click to the first shard snapshot that holds its reward, with
    ``load`` events/s of other traffic produced by another process meanwhile; and the other
    traffic's rate reached."""
    names = topics(bootstrap, "fresh")
    probes = np.arange(clicks) + 1_000_000  # items nothing else touches
    catalogue = np.concatenate([np.arange(N_ITEMS), probes])
    shards = start_shards(dense_statistics(catalogue, DIM), 2)
    owner = shard_of(probes, 2).tolist()
    actors = [LearnerActor.remote(bootstrap, assignment(names, 2, k), shards, template(),
                                  window_ms=WINDOW_MS, allowed_lateness_ms=LATENESS_MS,
                                  expected_types=expected(names),
                                  client_options={"client": client}) for k in range(2)]
    latencies = []
    stop = threading.Event()

    def keep_learning(actor) -> None:  # what a coordinator does: short slices, pausable
        while not stop.is_set():
            ray.get(actor.run_for.remote(0.5))

    drivers = [threading.Thread(target=keep_learning, args=(a,), daemon=True) for a in actors]
    spawn = multiprocessing.get_context("spawn")  # no fork of a process that runs Ray
    stop_traffic, achieved = spawn.Event(), spawn.Value("d", 0.0)
    traffic = spawn.Process(target=background_traffic,
                            args=(bootstrap, names, load, stop_traffic, achieved), daemon=True)
    try:
        ray.get([a.positions.remote() for a in actors])
        for driver in drivers:
            driver.start()
        if load > 0:
            traffic.start()
            time.sleep(3.0)  # let the learners reach a steady state under the load
        now = int(time.time() * 1000)
        with EventProducer(bootstrap, linger_ms=0) as producer:
            for k, item in enumerate(probes.tolist()):
                rid = f"fresh-{k}"
                producer.send(Impression(
                    request_id=rid, event_time_ms=now + k, user_id="u",
                    context=Context(dense=(0.1,) * DIM), policy_name="bench",
                    policy_version=1,
                    slate=(SlateEntry(item_id=item, position=0, score=0.0, propensity=1.0),)),
                    topic=names["imps"])
                producer.flush()
                sent = time.perf_counter()
                producer.send(Feedback(request_id=rid, event_time_ms=now + k + 1, user_id="u",
                                       item_id=item, position=0, event_type="click"),
                              topic=names["fbs"])
                producer.flush()
                shard = shards[owner[k]]
                while True:
                    arrays, _ = ray.get(shard.snapshot.remote(0))
                    row = np.searchsorted(arrays["items"], item)
                    if arrays["sr"][row] > 0:
                        latencies.append(time.perf_counter() - sent)
                        break
                    if time.perf_counter() - sent > 10:
                        raise TimeoutError(f"click {k} not in a snapshot after 10 s")
                    time.sleep(0.002)
    finally:
        stop_traffic.set()
        if traffic.is_alive():
            traffic.join(timeout=30)
        stop.set()
        for driver in drivers:
            if driver.is_alive():
                driver.join()
        for actor in [*actors, *shards]:
            ray.kill(actor)
    return latencies, achieved.value


def shard_memory(n_items: int = 1_000_000, n_shards: int = 2) -> list[tuple[str, float]]:
    """MiB of one shard's statistics (and with its published copy) at ``n_items`` × d=32."""
    rows = []
    share = np.arange(n_items // n_shards)
    for dtype in (np.float64, np.float32):
        stats = dense_statistics(share, DIM, dtype=dtype)
        mib = sum(a.nbytes for a in stats.to_arrays()[0].values()) / 2**20
        name = np.dtype(dtype).name
        rows.append((f"shard memory, centred {name} (1M items/{n_shards} shards)", mib))
        rows.append((f"  + published snapshot copy ({name})", 2 * mib))
    return rows


def median_of(k: int, run) -> float:
    return statistics.median(run() for _ in range(k))


def client_rows(bootstrap: str, names: dict[str, str], n: int, client: str,
                args: argparse.Namespace) -> list[tuple[str, str]]:
    """The rows measured with one Kafka client."""
    reads = [bench_read(bootstrap, names, n, client) for _ in range(args.repeat)]
    raw_rate = statistics.median(r[0] for r in reads)
    decoded_rate = statistics.median(r[1] for r in reads)
    whole = [bench_one_process(bootstrap, names, n, client) for _ in range(args.repeat)]
    learn = {k: median_of(args.repeat, lambda k=k: bench_learn(bootstrap, names, n, k, client))
             for k in (1, 2)}
    lockstep = median_of(args.repeat, lambda: bench_learn(bootstrap, names, n, 2, client, True))
    idle = np.array(bench_freshness(bootstrap, args.clicks, client)[0]) * 1000
    loaded, load_reached = bench_freshness(bootstrap, args.clicks, client, args.load)
    loaded = np.array(loaded) * 1000
    return [
        ("read raw records, 1 process", f"{raw_rate:,.0f} records/s"),
        ("read + decode + validate, 1 process", f"{decoded_rate:,.0f} events/s"),
        ("read + decode + learn, 1 process, 2 in-process shards (wall / CPU time)",
         f"{statistics.median(w[0] for w in whole):,.0f} / "
         f"{statistics.median(w[1] for w in whole):,.0f} events/s"),
        ("learn into 2 shards, 1 learner", f"{learn[1]:,.0f} events/s"),
        ("learn into 2 shards, 2 learners", f"{learn[2]:,.0f} events/s "
                                            f"({learn[2] / learn[1]:.2f}x of 1 learner)"),
        ("  one batch per driver round trip, in lockstep (pipeline.step)",
         f"{lockstep:,.0f} events/s"),
        (f"freshness click → snapshot p50 / p99, idle ({idle.size} clicks)",
         f"{np.percentile(idle, 50):.1f} / {np.percentile(idle, 99):.1f} ms"),
        (f"  under {load_reached:,.0f} events/s of other traffic (asked {args.load:,.0f})",
         f"{np.percentile(loaded, 50):.1f} / {np.percentile(loaded, 99):.1f} ms"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", choices=[*CLIENTS, "both"], default="both",
                        help="the Kafka client of the readers (kafka.client)")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per throughput figure (the median is shown)")
    parser.add_argument("--clicks", type=int, default=200)
    parser.add_argument("--load", type=float, default=10_000,
                        help="events/s of other traffic while freshness is measured")
    parser.add_argument("--quick", action="store_true", help="50k events, 50 clicks, 1 run")
    args = parser.parse_args()
    if args.quick:
        args.events, args.clicks, args.repeat = 50_000, 50, 1
    clients = list(CLIENTS) if args.client == "both" else [args.client]
    load_before = os.getloadavg()
    measured: dict[str, list[tuple[str, str]]] = {}
    with ExitStack() as stack:
        bootstrap = os.environ.get("RECSYS_KAFKA_BOOTSTRAP")
        if not bootstrap:
            from streaming.broker import EmbeddedKafka

            broker = stack.enter_context(EmbeddedKafka())
            bootstrap = broker.bootstrap
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
        stack.callback(ray.shutdown)
        names = topics(bootstrap, "load")
        started = time.perf_counter()
        n = produce(bootstrap, names, args.events)
        produce_rate = n / (time.perf_counter() - started)
        for client in clients:
            measured[client] = client_rows(bootstrap, names, n, client, args)
    decode_one, decode_bulk = bench_decode(n)
    maths = bench_learn_in_process(n)
    load = os.getloadavg()
    rows: list[tuple[str, str]] = [
        ("cores / load average (1, 5, 15 min) before",
         f"{os.cpu_count()} / {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}"),
        ("cores / load average (1, 5, 15 min) after",
         f"{os.cpu_count()} / {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"),
        ("events (impressions + click feedback)", f"{n:,} on {PARTITIONS} partitions/topic"),
        ("produce, 1 process (confluent)", f"{produce_rate:,.0f} events/s"),
        *[(f"[{client}] {name}", value) for client in clients for name, value in measured[client]],
        ("decode + validate alone, record by record, 1 core (CPU time)",
         f"{decode_one:,.0f} events/s"),
        ("decode + validate alone, decode_batch (the readers'), 1 core", f"{decode_bulk:,.0f} "
                                                                         "events/s"),
        ("learner's own work alone (decoded events → shards), 1 core", f"{maths:,.0f} events/s"),
        *[(name, f"{mib:,.0f} MiB") for name, mib in shard_memory()],
    ]
    print(f"\nbench_stream (issue 18: >= 200k events/s with 2 learners + 2 shards, p99 <= 500 ms;"
          f" median of {args.repeat})")
    print_table(rows, ("measure", "value"))


if __name__ == "__main__":
    main()
