"""``recsys demo``: the whole product on embedded defaults, from simulated users to a promotion.

Starts (or connects to) Kafka, Ray and the mlflow store; runs the streaming pipeline and the
serving app on it (``streaming.live``); the simulator's users (``simulators.http_traffic``) ask
``POST /recommend`` for slates, click with the simulator's choice model and post the clicks to
``POST /feedback``, in a background thread from the first second to the last. Traffic is split in
thirds between Thompson sampling learning online (``diag_lin_ts``), a uniformly random control
(``uniform``) and the ``champion`` arm, which serves whatever version of the registered model
``demo-recommender`` its ``champion`` alias points at (``streaming.demo_product``): at first the
uniform baseline, registered before serving starts.

Phase 1 (``plan.duration_s`` of traffic): the bandit learns from Kafka; the lake fills. At the
time cut (``plan.holdout_s`` before the end of phase 1, and not before ``plan.cut_requests``
requests) the stream's checkpoint is registered as a version (the online snapshot); the next
``plan.holdout_s`` of logs (and at least ``plan.holdout_requests`` requests) are held out. Then,
with traffic going on, an IPS model and a PLD model are trained on the lake's logs before the
cut (``recsys train`` with ``offline/configs/demo_ips.toml`` and ``demo_pld.toml``) and register
their policy forms as versions; every version, the champion and the logging policy are compared
on the held-out logs (the requests logged with exact propensities:
``streaming.demo_product.held_out_logs``) with off-policy estimates, bootstrap intervals and the
simulator's true values (the run writes its ``world.json`` at the lake root); the challenger
with the highest lower bound is promoted when the registry's rule holds, and the serving app
switches without a restart. Phase 2 (``plan.after_s`` of traffic after the switch): the champion
arm serves the new version. At the end it measures click → served-score freshness on probe
items, prints the comparison, the champion, each arm's CTR before and after the switch and the
``mlflow ui`` command, saves the plot (CTR over time with the switch marked, cumulative regret),
logs everything to mlflow and stops what it started. Exit status 0 when
:meth:`DemoReport.problems` finds nothing (``streaming.demo_report``).

Four steps, one function each: :func:`prepare` (the plan made concrete: world, run folder,
settings, topics, the first champion), :func:`run_loop` (services up, the phases, measurements,
services down), :func:`build_report` (judgement, table figures, plot, files) and
:func:`log_run` (mlflow). Each run uses its own topics and folder (``<data_dir>/demo/<run>``), so
runs on a long-lived broker never see each other's events; the registered model is shared by
runs on one mlflow store (each run adds its versions and moves the alias).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from recsys.commands import CommandError, add_command
from recsys.config import ServeSettings, Settings, StreamSettings
from recsys.events import Context, Feedback, Impression, SlateEntry, encode
from recsys.progress import progress_bar
from recsys.serving.server import PortInUseError, claim_serve_port
from recsys.tracking import configure_mlflow, mlflow_ui_command
from simulators.model import SimulatorConfig, SlateSimulator
from streaming import demo_product as product
from streaming.demo_report import (
    CHAMPION_ARM,
    CONTROL_ARM,
    LEARNING_ARM,
    DemoReport,
    before_after,
    ctr_table,
    cumulative_regret,
    print_report,
    save_plot,
    split_dead_letters,
)

DEMO_WORLD = SimulatorConfig(n_users=2000, n_items=200, dim=16, slate_size=5,
                             no_click_utility=3.0, affinity=2.0, choice_model="pbm", seed=0)
"""The simulated world: clicks common enough that learning shows within a minute. Users click
by the position-based model (each shown item independently, ``θ_k σ(s_k − b)``): its reward is
additive over positions, the assumption of the comparison's per-slot estimators, so their
estimates on the demo's own logs are unbiased (under the multinomial-logit model, where items
of a slate compete for one click, they are not)."""


DEMO_RUN_TAG = "recsys.demo_run"
"""Tag of every mlflow run a demo made (value: the run's folder name under ``<data_dir>/demo``)."""


@dataclass(frozen=True)
class DemoPlan:
    """How big and how long: the simulated world (its ``seed`` seeds the whole run) and the
    traffic: ``duration_s`` before the registry steps (phase 1, whose last ``holdout_s`` are
    the held-out logs of the comparison) and ``after_s`` after the switch (phase 2).

    The time cut also waits for ``cut_requests`` requests (all arms) and the held-out window for
    ``holdout_requests`` more: the users are a closed loop, so a slow or busy machine serves
    fewer requests per second, and without these floors its snapshot would have learned from
    less and its comparison would have wider intervals than a quiet machine's. The full plan's
    20,000 and 8,000 sit below what a quiet 2-core machine serves in its seconds (~300 per
    second once warm); the quick plan's 2,000 and 1,500 take it about 25 s each (~65 per
    second while warming up), so its held-out window outlasts ``holdout_s`` and holds enough
    requests for the promotion to be sure."""

    world: SimulatorConfig = DEMO_WORLD
    duration_s: float = 150.0
    holdout_s: float = 40.0
    after_s: float = 100.0
    cut_requests: int = 20_000
    holdout_requests: int = 8_000
    round_size: int = 50
    concurrency: int = 16
    freshness_probes: int = 30
    bad_records: int = 5
    switch_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.holdout_s < self.duration_s:
            raise ValueError(f"holdout_s: expected a number in (0, duration_s = "
                             f"{self.duration_s:g}), got {self.holdout_s!r}")
        if not self.after_s > 0:
            raise ValueError(f"after_s: expected a number > 0, got {self.after_s!r}")
        for name in ("cut_requests", "holdout_requests"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 0):
                raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")

    @property
    def seed(self) -> int:
        return self.world.seed

    @property
    def cut_s(self) -> float:
        """Seconds of traffic at the time cut: the snapshot, and the end of the training logs."""
        return self.duration_s - self.holdout_s

    @classmethod
    def quick(cls, seed: int = 0) -> DemoPlan:
        """The ≤ 3-minute version (the end-to-end test runs it)."""
        return cls(world=replace(DEMO_WORLD, seed=seed), duration_s=40.0, holdout_s=15.0,
                   after_s=20.0, cut_requests=2000, holdout_requests=1500, freshness_probes=10)

    def scaled(self, duration_s: float) -> DemoPlan:
        """The plan with phase 1 lasting ``duration_s``: the held-out share of it and the
        request floors scale with it."""
        if not (isinstance(duration_s, int | float) and math.isfinite(duration_s)
                and duration_s > 0):
            raise ValueError(f"duration_s: expected a number > 0, got {duration_s!r}")
        factor = duration_s / self.duration_s
        return replace(self, duration_s=duration_s, holdout_s=self.holdout_s * factor,
                       cut_requests=round(self.cut_requests * factor),
                       holdout_requests=round(self.holdout_requests * factor))


@dataclass(frozen=True)
class DemoRun:
    """A plan made concrete by :func:`prepare`: the world, the run's folder, settings and
    topics, the mlflow experiment it logs to and the first champion."""

    plan: DemoPlan
    sim: SlateSimulator
    run_id: str
    run_dir: Path
    settings: Settings
    topics: Any
    """The run's own ``streaming.pipeline.Topics``."""
    experiment_id: str
    first_champion: product.Candidate

    @property
    def lake_uri(self) -> str:
        return str(self.run_dir / "lake")


@dataclass
class Timeline:
    """Wall-clock times (``time.time()``) of the run's events, and the time cut in ms."""

    cut: float = math.nan
    holdout_end: float = math.nan
    promoted: float = math.nan
    switched: float = math.nan
    cut_ms: int = 0
    end_ms: int = 0


@dataclass
class ProductOutput:
    """What the registry steps produced (``streaming.demo_product``)."""

    candidates: list[product.Candidate] = field(default_factory=list)
    verdict: Any = None
    """``streaming.demo_product.Verdict``: the comparison, its run, the decision."""
    challenger: product.Candidate | None = None
    timeline: Timeline = field(default_factory=Timeline)
    timings: dict[str, float] = field(default_factory=dict)


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
    """The serving app's policies (specs, and the champion arm's model URI)."""
    product: ProductOutput


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
    """The run's settings: the simulator's catalogue and features, a short attribution window
    (10 s: a user round that stalls on a busy machine still posts its clicks inside it; the
    rewards reach the lake that much later), the user-feature table, and the three arms
    (``streaming.demo_product.serving_arms``)."""
    stream = replace(settings.stream, n_items=plan.world.n_items, dim=n_features, learners=1,
                     shards=2, joiners=1, window_ms=10_000, allowed_lateness_ms=1_000,
                     checkpoint_interval_s=15.0, update_mode="fresh", layout="dense",
                     centred=True, lake_uri=str(run_dir / "lake"),
                     checkpoint_uri=str(run_dir / "checkpoints"))
    assert isinstance(stream, StreamSettings)
    settings = replace(settings, stream=stream)
    policies, traffic = product.serving_arms(settings)
    serve = replace(settings.serve, user_features_uri=str(run_dir / "users.parquet"),
                    traffic=traffic, policies=policies)
    assert isinstance(serve, ServeSettings)
    return replace(settings, serve=serve)


# -- step 1: plan ------------------------------------------------------------------------------


def prepare(settings: Settings, plan: DemoPlan) -> DemoRun:
    """Build the simulated world, the run's folder (with the user-feature table the app loads
    and the world's description at the lake root), its settings and topics; register the
    uniform baseline as the first champion of ``demo-recommender``."""
    from simulators.http_traffic import USER_PREFIX, write_user_features
    from simulators.world import write_world
    from streaming.pipeline import Topics

    sim = SlateSimulator(plan.world)
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run_dir = (settings.data_dir / "demo" / run_id).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_user_features(sim, run_dir / "users.parquet")
    write_world(run_dir / "lake", sim, user_id_prefix=USER_PREFIX)
    settings = demo_settings(settings, plan, run_dir, sim.n_features)
    topics = Topics(*(f"demo.{run_id}.{t}" for t in ("impressions", "feedback", "rewards",
                                                     "dead-letter")))
    experiment_id = configure_mlflow(settings)
    first = product.register_first_champion(settings, np.arange(plan.world.n_items),
                                            seed=plan.seed, log=run_dir / "registry.log")
    return DemoRun(plan, sim, run_id, run_dir, settings, topics, experiment_id, first)


# -- step 2: run -------------------------------------------------------------------------------


class Traffic:
    """The simulated users in a background thread from :meth:`start` to :meth:`stop`, so the
    registry steps run while users keep asking for slates; :meth:`show` puts a progress bar
    (each arm's CTR so far) on the phase being waited for."""

    def __init__(self, users: Any, plan: DemoPlan, quiet: bool) -> None:
        self.users, self.plan, self.quiet = users, plan, quiet
        self.error: BaseException | None = None
        self.started = math.nan
        self._stop = threading.Event()
        self._bar: Any = None
        self._bar_from = 0.0
        self._totals: dict[str, list[int]] = {}
        self._thread = threading.Thread(target=self._run, name="demo-traffic", daemon=True)

    def start(self) -> Traffic:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def requests(self) -> int:
        """Requests served so far, all arms."""
        return sum(requests for _, requests in list(self._totals.values()))

    def _run(self) -> None:
        try:
            self.users.run(duration_s=1e9, round_size=self.plan.round_size,
                           on_round=self._on_round)
        except BaseException as exc:  # surfaced by wait_until() and stop()
            self.error = exc

    def _on_round(self, result: Any) -> bool:
        for arm, counts in result.arms.items():
            t = self._totals.setdefault(arm, [0, 0])
            t[0] += counts.clicks
            t[1] += counts.requests
        bar = self._bar
        if bar is not None:
            bar.n = min(int(self.elapsed() - self._bar_from), bar.total)
            bar.set_postfix_str("  ".join(f"{a} CTR {c / max(n, 1):.3f}"
                                          for a, (c, n) in sorted(self._totals.items())))
        return not self._stop.is_set()

    def _check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"the simulated users failed: {self.error!r}") from self.error
        if not self._thread.is_alive():
            raise RuntimeError("the simulated users stopped before the demo asked them to")

    def wait_until(self, elapsed_s: float, desc: str | None = None, *,
                   requests: int = 0) -> None:
        """Block until ``elapsed_s`` seconds of traffic and ``requests`` requests served in all
        (whichever comes later), with a bar named ``desc`` over the seconds."""
        remaining = elapsed_s - self.elapsed()
        if desc is not None and (remaining > 0 or self.requests() < requests):
            self._bar_from = self.elapsed()
            self._bar = progress_bar(
                total=max(round(remaining), 0), desc=desc, unit="s", disable=self.quiet,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} s {postfix}")
        try:
            while self.elapsed() < elapsed_s or self.requests() < requests:
                self._check()
                time.sleep(0.2)
        finally:
            bar, self._bar = self._bar, None
            if bar is not None:
                bar.n = bar.total
                bar.close()

    def stop(self, timeout_s: float = 60.0) -> float:
        """Let the round in flight finish and stop; the seconds of traffic."""
        self._stop.set()
        self._thread.join(timeout=timeout_s)
        if self.error is not None:
            raise RuntimeError(f"the simulated users failed: {self.error!r}") from self.error
        return self.elapsed()


