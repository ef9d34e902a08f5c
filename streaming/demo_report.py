"""What ``recsys demo`` shows: its report (and the rule that judges it), the tables printed at
the end (each arm over time, the comparison of the registered candidates, the champion) and the
plot of the arms over time with the switch of the champion marked, from the per-round traffic
history and the registry steps (``streaming.demo_product``).

The history has one row per (round, arm): ``elapsed_s``, ``requests``, ``clicks`` and
``expected_clicks`` (the choice model's click probability of each served slate, summed: the
true value of what was served). Regret is expected clicks lost against the simulator's optimal
policy: ``optimal value × requests − expected clicks``, summed over rounds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from streaming.demo_product import CHAMPION_ARM, SERVING_MODEL
from streaming.join import Reason

LEARNING_ARM = "diag_lin_ts"
CONTROL_ARM = "uniform"
KINDS = ("online", "offline", "baseline")
"""The comparison must hold candidates of every kind."""
PERIODS = 6
"""The run is cut into this many equal periods for the CTR-over-time table."""
Z_NEEDED = 3.0
AB_POOLED = ("pooled: both arms share one learner; biased by the training loop (Si et al. 2023; "
             "the simulator's bias table: tests/benchmarks/bench_ab_interference.py)")
"""What the demo's A/B figures (each arm's CTR, z, true values served) estimate: the learning arm
learns from every arm's logs, uniform's exploration included, so its A/B figures are not those of
Thompson sampling alone at full traffic (``recsys.ab_weighting`` has the weighted training)."""
COLOURS = {LEARNING_ARM: "C0", CONTROL_ARM: "C1", CHAMPION_ARM: "C2"}
MAX_LATE_SHARE = 0.01
"""The share of clicks that may reach the joiner after their attribution window before the run
fails (``DemoReport.late_feedback``)."""
LATE_REASONS = (Reason.LATE_FEEDBACK, Reason.OUTSIDE_WINDOW)


def is_late_feedback(reason: str) -> bool:
    """Whether a dead letter's reason says its feedback came after the attribution window
    (``streaming.join.Reason``: past the watermark, or after the window's end)."""
    return reason.startswith(LATE_REASONS)


def split_dead_letters(reasons: dict[str, int]) -> tuple[int, int]:
    """(late feedback, every other dead letter) from counts of dead letters by reason."""
    late = sum(n for reason, n in reasons.items() if is_late_feedback(reason))
    return late, sum(reasons.values()) - late


@dataclass
class DemoReport:
    """What one run measured; :meth:`problems` judges it."""

    run_dir: str
    kafka_origin: str
    requests: dict[str, int]
    clicks: dict[str, int]
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
    """Dead-lettered records other than late feedback: the malformed ones the run sent, and
    anything else that should not have been there."""
    http_errors: dict[str, int]
    traffic_s: float
    max_clicks_per_slate: int = 1
    """1 when the world's users click at most once per slate (MNL), else the slate size (PBM):
    it decides the z statistic and the plot's bands."""
    period_end_s: list[float] = field(default_factory=list)
    ctr_by_period: dict[str, list[float]] = field(default_factory=dict)
    """Each arm's CTR in each of :data:`PERIODS` equal periods, ending at ``period_end_s``."""
    late_counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    """(clicks, requests) per arm over the second half of the run (the verdict's sample)."""
    cumulative_regret: dict[str, float] = field(default_factory=dict)
    """Expected clicks each arm lost against the optimal policy over the whole run."""
    wall_s: float = 0.0
    plot: str = ""
    mlflow_run_id: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds of traffic at the time cut (``cut_s``), the end of the held-out logs
    (``holdout_end_s``), the promotion (``promoted_s``) and the switch seen by serving
    (``switched_s``)."""
    holdout_ms: list[int] = field(default_factory=list)
    """The held-out logs' ``[start, end)`` in epoch ms (the training logs end at the start)."""
    candidates: list[dict[str, Any]] = field(default_factory=list)
    """Every registered version compared: label, kind, uri, version, run id, details."""
    comparison: list[dict[str, Any]] = field(default_factory=list)
    """One row per (candidate, estimator): kind, model version, value, lower, upper, truth."""
    comparison_summary: dict[str, Any] = field(default_factory=dict)
    comparison_run_id: str = ""
    promotion: dict[str, Any] = field(default_factory=dict)
    """The rule's decision (``recsys.registry.promotion.Decision.to_dict``)."""
    champion: dict[str, Any] = field(default_factory=dict)
    """The version the champion alias points at after the run: name, version, uri, candidate,
    kind, true value, previous version."""
    switch: dict[str, Any] = field(default_factory=dict)
    """The version serving switched to and the seconds from the alias move to serving it."""
    before_after: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per arm, before and after the switch: requests, observed CTR, true value served."""
    champion_served: list[dict[str, Any]] = field(default_factory=list)
    """The champion arm's impressions in the lake by version: requests, first and last second."""
    mlflow_ui: str = ""
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    """Distinct dead-lettered source records by (the first) reason."""
    late_feedback: int = 0
    """Clicks dead-lettered because they reached the joiner after their attribution window
    (:func:`is_late_feedback`): a user round that stalled longer than the window on a busy
    machine. Not malformed and not lost (the dead-letter topic holds them), but a share above
    :data:`MAX_LATE_SHARE` of all clicks would bias what the bandit learned."""
    ab_estimate: str = AB_POOLED
    """Which estimate the A/B figures are (:data:`AB_POOLED`: the learner trains on pooled logs)."""

    def z_score(self) -> float:
        """z of learning vs uniform clicks per slate over the second half of the run: the
        pooled two-proportion z when a slate gets at most one click, else with each arm's
        variance bounded by its mean (clicks per slate are a sum of independent clicks, whose
        variance is at most their mean), which only makes z smaller."""
        late = self.late_counts
        if LEARNING_ARM not in late or CONTROL_ARM not in late:
            return float("nan")
        (c1, n1), (c0, n0) = late[LEARNING_ARM], late[CONTROL_ARM]
        if n1 == 0 or n0 == 0:
            return float("nan")
        p1, p0, p = c1 / n1, c0 / n0, (c1 + c0) / (n1 + n0)
        if self.max_clicks_per_slate == 1:
            se = math.sqrt(max(p * (1 - p) * (1 / n1 + 1 / n0), 1e-12))
        else:
            se = math.sqrt(max(p1 / n1 + p0 / n0, 1e-12))
        return (p1 - p0) / se

    def problems(self) -> list[str]:
        """Every way the run failed the demo's rule, in words; empty when it succeeded: the
        learning arm clearly beats uniform (observed CTR, z > 3, and true value), nothing bad was
        lost (every malformed record dead-lettered), no 5xx."""
        out = []
        z = self.z_score()
        if not z > Z_NEEDED:
            out.append(f"the learning arm does not clearly beat uniform on observed CTR "
                       f"(z = {z:.2f}, need > {Z_NEEDED:g})")
        late = self.true_value_late
        if not late.get(LEARNING_ARM, 0) > late.get(CONTROL_ARM, 1):
            out.append(f"the learning arm's true value {late.get(LEARNING_ARM)} is not above "
                       f"uniform's {late.get(CONTROL_ARM)}")
        if self.dead_letters != self.bad_records_sent:
            out.append(f"{self.dead_letters} dead letters for {self.bad_records_sent} malformed "
                       f"records ({self.dead_letter_reasons or 'no reasons read'})")
        clicks = sum(self.clicks.values())
        if self.late_feedback > MAX_LATE_SHARE * clicks:
            out.append(f"{self.late_feedback} of {clicks} clicks reached the joiner after their "
                       f"attribution window (more than {MAX_LATE_SHARE:.0%}): the users' rounds "
                       "stalled")
        fives = {s: n for s, n in self.http_errors.items() if s.startswith("5")}
        if fives:
            out.append(f"server errors: {fives}")
        return out + self.registry_problems()

    def registry_problems(self) -> list[str]:
        """The registry half of the rule: the comparison holds every kind of candidate, each
        with finite intervals around its estimates and a true value; the best challenger was
        promoted; serving switched to it and the champion arm's impressions name it."""
        out = []
        kinds = {row["kind"] for row in self.comparison}
        missing = [k for k in KINDS if k not in kinds]
        if missing:
            out.append(f"the comparison has no {' and no '.join(missing)} candidate")
        broken = sorted({row["candidate"] for row in self.comparison
                         if not (row["lower"] is not None and row["upper"] is not None
                                 and row["value"] is not None
                                 and row["lower"] <= row["value"] <= row["upper"])})
        if broken:
            out.append(f"estimates without a finite interval around them: {', '.join(broken)}")
        untrue = sorted({row["candidate"] for row in self.comparison
                         if row["candidate"] != "logging" and row["true_value"] is None})
        if untrue:
            out.append(f"no true value for {', '.join(untrue)}")
        if not self.promotion.get("applied"):
            out.append("no challenger was promoted: "
                       + str(self.promotion.get("reason", "the registry steps did not run")))
            return out
        version = str(self.promotion.get("challenger_version"))
        if str(self.champion.get("version")) != version:
            out.append(f"the champion alias points at {self.champion.get('version')}, not the "
                       f"promoted version {version}")
        if str(self.switch.get("version")) != version:
            out.append(f"serving did not switch to version {version}")
        served = {row["version"]: row for row in self.champion_served}
        switched = self.phases.get("switched_s", math.nan)
        if version not in served or not served[version]["last_s"] >= switched:
            out.append(f"no impression of the {CHAMPION_ARM} arm names {SERVING_MODEL} "
                       f"version {version} after the switch")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "z_score": self.z_score(), "problems": self.problems()}


