"""``recsys demo --quick`` end to end as a user runs it (its own embedded Kafka, Ray, Ray Serve
and mlflow store, in a subprocess): the learning arm beats uniform, malformed records are
dead-lettered; the online snapshot, the offline IPS and PLD models and the baselines are compared
on held-out logs with intervals and true values, the best is promoted, serving switches to it and
the champion arm's impressions name it; everything is in mlflow, the output is free of shutdown
noise, and no process the run started is left behind. Plus the demo's success rule on hand-made
reports, the plot's curves on a hand-made history, the before/after figures, the choice of the
challenger, and the offline configs the demo fills in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import polars as pl
import pytest

from recsys.comparison.result import CandidateResult, Comparison, Estimate
from streaming.broker import free_port
from streaming.demo import DemoPlan
from streaming.demo_product import (
    CHAMPION_ARM,
    OFFLINE_KINDS,
    SERVING_MODEL,
    Candidate,
    Verdict,
    best_challenger,
    comparison_rows,
    offline_table,
    to_toml,
)
from streaming.demo_report import (
    CONTROL_ARM,
    LEARNING_ARM,
    DemoReport,
    arm_curves,
    before_after,
    comparison_lines,
    cumulative_regret,
    save_plot,
    split_dead_letters,
)

REPO = Path(__file__).resolve().parents[2]
NOISE = ("failed to shut down", "Token authentication is enabled",
         "Connecting to existing Serve app", "Traceback", "(raylet)")


def process_table() -> dict[int, tuple[int, int, str]]:
    """Every live process: pid → (parent pid, start time in clock ticks, state)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()  # after the command name, which may hold ")"
        table[int(entry.name)] = (int(fields[1]), int(fields[19]), fields[0])
    return table