def run_loop(run: DemoRun, say: Callable[[str], None], *, quiet: bool = False) -> LoopOutput:
    """Start Kafka, Ray, the pipeline and the app; send the malformed records; play the users
    through both phases and the registry steps between them; measure freshness and the true
    values; stop everything."""
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
        with live_stack(settings, kafka.bootstrap, template, settings.checkpoint_uri,
                        client_options=kafka.client_options, topics=topics,
                        lake_uri=run.lake_uri,
                        shard_name_prefix=f"demo-{run.run_id}-shard-") as stack:
            timings.update(stack.timings)
            say(f"  serving at {stack.url} (docs {stack.url}/docs); kafka {kafka.bootstrap} "
                f"({kafka.origin}); champion arm: {product.champion_uri()} = "
                f"{run.first_champion.uri} (uniform)")
            with EventProducer(kafka.bootstrap, **kafka.client_options) as producer:
                for topic, value in bad_records(plan.bad_records, topics.impressions,
                                                topics.feedback):
                    producer.send_raw(topic, b"bad", value)
            users = HttpUsers(stack.url, sim, send_context=False, concurrency=plan.concurrency,
                              seed=plan.seed, token=stack.service_config.serve.auth_token)
            traffic = Traffic(users, plan, quiet).start()
            try:
                outcome = run_phases(run, stack, traffic, say)
            finally:
                traffic_s = traffic.stop()
            output = _measure(run, stack, kafka, users, traffic_s, say)
            output.product = outcome
            output.measured.timings.update({**timings, **outcome.timings})
            say("• shutting down")
            stopping = time.perf_counter()
    output.measured.timings["shutdown_s"] = time.perf_counter() - stopping
    return output


