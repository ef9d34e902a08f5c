"""``recsys topics tail``: records decoded to JSON lines from a real broker; a record that is not
msgpack is a JSON line with an error, never a crash; a missing topic or broker is one line."""

from __future__ import annotations

import argparse
import base64
import json

import msgspec
import pytest

from recsys.commands import run_command
from recsys.config import Settings
from recsys.events import Context, Feedback, Impression, SlateEntry, encode
from streaming.topics_cli import record_line, register

IMPRESSION = Impression(
    request_id="r1", event_time_ms=1_700_000_000_000, user_id="u1",
    context=Context(dense=(0.5, -0.25)), policy_name="diag_lin_ts", policy_version=3,
    slate=(SlateEntry(item_id=7, position=0, score=1.5, propensity=0.25),))
BAD_PROPENSITY = Impression(
    request_id="r2", event_time_ms=1, user_id="u", context=Context(), policy_name="p",
    policy_version=1, slate=(SlateEntry(item_id=1, position=0, score=0.0, propensity=1.5),))
GARBAGE = b"\xc1 not msgpack"


def tail(argv: list[str], tmp_path) -> int:
    """Run ``recsys topics ARGV`` through the command's own parser, as ``recsys.cli`` does."""
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["topics", *argv])
    args.settings = Settings(data_dir=tmp_path)
    return run_command(args)


def test_an_event_is_its_fields_and_bytes_are_base64() -> None:
    line = record_line("t", 2, 40, 123, b"r1", encode(IMPRESSION))
    value = line.pop("value")
    assert line == {"topic": "t", "partition": 2, "offset": 40, "timestamp_ms": 123, "key": "r1"}
    assert value == json.loads(msgspec.json.encode(IMPRESSION))  # the event, tag included
    assert value["slate"][0]["propensity"] == 0.25
    binary_key = record_line("t", 0, 0, None, b"\xff\x00", encode(IMPRESSION))["key"]
    assert base64.b64decode(binary_key) == b"\xff\x00"


def test_a_record_that_breaks_the_contract_says_why_and_garbage_says_it_is_not_msgpack() -> None:
    invalid = record_line("t", 0, 1, None, None, encode(BAD_PROPENSITY))
    assert invalid["value"]["request_id"] == "r2" and "propensity" in invalid["invalid"]
    garbage = record_line("t", 0, 2, None, b"bad", GARBAGE)
    assert "value" not in garbage and garbage["error"].startswith("not msgpack")
    assert base64.b64decode(garbage["value_base64"]) == GARBAGE
    assert record_line("t", 0, 3, None, None, b"")["error"] == "empty record"
    assert "invalid" not in record_line("t", 0, 4, None, None, encode(IMPRESSION))


def test_without_a_broker_it_says_how_to_name_one(tmp_path, capsys) -> None:
    assert tail(["tail", "recsys.impressions"], tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith("recsys topics: no Kafka to read") and err.count("\n") == 1
    assert "--bootstrap" in err and "recsys broker start" in err


@pytest.mark.integration
def test_tail_prints_every_record_decoded_and_survives_a_bad_one(
        kafka_bootstrap, unique_topics, tmp_path, capsys) -> None:
    from recsys.producer import EventProducer

    topic = unique_topics({"events": 2})["events"]
    click = Feedback(request_id="r1", event_time_ms=2, user_id="u1", item_id=7, position=0,
                     event_type="click")
    with EventProducer(kafka_bootstrap) as producer:
        producer.send_raw(topic, b"r1", encode(IMPRESSION))
        producer.send_raw(topic, b"bad", GARBAGE)
        producer.send_raw(topic, b"r1", encode(click))
    base = ["tail", topic, "--bootstrap", kafka_bootstrap]

    assert tail([*base, "--from-beginning", "--until-end"], tmp_path) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3 and {line["topic"] for line in lines} == {topic}
    by_key = sorted((line["key"], line.get("value", {}).get("type"), "error" in line)
                    for line in lines)
    assert by_key == [("bad", None, True), ("r1", "feedback", False), ("r1", "impression", False)]

    assert tail([*base, "--from-beginning", "--max", "1"], tmp_path) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert tail([*base, "--until-end"], tmp_path) == 0  # from now: nothing new
    assert capsys.readouterr().out == ""

    assert tail(["tail", topic + "x", "--bootstrap", kafka_bootstrap], tmp_path) == 2
    err = capsys.readouterr().err
    assert f"got {topic + 'x'!r}" in err and f"did you mean {topic}" in err
