"""``recsys demo``: the whole stack on embedded defaults, end to end.

Starts (or connects to) Kafka, Ray and the mlflow store; pushes synthetic impression + feedback
events through Kafka over several partitions; reads them back on ``streaming.actors``
PartitionReader actors that own explicitly assigned, co-partitioned partitions (the shape the
streaming learners take); sends a few malformed records to show they land in the dead-letter topic;
judges the run by one rule (``DemoSummary.mismatches``: nothing lost, bad input dead-lettered); logs
counts, throughput and the verdict to mlflow; prints a summary and shuts down whatever it started.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field

from tqdm import tqdm

from recsys.config import Settings
from recsys.tracking import configure_mlflow, mlflow_ui_command
from streaming.services import kafka_cluster, ray_runtime
from streaming.topics import DEAD_LETTER, FEEDBACK, IMPRESSIONS, ensure_topics, standard_topics


@dataclass
class DemoSummary:
    """What one demo run produced, read back and dead-lettered; ``mismatches`` judges it."""

    kafka: str
    kafka_origin: str
    ray: str
    partitions: int
    events_produced: int
    impressions: int
    feedback: int
    bad_records_sent: int
    events_consumed: int
    events_decoded: int
    dead_lettered: int
    dead_letters_on_topic: int
    produce_events_per_s: float
    consume_events_per_s: float
    broker_startup_s: float | None
    wall_s: float
    mlflow_run_id: str = ""
    decoded_by_type: dict[str, int] = field(default_factory=dict)
    per_reader: list[dict] = field(default_factory=list)

    def mismatches(self) -> list[str]:
        """The demo's one success rule: nothing lost, bad input dead-lettered. Every way the run
        broke it, in words; empty when it succeeded."""
        problems = []
        if self.events_decoded != self.events_produced:
            problems.append(
                f"decoded {self.events_decoded} events, produced {self.events_produced}"
            )
        for name, produced in (("Impression", self.impressions), ("Feedback", self.feedback)):
            if self.decoded_by_type.get(name, 0) != produced:
                problems.append(
                    f"decoded {self.decoded_by_type.get(name, 0)} {name} events, "
                    f"produced {produced}"
                )
        if self.events_consumed != self.events_produced + self.bad_records_sent:
            problems.append(
                f"read {self.events_consumed} records, sent {self.events_produced} events and "
                f"{self.bad_records_sent} malformed records"
            )
        if self.dead_lettered != self.bad_records_sent:
            problems.append(
                f"dead-lettered {self.dead_lettered} records, sent {self.bad_records_sent} "
                "malformed ones"
            )
        if self.dead_letters_on_topic != self.bad_records_sent:
            problems.append(
                f"{self.dead_letters_on_topic} dead letters reached {DEAD_LETTER}, "
                f"sent {self.bad_records_sent} malformed records"
            )
        return problems

    @property
    def succeeded(self) -> bool:
        return not self.mismatches()

    def to_dict(self) -> dict:
        """The summary as JSON-ready data, with the verdict."""
        return {**asdict(self), "succeeded": self.succeeded, "mismatches": self.mismatches()}


def _bad_records(n: int) -> list[tuple[str, bytes]]:
    """What a broken or hostile producer might send: garbage, wrong types, bad ranges."""
    from recsys.events import Context, Feedback, Impression, SlateEntry, encode

    out_of_range = Impression(
        request_id="bad-propensity",
        event_time_ms=1,
        user_id="u",
        context=Context(),
        policy_name="demo",
        policy_version=1,
        slate=(SlateEntry(item_id=1, position=0, score=0.0, propensity=1.5),),
    )
    wrong_topic = Feedback(
        request_id="misrouted",
        event_time_ms=1,
        user_id="u",
        item_id=1,
        position=0,
        event_type="click",
    )
    samples = [
        (IMPRESSIONS, b"\x00\xffnot msgpack at all"),
        (IMPRESSIONS, encode(out_of_range)),
        (IMPRESSIONS, encode(wrong_topic)),
        (FEEDBACK, b'{"json": "is not our codec"}'),
        (FEEDBACK, b""),
    ]
    return [samples[i % len(samples)] for i in range(n)]


def run_demo(
    settings: Settings,
    n_events: int = 100_000,
    bad_records: int = 5,
    readers: int = 2,
    seed: int = 0,
    quiet: bool = False,
) -> DemoSummary:
    """Run the demo and return its summary (also logged to mlflow)."""
    import mlflow
    import ray

    from recsys.producer import EventProducer
    from simulators.synthetic_traffic import generate_traffic
    from streaming.actors import PartitionReaderActor

    def say(message: str) -> None:
        if not quiet:
            print(message, flush=True)

    wall_started = time.perf_counter()
    say("• starting services")
    with kafka_cluster(settings) as kafka, ray_runtime(settings) as ray_origin:
        say(
            f"  kafka  {kafka.bootstrap} ({kafka.origin}"
            + (f", up in {kafka.startup_seconds:.1f}s)" if kafka.startup_seconds else ")")
        )
        say(f"  ray    {ray_origin}")
        experiment_id = configure_mlflow(settings)
        say(f"  mlflow {settings.mlflow_tracking_uri}")

        counts = ensure_topics(  # also refuses impressions and feedback of different widths
            kafka.bootstrap,
            standard_topics(settings.kafka.partitions),
            settings.kafka.replication_factor,
            **kafka.client_options,
        )
        partitions = counts[IMPRESSIONS]
        n_readers = min(readers, partitions)
        if n_readers < readers:
            say(f"  {readers} readers asked for, {partitions} partitions: using {n_readers}")
        actors = [
            PartitionReaderActor.remote(
                kafka.bootstrap,
                co_partitioned_assignment(partitions, n_readers, i),
                client_options=kafka.client_options,
            )
            for i in range(n_readers)
        ]
        try:
            # Read exactly what this run produces, even on a broker that already holds events.
            starts = ray.get([actor.end_offsets.remote() for actor in actors])
            ray.get([a.seek.remote(start) for a, start in zip(actors, starts, strict=True)])
            dlq_start = _dead_letter_end(kafka.bootstrap, kafka.client_options)

            say(f"• generating {n_events:,} synthetic impression + feedback events")
            traffic = generate_traffic(n_events, seed=seed)
            events = traffic.interleaved()

            say(f"• producing to {partitions} partitions per topic")
            produce_started = time.perf_counter()
            with EventProducer(
                kafka.bootstrap, compression=settings.kafka.compression, **kafka.client_options
            ) as producer:
                for start in tqdm(
                    range(0, len(events), 5_000),
                    desc="produce",
                    unit_scale=5_000,
                    unit="ev",
                    disable=quiet,
                ):
                    producer.send_many(events[start : start + 5_000])
                for topic, value in _bad_records(bad_records):
                    producer.send_raw(topic, b"bad", value)
            produce_s = time.perf_counter() - produce_started

            say(f"• reading back on {n_readers} Ray actors with explicitly assigned partitions")
            targets = ray.get([actor.end_offsets.remote() for actor in actors])
            consume_started = time.perf_counter()
            _drain_with_progress(actors, targets, len(events) + bad_records, quiet)
            consume_s = time.perf_counter() - consume_started
            ray.get([actor.pause.remote() for actor in actors])  # dead letters acknowledged
            stats = ray.get([actor.stats.remote() for actor in actors])
        finally:
            ray.get([actor.close.remote() for actor in actors])
            for actor in actors:
                ray.kill(actor)

        decoded_by_type: dict[str, int] = {}
        for reader_stats in stats:
            for name, n in reader_stats.by_type.items():
                decoded_by_type[name] = decoded_by_type.get(name, 0) + n
        consumed = sum(r.consumed for r in stats)
        summary = DemoSummary(
            kafka=kafka.bootstrap,
            kafka_origin=kafka.origin,
            ray=ray_origin,
            partitions=partitions,
            events_produced=len(events),
            impressions=len(traffic.impressions),
            feedback=len(traffic.feedback),
            bad_records_sent=bad_records,
            events_consumed=consumed,
            events_decoded=sum(r.decoded for r in stats),
            dead_lettered=sum(r.dead_lettered for r in stats),
            dead_letters_on_topic=_dead_letter_end(kafka.bootstrap, kafka.client_options)
            - dlq_start,
            produce_events_per_s=len(events) / produce_s,
            consume_events_per_s=consumed / consume_s,
            broker_startup_s=kafka.startup_seconds,
            wall_s=0.0,
            decoded_by_type=decoded_by_type,
            per_reader=[asdict(r) for r in stats],
        )

        with mlflow.start_run(experiment_id=experiment_id, run_name="demo-kafka-roundtrip") as run:
            mlflow.set_tags({"recsys.kind": "demo", "kafka.origin": kafka.origin})
            mlflow.log_params(
                {
                    "events": n_events,
                    "partitions": partitions,
                    "readers": n_readers,
                    "bad_records": bad_records,
                    "seed": seed,
                    "compression": settings.kafka.compression,
                }
            )
            summary.wall_s = time.perf_counter() - wall_started
            mlflow.log_metrics(
                {
                    "succeeded": float(summary.succeeded),
                    "events_produced": summary.events_produced,
                    "events_consumed": summary.events_consumed,
                    "events_decoded": summary.events_decoded,
                    "dead_lettered": summary.dead_lettered,
                    "produce_events_per_s": summary.produce_events_per_s,
                    "consume_events_per_s": summary.consume_events_per_s,
                    "wall_s": summary.wall_s,
                    **(
                        {"broker_startup_s": summary.broker_startup_s}
                        if summary.broker_startup_s
                        else {}
                    ),
                }
            )
            summary.mlflow_run_id = run.info.run_id
            mlflow.log_dict(summary.to_dict(), "demo_summary.json")
        say("• shutting down")
    summary.wall_s = time.perf_counter() - wall_started
    return summary


def co_partitioned_assignment(partitions: int, readers: int, reader: int) -> list[tuple[str, int]]:
    """Reader ``reader``'s share: partitions p with p % readers == reader, of impressions and
    feedback together (the same request ids sit on the same partition number of both topics)."""
    return [
        (topic, p) for p in range(reader, partitions, readers) for topic in (IMPRESSIONS, FEEDBACK)
    ]


def _drain_with_progress(actors: list, targets: list[dict], total: int, quiet: bool) -> None:
    """Drain every reader to its target offsets, in slices, updating one progress bar."""
    import ray

    with tqdm(total=total, desc="consume", unit="ev", disable=quiet) as bar:
        consumed = [0] * len(actors)
        pending = list(range(len(actors)))
        while pending:
            progress = ray.get([actors[i].drain.remote(targets[i]) for i in pending])
            for i, step in zip(pending, progress, strict=True):
                bar.update(step.consumed - consumed[i])
                consumed[i] = step.consumed
            pending = [i for i, step in zip(pending, progress, strict=True) if not step.done]


def _dead_letter_end(bootstrap: str, client_options: dict) -> int:
    """The dead-letter topic's end offset (it has one partition)."""
    from streaming.consumer import EventConsumer

    with EventConsumer(bootstrap, [(DEAD_LETTER, 0)], **client_options) as consumer:
        return consumer.end_offsets()[(DEAD_LETTER, 0)]