def run_phases(run: DemoRun, stack: Any, traffic: Traffic,
               say: Callable[[str], None]) -> ProductOutput:
    """Phase 1, the registry steps (traffic going on) and phase 2 (module docs)."""
    plan, settings = run.plan, run.settings
    out = ProductOutput(candidates=[run.first_champion])
    t = out.timeline
    say(f"• phase 1: {plan.duration_s:.0f} s of simulated users, {LEARNING_ARM} vs "
        f"{CONTROL_ARM} vs {CHAMPION_ARM}; time cut at {plan.cut_s:.0f} s and at least "
        f"{plan.cut_requests} requests, then {plan.holdout_requests} or more held out")
    traffic.wait_until(plan.cut_s, "phase 1", requests=plan.cut_requests)
    at_cut = traffic.requests()
    t.cut, t.cut_ms = time.time(), int(time.time() * 1000)
    with stack.driver.paused() as pipeline:
        checkpoint = pipeline.checkpoint()
    with _timed(out, "register_snapshot_s"):
        snapshot = product.register_snapshot(settings, checkpoint.checkpoint_id,
                                             settings.checkpoint_uri,
                                             log=run.run_dir / "registry.log")
    out.candidates.append(snapshot)
    say(f"  time cut: online snapshot {snapshot.uri} (checkpoint {checkpoint.checkpoint_id})")
    traffic.wait_until(traffic.elapsed() + plan.holdout_s, "held-out",
                       requests=at_cut + plan.holdout_requests)
    t.holdout_end, t.end_ms = time.time(), int(time.time() * 1000)
    with _timed(out, "settle_training_logs_s"):
        _settle_lake(stack, run.lake_uri, t.cut_ms)
    for kind in product.OFFLINE_KINDS:
        say(f"• training the {kind.upper()} model on the lake's logs before the cut "
            f"(recsys train, offline/configs/demo_{kind}.toml)")
        with _timed(out, f"train_{kind}_s"):
            trained = product.train_offline(settings, kind, run.lake_uri, t.cut_ms, run.run_dir)
        out.candidates.append(trained)
        say(f"  {trained.label}: {trained.uri}")
    with _timed(out, "settle_holdout_logs_s"):
        _settle_lake(stack, run.lake_uri, t.end_ms, since_ms=t.cut_ms)
    say(f"• comparing {', '.join(c.label for c in out.candidates)} and the logging policy on "
        f"the held-out logs")
    with _timed(out, "compare_s"):
        out.verdict = product.compare(settings, run.lake_uri, t.cut_ms, t.end_ms, out.candidates,
                                      truth=world_truth(run), random_state=plan.seed)
    with _timed(out, "promote_s"):
        out.challenger = product.promote_best(settings, out.verdict)
    decision = out.verdict.decision
    t.promoted = time.time()
    say(f"• {'promoted' if decision.applied else 'kept the champion'}: {decision.reason}")
    if decision.applied:
        seen = product.wait_for_switch(stack.url, out.challenger.version,
                                       timeout_s=plan.switch_timeout_s)
        t.switched = math.nan if seen is None else seen
        say(f"  serving switched to {out.challenger.uri} after "
            f"{t.switched - t.promoted:.1f} s" if seen else
            f"  serving did not switch within {plan.switch_timeout_s:.0f} s")
    phase2_from = traffic.elapsed()
    say(f"• phase 2: {plan.after_s:.0f} s more with the champion arm on "
        f"{product.champion_uri()}")
    traffic.wait_until(phase2_from + plan.after_s, "phase 2")
    return out


