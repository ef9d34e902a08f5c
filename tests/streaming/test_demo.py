"""``recsys demo`` end to end on the real broker, a real local Ray and a real mlflow store."""

from __future__ import annotations

import pytest

from recsys.config import load_settings
from streaming.demo import run_demo

pytestmark = pytest.mark.integration


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
        assert summary.events_decoded == summary.events_produced == 3_000
        assert summary.impressions + summary.feedback == 3_000
        assert summary.feedback > 0
        assert summary.dead_lettered == summary.dead_letters_on_topic == 5
        assert summary.events_consumed == 3_005

    mlflow.set_tracking_uri(mlflow_store)
    run = mlflow.get_run(runs[1].mlflow_run_id)
    assert run.data.metrics["events_decoded"] == 3_000
    assert run.data.metrics["dead_lettered"] == 5
    assert run.data.metrics["consume_events_per_s"] > 0
    assert run.data.params["partitions"] == "3"
    saved = mlflow.artifacts.load_dict(run.info.artifact_uri + "/demo_summary.json")
    assert saved["feedback"] == runs[1].feedback
