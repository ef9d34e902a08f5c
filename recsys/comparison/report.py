"""What a comparison leaves behind: the printed table, the forest plot and one mlflow run.

``log_comparison`` writes one run (name ``compare-<timestamp>``, tag ``recsys.kind=comparison``)
with the evaluation's parameters, one metric per candidate and estimator (value, lower, upper; the
true value when the world is known), ``comparison.csv``/``comparison.json`` and the forest plot
``comparison.png``; then it tags every registered candidate's model version with its latest
estimate, so the registry shows how each version fared last. ``load_comparison`` reads a run back.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recsys.comparison import Comparison

COMPARISON_KIND = "comparison"
KIND_TAG = "recsys.kind"
ESTIMATE_TAG = "recsys.latest_estimate"
INTERVAL_TAG = "recsys.latest_estimate_interval"
RUN_TAG = "recsys.latest_comparison_run"
ESTIMATOR_TAG = "recsys.latest_estimate_estimator"
ARTIFACTS = ("comparison.csv", "comparison.json", "comparison.png")

_UNSAFE = re.compile(r"[^\w.\- /]")


def metric_key(*parts: str) -> str:
    """An mlflow metric name from ``parts`` (characters mlflow refuses become ``_``)."""
    return ".".join(_UNSAFE.sub("_", str(p)).strip("/") for p in parts)


def estimator_names(comparison: Comparison) -> list[str]:
    """The comparison's estimators (else every one a candidate has), in order."""
    seen: dict[str, None] = dict.fromkeys(getattr(comparison, "estimators", None) or [])
    for candidate in comparison.candidates:
        seen.update(dict.fromkeys(candidate.estimates))
    return list(seen)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _number(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if _finite(value) else "-"


def _ess(candidate: Any) -> Any:
    diagnostics = getattr(candidate, "diagnostics", None) or {}
    return diagnostics.get("effective_sample_size")


def format_table(comparison: Comparison, estimators: Sequence[str] | None = None) -> str:
    """The comparison as text: candidate, kind, version, ``value [lower, upper]`` per estimator,
    the true value (when the world is known) and the effective sample size."""
    estimators = list(estimators or estimator_names(comparison))
    has_truth = any(_finite(c.true_value) for c in comparison.candidates)
    header = ["candidate", "kind", "version", *estimators, *(["truth"] if has_truth else []),
              "ESS"]
    rows = []
    for c in comparison.candidates:
        cells = [c.name, c.kind, str(c.model_version) if c.model_version is not None else "-"]
        for name in estimators:
            e = c.estimates.get(name)
            cells.append("-" if e is None or not _finite(e.value) else
                         f"{e.value:.4f} [{_number(e.lower)}, {_number(e.upper)}]")
        if has_truth:
            cells.append(_number(c.true_value))
        ess = _ess(c)
        cells.append(f"{ess:,.0f}" if _finite(ess) else "-")
        rows.append(cells)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(r, widths, strict=True))).rstrip()
             for r in [header, *rows]]
    level = 100 * (1 - comparison.alpha)
    lines.append(f"{comparison.n_requests:,} requests, {comparison.n_rows:,} logged rows, "
                 f"slates of {comparison.len_list}; {level:g}% bootstrap intervals "
                 f"({comparison.n_bootstrap} resamples)")
    return "\n".join(lines)