class _timed:
    """``with _timed(out, key):`` adds the block's seconds to ``out.timings[key]``."""

    def __init__(self, out: ProductOutput, key: str) -> None:
        self.out, self.key = out, key

    def __enter__(self) -> None:
        self.began = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.out.timings[self.key] = time.perf_counter() - self.began


def _settle_lake(stack: Any, lake_uri: str, until_ms: int, *, since_ms: int | None = None,
                 timeout_s: float = 60.0) -> float:
    """Checkpoint until every request logged in ``[since_ms, until_ms)`` has its rewards in the
    lake (a reward is written once its attribution window closed, and reaches the lake after the
    checkpoint that commits it); the share of requests with rewards."""
    deadline = time.monotonic() + timeout_s
    while True:
        with stack.driver.paused() as pipeline:
            pipeline.checkpoint()
        shown, rewarded = product.logged_requests(lake_uri, until_ms, since_ms=since_ms)
        share = rewarded / max(shown, 1)
        if share >= 1.0 or time.monotonic() > deadline:
            return share
        time.sleep(1.0)


def world_truth(run: DemoRun) -> Callable[[str, Any], float]:
    """The true value of a candidate in the run's world as its users meet it
    (``simulators.world``: users by their ids on the wire, bandits' slates without Monte Carlo
    propensities)."""
    from simulators.http_traffic import USER_PREFIX
    from simulators.world import true_value, world_of

    world = world_of(run.sim, user_id_prefix=USER_PREFIX)
    k = run.plan.world.slate_size

    def truth(name: str, candidate: Any) -> float:
        return true_value(world, candidate, k)

    return truth


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
    reasons = _dead_letters(kafka.bootstrap, run.topics.dead_letter, kafka.client_options)
    late, others = split_dead_letters(reasons)
    late_values = {arm: users.true_value(arm, third).value
                   for arm in (LEARNING_ARM, CONTROL_ARM, CHAMPION_ARM) if arm in totals}
    measured = DemoReport(
        run_dir=str(run.run_dir), kafka_origin=kafka.origin, traffic_s=traffic_s,
        requests={a: c.requests for a, c in totals.items()},
        clicks={a: c.clicks for a, c in totals.items()},
        true_value_late=late_values,
        true_value_final=_final_values(sim, stats, stack.service_config, plan),
        optimal_value=optimal_value(sim).value,
        max_clicks_per_slate=(plan.world.slate_size if plan.world.choice_model == "pbm"
                              else 1),
        freshness_ms=fresh.percentiles_ms(), freshness_timeouts=fresh.timeouts,
        events_processed=events, bad_records_sent=plan.bad_records,
        dead_letters=others, late_feedback=late, dead_letter_reasons=reasons,
        http_errors=dict(users.errors.by_status))
    return LoopOutput(measured, users.history(), stats, dict(stack.service_config.policies),
                      ProductOutput())


