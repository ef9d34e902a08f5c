"""``recsys demo``: the closed loop, visibly learning, on embedded defaults.

Starts (or connects to) Kafka, Ray and the mlflow store; runs the streaming pipeline and the
serving app on it (``streaming.live``); the simulator's users (``simulators.http_traffic``) ask
``POST /recommend`` for slates, click with the simulator's choice model and post the clicks to
``POST /feedback``; the stream learns from the logged impressions and clicks and the app scores
with the new snapshots. Traffic is split between Thompson sampling (``diag_lin_ts``) and a
uniformly random control (``uniform``), side by side. A few malformed records go to the input
topics to show the dead-letter path. At the end it measures click → served-score freshness on
probe items, prints a table (CTR of each arm over time, the simulator's true policy values,
regret, freshness, events, dead letters), saves a plot of CTR over time, logs everything to mlflow
and shuts down what it started. Exit status 0 when the learning arm clearly beats uniform.

Each run uses its own topics and checkpoint folder (``<data_dir>/demo/<run>``), so runs on a
long-lived broker never see each other's events.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from recsys.config import ServeSettings, Settings, StreamSettings
from recsys.events import Context, Feedback, Impression, SlateEntry, encode
from recsys.tracking import configure_mlflow, mlflow_ui_command

LEARNING_ARM = "diag_lin_ts"
CONTROL_ARM = "uniform"
PERIODS = 6
"""The run is cut into this many equal periods for the CTR-over-time table and plot."""


@dataclass(frozen=True)
class DemoPlan:
    """How big and how long: the simulated world and the traffic."""

    duration_s: float = 180.0
    n_users: int = 2000
    n_items: int = 200
    dim: int = 16
    slate_size: int = 5
    no_click_utility: float = 3.0
    affinity: float = 2.0
    round_size: int = 50
    concurrency: int = 16
    freshness_probes: int = 30
    bad_records: int = 5
    seed: int = 0

    @classmethod
    def quick(cls, seed: int = 0) -> DemoPlan:
        """The ≤ 2-minute version (the end-to-end test runs it)."""
        return cls(duration_s=60.0, freshness_probes=10, seed=seed)


@dataclass
class DemoReport:
    """What one run measured; :meth:`problems` judges it."""

    run_dir: str
    kafka_origin: str
    requests: dict[str, int]
    clicks: dict[str, int]
    ctr_by_period: dict[str, list[float]]
    period_end_s: list[float]
    true_value_late: dict[str, float]
    """The simulator's true value of the slates each arm served in the last third of the run."""
    true_value_final: dict[str, float]
    """True value of each arm's policy on the final statistics (uniform: exact)."""
    optimal_value: float
    freshness_ms: dict[str, float]
    freshness_timeouts: int
    events_processed: int
    bad_records_sent: int
    dead_letters: int
    http_errors: dict[str, int]
    traffic_s: float
    late_counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    """(clicks, requests) per arm over the second half of the run (the verdict's sample)."""
    wall_s: float = 0.0
    plot: str = ""
    mlflow_run_id: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def z_score(self) -> float:
        """Two-proportion z of learning vs uniform CTR over the second half of the run."""
        late = self.late_counts
        if LEARNING_ARM not in late or CONTROL_ARM not in late:
            return float("nan")
        (c1, n1), (c0, n0) = late[LEARNING_ARM], late[CONTROL_ARM]
        if n1 == 0 or n0 == 0:
            return float("nan")
        p1, p0, p = c1 / n1, c0 / n0, (c1 + c0) / (n1 + n0)
        se = math.sqrt(max(p * (1 - p) * (1 / n1 + 1 / n0), 1e-12))
        return (p1 - p0) / se

    def problems(self) -> list[str]:
        """Every way the run failed the demo's rule, in words; empty when it succeeded: the
        learning arm clearly beats uniform (observed CTR, z > 3, and true value), nothing bad was
        lost (every malformed record dead-lettered), no 5xx."""
        out = []
        z = self.z_score()
        if not z > 3:
            out.append(f"the learning arm does not clearly beat uniform on observed CTR "
                       f"(z = {z:.2f}, need > 3)")
        late = self.true_value_late
        if not late.get(LEARNING_ARM, 0) > late.get(CONTROL_ARM, 1):
            out.append(f"the learning arm's true value {late.get(LEARNING_ARM)} is not above "
                       f"uniform's {late.get(CONTROL_ARM)}")
        if self.dead_letters != self.bad_records_sent:
            out.append(f"{self.dead_letters} dead letters for {self.bad_records_sent} malformed "
                       "records")
        fives = {s: n for s, n in self.http_errors.items() if s.startswith("5")}
        if fives:
            out.append(f"server errors: {fives}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "z_score": self.z_score(), "problems": self.problems()}


def bad_records(n: int, impressions: str, feedback: str) -> list[tuple[str, bytes]]:
    """What a broken or hostile producer might send: garbage, wrong types, bad ranges."""
    out_of_range = Impression(
        request_id="bad-propensity", event_time_ms=1, user_id="u", context=Context(),
        policy_name="demo", policy_version=1,
        slate=(SlateEntry(item_id=1, position=0, score=0.0, propensity=1.5),))
    wrong_topic = Feedback(request_id="misrouted", event_time_ms=1, user_id="u", item_id=1,
                           position=0, event_type="click")
    samples = [
        (impressions, b"\x00\xffnot msgpack at all"),
        (impressions, encode(out_of_range)),
        (impressions, encode(wrong_topic)),
        (feedback, b'{"json": "is not our codec"}'),
        (feedback, b""),
    ]
    return [samples[i % len(samples)] for i in range(n)]


def demo_settings(settings: Settings, plan: DemoPlan, run_dir: Path, n_features: int) -> Settings:
    """The run's settings: the simulator's catalogue and features, a short attribution window,
    the user-feature table, and the two arms."""
    from dataclasses import replace

    stream = replace(settings.stream, n_items=plan.n_items, dim=n_features, learners=1,
                     shards=2, joiners=1, window_ms=5_000, allowed_lateness_ms=1_000,
                     checkpoint_interval_s=15.0, update_mode="fresh", layout="dense",
                     centred=True)
    serve = replace(settings.serve, user_features_uri=str(run_dir / "users.parquet"),
                    traffic=f"{LEARNING_ARM}=0.5,{CONTROL_ARM}=0.5", policies=None)
    assert isinstance(stream, StreamSettings) and isinstance(serve, ServeSettings)
    return replace(settings, stream=stream, serve=serve)


def _periods(history: Any, traffic_s: float) -> tuple[list[float], dict[str, list[float]],
                                                      dict[str, tuple[int, int]]]:
    import polars as pl

    edges = [traffic_s * (i + 1) / PERIODS for i in range(PERIODS)]
    framed = history.with_columns(
        period=(pl.col("elapsed_s") / max(traffic_s, 1e-9) * PERIODS).floor().clip(0, PERIODS - 1)
        .cast(pl.Int64))
    by = framed.group_by("arm", "period").agg(pl.col("clicks").sum(), pl.col("requests").sum())
    ctr: dict[str, list[float]] = {}
    late: dict[str, tuple[int, int]] = {}
    for arm in sorted(set(by["arm"].to_list())):
        rows = {r["period"]: r for r in by.filter(pl.col("arm") == arm).iter_rows(named=True)}
        ctr[arm] = [rows[p]["clicks"] / rows[p]["requests"] if p in rows and rows[p]["requests"]
                    else float("nan") for p in range(PERIODS)]
        second = [rows[p] for p in range(PERIODS // 2, PERIODS) if p in rows]
        late[arm] = (sum(r["clicks"] for r in second), sum(r["requests"] for r in second))
    return edges, ctr, late


def _final_values(sim: Any, stats: Any, config: Any, plan: DemoPlan) -> dict[str, float]:
    """True value of each arm's policy on the final statistics, every user served 20 slates."""
    from recsys.bandits import policy_from_spec
    from simulators.ground_truth import policy_value
    from simulators.http_traffic import true_value_of_slates
    from simulators.policies import UniformPolicy

    out = {CONTROL_ARM: policy_value(sim, UniformPolicy(plan.n_items, random_state=0)).value}
    spec = config.policies[LEARNING_ARM]
    policy = policy_from_spec({**spec, "params": {**spec["params"], "n_mc_draws": 0,
                                                  "random_state": plan.seed}}).use(stats)
    users = np.repeat(np.arange(plan.n_users), 20)
    contexts = sim.user_features(users)
    slates = policy.recommend(contexts, plan.slate_size).items
    out[LEARNING_ARM] = true_value_of_slates(sim, users, slates).value
    return out


def _freshness(stack: Any, sim: Any, plan: DemoPlan) -> Any:
    """Probe items added now (no rewards yet): click → served score changed, ``plan.freshness_
    probes`` times (``recsys.client.freshness``)."""
    from recsys.client.freshness import measure_freshness, wait_until_served

    probes = list(range(plan.n_items, plan.n_items + plan.freshness_probes))
    with stack.driver.paused() as pipeline:
        pipeline.add_items(probes)
    context = sim.user_features(np.array([0]))[0].tolist()
    wait_until_served(stack.url, probes[-1], context, policy=CONTROL_ARM)
    return measure_freshness(stack.url, probes, context, policy=CONTROL_ARM)


def _save_plot(report: DemoReport, path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for arm, values in report.ctr_by_period.items():
        ax.plot(report.period_end_s, values, marker="o", label=f"{arm} (observed CTR)")
    for arm, value in report.true_value_late.items():
        ax.axhline(value, linestyle=":", linewidth=1,
                   color="C0" if arm == LEARNING_ARM else "C1",
                   label=f"{arm} (true value, last third)")
    ax.axhline(report.optimal_value, color="grey", linestyle="--", linewidth=1,
               label="optimal (true value)")
    ax.set_xlabel("seconds of traffic")
    ax.set_ylabel("clicks per slate")
    ax.set_title("recsys demo: Thompson sampling learning online vs a uniform control")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def run_demo(settings: Settings, plan: DemoPlan, *, quiet: bool = False) -> DemoReport:
    """Run the closed loop (see the module docs); returns the report, also logged to mlflow."""
    import mlflow
    import ray

    from recsys.producer import EventProducer
    from simulators.http_traffic import HttpUsers, write_user_features
    from simulators.model import SimulatorConfig, SlateSimulator
    from streaming.live import live_stack
    from streaming.pipeline import Topics
    from streaming.services import kafka_cluster, ray_runtime
    from streaming.shards import dense_statistics

    def say(message: str) -> None:
        if not quiet:
            print(message, flush=True)

    wall = time.perf_counter()
    sim = SlateSimulator(SimulatorConfig(
        n_users=plan.n_users, n_items=plan.n_items, dim=plan.dim, slate_size=plan.slate_size,
        no_click_utility=plan.no_click_utility, affinity=plan.affinity, seed=plan.seed))
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run_dir = (settings.data_dir / "demo" / run_id).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_user_features(sim, run_dir / "users.parquet")
    settings = demo_settings(settings, plan, run_dir, sim.n_features)
    topics = Topics(*(f"demo.{run_id}.{t}" for t in ("impressions", "feedback", "rewards",
                                                     "dead-letter")))
    experiment_id = configure_mlflow(settings)
    timings: dict[str, float] = {}
    say("• starting Kafka, Ray, the streaming pipeline and the serving app")
    began = time.perf_counter()
    with kafka_cluster(settings) as kafka, ray_runtime(settings):
        timings["kafka_ray_start_s"] = time.perf_counter() - began
        template = dense_statistics(np.arange(plan.n_items), sim.n_features)
        with live_stack(settings, kafka.bootstrap, template, str(run_dir / "checkpoints"),
                        client_options=kafka.client_options, topics=topics,
                        lake_uri=str(run_dir / "lake"),
                        shard_name_prefix=f"demo-{run_id}-shard-") as stack:
            timings.update(stack.timings)
            say(f"  serving at {stack.url} (docs {stack.url}/docs); kafka {kafka.bootstrap} "
                f"({kafka.origin})")
            with EventProducer(kafka.bootstrap, **kafka.client_options) as producer:
                for topic, value in bad_records(plan.bad_records, topics.impressions,
                                                topics.feedback):
                    producer.send_raw(topic, b"bad", value)
            users = HttpUsers(stack.url, sim, send_context=False, concurrency=plan.concurrency,
                              seed=plan.seed)
            say(f"• {plan.duration_s:.0f} s of simulated users: {LEARNING_ARM} vs {CONTROL_ARM}")
            bar = tqdm(total=int(plan.duration_s), unit="s", disable=quiet,
                       bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} s {postfix}")
            totals: dict[str, list[int]] = {}

            def on_round(result: Any) -> None:
                for arm, counts in result.arms.items():
                    t = totals.setdefault(arm, [0, 0])
                    t[0] += counts.clicks
                    t[1] += counts.requests
                bar.n = min(int(result.elapsed_s), bar.total)
                bar.set_postfix_str("  ".join(f"{a} CTR {c / max(n, 1):.3f}"
                                              for a, (c, n) in sorted(totals.items())))

            started = time.perf_counter()
            users.run(duration_s=plan.duration_s, round_size=plan.round_size, on_round=on_round)
            traffic_s = time.perf_counter() - started
            bar.close()
            say("• measuring click → served-score freshness")
            fresh = _freshness(stack, sim, plan)
            with stack.driver.paused() as pipeline:
                pipeline.checkpoint()
                stats = pipeline.statistics()
                events = stack.driver.records
            history = users.history()
            third = max(users.rounds[-1].round_index * 2 // 3, 0) if users.rounds else 0
            late_values = {arm: users.true_value(arm, third).value
                           for arm in (LEARNING_ARM, CONTROL_ARM) if arm in users.totals()}
            final_values = _final_values(sim, stats.select(np.arange(plan.n_items)),
                                         stack.service_config, plan)
            from simulators.ground_truth import optimal_value

            optimal = optimal_value(sim).value
            dead = _dead_letters(kafka.bootstrap, topics.dead_letter, kafka.client_options)
            edges, ctr, late = _periods(history, traffic_s)
            totals_ = users.totals()
            report = DemoReport(
                run_dir=str(run_dir), kafka_origin=kafka.origin,
                requests={a: c.requests for a, c in totals_.items()},
                clicks={a: c.clicks for a, c in totals_.items()},
                ctr_by_period=ctr, period_end_s=edges, true_value_late=late_values,
                true_value_final=final_values, optimal_value=optimal,
                freshness_ms=fresh.percentiles_ms(), freshness_timeouts=fresh.timeouts,
                events_processed=events, bad_records_sent=plan.bad_records, dead_letters=dead,
                http_errors=dict(users.errors.by_status), traffic_s=traffic_s,
                late_counts=late, timings=timings)
            history.write_parquet(run_dir / "history.parquet")
            stats.save(str(run_dir / "final_statistics.npz"))
        say("• shutting down")
    report.plot = _save_plot(report, run_dir / "ctr_over_time.png")
    report.wall_s = time.perf_counter() - wall
    with mlflow.start_run(experiment_id=experiment_id,
                          run_name=f"demo-closed-loop-{run_id}") as run:
        mlflow.set_tags({"recsys.kind": "demo", "kafka.origin": kafka.origin})
        mlflow.log_params({**{f"plan.{k}": v for k, v in asdict(plan).items()},
                           "learning_arm": LEARNING_ARM, "control_arm": CONTROL_ARM,
                           "policies": json.dumps(stack.service_config.policies)})
        metrics = {"z_score": report.z_score(), "optimal_value": optimal,
                   "events_processed": events, "dead_letters": dead,
                   "traffic_s": traffic_s, "wall_s": report.wall_s,
                   "succeeded": float(not report.problems())}
        for arm in report.requests:
            metrics[f"{arm}.requests"] = report.requests[arm]
            metrics[f"{arm}.ctr"] = report.clicks[arm] / max(report.requests[arm], 1)
        for arm, value in late_values.items():
            metrics[f"{arm}.true_value_late"] = value
            metrics[f"{arm}.regret_late"] = optimal - value
        for arm, value in final_values.items():
            metrics[f"{arm}.true_value_final"] = value
        for name, value in report.freshness_ms.items():
            if math.isfinite(value):
                metrics[f"freshness_{name}_ms"] = value
        mlflow.log_metrics(metrics)
        for period, end in enumerate(edges):
            mlflow.log_metrics({f"{arm}.ctr_period": values[period]
                                for arm, values in ctr.items() if math.isfinite(values[period])},
                               step=int(end))
        mlflow.log_artifact(report.plot)
        mlflow.log_artifact(str(run_dir / "history.parquet"))
        mlflow.log_artifact(str(run_dir / "final_statistics.npz"))
        report.mlflow_run_id = run.info.run_id
        mlflow.log_dict(report.to_dict(), "demo_report.json")
    _ = ray  # imported for its side effect of being available to the stack
    return report


def _dead_letters(bootstrap: str, topic: str, client_options: dict) -> int:
    """Distinct source records on the dead-letter topic: every role that reads a topic (joiner,
    learner, lake writer) dead-letters a bad record it meets, so one record can appear there
    once per role; it is still one bad record."""
    from kafka import KafkaConsumer, TopicPartition

    from recsys.events import decode_dead_letter

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             **client_options)
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        end = consumer.end_offsets([partition])[partition]
        sources: set[tuple[str, int, int]] = set()
        deadline = time.monotonic() + 30
        while consumer.position(partition) < end and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    letter = decode_dead_letter(record.value)
                    sources.add((letter.source_topic, letter.partition, letter.offset))
        return len(sources)
    finally:
        consumer.close()


def print_report(report: DemoReport, settings: Settings) -> None:
    arms = sorted(report.requests, key=lambda a: a != LEARNING_ARM)
    width = 12
    print()
    print("CTR (clicks per slate) over time")
    print(f"  {'until':>8} " + "".join(f"{a:>{width + 4}}" for a in arms))
    for period, end in enumerate(report.period_end_s):
        print(f"  {end:>7.0f}s " + "".join(f"{report.ctr_by_period[a][period]:>{width + 4}.3f}"
                                           for a in arms))
    print()
    print(f"  {'':<40}" + "".join(f"{a:>{width + 4}}" for a in arms))
    rows = [
        ("requests", {a: f"{report.requests[a]:,}" for a in arms}),
        ("observed CTR", {a: f"{report.clicks[a] / max(report.requests[a], 1):.3f}"
                          for a in arms}),
        ("true value of slates served, last third", {a: f"{report.true_value_late.get(a, 0):.3f}"
                                                      for a in arms}),
        ("regret per slate, last third", {a: f"{report.optimal_value - report.true_value_late.get(a, 0):.3f}"  # noqa: E501
                                          for a in arms}),
        ("true value of the final policy", {a: f"{report.true_value_final.get(a, 0):.3f}"
                                            for a in arms}),
    ]
    for name, values in rows:
        print(f"  {name:<40}" + "".join(f"{values[a]:>{width + 4}}" for a in arms))
    print(f"  {'optimal value (simulator)':<40}{report.optimal_value:>{width + 4}.3f}")
    f = report.freshness_ms
    print(f"\n  freshness, click → served score changed: p50 {f['p50']:.0f} ms, p99 "
          f"{f['p99']:.0f} ms, max {f['max']:.0f} ms ({report.freshness_timeouts} timeouts)")
    print(f"  events processed by the stream: {report.events_processed:,}; dead-lettered "
          f"records {report.dead_letters} (of {report.bad_records_sent} malformed sent); HTTP "
          f"errors {report.http_errors or 'none'}")
    print(f"  z (learning vs uniform, second half): {report.z_score():.1f}; traffic "
          f"{report.traffic_s:.0f} s, wall {report.wall_s:.0f} s")
    print(f"  plot {report.plot}")
    print(f"  mlflow run {report.mlflow_run_id}: {mlflow_ui_command(settings)}")
    problems = report.problems()
    if problems:
        print("\nFAILED: " + "; ".join(problems))
    else:
        print("\nOK: the learning arm clearly beats uniform; nothing lost, bad input "
              "dead-lettered")


def run(args: argparse.Namespace) -> int:
    plan = DemoPlan.quick(args.seed) if args.quick else DemoPlan(seed=args.seed)
    if args.duration is not None:
        from dataclasses import replace

        plan = replace(plan, duration_s=args.duration)
    report = run_demo(args.settings, plan, quiet=args.json)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print_report(report, args.settings)
    return 0 if not report.problems() else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the closed loop: simulated users, serving over HTTP, the stream learning online",
        description="Simulated users ask the serving app for slates and click; the stream learns "
                    "from Kafka and the app scores with the new snapshots; Thompson sampling vs "
                    "a uniform control, side by side.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="a ≤ 2-minute version (60 s of traffic)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of traffic (default 180, or 60 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)
