"""``recsys topics tail TOPIC``: a topic's records, decoded, as JSON lines.

Records are msgpack (``recsys.events``), so a plain Kafka console consumer or kcat shows bytes;
this prints one JSON object per record: ``topic``, ``partition``, ``offset``, ``timestamp_ms``,
``key`` and the decoded ``value`` (bytes fields as base64). An event that decodes but breaks the
contract also gets ``invalid`` (why); a record that is not msgpack at all gets ``error`` and its raw
bytes as ``value_base64``: tailing never stops at a bad record. Output is meant for ``jq``.

It reads the running cluster (``--bootstrap``, else ``kafka.bootstrap``, else a broker left
running by ``recsys broker start``) and never starts one. It reads without a consumer group, so it
commits nothing and disturbs no pipeline.
"""

from __future__ import annotations

import argparse
import base64
import difflib
import os
import sys
from typing import Any

import msgspec

from recsys.commands import CommandError, add_command
from recsys.events import EventValidationError, decode

EVENT_TAGS = frozenset({"impression", "feedback", "reward"})
POLL_MS = 500

_json = msgspec.json.Encoder()


def _text_or_base64(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode()


def record_line(topic: str, partition: int, offset: int, timestamp_ms: int | None,
                key: bytes | None, value: bytes | None) -> dict[str, Any]:
    """One record as a JSON-ready dict (see the module docs)."""
    line: dict[str, Any] = {"topic": topic, "partition": partition, "offset": offset,
                            "timestamp_ms": timestamp_ms, "key": _text_or_base64(key)}
    if value is None:
        line["value"] = None
        return line
    try:
        decoded = msgspec.msgpack.decode(value)
        _json.encode(decoded)  # msgpack extension types have no JSON form
    except (msgspec.DecodeError, TypeError) as exc:
        line["error"] = f"not msgpack: {exc}" if value else "empty record"
        line["value_base64"] = base64.b64encode(value).decode()
        return line
    line["value"] = decoded
    if isinstance(decoded, dict) and decoded.get("type") in EVENT_TAGS:
        try:
            decode(value)
        except EventValidationError as exc:
            line["invalid"] = str(exc)
    return line


def _resolve_bootstrap(args: argparse.Namespace) -> tuple[str, dict] | None:
    from streaming.services import running_cluster

    options = args.settings.kafka.client_options()
    if args.bootstrap:
        return args.bootstrap, options
    cluster = running_cluster(args.settings)
    return None if cluster is None else (cluster.bootstrap, cluster.client_options)


def run_tail(args: argparse.Namespace) -> int:
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    from recsys.kafka_clients import kafka_python_options

    if args.max is not None and args.max < 1:
        raise CommandError(f"--max: expected a count >= 1, got {args.max}")
    found = _resolve_bootstrap(args)
    if found is None:
        raise CommandError("no Kafka to read: pass --bootstrap HOST:PORT (or set "
                           "kafka.bootstrap), or start a broker with `recsys broker start`")
    bootstrap, options = found
    try:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                 group_id=None, **kafka_python_options(options))
    except (KafkaError, OSError) as exc:
        raise CommandError(f"--bootstrap: no Kafka broker answers at {bootstrap}: {exc}") from exc
    try:
        topics = consumer.topics()
        if args.topic not in topics:
            near = difflib.get_close_matches(args.topic, sorted(topics), n=3)
            hint = (f"; did you mean {', '.join(near)}?" if near
                    else f"; topics: {', '.join(sorted(topics)) or 'none'}")
            raise CommandError(f"topic: expected an existing topic, got {args.topic!r}{hint}")
        partitions = [TopicPartition(args.topic, p)
                      for p in sorted(consumer.partitions_for_topic(args.topic) or ())]
        consumer.assign(partitions)
        if args.from_beginning:
            consumer.seek_to_beginning(*partitions)
        else:
            consumer.seek_to_end(*partitions)
        return _print_records(consumer, partitions, args)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # the reader (head, jq) went away: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        consumer.close()


def _print_records(consumer: Any, partitions: list, args: argparse.Namespace) -> int:
    """Print until ``--max`` records, the end of the topic (``--until-end``), or Ctrl-C."""
    end = consumer.end_offsets(partitions) if args.until_end else None
    printed = 0
    while True:
        if end is not None and all(consumer.position(p) >= end[p] for p in partitions):
            return 0
        batches = consumer.poll(timeout_ms=POLL_MS)
        for tp in sorted(batches, key=lambda tp: tp.partition):
            for record in batches[tp]:
                line = record_line(record.topic, record.partition, record.offset,
                                   record.timestamp, record.key, record.value)
                sys.stdout.write(_json.encode(line).decode() + "\n")
                printed += 1
                if args.max is not None and printed >= args.max:
                    sys.stdout.flush()
                    return 0
        sys.stdout.flush()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "topics", help="read Kafka topics: records decoded from msgpack to JSON lines",
        description="Kafka topics of the event contract, decoded (records are msgpack; for the "
                    "raw bytes use kcat or the Kafka console consumer).")
    actions = parser.add_subparsers(dest="topics_command", metavar="ACTION", required=True)
    tail = add_command(
        actions, "tail", run_tail,
        help="print a topic's records as JSON lines (new ones, until Ctrl-C)",
        description="Print a topic's records as JSON lines, one per record; records that do "
                    "not decode are printed with an `error` field, never skipped.")
    tail.add_argument("topic", help="topic name, e.g. recsys.impressions")
    tail.add_argument("--from-beginning", action="store_true",
                      help="start at the oldest record (default: only records written from now)")
    tail.add_argument("--max", type=int, default=None, metavar="N",
                      help="stop after N records")
    tail.add_argument("--until-end", action="store_true",
                      help="stop at the end of the topic as it was when the command started")
    tail.add_argument("--bootstrap", default=None, metavar="HOST:PORT",
                      help="Kafka bootstrap servers (default: kafka.bootstrap, else the broker "
                           "of `recsys broker start`)")
