"""``recsys demo``: the whole stack on embedded defaults, end to end.

Starts (or connects to) Kafka, Ray and the mlflow store; pushes synthetic impression + feedback
events through Kafka over several partitions; reads them back on Ray actors that own explicitly
assigned partitions (the shape the streaming learners take); sends a few malformed records to show
they land in the dead-letter topic; logs counts and throughput to mlflow; prints a summary and
shuts down whatever it started.
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
    per_reader: list[dict] = field(default_factory=list)


def _reader_actor_class():
    import ray

    @ray.remote(num_cpus=0.5)
    class PartitionReader:
        """Reads its assigned partitions between given offsets, in slices the driver can show
        progress on."""

        def __init__(
            self,
            bootstrap: str,
            start: dict[tuple[str, int], int],
            end: dict[tuple[str, int], int],
            client_options: dict,
        ) -> None:
            from streaming.consumer import EventConsumer

            self.consumer = EventConsumer(bootstrap, list(start), **client_options)
            self.consumer.seek(start)
            self.targets = end
            self.by_type: dict[str, int] = {}
            self.busy_s = 0.0

        def read_some(self, max_seconds: float = 0.5) -> tuple[int, bool]:
            """Read for up to ``max_seconds``; returns (records consumed so far, finished)."""
            started = time.perf_counter()
            while time.perf_counter() - started < max_seconds:
                if all(p >= self.targets[k] for k, p in self.consumer.positions().items()):
                    break
                for consumed in self.consumer.poll(timeout_ms=100):
                    name = type(consumed.event).__name__
                    self.by_type[name] = self.by_type.get(name, 0) + 1
            self.busy_s += time.perf_counter() - started
            done = all(p >= self.targets[k] for k, p in self.consumer.positions().items())
            return self.consumer.consumed, done

        def report(self) -> dict:
            self.consumer.flush()
            return {
                "consumed": self.consumer.consumed,
                "decoded": self.consumer.decoded,
                "dead_lettered": self.consumer.dead_lettered,
                "dead_letter_reasons": dict(self.consumer.dead_letter_reasons),
                "by_type": self.by_type,
                "busy_s": self.busy_s,
            }

        def close(self) -> None:
            self.consumer.close()

    return PartitionReader


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

    from simulators.synthetic_traffic import generate_traffic
    from streaming.producer import EventProducer

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

        counts = ensure_topics(
            kafka.bootstrap,
            standard_topics(settings.kafka.partitions),
            settings.kafka.replication_factor,
            **kafka.client_options,
        )
        partitions = counts[IMPRESSIONS]
        assignment = [(topic, p) for p in range(partitions) for topic in (IMPRESSIONS, FEEDBACK)]
        # Read exactly what this run produces, even on a broker that already holds events.
        start_offsets = _end_offsets(kafka.bootstrap, assignment, kafka.client_options)
        dlq_start = sum(
            _end_offsets(kafka.bootstrap, [(DEAD_LETTER, 0)], kafka.client_options).values()
        )

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

        say(f"• reading back on {readers} Ray actors with explicitly assigned partitions")
        end_offsets = _end_offsets(kafka.bootstrap, assignment, kafka.client_options)
        reader_cls = _reader_actor_class()
        actors = []
        for i in range(readers):
            mine = assignment[i::readers]
            actors.append(
                reader_cls.remote(
                    kafka.bootstrap,
                    {k: start_offsets[k] for k in mine},
                    {k: end_offsets[k] for k in mine},
                    kafka.client_options,
                )
            )
        consume_started = time.perf_counter()
        total = len(events) + bad_records
        with tqdm(total=total, desc="consume", unit="ev", disable=quiet) as bar:
            consumed = [0] * readers
            done = [False] * readers
            while not all(done):
                pending = [i for i in range(readers) if not done[i]]
                results = ray.get([actors[i].read_some.remote() for i in pending])
                for i, (n, finished) in zip(pending, results, strict=True):
                    bar.update(n - consumed[i])
                    consumed[i], done[i] = n, finished
        consume_s = time.perf_counter() - consume_started
        reports = ray.get([actor.report.remote() for actor in actors])
        ray.get([actor.close.remote() for actor in actors])
        for actor in actors:
            ray.kill(actor)

        dead_on_topic = (
            sum(_end_offsets(kafka.bootstrap, [(DEAD_LETTER, 0)], kafka.client_options).values())
            - dlq_start
        )
        by_type: dict[str, int] = {}
        for report in reports:
            for name, n in report["by_type"].items():
                by_type[name] = by_type.get(name, 0) + n
        summary = DemoSummary(
            kafka=kafka.bootstrap,
            kafka_origin=kafka.origin,
            ray=ray_origin,
            partitions=partitions,
            events_produced=len(events),
            impressions=len(traffic.impressions),
            feedback=len(traffic.feedback),
            bad_records_sent=bad_records,
            events_consumed=sum(r["consumed"] for r in reports),
            events_decoded=sum(r["decoded"] for r in reports),
            dead_lettered=sum(r["dead_lettered"] for r in reports),
            dead_letters_on_topic=dead_on_topic,
            produce_events_per_s=len(events) / produce_s,
            consume_events_per_s=sum(r["consumed"] for r in reports) / consume_s,
            broker_startup_s=kafka.startup_seconds,
            wall_s=0.0,
            per_reader=reports,
        )
        if (
            by_type.get("Impression") != summary.impressions
            or by_type.get("Feedback") != summary.feedback
        ):
            raise RuntimeError(
                f"read back {by_type}, expected {summary.impressions} impressions "
                f"and {summary.feedback} feedback events"
            )

        with mlflow.start_run(experiment_id=experiment_id, run_name="demo-kafka-roundtrip") as run:
            mlflow.set_tags({"recsys.kind": "demo", "kafka.origin": kafka.origin})
            mlflow.log_params(
                {
                    "events": n_events,
                    "partitions": partitions,
                    "readers": readers,
                    "bad_records": bad_records,
                    "seed": seed,
                    "compression": settings.kafka.compression,
                }
            )
            summary.wall_s = time.perf_counter() - wall_started
            mlflow.log_metrics(
                {
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
            mlflow.log_dict(asdict(summary), "demo_summary.json")
            summary.mlflow_run_id = run.info.run_id
        say("• shutting down")
    summary.wall_s = time.perf_counter() - wall_started
    return summary


def _end_offsets(
    bootstrap: str, partitions: list[tuple[str, int]], client_options: dict
) -> dict[tuple[str, int], int]:
    from streaming.consumer import EventConsumer

    with EventConsumer(bootstrap, partitions, **client_options) as consumer:
        return consumer.end_offsets()


def print_summary(summary: DemoSummary, settings: Settings) -> None:
    ok = (
        summary.events_decoded == summary.events_produced
        and summary.dead_lettered == summary.bad_records_sent == summary.dead_letters_on_topic
    )
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
    print(
        f"  result             {'OK: nothing lost, bad input dead-lettered' if ok else 'MISMATCH'}"
    )


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
        print(json.dumps(asdict(summary), indent=2))
    else:
        print_summary(summary, args.settings)
    ok = (
        summary.events_decoded == summary.events_produced
        and summary.dead_lettered == summary.bad_records_sent
    )
    return 0 if ok else 1


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
    parser.add_argument("--readers", type=int, default=2, help="Ray reader actors (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)
