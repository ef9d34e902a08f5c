"""Candidates of a comparison, from the strings a user types: registered models or built-ins.

- ``models:/NAME/VERSION`` and ``models:/NAME@ALIAS``: a registered policy
  (``recsys.registry.load_policy_model``); its kind is "online" for a bandit snapshot, "offline"
  for an offline model's policy form, "baseline" for a registered baseline.
- ``uniform``: uniformly random slates over the items of the logs.
- ``popularity``: the most clicked items first (clicks per item), ε-mixed with uniform slates.
  It is fitted on ``history`` (the logged rows before the evaluation range) when given; fitted
  on the evaluation logs themselves it has seen the rewards it is scored on (mild leakage), and
  the comparison says so in its notes.
- ``logging``: the logging policy itself. No action distribution is needed: every estimator of
  it is the on-policy mean of the per-request reward sums (importance weights are all 1), with a
  percentile bootstrap interval over requests from the same resamples' generator.

Built-ins use the logs' items (and the history's) as their catalogue and are "baseline".
``compare_candidates`` evaluates them all on the same logs (``recsys.comparison`` engine), adds
the logging baseline and, when the logs name the world they came from, its true values.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from recsys.comparison.logs import LoggedSlates
from recsys.comparison.result import CandidateResult, Comparison, Estimate
from recsys.validation import did_you_mean, message

BUILTINS = ("uniform", "popularity", "logging")
"""The built-in candidates' names."""
LOGGING = "logging"
WORLDS_GROUP = "recsys.worlds"
POPULARITY_EPSILON = 0.05


class CandidateError(ValueError):
    """A candidate that cannot be used (unknown model, version or alias, bad name)."""


@dataclass(frozen=True, eq=False)
class LoggingPolicy:
    """The logging policy of the logs, as a candidate: estimated on-policy, no action_dist."""

    name: str = LOGGING
    kind: str = "baseline"
    version: str | None = None