# -- from the history ------------------------------------------------------------------------


def ctr_table(history: pl.DataFrame, traffic_s: float) -> tuple[
        list[float], dict[str, list[float]], dict[str, tuple[int, int]]]:
    """The end of each of :data:`PERIODS` equal periods, each arm's CTR in each period, and each
    arm's (clicks, requests) over the second half of the run."""
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


@dataclass(frozen=True)
class ArmCurves:
    """One arm's curves over the rounds it was served in (arrays of one length)."""

    elapsed_s: np.ndarray
    ctr: np.ndarray
    """Observed clicks per slate over the trailing window."""
    ctr_low: np.ndarray
    ctr_high: np.ndarray
    """95% Wilson interval of ``ctr``."""
    true_value: np.ndarray
    """Expected clicks per slate of the slates served in the trailing window."""
    cumulative_regret: np.ndarray


def arm_curves(history: pl.DataFrame, arm: str, window_s: float,
               optimal_value: float, max_clicks_per_slate: int = 1) -> ArmCurves:
    """Trailing-window CTR (clicks per slate) with its 95% band, the true value of what was
    served in the same window, and cumulative regret, at the end of each round ``arm`` was
    served in. The band is Wilson's when a slate gets at most one click, else normal with the
    variance bounded by the mean (independent clicks)."""
    rows = history.filter(pl.col("arm") == arm).sort("elapsed_s")
    t = rows["elapsed_s"].to_numpy()
    requests, clicks, expected = (rows[c].to_numpy().astype(float)
                                  for c in ("requests", "clicks", "expected_clicks"))

    def trailing(x: np.ndarray) -> np.ndarray:
        total = np.concatenate([[0.0], np.cumsum(x)])
        start = np.searchsorted(t, t - window_s, side="right")
        return total[1:] - total[start]

    n, k, e = trailing(requests), trailing(clicks), trailing(expected)
    safe = np.maximum(n, 1.0)
    p = k / safe
    z = 1.96
    if max_clicks_per_slate == 1:
        centre = (p + z * z / (2 * safe)) / (1 + z * z / safe)
        half = z * np.sqrt(p * (1 - p) / safe + z * z / (4 * safe**2)) / (1 + z * z / safe)
        low, high = centre - half, centre + half
    else:
        half = z * np.sqrt(np.maximum(p, 1.0 / safe) / safe)
        low, high = np.maximum(p - half, 0.0), np.minimum(p + half, max_clicks_per_slate)
    return ArmCurves(t, p, low, high, e / safe,
                     np.cumsum(optimal_value * requests - expected))


