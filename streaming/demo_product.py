"""The registry half of ``recsys demo``: one serving slot, its candidates, the verdict, the switch.

The serving slot is one registered model, :data:`SERVING_MODEL`; every candidate for it is a
version of it and the serving app's third arm, :data:`CHAMPION_ARM`, serves
``models:/demo-recommender@champion`` (replicas follow the alias, ``recsys.serving.models``).
The steps, one function each, in the order the demo runs them:

1. :func:`register_first_champion`: before serving starts, the uniform baseline is version 1
   and the alias points at it (an alias must point at something to be served).
2. :func:`register_snapshot`: the online bandit's checkpoint at the time cut, as a version
   (``recsys.registry.snapshots.register_checkpoint``).
3. :func:`train_offline`: ``recsys train`` on the run's lake, older than the cut, for each of the
   shipped demo configs (``offline/configs/demo_ips.toml``, ``demo_pld.toml``), run in-process
   through the command plumbing (this package never imports ``offline``); each registers its
   policy form as a version.
4. :func:`compare`: every candidate, the current champion and the logging policy on the same
   held-out logs (the lake after the cut, the requests logged with exact propensities:
   :func:`held_out_logs`), with the simulator's true values when the caller passes them,
   logged as one mlflow comparison run.
5. :func:`promote_best`: the best challenger by the registry's estimator is promoted when the
   rule holds (``recsys.registry.promotion``).
6. :func:`wait_for_switch` and :func:`served_versions`: when the serving app serves the new
   version, and what the champion arm's impressions in the lake say they were served by.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.commands import CommandError
from recsys.config import Settings
from recsys.validation import message

SERVING_MODEL = "demo-recommender"
"""The registered model whose ``champion`` alias the demo serves."""
CHAMPION_ARM = "champion"
"""The serving arm that follows ``models:/demo-recommender@champion``."""
OFFLINE_KINDS = ("ips", "pld")
"""The offline models the demo trains: ``offline/configs/demo_<kind>.toml``."""
CONFIG_DIR = Path(__file__).resolve().parents[1] / "offline" / "configs"


def champion_uri(name: str = SERVING_MODEL, alias: str = "champion") -> str:
    return f"models:/{name}@{alias}"


@contextlib.contextmanager
def output_to(log: Path | None) -> Iterator[None]:
    """Append what mlflow prints while registering ("Successfully registered model ...") to
    ``log`` instead of the demo's output (which names every version itself)."""
    if log is None:
        yield
        return
    with log.open("a") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        yield


@dataclass(frozen=True)
class Candidate:
    """One registered version the demo compares: its label, kind and where it came from."""

    label: str
    kind: str
    """"online", "offline" or "baseline" (the comparison's kinds)."""
    uri: str
    version: str
    run_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- 1. the first champion ----------------------------------------------------------------------


def register_first_champion(settings: Settings, item_ids: np.ndarray, *, seed: int = 0,
                            name: str = SERVING_MODEL, log: Path | None = None) -> Candidate:
    """Register the uniform baseline as a version of ``name`` and point the champion alias at
    it: the champion arm serves uniformly random slates until a challenger wins."""
    import mlflow

    from recsys.policies.baselines import uniform_policy
    from recsys.registry import baseline_model, log_policy_model
    from recsys.tracking import configure_mlflow

    configure_mlflow(settings)
    model = baseline_model("uniform", uniform_policy(np.asarray(item_ids), random_state=seed),
                           meta={"role": "first champion of the demo"})
    with output_to(log), mlflow.start_run(run_name="demo-first-champion-uniform",
                                          tags={"recsys.kind": "baseline"}) as run:
        info = log_policy_model(
            model, registered_model_name=name,
            description="Uniformly random slates over the demo's catalogue: the champion the "
                        "demo starts from, until a challenger beats it on held-out logs.")
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_registered_model_alias(name, settings.registry.champion_alias,
                                                     version)
    return Candidate("uniform", "baseline", f"models:/{name}/{version}", version,
                     run.info.run_id)