@dataclass
class CandidateSet:
    """Candidates by display name, in the order given, and notes the report should print."""

    candidates: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _parse_model_uri(spec: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME/VERSION`` → (NAME, VERSION, None); ``models:/NAME@ALIAS`` → (NAME, None,
    ALIAS); CandidateError for anything else."""
    from recsys.registry.uris import parse_model_uri

    try:
        ref = parse_model_uri(spec, "candidate")
    except ValueError as exc:
        raise CandidateError(str(exc)) from None
    return ref.name, ref.version, ref.alias


def _registry_check(name: str, version: str | None, alias: str | None) -> None:
    """A clear CandidateError when the model, version or alias does not exist."""
    from recsys.registry import check_registered

    try:
        check_registered(name, version=version, alias=alias)
    except ValueError as exc:
        raise CandidateError(str(exc)) from None


def load_registered(spec: str) -> Any:
    """The registered policy ``spec`` (``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``)."""
    from recsys.registry import load_policy_model

    name, version, alias = _parse_model_uri(spec)
    _registry_check(name, version, alias)
    return load_policy_model(spec)


def _item_clicks(frame: pl.DataFrame | pl.LazyFrame) -> tuple[np.ndarray, np.ndarray]:
    counts = frame.lazy().group_by("item_id").agg(pl.col("reward").sum().alias("clicks"))
    counts = counts.sort("item_id").collect()
    return counts["item_id"].to_numpy().astype(np.int64), counts["clicks"].to_numpy()


def _catalogue(logs: LoggedSlates, history_items: np.ndarray | None) -> np.ndarray:
    items = np.asarray(logs.items_, dtype=np.int64)
    return items if history_items is None else np.union1d(items, history_items)


def parse_candidates(specs: Iterable[str], logs: LoggedSlates, *,
                     history: pl.DataFrame | pl.LazyFrame | None = None,
                     random_state: int | None = 0) -> CandidateSet:
    """Candidates for ``specs`` (module docstring), evaluated later on ``logs``; ``history``
    (rewards-schema rows before the evaluation range) fits the popularity baseline."""
    from recsys.policies.baselines import popularity_policy, uniform_policy
    from recsys.registry import baseline_model

    out = CandidateSet({})
    history_counts = None
    if history is not None:
        history_counts = _item_clicks(history)
        if history_counts[0].size == 0:
            history_counts = None
    for spec in specs:
        spec = spec.strip()
        if spec.startswith("models:/"):
            candidate: Any = load_registered(spec)
            label = spec[len("models:/"):]
        elif spec == "uniform":
            candidate = baseline_model("uniform", uniform_policy(
                _catalogue(logs, None if history_counts is None else history_counts[0]),
                random_state=random_state))
            label = spec
        elif spec == "popularity":
            if history_counts is None:
                history_items, clicks = _item_clicks(pl.DataFrame(
                    {"item_id": logs.action, "reward": logs.reward}))
                out.notes.append("popularity is fitted on the evaluation logs themselves (mild "
                                 "leakage: it has seen the rewards it is scored on); give a "
                                 "start time to fit it on the rows before it")
            else:
                history_items, clicks = history_counts
            items = _catalogue(logs, history_items)
            counts = np.zeros(items.size)
            counts[np.searchsorted(items, history_items)] = clicks
            candidate = baseline_model("popularity", popularity_policy(
                items, counts, epsilon=POPULARITY_EPSILON, random_state=random_state))
            label = spec
        elif spec == LOGGING:
            candidate, label = LoggingPolicy(), spec
        else:
            raise CandidateError(message(
                "candidate", f"models:/NAME/VERSION, models:/NAME@ALIAS or one of "
                f"{', '.join(BUILTINS)}", repr(spec), did_you_mean(spec, BUILTINS)))
        if label in out.candidates:
            raise CandidateError(message("candidates", "each candidate once",
                                         f"{spec!r} twice"))
        out.candidates[label] = candidate
    if not out.candidates:
        raise CandidateError(message("candidates", "at least one candidate", "none"))
    return out


def world_truth(world: Mapping[str, Any] | None, slate_size: int,
                notes: list[str] | None = None) -> Callable[[str, Any], float | None] | None:
    """The true-value callable for logs from ``world`` (the ``recsys.worlds`` entry point named
    ``world["kind"]``), or None when the logs name no world or no package provides it. A
    candidate the world cannot value (say, one that may show items the world does not have) gets
    None and a line in ``notes``."""
    if not world:
        return None
    kind = world.get("kind")
    found = [ep for ep in importlib.metadata.entry_points(group=WORLDS_GROUP) if ep.name == kind]
    if not found:
        return None
    true_value = found[0].load()

    def truth(name: str, candidate: Any) -> float | None:
        try:
            return float(true_value(dict(world), candidate, slate_size))
        except ValueError as exc:
            if notes is not None:
                notes.append(f"{name} has no true value in this world: {exc}")
            return None

    return truth


def logging_result(logs: LoggedSlates, estimators: Sequence[str], *, alpha: float,
                   n_bootstrap: int, random_state: int | None = 0) -> CandidateResult:
    """The logging policy's result: every estimator is the on-policy mean of the per-request
    reward sums, with a percentile bootstrap interval over requests."""
    from recsys.ope.bootstrap import estimate_confidence_interval_by_bootstrap, interval_keys

    sums = np.bincount(logs.request_index, weights=logs.reward, minlength=logs.n_requests)
    interval = estimate_confidence_interval_by_bootstrap(sums, alpha, n_bootstrap, random_state)
    low_key, high_key = interval_keys(alpha)
    value = float(sums.mean())
    lower, upper = float(interval[low_key]), float(interval[high_key])
    return CandidateResult(
        name=LOGGING, kind="baseline", uri=None, model_name=None, model_version=None,
        estimates={e: Estimate(e, value, lower, upper) for e in estimators},
        diagnostics={"n_rows": float(logs.n_rows), "effective_sample_size": float(logs.n_rows),
                     "effective_sample_ratio": 1.0, "max_weight": 1.0, "mean_weight": 1.0,
                     "unlogged_target_mass": 0.0, "unknown_item_rows": 0.0},
        true_value=None)


def compare_candidates(
    logs: LoggedSlates,
    candidates: CandidateSet | Mapping[str, Any],
    *,
    estimators: Sequence[str] | None = None,
    alpha: float = 0.05,
    n_bootstrap: int = 1000,
    random_state: int | None = 0,
    truth: Callable[[str, Any], float | None] | str | None = "auto",
    **engine: Any,
) -> Comparison:
    """Evaluate ``candidates`` on ``logs`` with the comparison engine, the ``logging`` baseline
    on-policy, in the order given. ``truth="auto"`` uses the logs' world when there is one."""
    from recsys.comparison.engine import compare_policies

    items = candidates.candidates if isinstance(candidates, CandidateSet) else dict(candidates)
    truth_notes: list[str] = []
    if truth == "auto":
        truth = world_truth(logs.world, logs.len_list, truth_notes)
    policies = {n: c for n, c in items.items() if not isinstance(c, LoggingPolicy)}
    kwargs = dict(alpha=alpha, n_bootstrap=n_bootstrap, random_state=random_state, **engine)
    if estimators is not None:
        kwargs["estimators"] = list(estimators)
    if policies:
        comparison = compare_policies(logs, policies, truth=truth, **kwargs)
    else:
        comparison = Comparison([], logs.n_requests, logs.n_rows, logs.len_list,
                                int(logs.items_.size), alpha, n_bootstrap, logs.describe(),
                                estimators=list(estimators or ("snips",)))
    names = comparison.estimators or list(estimators or ("snips",))
    results = {c.name: c for c in comparison.candidates}
    if len(policies) < len(items):
        results[LOGGING] = logging_result(logs, names, alpha=alpha, n_bootstrap=n_bootstrap,
                                          random_state=random_state)
    comparison.candidates = [results[n] for n in items if n in results]
    notes = [*(candidates.notes if isinstance(candidates, CandidateSet) else []), *truth_notes]
    if notes:
        comparison.logs = {**comparison.logs, "notes": [*comparison.logs.get("notes", []),
                                                        *notes]}
    return comparison