def cumulative_regret(history: pl.DataFrame, optimal_value: float) -> dict[str, float]:
    """Expected clicks each arm lost against the optimal policy over the run."""
    lost = history.group_by("arm").agg(
        (optimal_value * pl.col("requests") - pl.col("expected_clicks")).sum().alias("lost"))
    return dict(zip(lost["arm"].to_list(), lost["lost"].to_list(), strict=True))


def before_after(history: pl.DataFrame, switch_s: float) -> dict[str, dict[str, float]]:
    """Each arm's requests, observed CTR and true value of the slates served (expected clicks
    per slate) in the rounds that ended before ``switch_s`` and in those after it."""
    out: dict[str, dict[str, float]] = {}
    for (arm,), rows in history.group_by("arm"):
        figures: dict[str, float] = {}
        for side, part in (("before", rows.filter(pl.col("elapsed_s") < switch_s)),
                           ("after", rows.filter(pl.col("elapsed_s") >= switch_s))):
            n = int(part["requests"].sum())
            figures[f"requests_{side}"] = n
            figures[f"ctr_{side}"] = part["clicks"].sum() / n if n else math.nan
            figures[f"true_value_{side}"] = part["expected_clicks"].sum() / n if n else math.nan
        out[str(arm)] = figures
    return out


def plot_window_s(traffic_s: float) -> float:
    """The trailing window of the plotted CTR: a twentieth of the run, between 2 and 10 s, so the
    first seconds of learning are visible and the curve is not all noise."""
    return float(np.clip(round(traffic_s / 20), 2, 10))