def _final_values(sim: Any, stats: Any, config: Any, plan: DemoPlan) -> dict[str, float]:
    """True value of each arm's policy on the final statistics, every user served 20 slates."""
    from simulators.ground_truth import policy_value
    from simulators.policies import UniformPolicy

    out = {CONTROL_ARM: policy_value(sim, UniformPolicy(plan.world.n_items,
                                                        random_state=0)).value}
    out[LEARNING_ARM] = _value_on_statistics(sim, config.policies[LEARNING_ARM], stats, plan)
    return out


def _value_on_statistics(sim: Any, spec: dict[str, Any], stats: Any, plan: DemoPlan) -> float:
    """True value of the bandit ``spec`` scoring with ``stats``, every user served 20 slates."""
    from recsys.bandits import policy_from_spec
    from simulators.http_traffic import true_value_of_slates

    params = {**spec["params"], "random_state": plan.seed}
    if "n_mc_draws" in params:
        params["n_mc_draws"] = 0
    policy = policy_from_spec({**spec, "params": params}).use(stats)
    users = np.repeat(np.arange(plan.world.n_users), 20)
    slates = policy.recommend(sim.user_features(users), plan.world.slate_size).items
    return true_value_of_slates(sim, users, slates).value


def _freshness(stack: Any, sim: Any, plan: DemoPlan) -> Any:
    """Probe items added now (no rewards yet): click → served score changed, ``plan.freshness_
    probes`` times (``recsys.client.freshness``)."""
    from recsys.client.freshness import measure_freshness, wait_until_served

    probes = list(range(plan.world.n_items, plan.world.n_items + plan.freshness_probes))
    with stack.driver.paused() as pipeline:
        pipeline.add_items(probes)
    context = sim.user_features(np.array([0]))[0].tolist()
    token = stack.service_config.serve.auth_token
    wait_until_served(stack.url, probes[-1], context, policy=CONTROL_ARM, token=token)
    return measure_freshness(stack.url, probes, context, policy=CONTROL_ARM, token=token)