def serving_arms(settings: Settings, name: str = SERVING_MODEL) -> tuple[str, str]:
    """``serve.policies`` and ``serve.traffic`` of the demo: the two default arms (Thompson
    sampling learning online, uniform control) and the champion arm, a third of traffic each."""
    from recsys.serving.service import default_policies

    arms: dict[str, Any] = {**default_policies(settings),
                            CHAMPION_ARM: champion_uri(name, settings.registry.champion_alias)}
    return json.dumps(arms), ",".join(f"{arm}=1" for arm in arms)


# -- 2. the online snapshot ---------------------------------------------------------------------


def register_snapshot(settings: Settings, checkpoint_id: str, checkpoint_uri: str, *,
                      name: str = SERVING_MODEL, log: Path | None = None) -> Candidate:
    """Register the stream's checkpoint ``checkpoint_id`` as a version of ``name``."""
    from recsys.registry.snapshots import register_checkpoint

    with output_to(log):
        registered = register_checkpoint(settings, checkpoint_id, name=name,
                                         store_uri=checkpoint_uri)
    return Candidate("online-snapshot", "online", registered.uri, registered.version,
                     registered.run_id, {"checkpoint_id": registered.checkpoint_id})


# -- 3. offline models --------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(message("config value", "a TOML scalar or list", type(value).__name__))


def to_toml(tables: Mapping[str, Any], prefix: str = "") -> str:
    """Nested tables of scalars and lists as TOML (what the demo writes for ``recsys train``)."""
    scalars = {k: v for k, v in tables.items() if not isinstance(v, Mapping)}
    nested = {k: v for k, v in tables.items() if isinstance(v, Mapping)}
    lines = [f"[{prefix}]"] if prefix and scalars else []
    lines += [f"{key} = {_toml_value(value)}" for key, value in scalars.items()]
    for key, table in nested.items():
        lines += ["", to_toml(table, f"{prefix}.{key}" if prefix else key)]
    return "\n".join(lines).strip("\n") + "\n"


def offline_table(kind: str, lake_uri: str, until_ms: int, *, name: str = SERVING_MODEL
                  ) -> dict[str, Any]:
    """The ``[train]`` table of ``offline/configs/demo_<kind>.toml`` for this run: its lake,
    the time cut (training reads rows before it) and the registered name of the policy form."""
    path = CONFIG_DIR / f"demo_{kind}.toml"
    if not path.is_file():
        raise CommandError(message("offline config", "the shipped demo config", f"{path} is "
                                   "missing", "run from a checkout of the project"))
    train = tomllib.loads(path.read_text())["train"]
    train["data"] = {**train["data"], "uri": str(lake_uri), "until_ms": int(until_ms)}
    train["policy"] = {**train.get("policy", {}), "registered_model": name}
    return train


def _versions(name: str) -> set[str]:
    from mlflow import MlflowClient

    with contextlib.suppress(Exception):  # no such model yet
        return {str(v.version) for v in MlflowClient().search_model_versions(f"name='{name}'")}
    return set()


def train_offline(settings: Settings, kind: str, lake_uri: str, until_ms: int, run_dir: Path, *,
                  name: str = SERVING_MODEL) -> Candidate:
    """``recsys train`` on the lake before ``until_ms`` with the demo's ``kind`` config, in this
    process (local backend), its output in ``<run_dir>/train_<kind>.log``; the version of
    ``name`` it registered (the model's policy form)."""
    from recsys.cli import build_parser, parse_args
    from recsys.commands import run_command

    table = offline_table(kind, lake_uri, until_ms, name=name)
    config = run_dir / f"train_{kind}.toml"
    config.write_text(f"# recsys demo: {kind} on {lake_uri} before {until_ms} ms\n"
                      + to_toml({"train": table}))
    args = parse_args(build_parser(), ["train", "--backend", "local", "--quiet"])
    args.settings = dataclasses.replace(settings, tables={"train": table}, config_file=config)
    before = _versions(name)
    log = run_dir / f"train_{kind}.log"
    with output_to(log):
        code = run_command(args)
    if code != 0:
        raise RuntimeError(f"recsys train --config {config} failed (exit {code}); see {log}")
    new = sorted(_versions(name) - before, key=int)
    if len(new) != 1:
        raise RuntimeError(message(f"recsys train --config {config}", f"one new version of "
                                   f"{name} (the policy form)", f"{new or 'none'}",
                                   f"see {log}"))
    from mlflow import MlflowClient

    version = new[0]
    run_id = MlflowClient().get_model_version(name, version).run_id
    return Candidate(f"offline-{kind}", "offline", f"models:/{name}/{version}", version, run_id,
                     {"config": str(config), "log": str(log), "trained_until_ms": int(until_ms)})