def print_summary(summary: DemoSummary, settings: Settings) -> None:
    print()
    print("recsys demo — summary")
    print(
        f"  kafka              {summary.kafka} ({summary.kafka_origin}), "
        f"{summary.partitions} partitions per topic"
    )
    print(
        f"  produced           {summary.events_produced:,} events "
        f"({summary.impressions:,} impressions, {summary.feedback:,} feedback) "
        f"at {summary.produce_events_per_s:,.0f} events/s"
    )
    print(
        f"  consumed, decoded  {summary.events_decoded:,} of {summary.events_consumed:,} records "
        f"at {summary.consume_events_per_s:,.0f} records/s on {len(summary.per_reader)} Ray actors"
    )
    print(
        f"  dead-lettered      {summary.dead_lettered} of {summary.bad_records_sent} malformed "
        f"records sent ({summary.dead_letters_on_topic} now on {DEAD_LETTER})"
    )
    if summary.broker_startup_s:
        print(f"  broker start-up    {summary.broker_startup_s:.1f}s")
    print(f"  wall time          {summary.wall_s:.1f}s")
    print(f"  mlflow run         {summary.mlflow_run_id}")
    print(f"  open the mlflow UI {mlflow_ui_command(settings)}")
    if summary.succeeded:
        print("  result             OK: nothing lost, bad input dead-lettered")
    else:
        print("  result             MISMATCH: " + "; ".join(summary.mismatches()))


def run(args: argparse.Namespace) -> int:
    if args.events < 1 or args.bad_records < 0 or args.readers < 1:
        print("recsys demo: --events and --readers must be >= 1 and --bad-records >= 0")
        return 2
    summary = run_demo(
        args.settings,
        n_events=args.events,
        bad_records=args.bad_records,
        readers=args.readers,
        seed=args.seed,
    )
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print_summary(summary, args.settings)
    return 0 if summary.succeeded else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the stack end to end on embedded defaults",
        description="Start embedded Kafka, Ray and mlflow; push events through; report; shut down.",
    )
    parser.add_argument("--events", type=int, default=100_000, help="events to push (default 100k)")
    parser.add_argument(
        "--bad-records",
        type=int,
        default=5,
        help="malformed records to send, to show the dead-letter path (default 5)",
    )
    parser.add_argument(
        "--readers",
        type=int,
        default=2,
        help="Ray reader actors, at most one per partition (default 2)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)
