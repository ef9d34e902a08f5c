"""``recsys demo --quick`` end to end as a user runs it (its own embedded Kafka, Ray, Ray Serve
and mlflow store, in a subprocess): the learning arm beats uniform, malformed records are
dead-lettered, everything is logged to mlflow, and no JVM, Ray or Serve process is left behind.
Plus the demo's success rule on hand-made reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streaming.broker import free_port
from streaming.demo import CONTROL_ARM, LEARNING_ARM, DemoReport

REPO = Path(__file__).resolve().parents[2]
LEFTOVER_MARKERS = ("raylet", "gcs_server", "ServeController", "ServeReplica", "ProxyActor",
                    "HAProxy", "haproxy", "kafka.Kafka", "dashboard/agent", "log_monitor")


def our_processes() -> dict[int, str]:
    """Command lines of live processes that belong to a Ray, Serve or Kafka instance."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(marker in cmd for marker in LEFTOVER_MARKERS):
            out[int(entry.name)] = cmd[:200]
    return out




@pytest.mark.integration
def test_quick_demo_learns_and_leaves_nothing_behind(tmp_path) -> None:
    import mlflow

    before = our_processes()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RECSYS_"))}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "recsys.cli", "--data-dir", str(tmp_path), "--set",
         f"serve.port={free_port()}", "demo", "--quick", "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - started
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    report = json.loads(done.stdout[done.stdout.index("{"):])
    assert report["problems"] == [] and report["z_score"] > 3
    assert report["true_value_late"][LEARNING_ARM] > report["true_value_late"][CONTROL_ARM]
    assert report["dead_letters"] == report["bad_records_sent"] == 5
    assert report["freshness_timeouts"] == 0 and report["freshness_ms"]["p99"] < 5000
    assert Path(report["plot"]).stat().st_size > 10_000
    assert wall < 240, wall  # generous: the quick demo aims at two minutes

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = mlflow.get_run(report["mlflow_run_id"])
    assert run.data.metrics["succeeded"] == 1.0
    assert run.data.metrics[f"{LEARNING_ARM}.ctr"] > run.data.metrics[f"{CONTROL_ARM}.ctr"]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"ctr_over_time.png", "history.parquet", "demo_report.json"} <= artifacts

    deadline = time.monotonic() + 30
    while True:
        leftovers = {pid: cmd for pid, cmd in our_processes().items() if pid not in before}
        if not leftovers or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not leftovers, leftovers


def report(**changes) -> DemoReport:
    base = DemoReport(
        run_dir="/tmp/x", kafka_origin="embedded broker",
        requests={LEARNING_ARM: 1000, CONTROL_ARM: 1000},
        clicks={LEARNING_ARM: 600, CONTROL_ARM: 330},
        ctr_by_period={}, period_end_s=[], true_value_late={LEARNING_ARM: 0.6, CONTROL_ARM: 0.33},
        true_value_final={}, optimal_value=0.9, freshness_ms={"p50": 1, "p99": 2, "max": 3},
        freshness_timeouts=0, events_processed=10, bad_records_sent=5, dead_letters=5,
        http_errors={}, traffic_s=60.0,
        late_counts={LEARNING_ARM: (300, 500), CONTROL_ARM: (165, 500)})
    for name, value in changes.items():
        setattr(base, name, value)
    return base


@pytest.mark.parametrize(("changes", "complaint"), [
    ({"late_counts": {LEARNING_ARM: (170, 500), CONTROL_ARM: (165, 500)}}, "z ="),
    ({"true_value_late": {LEARNING_ARM: 0.3, CONTROL_ARM: 0.33}}, "true value"),
    ({"dead_letters": 4}, "4 dead letters for 5"),
    ({"http_errors": {"500": 2, "422": 1}}, "server errors: {'500': 2}"),
])
def test_the_demo_rule_names_each_failure(changes, complaint) -> None:
    assert report().problems() == []
    problems = report(**changes).problems()
    assert len(problems) == 1 and complaint in problems[0], problems