def save_plot(history: pl.DataFrame, report: DemoReport, path: Path) -> str:
    """Two panels over seconds of traffic: each arm's observed CTR over a trailing window with
    its 95% band, the true value of what it served and the optimal value; and each arm's
    cumulative regret (same colours). The held-out logs are shaded and the switch of the
    champion is a vertical line on both. The legend (one entry per arm, then what each line
    style means) sits below the panels, covering no data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    window = plot_window_s(report.traffic_s)
    arms = sorted(set(history["arm"].to_list()),
                  key=lambda a: (a != LEARNING_ARM, a != CONTROL_ARM, a))
    fig, (ctr_ax, regret_ax) = plt.subplots(
        2, 1, figsize=(10, 8), sharex=True, height_ratios=(3, 2), layout="constrained")
    handles: list[Any] = []
    for i, arm in enumerate(arms):
        colour = COLOURS.get(arm, f"C{i + 3}")
        c = arm_curves(history, arm, window, report.optimal_value,
                       report.max_clicks_per_slate)
        ctr_ax.fill_between(c.elapsed_s, c.ctr_low, c.ctr_high, color=colour, alpha=0.2,
                            linewidth=0)
        handles += ctr_ax.plot(c.elapsed_s, c.ctr, color=colour, linewidth=1.5, label=arm)
        ctr_ax.plot(c.elapsed_s, c.true_value, color=colour, linewidth=1, linestyle="--")
        regret_ax.plot(c.elapsed_s, c.cumulative_regret, color=colour, linewidth=1.5)
    ctr_ax.axhline(report.optimal_value, color="grey", linestyle=":", linewidth=1)
    handles += [
        Line2D([], [], color="black", linewidth=1.5,
               label=f"observed CTR (last {window:g} s)"),
        Patch(color="black", alpha=0.2, linewidth=0, label="its 95% interval"),
        Line2D([], [], color="black", linewidth=1, linestyle="--",
               label="true value of the slates served"),
        Line2D([], [], color="grey", linewidth=1, linestyle=":",
               label="optimal policy (true value)"),
        *_mark_phases(report, (ctr_ax, regret_ax)),
    ]
    ctr_ax.set_ylabel("clicks per slate")
    ctr_ax.set_ylim(0, max(1.0, 1.08 * report.optimal_value))
    ctr_ax.grid(alpha=0.3)
    ctr_ax.set_title("recsys demo: Thompson sampling learning online, a uniform control and "
                     f"the {CHAMPION_ARM} arm\nserving models:/{SERVING_MODEL}@{CHAMPION_ARM}, "
                     "which moves when a challenger wins on held-out logs", fontsize="medium")
    regret_ax.set_title("cumulative regret", fontsize="medium")
    regret_ax.set_ylabel("expected clicks lost\nvs the optimal policy")
    regret_ax.set_xlabel("seconds of traffic")
    regret_ax.set_xlim(0, report.traffic_s)
    regret_ax.grid(alpha=0.3)
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize="small",
               frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def _mark_phases(report: DemoReport, axes: tuple[Any, ...]) -> list[Any]:
    """Shade the held-out logs and draw the switch of the champion on every panel; the legend
    entries of what was drawn."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    phases = report.phases
    cut, end = phases.get("cut_s", math.nan), phases.get("holdout_end_s", math.nan)
    switched = phases.get("switched_s", math.nan)
    champion = report.champion
    out: list[Any] = []
    if math.isfinite(cut) and math.isfinite(end):
        for ax in axes:
            ax.axvspan(cut, end, color="grey", alpha=0.15, linewidth=0)
        out.append(Patch(color="grey", alpha=0.15, linewidth=0,
                         label="held-out logs (models trained before)"))
    if math.isfinite(switched):
        for ax in axes:
            ax.axvline(switched, color="black", linestyle="-.", linewidth=1.2)
        out.append(Line2D([], [], color="black", linestyle="-.", linewidth=1.2,
                          label=f"switch to v{champion.get('version')} "
                                f"({champion.get('candidate')})"))
    return out