def _dead_letters(bootstrap: str, topic: str, client_options: dict) -> dict[str, int]:
    """Distinct source records on the dead-letter topic by reason: every role that reads a topic
    (joiner, learner, lake writer) dead-letters a bad record it meets, so one record can appear
    there once per role; it is still one bad record (counted under its first reason)."""
    from kafka import KafkaConsumer, TopicPartition

    from recsys.events import decode_dead_letter
    from recsys.kafka_clients import kafka_python_options

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             **kafka_python_options(client_options))
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        end = consumer.end_offsets([partition])[partition]
        sources: dict[tuple[str, int, int], str] = {}
        deadline = time.monotonic() + 30
        while consumer.position(partition) < end and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    letter = decode_dead_letter(record.value)
                    key = (letter.source_topic, letter.partition, letter.offset)
                    sources.setdefault(key, letter.reason[:200])
        reasons: dict[str, int] = {}
        for reason in sources.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        return reasons
    finally:
        consumer.close()


# -- step 3: report ----------------------------------------------------------------------------


def _elapsed(history: Any, wall: float) -> float:
    """A wall-clock time on the history's axis (seconds since the first round began)."""
    if not math.isfinite(wall) or history.height == 0:
        return math.nan
    first = history.row(0, named=True)
    return float(wall - (first["wall_time_s"] - first["elapsed_s"]))


