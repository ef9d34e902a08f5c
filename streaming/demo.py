"""``recsys demo``: the closed loop, visibly learning, on embedded defaults.

Starts (or connects to) Kafka, Ray and the mlflow store; runs the streaming pipeline and the
serving app on it (``streaming.live``); the simulator's users (``simulators.http_traffic``) ask
``POST /recommend`` for slates, click with the simulator's choice model and post the clicks to
``POST /feedback``; the stream learns from the logged impressions and clicks and the app scores
with the new snapshots. Traffic is split between Thompson sampling (``diag_lin_ts``) and a
uniformly random control (``uniform``), side by side. A few malformed records go to the input
topics to show the dead-letter path. At the end it measures click → served-score freshness on
probe items, prints a table (CTR of each arm over time, the simulator's true policy values,
regret, freshness, events, dead letters), saves a plot (CTR over time with confidence bands,
cumulative regret), logs everything to mlflow and shuts down what it started. Exit status 0 when
the learning arm clearly beats uniform.

Four steps, one function each: :func:`prepare` (the plan made concrete: world, run folder,
settings, topics), :func:`run_loop` (services up, traffic, measurements, services down),
:func:`build_report` (judgement, table figures, plot, files) and :func:`log_run` (mlflow).
Each run uses its own topics and checkpoint folder (``<data_dir>/demo/<run>``), so runs on a
long-lived broker never see each other's events.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from recsys.commands import add_command
from recsys.config import ServeSettings, Settings, StreamSettings
from recsys.events import Context, Feedback, Impression, SlateEntry, encode
from recsys.progress import progress_bar
from recsys.serving.server import PortInUseError, claim_serve_port
from recsys.tracking import configure_mlflow
from simulators.model import SimulatorConfig, SlateSimulator
from streaming.demo_report import (
    CONTROL_ARM,
    LEARNING_ARM,
    DemoReport,
    ctr_table,
    cumulative_regret,
    print_report,
    save_plot,
)

DEMO_WORLD = SimulatorConfig(n_users=2000, n_items=200, dim=16, slate_size=5,
                             no_click_utility=3.0, affinity=2.0, seed=0)
"""The simulated world: clicks common enough that learning shows within a minute."""


@dataclass(frozen=True)
class DemoPlan:
    """How big and how long: the simulated world (its ``seed`` seeds the whole run) and the
    traffic."""

    world: SimulatorConfig = DEMO_WORLD
    duration_s: float = 180.0
    round_size: int = 50
    concurrency: int = 16
    freshness_probes: int = 30
    bad_records: int = 5

    @property
    def seed(self) -> int:
        return self.world.seed

    @classmethod
    def quick(cls, seed: int = 0) -> DemoPlan:
        """The ≤ 2-minute version (the end-to-end test runs it)."""
        return cls(world=replace(DEMO_WORLD, seed=seed), duration_s=60.0, freshness_probes=10)


@dataclass(frozen=True)
class DemoRun:
    """A plan made concrete by :func:`prepare`: the world, the run's folder, settings and
    topics, and the mlflow experiment it logs to."""

    plan: DemoPlan
    sim: SlateSimulator
    run_id: str
    run_dir: Path
    settings: Settings
    topics: Any
    """The run's own ``streaming.pipeline.Topics``."""
    experiment_id: str


@dataclass
class LoopOutput:
    """What :func:`run_loop` hands to the report step: the figures it measured (the derived
    ones are left for :func:`build_report`) and what the rest is made from."""

    measured: DemoReport
    history: Any
    """Per-round traffic (``simulators.http_traffic.HttpUsers.history``)."""
    statistics: Any
    """The stream's final bandit statistics."""
    policies: dict[str, Any]
    """The serving app's policy specs."""


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
    stream = replace(settings.stream, n_items=plan.world.n_items, dim=n_features, learners=1,
                     shards=2, joiners=1, window_ms=5_000, allowed_lateness_ms=1_000,
                     checkpoint_interval_s=15.0, update_mode="fresh", layout="dense",
                     centred=True)
    serve = replace(settings.serve, user_features_uri=str(run_dir / "users.parquet"),
                    traffic=f"{LEARNING_ARM}=0.5,{CONTROL_ARM}=0.5", policies=None)
    assert isinstance(stream, StreamSettings) and isinstance(serve, ServeSettings)
    return replace(settings, stream=stream, serve=serve)