def forest_plot(comparison: Comparison, path: str | Path, primary: str = "snips") -> Path:
    """The forest plot: one row per candidate, one marker per estimator with its interval, the
    true value as a black star, the logging policy's ``primary`` estimate as a vertical line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    candidates = list(comparison.candidates)
    estimators = estimator_names(comparison)
    fig = Figure(figsize=(9, 1.2 + 0.55 * len(candidates) * max(1, len(estimators)) ** 0.5),
                 layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    band = 0.7 / max(1, len(estimators))
    colours = [f"C{i}" for i in range(10)]
    for j, estimator in enumerate(estimators):
        offset = (j - (len(estimators) - 1) / 2) * band
        ys, xs, lo, hi = [], [], [], []
        for i, c in enumerate(candidates):
            e = c.estimates.get(estimator)
            if e is None or not _finite(e.value):
                continue
            ys.append(i + offset)
            xs.append(e.value)
            lo.append(e.value - e.lower if _finite(e.lower) else 0.0)
            hi.append(e.upper - e.value if _finite(e.upper) else 0.0)
        if xs:
            ax.errorbar(xs, ys, xerr=[lo, hi], fmt="o", capsize=3, markersize=5,
                        color=colours[j % len(colours)], label=estimator)
    truths = [(i, c.true_value) for i, c in enumerate(candidates) if _finite(c.true_value)]
    if truths:
        ax.scatter([t for _, t in truths], [i for i, _ in truths], marker="*", s=160,
                   color="black", zorder=5, label="true value")
    logging = next((c for c in candidates if c.name == "logging"), None)
    logged = logging.estimates.get(primary) if logging is not None else None
    if logged is not None and _finite(logged.value):
        ax.axvline(logged.value, color="grey", linestyle="--", linewidth=1,
                   label=f"logging policy ({logged.value:.3f})")
    ax.set_yticks(range(len(candidates)),
                  [f"{c.name}\n({c.kind})" for c in candidates])
    ax.set_ylim(len(candidates) - 0.5, -0.5)
    ax.set_xlabel("estimated value (reward per slate)")
    level = 100 * (1 - comparison.alpha)
    ax.set_title(f"Off-policy estimates with {level:g}% intervals, "
                 f"{comparison.n_requests:,} logged requests")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _params(comparison: Comparison) -> dict[str, str]:
    logs = dict(getattr(comparison, "logs", None) or {})
    world = logs.get("world")
    params = {
        "logs.source": logs.get("source"),
        "logs.range": logs.get("range"),
        "logs.world": world.get("kind") if isinstance(world, dict) else world,
        "n_requests": comparison.n_requests,
        "n_rows": comparison.n_rows,
        "len_list": comparison.len_list,
        "n_actions": comparison.n_actions,
        "estimators": ",".join(estimator_names(comparison)),
        "alpha": comparison.alpha,
        "n_bootstrap": comparison.n_bootstrap,
        "candidates": ",".join(c.name for c in comparison.candidates),
    }
    return {k: str(v)[:6000] for k, v in params.items() if v is not None}


def _metrics(comparison: Comparison) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for c in comparison.candidates:
        for estimator, e in c.estimates.items():
            for suffix, value in (("", e.value), (".lower", e.lower), (".upper", e.upper)):
                if _finite(value):
                    metrics[metric_key(c.name, estimator) + suffix] = float(value)
        if _finite(c.true_value):
            metrics[metric_key(c.name, "true_value")] = float(c.true_value)
        for name, value in (getattr(c, "diagnostics", None) or {}).items():
            if _finite(value):
                metrics[metric_key(c.name, name)] = float(value)
    return metrics


def _experiment_id(experiment: str | None) -> str | None:
    import mlflow

    if experiment is None:
        return None
    found = mlflow.get_experiment_by_name(experiment)
    return found.experiment_id if found is not None else mlflow.create_experiment(experiment)


def log_comparison(comparison: Comparison, *, experiment: str | None = None,
                   primary: str = "snips", run_name: str | None = None,
                   tags: dict[str, str] | None = None) -> str:
    """Write the comparison run (see the module docstring) and tag the registered candidates'
    versions; returns the run id. ``experiment`` (a name) defaults to the active experiment;
    inside an active run the comparison run is its child."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient()
    run_tags = {KIND_TAG: COMPARISON_KIND, "recsys.primary_estimator": primary, **(tags or {})}
    name = run_name or time.strftime("compare-%Y%m%d-%H%M%S")
    with mlflow.start_run(experiment_id=_experiment_id(experiment), run_name=name,
                          tags=run_tags, nested=mlflow.active_run() is not None) as run:
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in _metrics(comparison).items()]
        params = [Param(k, v) for k, v in _params(comparison).items()]
        for start in range(0, max(len(metrics), len(params)), 100):
            client.log_batch(run_id, metrics=metrics[start:start + 100],
                             params=params[start:start + 100])
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            comparison.table().write_csv(directory / "comparison.csv")
            (directory / "comparison.json").write_text(
                json.dumps(comparison.to_dict(), indent=2, default=_json_default))
            forest_plot(comparison, directory / "comparison.png", primary=primary)
            client.log_artifacts(run_id, str(directory))
    tag_versions(comparison, run_id, primary=primary)
    return run_id


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def tag_versions(comparison: Comparison, run_id: str, primary: str = "snips") -> list[str]:
    """Tag each registered candidate's model version with its latest ``primary`` estimate, its
    interval and the comparison run; returns the ``models:/NAME/VERSION`` URIs tagged."""
    from mlflow import MlflowClient

    client = MlflowClient()
    tagged = []
    for c in comparison.candidates:
        if not c.model_name or c.model_version is None:
            continue
        e = c.estimates.get(primary)
        name, version = c.model_name, str(c.model_version)
        if e is not None:
            client.set_model_version_tag(name, version, ESTIMATE_TAG, f"{e.value:.6g}")
            client.set_model_version_tag(name, version, INTERVAL_TAG,
                                         f"[{e.lower:.6g}, {e.upper:.6g}]")
        client.set_model_version_tag(name, version, ESTIMATOR_TAG, primary)
        client.set_model_version_tag(name, version, RUN_TAG, run_id)
        tagged.append(f"models:/{name}/{version}")
    return tagged


def load_comparison(run_id: str) -> Comparison:
    """The comparison a ``log_comparison`` run recorded (from its ``comparison.json``)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from recsys.comparison.result import Comparison

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(run_id=run_id,
                                                       artifact_path="comparison.json",
                                                       dst_path=tmp)
            data = json.loads(Path(path).read_text())
    except (MlflowException, OSError) as exc:
        from recsys.registry.promotion import PromotionError

        raise PromotionError(f"comparison run {run_id}: expected a run written by `recsys "
                             f"compare` (with comparison.json), got {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    return Comparison.from_dict(data)