def build_report(run: DemoRun, output: LoopOutput, settings: Settings) -> DemoReport:
    """Complete the measured report with the figures derived from the history (CTR table, the
    verdict's sample, cumulative regret, before/after the switch) and the registry steps
    (candidates, comparison, champion, the champion arm's versions in the lake); write the
    history, the final statistics and the plot into the run's folder."""
    report, history, made = output.measured, output.history, output.product
    t = made.timeline
    report.period_end_s, report.ctr_by_period, report.late_counts = ctr_table(
        history, report.traffic_s)
    report.cumulative_regret = cumulative_regret(history, report.optimal_value)
    report.phases = {"cut_s": _elapsed(history, t.cut),
                     "holdout_end_s": _elapsed(history, t.holdout_end),
                     "promoted_s": _elapsed(history, t.promoted),
                     "switched_s": _elapsed(history, t.switched)}
    report.holdout_ms = [t.cut_ms, t.end_ms]
    report.candidates = [c.to_dict() for c in made.candidates]
    verdict = made.verdict
    if verdict is not None:
        comparison = verdict.comparison
        report.comparison = product.comparison_rows(comparison)
        report.comparison_summary = {
            "n_requests": comparison.n_requests, "n_rows": comparison.n_rows,
            "len_list": comparison.len_list, "n_actions": comparison.n_actions,
            "alpha": comparison.alpha, "n_bootstrap": comparison.n_bootstrap,
            "primary": settings.registry.estimator, **verdict.logs}
        report.comparison_run_id = verdict.run_id
        decision = verdict.decision
        report.promotion = decision.to_dict() if decision is not None else {}
        report.champion = _champion(settings, made)
    switch_at = report.phases["switched_s"]
    if math.isfinite(switch_at):
        report.switch = {"version": made.challenger.version,
                         "served_after_s": float(t.switched - t.promoted)}
        report.before_after = before_after(history, switch_at)
    served = product.served_versions(run.lake_uri)
    report.champion_served = [
        {"version": str(r["policy_version"]), "requests": int(r["requests"]),
         "first_s": _elapsed(history, r["first_ms"] / 1000),
         "last_s": _elapsed(history, r["last_ms"] / 1000)}
        for r in served.iter_rows(named=True)]
    final = _champion_final_value(run, output, report.champion)
    if final is not None:
        report.true_value_final[CHAMPION_ARM] = final
    report.mlflow_ui = mlflow_ui_command(settings)
    history.write_parquet(run.run_dir / "history.parquet")
    output.statistics.save(str(run.run_dir / "final_statistics.npz"))
    report.plot = save_plot(history, report, run.run_dir / "ctr_over_time.png")
    return report


def _champion_final_value(run: DemoRun, output: LoopOutput, champion: dict[str, Any]
                          ) -> float | None:
    """True value of what the champion arm serves at the end: a bandit version serves its spec
    on the live statistics (``recsys.serving.models``), so it is valued on the final ones; any
    other version serves itself, valued in the comparison."""
    if champion.get("kind") != "online":
        return champion.get("true_value")
    from recsys.registry import load_policy_model

    spec = load_policy_model(champion["uri"]).spec
    return _value_on_statistics(run.sim, spec, output.statistics, run.plan)


def _champion(settings: Settings, made: ProductOutput) -> dict[str, Any]:
    """The version the alias points at after the registry steps, with the candidate it is."""
    from recsys.registry.promotion import champion_version

    version = champion_version(product.SERVING_MODEL, settings.registry.champion_alias)
    by_version = {c.version: c for c in made.candidates}
    candidate = by_version.get(str(version))
    truth = None
    if candidate is not None and made.verdict is not None:
        for result in made.verdict.comparison.candidates:
            if result.name == candidate.label and result.true_value is not None:
                truth = float(result.true_value)
    return {"name": product.SERVING_MODEL, "alias": settings.registry.champion_alias,
            "version": version, "uri": f"models:/{product.SERVING_MODEL}/{version}",
            "candidate": None if candidate is None else candidate.label,
            "kind": None if candidate is None else candidate.kind,
            "true_value": truth,
            "previous_version": made.verdict.decision.champion_version
            if made.verdict is not None and made.verdict.decision is not None else None}


# -- step 4: log -------------------------------------------------------------------------------