class ProcessTree:
    """Every process that descended from ``root`` at some scan, as (pid, start time), so that a
    reused pid is not mistaken for one of ours."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.seen: dict[int, int] = {}

    def scan(self) -> None:
        table = process_table()
        children = defaultdict(list)
        for pid, (parent, _, _) in table.items():
            children[parent].append(pid)
        # Also from processes seen before: one whose parent exited is re-parented, but what it
        # starts still descends from it.
        todo = [self.root, *(p for p, start in self.seen.items() if table.get(p, (0, -1))[1]
                             == start)]
        while todo:
            for child in children.get(todo.pop(), ()):
                if child not in self.seen:
                    self.seen[child] = table[child][1]
                    todo.append(child)

    def alive(self) -> dict[int, str]:
        """Processes of the tree still running (zombies hold nothing), with their names."""
        table = process_table()
        out = {}
        for pid, start in self.seen.items():
            if pid in table and table[pid][1] == start and table[pid][2] != "Z":
                try:
                    out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes()[:120].decode(
                        errors="replace")
                except OSError:
                    continue
        return out


def failure_summary(stdout: str) -> Any:
    """What says why a demo run failed: its problems and the figures they depend on (traffic,
    phases, held-out logs, each candidate's SNIPS interval and truth), or stdout's tail."""
    try:
        report = json.loads(stdout[stdout.index("{"):])
    except ValueError:
        return stdout[-3000:]
    keys = ("problems", "requests", "phases", "comparison_summary", "true_value_late",
            "events_processed", "timings")
    snips = [(r["candidate"], r["value"], r["lower"], r["upper"], r["true_value"])
             for r in report.get("comparison", []) if r["estimator"] == "snips"]
    return {**{k: report.get(k) for k in keys}, "snips": snips}


@pytest.mark.integration
def test_quick_demo_learns_quietly_and_leaves_no_process_behind(tmp_path) -> None:
    import mlflow

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RECSYS_"))}
    out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out_path.open("w") as out, err_path.open("w") as err:
        demo = subprocess.Popen(
            [sys.executable, "-m", "recsys.cli", "--data-dir", str(tmp_path), "demo", "--quick",
             "--port", str(free_port()), "--json"],
            cwd=REPO, env=env, stdout=out, stderr=err)
        tree = ProcessTree(demo.pid)
        deadline = time.monotonic() + 600  # a hang, not a speed limit
        while demo.poll() is None and time.monotonic() < deadline:
            tree.scan()
            time.sleep(0.5)
        if demo.poll() is None:
            demo.kill()
    stdout, stderr = out_path.read_text(), err_path.read_text()
    assert demo.returncode == 0, (failure_summary(stdout), stderr[-3000:])
    assert tree.seen, "the demo started no process of its own (Kafka, Ray)?"
    report = json.loads(stdout[stdout.index("{"):])
    assert report["problems"] == [] and report["z_score"] > 3
    assert report["true_value_late"][LEARNING_ARM] > report["true_value_late"][CONTROL_ARM]
    assert (report["cumulative_regret"][LEARNING_ARM]
            < report["cumulative_regret"][CONTROL_ARM])
    assert report["dead_letters"] == report["bad_records_sent"] == 5
    freshness = report["freshness_ms"]
    assert report["freshness_timeouts"] == 0
    assert 0 < freshness["p50"] <= freshness["p99"] <= freshness["max"]
    assert Path(report["plot"]).stat().st_size > 10_000
    assert not [line for line in stderr.splitlines() if any(n in line for n in NOISE)], stderr

    # The registry half: every kind compared, with intervals and true values.
    rows = report["comparison"]
    assert {r["kind"] for r in rows} == {"online", "offline", "baseline"}
    by_candidate = {r["candidate"]: r for r in rows if r["estimator"] == "snips"}
    assert set(by_candidate) == {"uniform", "online-snapshot", "offline-ips", "offline-pld",
                                 "logging"}
    for name, row in by_candidate.items():
        assert row["lower"] <= row["value"] <= row["upper"], row
        assert (row["true_value"] is None) == (name == "logging"), row
    assert by_candidate["online-snapshot"]["true_value"] > by_candidate["uniform"]["true_value"]
    # The champion moved to the promoted version and serving followed it.
    decision, champion = report["promotion"], report["champion"]
    assert decision["applied"] and decision["champion_version"] == "1"
    assert champion["name"] == SERVING_MODEL and champion["version"] == \
        decision["challenger_version"] != "1"
    assert champion["kind"] in ("online", "offline")
    assert champion["true_value"] > by_candidate["uniform"]["true_value"]
    summary = report["comparison_summary"]  # Thompson sampling's estimated propensities left out
    assert summary["dropped_policies"] == [LEARNING_ARM]
    assert 0 < summary["n_requests"] == summary["requests_kept"] < summary["requests_logged"]
    assert report["switch"]["version"] == champion["version"]
    switched = report["phases"]["switched_s"]
    assert report["phases"]["cut_s"] < report["phases"]["holdout_end_s"] < switched
    served = {row["version"]: row for row in report["champion_served"]}
    assert served["1"]["first_s"] < switched <= served[champion["version"]]["last_s"]
    assert served[champion["version"]]["requests"] > 0
    after = report["before_after"][CHAMPION_ARM]
    assert after["true_value_after"] > after["true_value_before"]
    assert "mlflow ui --backend-store-uri" in report["mlflow_ui"]

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = mlflow.get_run(report["mlflow_run_id"])
    assert run.data.metrics["succeeded"] == 1.0
    assert run.data.metrics[f"{LEARNING_ARM}.ctr"] > run.data.metrics[f"{CONTROL_ARM}.ctr"]
    client = mlflow.MlflowClient()
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"ctr_over_time.png", "history.parquet", "demo_report.json"} <= artifacts
    assert str(client.get_model_version_by_alias(SERVING_MODEL, "champion").version) == \
        champion["version"]
    compared = {a.path for a in client.list_artifacts(report["comparison_run_id"])}
    assert {"comparison.png", "comparison.json"} <= compared
    demo_id = Path(report["run_dir"]).name
    for run_id in (report["comparison_run_id"], *(c["run_id"] for c in report["candidates"])):
        assert client.get_run(run_id).data.tags["recsys.demo_run"] == demo_id

    stop_by = time.monotonic() + 30
    while (leftovers := tree.alive()) and time.monotonic() < stop_by:
        time.sleep(0.5)
    assert not leftovers, leftovers


def rows(**truths) -> list[dict]:
    """Comparison rows (snips) of one candidate per kind, with intervals and true values."""
    kinds = {"uniform": "baseline", "online-snapshot": "online", "offline-ips": "offline",
             "logging": "baseline"}
    return [{"candidate": name, "kind": kind, "model_name": SERVING_MODEL,
             "model_version": str(i + 1), "estimator": "snips", "value": 0.5, "lower": 0.4,
             "upper": 0.6, "true_value": truths.get(name, None if name == "logging" else 0.5)}
            for i, (name, kind) in enumerate(kinds.items())]


def report(**changes) -> DemoReport:
    base = DemoReport(
        run_dir="/tmp/x", kafka_origin="embedded broker",
        requests={LEARNING_ARM: 1000, CONTROL_ARM: 1000},
        clicks={LEARNING_ARM: 600, CONTROL_ARM: 330},
        ctr_by_period={}, period_end_s=[], true_value_late={LEARNING_ARM: 0.6, CONTROL_ARM: 0.33},
        true_value_final={}, optimal_value=0.9, freshness_ms={"p50": 1, "p99": 2, "max": 3},
        freshness_timeouts=0, events_processed=10, bad_records_sent=5, dead_letters=5,
        http_errors={}, traffic_s=60.0,
        late_counts={LEARNING_ARM: (300, 500), CONTROL_ARM: (165, 500)},
        comparison=rows(), promotion={"applied": True, "challenger_version": "2",
                                      "reason": "online-snapshot beats uniform"},
        champion={"name": SERVING_MODEL, "version": "2"}, switch={"version": "2"},
        phases={"switched_s": 30.0},
        champion_served=[{"version": "1", "requests": 10, "first_s": 0.0, "last_s": 29.0},
                         {"version": "2", "requests": 10, "first_s": 30.5, "last_s": 59.0}])
    for name, value in changes.items():
        setattr(base, name, value)
    return base


@pytest.mark.parametrize(("changes", "complaint"), [
    ({"late_counts": {LEARNING_ARM: (170, 500), CONTROL_ARM: (165, 500)}}, "z ="),
    ({"true_value_late": {LEARNING_ARM: 0.3, CONTROL_ARM: 0.33}}, "true value"),
    ({"dead_letters": 4}, "4 dead letters for 5"),
    ({"late_feedback": 10}, "10 of 930 clicks reached the joiner after their attribution window"),
    ({"http_errors": {"500": 2, "422": 1}}, "server errors: {'500': 2}"),
    ({"comparison": [r for r in rows() if r["kind"] != "offline"]}, "no offline candidate"),
    ({"comparison": rows(**{"offline-ips": None})}, "no true value for offline-ips"),
    ({"comparison": [{**r, "lower": None} for r in rows()]}, "without a finite interval"),
    ({"promotion": {"applied": False, "reason": "x does not exceed y"}},
     "no challenger was promoted: x does not exceed y"),
    ({"champion": {"version": "1"}}, "points at 1, not the promoted version 2"),
    ({"switch": {}}, "serving did not switch to version 2"),
    ({"champion_served": [{"version": "1", "requests": 10, "first_s": 0.0, "last_s": 59.0}]},
     "no impression of the champion arm names demo-recommender version 2 after the switch"),
])
def test_the_demo_rule_names_each_failure(changes, complaint) -> None:
    assert report().problems() == []
    assert report(late_feedback=9).problems() == []  # under 1 % of 930 clicks: reported only
    problems = report(**changes).problems()
    assert len(problems) == 1 and complaint in problems[0], problems


def history(rounds: int = 40, seed: int = 0) -> pl.DataFrame:
    """Rounds every 0.5 s; the learning arm's click rate climbs from 0.3 to 0.7, uniform stays
    at 0.3; expected clicks follow the rates."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(rounds):
        for arm, rate in ((LEARNING_ARM, 0.3 + 0.4 * r / (rounds - 1)), (CONTROL_ARM, 0.3)):
            n = int(rng.integers(20, 30))
            rows.append({"round": r, "wall_time_s": 0.0, "elapsed_s": 0.5 * (r + 1), "arm": arm,
                         "requests": n, "clicks": int(rng.binomial(n, rate)),
                         "expected_clicks": n * rate})
    return pl.DataFrame(rows)


def test_the_plot_curves_are_trailing_windows_with_bands_and_summed_regret() -> None:
    h = history()
    curves = arm_curves(h, LEARNING_ARM, window_s=2.0, optimal_value=0.9)
    mine = h.filter(pl.col("arm") == LEARNING_ARM)
    at = 10  # the window of 2 s ends at round 10: rounds 7..10
    window = mine.filter(pl.col("elapsed_s").is_between(curves.elapsed_s[at] - 2.0 + 1e-9,
                                                        curves.elapsed_s[at]))
    assert window.height == 4
    assert curves.ctr[at] == pytest.approx(window["clicks"].sum() / window["requests"].sum())
    assert np.all(curves.ctr_low <= curves.ctr) and np.all(curves.ctr <= curves.ctr_high)
    assert np.all((curves.ctr_low >= 0) & (curves.ctr_high <= 1))
    assert curves.true_value[-1] > curves.true_value[0]  # the expected rate climbs
    lost = 0.9 * mine["requests"].to_numpy() - mine["expected_clicks"].to_numpy()
    assert curves.cumulative_regret == pytest.approx(np.cumsum(lost))
    totals = cumulative_regret(h, 0.9)
    assert totals[LEARNING_ARM] == pytest.approx(lost.sum())
    assert totals[LEARNING_ARM] < totals[CONTROL_ARM]


def test_the_plot_is_written(tmp_path) -> None:
    path = Path(save_plot(history(), report(traffic_s=20.0), tmp_path / "plot.png"))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


@pytest.mark.usefixtures("services_never_started")
def test_a_taken_port_is_one_line_before_anything_starts(capsys) -> None:
    import socket

    from recsys.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["demo", "--quick", "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("recsys demo: serve.port:") and err.count("\n") == 1
    assert f"got {port}, already in use" in err and "--port" in err


def test_before_and_after_the_switch_split_the_rounds_at_the_switch() -> None:
    h = history()
    figures = before_after(h, switch_s=10.0)[LEARNING_ARM]
    mine = h.filter(pl.col("arm") == LEARNING_ARM)
    early, late = mine.filter(pl.col("elapsed_s") < 10.0), mine.filter(pl.col("elapsed_s") >= 10.0)
    assert figures["requests_before"] == early["requests"].sum() and early.height == 19
    assert figures["requests_after"] == late["requests"].sum()
    assert figures["ctr_after"] == pytest.approx(late["clicks"].sum() / late["requests"].sum())
    assert figures["true_value_before"] < figures["true_value_after"]  # the rate climbs
    assert np.isnan(before_after(h, switch_s=1e9)[CONTROL_ARM]["ctr_after"])


def test_the_plot_marks_the_held_out_logs_and_the_switch(tmp_path) -> None:
    h = history()
    champion = h.filter(pl.col("arm") == CONTROL_ARM).with_columns(arm=pl.lit(CHAMPION_ARM))
    marked = report(traffic_s=20.0, phases={"cut_s": 5.0, "holdout_end_s": 8.0,
                                            "switched_s": 12.0},
                    champion={"version": "3", "candidate": "online-snapshot", "kind": "online"})
    path = Path(save_plot(pl.concat([h, champion]), marked, tmp_path / "plot.png"))
    assert path.stat().st_size > 10_000


def comparison(lowers: dict[str, float], values: dict[str, float]) -> Comparison:
    kinds = {"uniform": "baseline", "online-snapshot": "online", "offline-ips": "offline",
             "offline-pld": "offline"}
    results = [CandidateResult(name, kinds[name], f"models:/{SERVING_MODEL}/{i + 1}",
                               SERVING_MODEL, str(i + 1),
                               {"snips": Estimate("snips", values[name], lowers[name], 1.0),
                                "dr": Estimate("dr", np.nan, np.nan, np.nan)}, {}, 0.5)
               for i, name in enumerate(kinds)]
    return Comparison(results, 100, 500, 5, 200, 0.05, 200, {})


def test_the_challenger_is_the_one_with_the_highest_lower_bound_never_a_baseline() -> None:
    lowers = {"uniform": 0.9, "online-snapshot": 0.5, "offline-ips": 0.3, "offline-pld": 0.2}
    values = {"uniform": 0.95, "online-snapshot": 0.6, "offline-ips": 0.4, "offline-pld": 0.9}
    labels = {name: Candidate(name, kind, f"models:/{SERVING_MODEL}/{i + 1}", str(i + 1))
              for i, (name, kind) in enumerate((("uniform", "baseline"),
                                                ("online-snapshot", "online"),
                                                ("offline-ips", "offline"),
                                                ("offline-pld", "offline")))}
    verdict = Verdict(comparison(lowers, values), "run", labels=labels)
    assert best_challenger(verdict, "snips").label == "online-snapshot"
    lowers["offline-pld"] = 0.55
    verdict.comparison = comparison(lowers, values)
    assert best_challenger(verdict, "snips").label == "offline-pld"
    with pytest.raises(RuntimeError, match="a challenger with a finite dr interval"):
        best_challenger(verdict, "dr")


def test_comparison_rows_are_json_safe_and_the_table_shows_each_candidate() -> None:
    lowers = dict.fromkeys(("uniform", "online-snapshot", "offline-ips", "offline-pld"), 0.1)
    made = comparison(lowers, dict.fromkeys(lowers, 0.3))
    table = comparison_rows(made)
    assert len(table) == 8 and json.loads(json.dumps(table)) == table
    dr = [r for r in table if r["estimator"] == "dr"]
    assert all(r["value"] is None and r["true_value"] == 0.5 for r in dr)
    lines = comparison_lines(report(comparison=table, comparison_summary={"primary": "snips"}))
    assert len(lines) == 6 and "0.300 [0.100, 1.000]" in lines[3] and "n/a" in lines[3]


@pytest.mark.parametrize("kind", OFFLINE_KINDS)
def test_the_demo_fills_in_a_valid_offline_config(kind, tmp_path) -> None:
    import tomllib

    from offline.spec import TrainSpec

    table = offline_table(kind, str(tmp_path / "lake"), 1_700_000_000_000)
    assert table["data"]["source"] == "lake" and table["data"]["uri"] == str(tmp_path / "lake")
    assert table["data"]["until_ms"] == 1_700_000_000_000
    assert table["policy"]["registered_model"] == SERVING_MODEL
    assert tomllib.loads(to_toml({"train": table}))["train"] == table
    spec = TrainSpec.from_table(table)
    assert spec.seeds == (0,) and spec.data.params["until_ms"] == 1_700_000_000_000


@pytest.mark.usefixtures("services_never_started")
def test_an_impossible_plan_is_one_line_before_anything_starts(capsys) -> None:
    from recsys.cli import main

    code = main(["demo", "--quick", "--port", str(free_port()), "--after", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("recsys demo: after_s: expected a number > 0, got 0.0"), err


def test_late_clicks_are_told_apart_from_malformed_records() -> None:
    reasons = {"not a msgpack-encoded event: Input data was truncated": 2,
               "invalid event: Expected `float` <= 1.0 - at `$.slate[0].propensity`": 1,
               "feedback outside the attribution window: event time 9 is at or after the "
               "window end 8 (window 5000 ms)": 3,
               "late feedback: event time 5 is below the watermark": 1}
    assert split_dead_letters(reasons) == (4, 3)
    assert split_dead_letters({}) == (0, 0)


def test_a_shorter_plan_scales_its_request_floors_and_refuses_a_bad_duration() -> None:
    plan = DemoPlan.quick().scaled(20.0)
    assert (plan.duration_s, plan.holdout_s) == (20.0, 7.5)
    assert (plan.cut_requests, plan.holdout_requests) == (1000, 750)
    for bad in (0.0, -5.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="duration_s: expected a number > 0"):
            DemoPlan.quick().scaled(bad)
    with pytest.raises(ValueError, match="cut_requests: expected an integer >= 0"):
        DemoPlan(cut_requests=-1)


class RoundsOf:
    """Users that serve ``per_round`` requests of one arm every ``every_s`` seconds (the shape
    ``simulators.http_traffic.HttpUsers.run`` hands its ``on_round``)."""

    def __init__(self, per_round: int, every_s: float) -> None:
        self.per_round, self.every_s = per_round, every_s

    def run(self, *, duration_s: float, round_size: int, on_round: Any) -> None:
        from simulators.http_traffic import ArmCounts

        while True:
            time.sleep(self.every_s)
            result = SimpleNamespace(arms={"uniform": ArmCounts(requests=self.per_round)})
            if not on_round(result):
                return


def test_the_time_cut_waits_for_its_requests_on_a_slow_machine() -> None:
    from streaming.demo import Traffic

    traffic = Traffic(RoundsOf(per_round=10, every_s=0.05), DemoPlan.quick(), quiet=True).start()
    try:
        traffic.wait_until(0.1, requests=200)  # 0.1 s would give ~20 requests
        assert traffic.requests() >= 200
        assert traffic.elapsed() >= 200 / 10 * 0.05 * 0.9
        served = traffic.requests()
        traffic.wait_until(traffic.elapsed() + 0.3)  # seconds only: requests already there
        assert traffic.requests() > served
    finally:
        traffic.stop()


def test_several_clicks_per_slate_get_a_conservative_z_and_band() -> None:
    one = report()
    many = report(max_clicks_per_slate=5,
                  late_counts={LEARNING_ARM: (900, 500), CONTROL_ARM: (170, 500)})
    p1, p0 = 900 / 500, 170 / 500
    assert many.z_score() == pytest.approx((p1 - p0) / np.sqrt(p1 / 500 + p0 / 500))
    assert one.z_score() > 3 and many.problems() == []
    h = history().with_columns(clicks=pl.col("clicks") * 3, expected_clicks=pl.col(
        "expected_clicks") * 3)
    curves = arm_curves(h, LEARNING_ARM, window_s=2.0, optimal_value=2.7, max_clicks_per_slate=5)
    assert curves.ctr.max() > 1 and np.all(np.isfinite(curves.ctr_low))
    assert np.all((curves.ctr_low >= 0) & (curves.ctr_low <= curves.ctr)
                  & (curves.ctr <= curves.ctr_high) & (curves.ctr_high <= 5))


def test_held_out_logs_are_the_requests_logged_with_exact_propensities(tmp_path) -> None:
    import fsspec

    from recsys.schema import partition_expressions
    from simulators.logged_data import collect_logs
    from simulators.model import SimulatorConfig, SlateSimulator
    from simulators.policies import UniformPolicy
    from simulators.world import write_world
    from streaming.demo_product import held_out_logs

    config = SimulatorConfig(n_users=30, n_items=8, dim=3, slate_size=2, seed=4)
    logged = collect_logs(SlateSimulator(config), UniformPolicy(8, random_state=0), 60,
                          np.random.default_rng(1), start_time_ms=1_700_000_000_000,
                          ms_per_request=1000)
    ids = logged["request_id"].unique(maintain_order=True)
    learning = pl.col("request_id").is_in(ids[::3].implode())  # a third by a learning arm
    logged = logged.with_columns(
        propensity_se=pl.when(learning).then(0.01).otherwise(pl.col("propensity_se")),
        policy_name=pl.when(learning).then(pl.lit(LEARNING_ARM)).otherwise(pl.lit(CONTROL_ARM)))
    fs, base = fsspec.core.url_to_fs(str(tmp_path))
    for (date, hour), part in logged.with_columns(partition_expressions()).group_by(
            ["event_date", "event_hour"]):
        folder = f"{base}/rewards/event_date={date.isoformat()}/event_hour={hour}"
        fs.makedirs(folder, exist_ok=True)
        part.drop("event_date", "event_hour").write_parquet(f"{folder}/part.parquet")
    write_world(tmp_path, config)

    start = 1_700_000_000_000 + 30_000  # the last 30 requests
    logs, kept = held_out_logs(str(tmp_path), start, start + 10 * 60_000)
    assert kept == {"requests_logged": 30, "requests_kept": 20,
                    "dropped_policies": [LEARNING_ARM]}
    assert logs.n_requests == 20 and logs.world["config"]["seed"] == 4
    assert not set(logs.request_ids.tolist()) & set(ids[::3].to_list())
    with pytest.raises(ValueError, match="no rows"):
        held_out_logs(str(tmp_path), 0, 1000)