# -- step 1: plan ------------------------------------------------------------------------------


def prepare(settings: Settings, plan: DemoPlan) -> DemoRun:
    """Build the simulated world, the run's folder (with the user-feature table the app loads),
    its settings and topics, and make sure the mlflow experiment exists."""
    from simulators.http_traffic import write_user_features
    from streaming.pipeline import Topics

    sim = SlateSimulator(plan.world)
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run_dir = (settings.data_dir / "demo" / run_id).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_user_features(sim, run_dir / "users.parquet")
    settings = demo_settings(settings, plan, run_dir, sim.n_features)
    topics = Topics(*(f"demo.{run_id}.{t}" for t in ("impressions", "feedback", "rewards",
                                                     "dead-letter")))
    return DemoRun(plan, sim, run_id, run_dir, settings, topics, configure_mlflow(settings))


# -- step 2: run -------------------------------------------------------------------------------


def run_loop(run: DemoRun, say: Callable[[str], None], *, quiet: bool = False) -> LoopOutput:
    """Start Kafka, Ray, the pipeline and the app; send the malformed records; play the users
    for ``plan.duration_s``; measure freshness and the true values; stop everything."""
    from recsys.producer import EventProducer
    from simulators.http_traffic import HttpUsers
    from streaming.live import live_stack
    from streaming.services import kafka_cluster, ray_runtime
    from streaming.shards import dense_statistics

    plan, sim, settings, topics = run.plan, run.sim, run.settings, run.topics
    say("• starting Kafka, Ray, the streaming pipeline and the serving app")
    began = time.perf_counter()
    with kafka_cluster(settings) as kafka, ray_runtime(settings):
        timings = {"kafka_ray_start_s": time.perf_counter() - began}
        template = dense_statistics(np.arange(plan.world.n_items), sim.n_features)
        with live_stack(settings, kafka.bootstrap, template, str(run.run_dir / "checkpoints"),
                        client_options=kafka.client_options, topics=topics,
                        lake_uri=str(run.run_dir / "lake"),
                        shard_name_prefix=f"demo-{run.run_id}-shard-") as stack:
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
            traffic_s = _play(users, plan, quiet)
            output = _measure(run, stack, kafka, users, traffic_s, say)
            output.measured.timings.update(timings)
            say("• shutting down")
            stopping = time.perf_counter()
    output.measured.timings["shutdown_s"] = time.perf_counter() - stopping
    return output