# -- 4. the comparison --------------------------------------------------------------------------


@dataclass
class Verdict:
    """The comparison (as the engine made it), its mlflow run and the promotion decision."""

    comparison: Any
    """``recsys.comparison.Comparison``."""
    run_id: str
    decision: Any = None
    """``recsys.registry.promotion.Decision`` (None before :func:`promote_best`)."""
    labels: dict[str, Candidate] = field(default_factory=dict)
    logs: dict[str, Any] = field(default_factory=dict)
    """Which held-out requests were compared (:func:`held_out_logs`)."""


def held_out_logs(lake_uri: str, start_ms: int, end_ms: int) -> tuple[Any, dict[str, Any]]:
    """The lake's rewards in ``[start_ms, end_ms)`` of the requests whose every propensity was
    logged exact, as ``LoggedSlates`` with the lake's world (the engine's default:
    ``recsys.comparison.logs.PROPENSITY_CHOICES`` says why Thompson sampling's Monte Carlo
    estimates are left out); and what was kept and dropped."""
    from recsys.comparison import LoggedSlates

    logs = LoggedSlates.from_lake(lake_uri, start_ms, end_ms, propensities="exact")
    keys = ("requests_logged", "requests_kept", "dropped_policies")
    return logs, {key: logs.source[key] for key in keys if key in logs.source}


def compare(settings: Settings, lake_uri: str, start_ms: int, end_ms: int,
            candidates: list[Candidate], *,
            truth: Callable[[str, Any], float] | None = None,
            random_state: int = 0) -> Verdict:
    """Evaluate ``candidates`` and the logging policy on the held-out logs
    (:func:`held_out_logs`) with the comparison engine's estimators and the registry's interval
    settings; log the comparison run. ``truth(label, policy)`` adds true values."""
    from recsys.comparison.candidates import (
        CandidateSet,
        LoggingPolicy,
        compare_candidates,
        load_registered,
    )
    from recsys.comparison.report import log_comparison

    registry = settings.registry
    logs, kept = held_out_logs(lake_uri, start_ms, end_ms)
    chosen = CandidateSet({c.label: load_registered(c.uri) for c in candidates})
    chosen.candidates["logging"] = LoggingPolicy()
    comparison = compare_candidates(logs, chosen, alpha=registry.alpha,
                                    n_bootstrap=registry.n_bootstrap, random_state=random_state,
                                    truth=truth, progress=False)
    run_id = log_comparison(comparison, primary=registry.estimator,
                            run_name=f"demo-compare-{time.strftime('%Y%m%d-%H%M%S')}",
                            tags={"recsys.demo": "true"})
    return Verdict(comparison, run_id, labels={c.label: c for c in candidates}, logs=kept)


def comparison_rows(comparison: Any) -> list[dict[str, Any]]:
    """One JSON-safe row per (candidate, estimator): value with its interval, and the truth."""
    rows = []
    for c in comparison.candidates:
        truth = c.true_value
        for estimator, e in c.estimates.items():
            rows.append({"candidate": c.name, "kind": c.kind, "model_name": c.model_name,
                         "model_version": c.model_version, "estimator": estimator,
                         "value": _finite(e.value), "lower": _finite(e.lower),
                         "upper": _finite(e.upper),
                         "true_value": None if truth is None else _finite(truth)})
    return rows


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