def log_run(run: DemoRun, report: DemoReport, policies: dict[str, Any]) -> None:
    """Log the plan, the figures, the CTR table, the plot and the run's files to mlflow, and
    set ``report.mlflow_run_id``."""
    import mlflow

    with mlflow.start_run(experiment_id=run.experiment_id,
                          run_name=f"demo-closed-loop-{run.run_id}") as logged:
        mlflow.set_tags({"recsys.kind": "demo", "kafka.origin": report.kafka_origin,
                         "recsys.comparison_run": report.comparison_run_id,
                         "recsys.champion": str(report.champion.get("uri", ""))})
        plan = {k: v for k, v in asdict(run.plan).items() if k != "world"}
        mlflow.log_params({**{f"plan.{k}": v for k, v in plan.items()},
                           **{f"plan.world.{k}": v for k, v in asdict(run.plan.world).items()},
                           "learning_arm": LEARNING_ARM, "control_arm": CONTROL_ARM,
                           "champion_arm": CHAMPION_ARM, "policies": json.dumps(policies)})
        optimal = report.optimal_value
        metrics = {"z_score": report.z_score(), "optimal_value": optimal,
                   "events_processed": report.events_processed,
                   "dead_letters": report.dead_letters, "late_feedback": report.late_feedback,
                   "traffic_s": report.traffic_s,
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
        for arm, figures in report.before_after.items():
            for key, value in figures.items():
                metrics[f"{arm}.{key}"] = value
        for name, value in {**report.freshness_ms, **report.phases}.items():
            if value is not None and math.isfinite(value):
                metrics[name if name.endswith("_s") else f"freshness_{name}_ms"] = value
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()
                            if v is not None and math.isfinite(float(v))})
        for period, end in enumerate(report.period_end_s):
            mlflow.log_metrics({f"{arm}.ctr_period": values[period]
                                for arm, values in report.ctr_by_period.items()
                                if math.isfinite(values[period])}, step=int(end))
        mlflow.log_artifact(report.plot)
        mlflow.log_artifact(str(run.run_dir / "history.parquet"))
        mlflow.log_artifact(str(run.run_dir / "final_statistics.npz"))
        report.mlflow_run_id = logged.info.run_id
        mlflow.log_dict(report.to_dict(), "demo_report.json")
    tag_runs(run.run_id, [report.mlflow_run_id, report.comparison_run_id,
                          *(c["run_id"] for c in report.candidates)])


def tag_runs(demo_id: str, run_ids: list[str | None]) -> None:
    """Tag every mlflow run of this demo (its own, the registrations, the offline trainings, the
    comparison) ``recsys.demo_run=<demo id>``: one filter in the UI shows them together."""
    from mlflow import MlflowClient

    client = MlflowClient()
    for run_id in dict.fromkeys(r for r in run_ids if r):
        client.set_tag(run_id, DEMO_RUN_TAG, demo_id)


def quiet_mlflow() -> None:
    """Keep mlflow's per-model chatter (artifact download bars, registry notices, input example
    validation) out of the demo's output: the report names every version it registered."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "mlflow.pyfunc", "mlflow.tracking", "mlflow.store", "mlflow.models"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_demo(settings: Settings, plan: DemoPlan, *, quiet: bool = False) -> DemoReport:
    """Plan, run, report and log the whole product (see the module docs); the report."""

    def say(text: str) -> None:
        if not quiet:
            print(text, flush=True)

    quiet_mlflow()
    wall = time.perf_counter()
    run = prepare(settings, plan)
    output = run_loop(run, say, quiet=quiet)
    report = build_report(run, output, run.settings)
    report.wall_s = time.perf_counter() - wall
    log_run(run, report, output.policies)
    return report


# -- the command -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    settings = claim_serve_port(args.settings, args.port)
    plan = DemoPlan.quick(args.seed) if args.quick else DemoPlan(
        world=replace(DEMO_WORLD, seed=args.seed))
    try:
        if args.duration is not None:
            plan = plan.scaled(args.duration)
        if args.after is not None:
            plan = replace(plan, after_s=args.after)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    report = run_demo(settings, plan, quiet=args.json)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print_report(report, settings)
    return 0 if not report.problems() else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "demo", run,
        help="the whole product: users, serving, online learning, offline models, the registry, "
             "a comparison and a promotion",
        description="Simulated users ask the serving app for slates and click; the stream learns "
                    "from Kafka; the online snapshot and offline IPS and PLD models are "
                    "registered, compared on held-out logs with the simulator's truth, and the "
                    "best is promoted; serving switches without a restart.",
        expected=(PortInUseError,),
    )
    parser.add_argument("--quick", action="store_true",
                        help="a ≤ 3-minute version (40 + 20 s of traffic)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of traffic before the registry steps (default 150, or 40 "
                             "with --quick); the last quarter or so is held out. A slow machine "
                             "runs longer: the cut and the held-out window also wait for a "
                             "number of requests that scales with this")
    parser.add_argument("--after", type=float, default=None,
                        help="seconds of traffic after the switch (default 100, or 20 with "
                             "--quick)")
    parser.add_argument("--port", type=int, default=None,
                        help="HTTP port of the serving app (default: serve.port, 8000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