# -- the table ---------------------------------------------------------------------------------


def _interval(value: Any, lower: Any, upper: Any) -> str:
    if value is None:
        return "n/a"
    if lower is None or upper is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{lower:.3f}, {upper:.3f}]"


def comparison_lines(report: DemoReport, estimators: tuple[str, ...] = ()) -> list[str]:
    """The comparison as a table: one line per candidate, the primary estimator and DR (or the
    ``estimators`` given) with their intervals, and the true value."""
    summary = report.comparison_summary
    primary = summary.get("primary", "snips")
    shown = estimators or tuple(dict.fromkeys((primary, "dr")))
    rows: dict[str, dict[str, Any]] = {}
    for row in report.comparison:
        entry = rows.setdefault(row["candidate"], {"kind": row["kind"],
                                                   "version": row["model_version"],
                                                   "truth": row["true_value"]})
        entry[row["estimator"]] = row
    shown = tuple(e for e in shown if any(e in r for r in rows.values()))
    level = 100 * (1 - summary.get("alpha", 0.05))
    dropped = summary.get("dropped_policies") or []
    kept = (f"; requests logged with exact propensities, {', '.join(dropped)}'s Monte Carlo "
            f"ones left out, of {summary.get('requests_logged', 0):,}" if dropped else "")
    lines = [f"Candidates for {SERVING_MODEL} on the held-out logs "
             f"({summary.get('n_requests', 0):,} requests{kept}; {level:g}% intervals from "
             f"{summary.get('n_bootstrap', 0):,} bootstrap resamples)",
             f"  {'candidate':<17}{'kind':<10}{'version':>8}"
             + "".join(f"{e:>26}" for e in shown) + f"{'true value':>12}"]
    for name, r in rows.items():
        cells = "".join(f"{_interval(r[e]['value'], r[e]['lower'], r[e]['upper']):>26}"
                        if e in r else f"{'':>26}" for e in shown)
        truth = "" if r["truth"] is None else f"{r['truth']:.3f}"
        lines.append(f"  {name:<17}{r['kind']:<10}{r['version'] or '':>8}{cells}{truth:>12}")
    return lines


