"""``recsys demo`` end to end on the real broker, a real local Ray and a real mlflow store, and the
demo's one success rule."""

from __future__ import annotations

import dataclasses

import pytest

from recsys.config import load_settings
from streaming.demo import DemoSummary, co_partitioned_assignment, run_demo
from streaming.topics import FEEDBACK, IMPRESSIONS


@pytest.mark.integration
def test_demo_round_trips_everything_and_logs_to_mlflow(
    kafka_bootstrap, ray_session, mlflow_store, tmp_path
) -> None:
    import mlflow

    settings = load_settings(
        environ={},
        cli={
            "kafka.bootstrap": kafka_bootstrap,
            "mlflow.tracking_uri": mlflow_store,
            "data_dir": str(tmp_path),
            "kafka.partitions": "3",
        },
    )
    runs = [
        run_demo(settings, n_events=3_000, bad_records=5, readers=2, seed=s, quiet=True)
        for s in (1, 2)
    ]
    for summary in runs:  # the second run on the same topics must count only its own events
        assert summary.succeeded, summary.mismatches()
        assert summary.events_produced == 3_000 and summary.bad_records_sent == 5
        assert summary.impressions > 0 and summary.feedback > 0
        assert len(summary.per_reader) == 2

    mlflow.set_tracking_uri(mlflow_store)
    run = mlflow.get_run(runs[1].mlflow_run_id)
    assert run.data.metrics["succeeded"] == 1.0
    assert run.data.metrics["events_decoded"] == 3_000
    assert run.data.metrics["dead_lettered"] == 5
    assert run.data.metrics["consume_events_per_s"] > 0
    assert run.data.params["partitions"] == "3"
    saved = mlflow.artifacts.load_dict(run.info.artifact_uri + "/demo_summary.json")
    assert saved["feedback"] == runs[1].feedback
    assert saved["succeeded"] is True and saved["mismatches"] == []
    assert saved["mlflow_run_id"] == runs[1].mlflow_run_id


def a_good_summary() -> DemoSummary:
    return DemoSummary(
        kafka="localhost:9092",
        kafka_origin="configured",
        ray="local instance",
        partitions=3,
        events_produced=100,
        impressions=60,
        feedback=40,
        bad_records_sent=5,
        events_consumed=105,
        events_decoded=100,
        dead_lettered=5,
        dead_letters_on_topic=5,
        produce_events_per_s=1.0,
        consume_events_per_s=1.0,
        broker_startup_s=None,
        wall_s=1.0,
        decoded_by_type={"Impression": 60, "Feedback": 40},
    )


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"events_decoded": 99}, "decoded 99 events, produced 100"),
        ({"decoded_by_type": {"Impression": 61, "Feedback": 39}}, "decoded 61 Impression events"),
        ({"decoded_by_type": {"Impression": 60}}, "decoded 0 Feedback events, produced 40"),
        ({"events_consumed": 104}, "read 104 records, sent 100 events and 5 malformed"),
        ({"dead_lettered": 4}, "dead-lettered 4 records, sent 5"),
        ({"dead_letters_on_topic": 6}, "6 dead letters reached recsys.dead-letter"),
    ],
)
def test_the_success_rule_names_every_way_a_run_can_fail(change: dict, complaint: str) -> None:
    assert a_good_summary().succeeded and a_good_summary().mismatches() == []
    broken = dataclasses.replace(a_good_summary(), **change)
    assert not broken.succeeded
    assert any(complaint in problem for problem in broken.mismatches()), broken.mismatches()
    assert broken.to_dict()["succeeded"] is False


def test_readers_share_partitions_with_both_topics_together() -> None:
    shares = [co_partitioned_assignment(5, 2, reader) for reader in range(2)]
    assert shares[0] == [(t, p) for p in (0, 2, 4) for t in (IMPRESSIONS, FEEDBACK)]
    everything = sorted(pair for share in shares for pair in share)
    assert everything == sorted((t, p) for p in range(5) for t in (IMPRESSIONS, FEEDBACK))