def _measure(run: DemoRun, stack: Any, kafka: Any, users: Any, traffic_s: float,
             say: Callable[[str], None]) -> LoopOutput:
    """After the traffic: click → served-score freshness, a last checkpoint and the final
    statistics, the true values of what each arm served and would serve, the dead letters."""
    from simulators.ground_truth import optimal_value

    plan, sim = run.plan, run.sim
    say("• measuring click → served-score freshness")
    fresh = _freshness(stack, sim, plan)
    with stack.driver.paused() as pipeline:
        pipeline.checkpoint()
        stats = pipeline.statistics().select(np.arange(plan.world.n_items))
        events = stack.driver.records
    third = max(users.rounds[-1].round_index * 2 // 3, 0) if users.rounds else 0
    totals = users.totals()
    late_values = {arm: users.true_value(arm, third).value
                   for arm in (LEARNING_ARM, CONTROL_ARM) if arm in totals}
    measured = DemoReport(
        run_dir=str(run.run_dir), kafka_origin=kafka.origin, traffic_s=traffic_s,
        requests={a: c.requests for a, c in totals.items()},
        clicks={a: c.clicks for a, c in totals.items()},
        true_value_late=late_values,
        true_value_final=_final_values(sim, stats, stack.service_config, plan),
        optimal_value=optimal_value(sim).value,
        freshness_ms=fresh.percentiles_ms(), freshness_timeouts=fresh.timeouts,
        events_processed=events, bad_records_sent=plan.bad_records,
        dead_letters=_dead_letters(kafka.bootstrap, run.topics.dead_letter,
                                   kafka.client_options),
        http_errors=dict(users.errors.by_status))
    return LoopOutput(measured, users.history(), stats, dict(stack.service_config.policies))


def _play(users: Any, plan: DemoPlan, quiet: bool) -> float:
    """The users' traffic for ``plan.duration_s`` with a progress bar of each arm's CTR so far;
    the seconds it took."""
    bar = progress_bar(total=int(plan.duration_s), desc="traffic", unit="s", disable=quiet,
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
    try:
        users.run(duration_s=plan.duration_s, round_size=plan.round_size, on_round=on_round)
    finally:
        bar.close()
    return time.perf_counter() - started


def _final_values(sim: Any, stats: Any, config: Any, plan: DemoPlan) -> dict[str, float]:
    """True value of each arm's policy on the final statistics, every user served 20 slates."""
    from recsys.bandits import policy_from_spec
    from simulators.ground_truth import policy_value
    from simulators.http_traffic import true_value_of_slates
    from simulators.policies import UniformPolicy

    out = {CONTROL_ARM: policy_value(sim, UniformPolicy(plan.world.n_items,
                                                        random_state=0)).value}
    spec = config.policies[LEARNING_ARM]
    policy = policy_from_spec({**spec, "params": {**spec["params"], "n_mc_draws": 0,
                                                  "random_state": plan.seed}}).use(stats)
    users = np.repeat(np.arange(plan.world.n_users), 20)
    contexts = sim.user_features(users)
    slates = policy.recommend(contexts, plan.world.slate_size).items
    out[LEARNING_ARM] = true_value_of_slates(sim, users, slates).value
    return out


def _freshness(stack: Any, sim: Any, plan: DemoPlan) -> Any:
    """Probe items added now (no rewards yet): click → served score changed, ``plan.freshness_
    probes`` times (``recsys.client.freshness``)."""
    from recsys.client.freshness import measure_freshness, wait_until_served

    probes = list(range(plan.world.n_items, plan.world.n_items + plan.freshness_probes))
    with stack.driver.paused() as pipeline:
        pipeline.add_items(probes)
    context = sim.user_features(np.array([0]))[0].tolist()
    wait_until_served(stack.url, probes[-1], context, policy=CONTROL_ARM)
    return measure_freshness(stack.url, probes, context, policy=CONTROL_ARM)


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


# -- step 3: report ----------------------------------------------------------------------------


def build_report(run: DemoRun, output: LoopOutput) -> DemoReport:
    """Complete the measured report with the figures derived from the history (CTR table, the
    verdict's sample, cumulative regret); write the history, the final statistics and the plot
    into the run's folder."""
    report, history = output.measured, output.history
    report.period_end_s, report.ctr_by_period, report.late_counts = ctr_table(
        history, report.traffic_s)
    report.cumulative_regret = cumulative_regret(history, report.optimal_value)
    history.write_parquet(run.run_dir / "history.parquet")
    output.statistics.save(str(run.run_dir / "final_statistics.npz"))
    report.plot = save_plot(history, report, run.run_dir / "ctr_over_time.png")
    return report


# -- step 4: log -------------------------------------------------------------------------------


def log_run(run: DemoRun, report: DemoReport, policies: dict[str, Any]) -> None:
    """Log the plan, the figures, the CTR table, the plot and the run's files to mlflow, and
    set ``report.mlflow_run_id``."""
    import mlflow

    with mlflow.start_run(experiment_id=run.experiment_id,
                          run_name=f"demo-closed-loop-{run.run_id}") as logged:
        mlflow.set_tags({"recsys.kind": "demo", "kafka.origin": report.kafka_origin})
        plan = {k: v for k, v in asdict(run.plan).items() if k != "world"}
        mlflow.log_params({**{f"plan.{k}": v for k, v in plan.items()},
                           **{f"plan.world.{k}": v for k, v in asdict(run.plan.world).items()},
                           "learning_arm": LEARNING_ARM, "control_arm": CONTROL_ARM,
                           "policies": json.dumps(policies)})
        optimal = report.optimal_value
        metrics = {"z_score": report.z_score(), "optimal_value": optimal,
                   "events_processed": report.events_processed,
                   "dead_letters": report.dead_letters, "traffic_s": report.traffic_s,
                   "wall_s": report.wall_s, "succeeded": float(not report.problems())}
        for arm in report.requests:
            metrics[f"{arm}.requests"] = report.requests[arm]
            metrics[f"{arm}.ctr"] = report.clicks[arm] / max(report.requests[arm], 1)
        for arm, value in report.true_value_late.items():
            metrics[f"{arm}.true_value_late"] = value
            metrics[f"{arm}.regret_late"] = optimal - value
        for arm, value in report.true_value_final.items():
            metrics[f"{arm}.true_value_final"] = value
        for arm, value in report.cumulative_regret.items():
            metrics[f"{arm}.cumulative_regret"] = value
        for name, value in report.freshness_ms.items():
            if math.isfinite(value):
                metrics[f"freshness_{name}_ms"] = value
        mlflow.log_metrics(metrics)
        for period, end in enumerate(report.period_end_s):
            mlflow.log_metrics({f"{arm}.ctr_period": values[period]
                                for arm, values in report.ctr_by_period.items()
                                if math.isfinite(values[period])}, step=int(end))
        mlflow.log_artifact(report.plot)
        mlflow.log_artifact(str(run.run_dir / "history.parquet"))
        mlflow.log_artifact(str(run.run_dir / "final_statistics.npz"))
        report.mlflow_run_id = logged.info.run_id
        mlflow.log_dict(report.to_dict(), "demo_report.json")


def run_demo(settings: Settings, plan: DemoPlan, *, quiet: bool = False) -> DemoReport:
    """Plan, run, report and log the closed loop (see the module docs); the report."""

    def say(message: str) -> None:
        if not quiet:
            print(message, flush=True)

    wall = time.perf_counter()
    run = prepare(settings, plan)
    output = run_loop(run, say, quiet=quiet)
    report = build_report(run, output)
    report.wall_s = time.perf_counter() - wall
    log_run(run, report, output.policies)
    return report


# -- the command -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    settings = claim_serve_port(args.settings, args.port)
    plan = DemoPlan.quick(args.seed) if args.quick else DemoPlan(
        world=replace(DEMO_WORLD, seed=args.seed))
    if args.duration is not None:
        plan = replace(plan, duration_s=args.duration)
    report = run_demo(settings, plan, quiet=args.json)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print_report(report, settings)
    return 0 if not report.problems() else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "demo", run,
        help="the closed loop: simulated users, serving over HTTP, the stream learning online",
        description="Simulated users ask the serving app for slates and click; the stream learns "
                    "from Kafka and the app scores with the new snapshots; Thompson sampling vs "
                    "a uniform control, side by side.",
        expected=(PortInUseError,),
    )
    parser.add_argument("--quick", action="store_true",
                        help="a ≤ 2-minute version (60 s of traffic)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of traffic (default 180, or 60 with --quick)")
    parser.add_argument("--port", type=int, default=None,
                        help="HTTP port of the serving app (default: serve.port, 8000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