def print_report(report: DemoReport, settings: Any) -> None:
    """The end-of-run tables, the figures and the verdict, for a terminal or a log."""
    arms = sorted(report.requests, key=lambda a: (a != LEARNING_ARM, a != CONTROL_ARM, a))
    width = 16
    print()
    print("CTR (clicks per slate) over time")
    print(f"  {'until':>8} " + "".join(f"{a:>{width}}" for a in arms))
    for period, end in enumerate(report.period_end_s):
        print(f"  {end:>7.0f}s " + "".join(f"{report.ctr_by_period[a][period]:>{width}.3f}"
                                           for a in arms))
    print()
    print(f"  {'':<40}" + "".join(f"{a:>{width}}" for a in arms))
    late = report.true_value_late
    around = report.before_after

    def side(key: str) -> dict[str, str]:
        return {a: f"{around.get(a, {}).get(key, math.nan):.3f}" for a in arms}

    rows = [
        ("requests", {a: f"{report.requests[a]:,}" for a in arms}),
        ("observed CTR", {a: f"{report.clicks[a] / max(report.requests[a], 1):.3f}"
                          for a in arms}),
        ("observed CTR before the switch", side("ctr_before")),
        ("observed CTR after the switch", side("ctr_after")),
        ("true value served before the switch", side("true_value_before")),
        ("true value served after the switch", side("true_value_after")),
        ("true value of slates served, last third", {a: f"{late.get(a, 0):.3f}" for a in arms}),
        ("regret per slate, last third",
         {a: f"{report.optimal_value - late.get(a, 0):.3f}" for a in arms}),
        ("cumulative regret (expected clicks lost)",
         {a: f"{report.cumulative_regret.get(a, math.nan):,.0f}" for a in arms}),
        ("true value of the final policy",
         {a: f"{report.true_value_final.get(a, math.nan):.3f}" for a in arms}),
    ]
    for name, values in rows:
        print(f"  {name:<40}" + "".join(f"{values[a]:>{width}}" for a in arms))
    print(f"  {'optimal value (simulator)':<40}{report.optimal_value:>{width}.3f}")
    if report.comparison:
        print()
        print("\n".join(comparison_lines(report)))
    champion, decision, phases = report.champion, report.promotion, report.phases
    if decision:
        print(f"\n  promotion ({decision.get('rule', {}).get('kind', '')} rule): "
              f"{decision.get('reason')}")
    if champion:
        print(f"  champion: {champion.get('uri')} ({champion.get('candidate')}, "
              f"{champion.get('kind')}), alias {champion.get('alias')}; was version "
              f"{champion.get('previous_version')}")
    if report.switch:
        print(f"  switch: promoted at {phases.get('promoted_s', math.nan):.0f} s of traffic, "
              f"served by the {CHAMPION_ARM} arm {report.switch['served_after_s']:.1f} s later "
              "(no restart)")
    for row in report.champion_served:
        print(f"    {CHAMPION_ARM} arm impressions by version {row['version']}: "
              f"{row['requests']:,} requests, {row['first_s']:.0f}–{row['last_s']:.0f} s")
    f = report.freshness_ms
    print(f"\n  freshness, click → served score changed: p50 {f['p50']:.0f} ms, p99 "
          f"{f['p99']:.0f} ms, max {f['max']:.0f} ms ({report.freshness_timeouts} timeouts)")
    print(f"  events processed by the stream: {report.events_processed:,}; dead-lettered "
          f"records {report.dead_letters} (of {report.bad_records_sent} malformed sent), late "
          f"clicks {report.late_feedback}; HTTP errors {report.http_errors or 'none'}")
    print(f"  z (learning vs uniform, second half): {report.z_score():.1f}; traffic "
          f"{report.traffic_s:.0f} s, wall {report.wall_s:.0f} s")
    print(f"  A/B estimate (learning vs uniform): {report.ab_estimate}")
    print(f"  plot {report.plot}")
    print(f"  mlflow: demo run {report.mlflow_run_id}, comparison run "
          f"{report.comparison_run_id or 'none'}, registered model {SERVING_MODEL}; every run "
          f"of this demo is tagged recsys.demo_run = {Path(report.run_dir).name}")
    print(f"  open it: {report.mlflow_ui or settings}")
    problems = report.problems()
    if problems:
        print("\nFAILED: " + "; ".join(problems))
    else:
        print("\nOK: the learning arm clearly beats uniform; the best challenger was promoted "
              "and serving switched to it; nothing lost, bad input dead-lettered")