# -- 5. promotion -------------------------------------------------------------------------------


def best_challenger(verdict: Verdict, estimator: str) -> Candidate:
    """The registered challenger (online or offline) with the highest lower bound of
    ``estimator``: the one most surely better, which is also the one the default rule (lower
    bound > champion's estimate) is most likely to accept. A point estimate alone would pick a
    candidate whose interval is wide (a few heavy importance weights) as readily as a sure one."""
    scored = []
    for result in verdict.comparison.candidates:
        candidate = verdict.labels.get(result.name)
        estimate = result.estimates.get(estimator)
        if candidate is None or candidate.kind == "baseline" or estimate is None:
            continue
        if math.isfinite(estimate.lower):
            scored.append((float(estimate.lower), candidate))
    if not scored:
        raise RuntimeError(message("comparison", f"a challenger with a finite {estimator} "
                                   "interval", "none"))
    return max(scored, key=lambda pair: pair[0])[1]


def promote_best(settings: Settings, verdict: Verdict, *, name: str = SERVING_MODEL) -> Candidate:
    """Hold the best challenger against the current champion by the registry's rule and move
    the alias when it holds; sets ``verdict.decision``. Returns the challenger."""
    from recsys.registry.promotion import PromotionRule, promote

    registry = settings.registry
    challenger = best_challenger(verdict, registry.estimator)
    verdict.decision = promote(name, challenger.version, comparison=verdict.comparison,
                               comparison_run_id=verdict.run_id,
                               rule=PromotionRule.from_settings(registry),
                               alias=registry.champion_alias)
    return challenger


# -- 6. the switch ------------------------------------------------------------------------------


def served_version(url: str, arm: str = CHAMPION_ARM) -> int | None:
    """The version the serving app's ``arm`` serves now (``GET /health``), None if unknown."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as reply:
            body = json.loads(reply.read())
    except (OSError, ValueError):
        return None
    version = (body.get("models") or {}).get(arm, {}).get("model_version")
    return None if version is None else int(version)


def wait_for_switch(url: str, version: str | int, timeout_s: float = 30.0,
                    arm: str = CHAMPION_ARM) -> float | None:
    """Poll ``/health`` until ``arm`` serves ``version``; the wall-clock time (``time.time()``)
    it was first seen, or None after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if served_version(url, arm) == int(version):
            return time.time()
        time.sleep(0.1)
    return None


def logged_requests(lake_uri: str, until_ms: int, *, since_ms: int | None = None
                    ) -> tuple[int, int]:
    """Requests in ``[since_ms, until_ms)`` with impressions in the lake, and those with rewards
    (equal once every attribution window in the range closed and reached the lake)."""
    from recsys.lake import scan_lake

    def requests(table: Any) -> int:
        try:
            frame = scan_lake(lake_uri, table)
        except (FileNotFoundError, ValueError):  # nothing written yet
            return 0
        when = pl.col("event_time_ms") < until_ms
        if since_ms is not None:
            when &= pl.col("event_time_ms") >= since_ms
        return int(frame.filter(when).select(pl.col("request_id").n_unique()).collect().item())

    return requests("impressions"), requests("rewards")


def served_versions(lake_uri: str, name: str = SERVING_MODEL) -> pl.DataFrame:
    """The champion arm's impressions in the lake by the version that served them: requests,
    first and last event time (ms)."""
    from recsys.lake import scan_lake

    return (scan_lake(lake_uri, "impressions")
            .filter(pl.col("policy_name") == name)
            .group_by("policy_version")
            .agg(pl.col("request_id").n_unique().alias("requests"),
                 pl.col("event_time_ms").min().alias("first_ms"),
                 pl.col("event_time_ms").max().alias("last_ms"))
            .sort("first_ms")
            .collect())
