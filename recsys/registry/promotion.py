"""Promotion: move the ``champion`` alias to a challenger version only when a stated rule holds.

The rule reads one off-policy estimator (``settings.registry.estimator``, SNIPS by default) of
the champion and the challenger, evaluated on the same logs in one comparison:

- ``lower_bound`` (the default): promote when the challenger's lower interval bound beats the
  champion's point estimate by more than ``margin``. With 95 % intervals the challenger must be
  better than the champion's estimate with high confidence, not just look better.
- ``estimate``: promote when the challenger's point estimate beats the champion's by more than
  ``margin`` (faster to switch, noisier).

With no champion yet (the alias is not set), the challenger is held against the logging policy
(the ``logging`` baseline: the on-policy mean of the logs) by the same rule: a first champion
must beat what produced the logs. Promoting records the previous champion on the registered
model (tag ``recsys.previous_champion``, and the whole line in ``recsys.champion_history``) and
on the new version (``recsys.promoted_from``, ``recsys.promotion_reason``); ``rollback`` moves
the alias back along that line.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from recsys.validation import did_you_mean, message

if TYPE_CHECKING:
    from recsys.comparison import Comparison, LoggedSlates

RULES = ("lower_bound", "estimate")
"""The promotion rules ``PromotionRule.kind`` names."""

LOGGING = "logging"
"""The candidate a first champion is held against: the logging policy itself."""

PREVIOUS_CHAMPION_TAG = "recsys.previous_champion"
HISTORY_TAG = "recsys.champion_history"
PROMOTED_FROM_TAG = "recsys.promoted_from"
REASON_TAG = "recsys.promotion_reason"
ROLLED_BACK_TAG = "recsys.rolled_back_from"
NO_CHAMPION = "none"


class PromotionError(ValueError):
    """A promotion or rollback that cannot be done as asked; the message says why and what to do."""


@dataclass(frozen=True)
class PromotionRule:
    """When a challenger replaces the champion (see the module docstring).

    ``kind`` "lower_bound": challenger lower bound > champion estimate + ``margin``;
    "estimate": challenger estimate > champion estimate + ``margin``. ``estimator`` names the
    off-policy estimate both are read from.
    """

    kind: str = "lower_bound"
    estimator: str = "snips"
    margin: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in RULES:
            raise ValueError(message("rule", f"one of {', '.join(RULES)}", repr(self.kind),
                                     did_you_mean(self.kind, RULES)))
        if isinstance(self.margin, bool) or not isinstance(self.margin, int | float) or not (
                math.isfinite(self.margin)):
            raise ValueError(message("margin", "a finite number", repr(self.margin)))

    @classmethod
    def from_settings(cls, registry: Any, kind: str | None = None,
                      margin: float | None = None) -> PromotionRule:
        """The rule of ``settings.registry`` (estimator, margin), ``kind``/``margin`` overriding."""
        return cls(kind=kind or "lower_bound", estimator=registry.estimator,
                   margin=registry.margin if margin is None else margin)

    def describe(self) -> str:
        """The rule in words, for reports and ``--help``."""
        side = "lower bound" if self.kind == "lower_bound" else "estimate"
        return (f"challenger's {self.estimator} {side} > champion's {self.estimator} estimate "
                f"+ {self.margin:g}")


@dataclass(frozen=True)
class Decision:
    """The verdict of a rule on one comparison, with the numbers it read."""

    promote: bool
    reason: str
    rule: PromotionRule
    challenger: str
    champion: str
    challenger_value: float
    challenger_lower: float
    challenger_upper: float
    champion_value: float
    champion_lower: float
    champion_upper: float
    threshold: float
    name: str | None = None
    alias: str | None = None
    challenger_version: str | None = None
    champion_version: str | None = None
    comparison_run_id: str | None = None
    applied: bool = False
    """True once the alias was moved (False for a dry run or a refusal)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (non-finite numbers become None)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None
        return out

    def with_(self, **changes: Any) -> Decision:
        """A copy with ``changes``."""
        return Decision(**{**self.__dict__, **changes})


def _result(comparison: Any, name: str) -> Any:
    names = [c.name for c in comparison.candidates]
    for candidate in comparison.candidates:
        if candidate.name == name:
            return candidate
    raise PromotionError(message("candidate", f"one of the comparison's ({', '.join(names)})",
                                 repr(name), did_you_mean(name, names)))


def _estimate(result: Any, estimator: str) -> tuple[float, float, float]:
    estimate = result.estimates.get(estimator)
    if estimate is None:
        raise PromotionError(message(f"{result.name}", f"a {estimator} estimate in the comparison",
                                     f"only {', '.join(result.estimates) or 'none'}",
                                     f"compare with --estimators including {estimator}"))
    return float(estimate.value), float(estimate.lower), float(estimate.upper)


def decide(comparison: Comparison, champion: str, challenger: str,
           rule: PromotionRule | None = None) -> Decision:
    """Apply ``rule`` to the candidates named ``champion`` and ``challenger`` of ``comparison``.

    A NaN estimate (an estimator that could not be computed) never promotes.
    """
    rule = rule or PromotionRule()
    ch_value, ch_lower, ch_upper = _estimate(_result(comparison, challenger), rule.estimator)
    cp_value, cp_lower, cp_upper = _estimate(_result(comparison, champion), rule.estimator)
    threshold = cp_value + rule.margin
    read = ch_lower if rule.kind == "lower_bound" else ch_value
    side = "lower bound" if rule.kind == "lower_bound" else "estimate"
    promote = bool(math.isfinite(read) and math.isfinite(threshold) and read > threshold)
    relation = ">" if promote else "does not exceed"
    reason = (f"{challenger} {rule.estimator} {side} {read:.4g} {relation} {champion} "
              f"{rule.estimator} {cp_value:.4g} + margin {rule.margin:g}")
    return Decision(promote, reason, rule, challenger, champion, ch_value, ch_lower, ch_upper,
                    cp_value, cp_lower, cp_upper, threshold)


# --- the registry side ------------------------------------------------------------------------


def _client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()


def _check_version(client: Any, name: str, version: str) -> None:
    from recsys.registry.mlflow_io import check_registered

    try:
        check_registered(name, version=version)
    except ValueError as exc:
        raise PromotionError(str(exc)) from None


def champion_version(name: str, alias: str = "champion") -> str | None:
    """The version ``alias`` points at, or None when it is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return str(_client().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _history(client: Any, name: str) -> list[str]:
    raw = client.get_registered_model(name).tags.get(HISTORY_TAG)
    try:
        history = json.loads(raw) if raw else []
    except json.JSONDecodeError:
        history = []
    return [str(v) for v in history] if isinstance(history, list) else []


def _find(comparison: Any, name: str, version: str | None) -> str | None:
    """The comparison's candidate that is ``name`` version ``version`` (None: the logging one)."""
    for candidate in comparison.candidates:
        if version is None and candidate.name == LOGGING:
            return candidate.name
        if (version is not None and candidate.model_name == name
                and str(candidate.model_version) == version):
            return candidate.name
    return None


def promote(
    name: str,
    challenger_version: str | int,
    *,
    logs: LoggedSlates | None = None,
    comparison: Comparison | None = None,
    comparison_run_id: str | None = None,
    rule: PromotionRule | None = None,
    alias: str = "champion",
    alpha: float = 0.05,
    n_bootstrap: int = 1000,
    random_state: int = 0,
    dry_run: bool = False,
    log: bool = True,
) -> Decision:
    """Compare champion and challenger and move ``alias`` to the challenger when ``rule`` holds.

    The evidence is, in this order: ``comparison`` (an evaluation already made, holding both
    versions, or the ``logging`` baseline when there is no champion), the comparison run
    ``comparison_run_id`` (a ``recsys compare`` run), else a new comparison of the two on
    ``logs`` (logged as a comparison run unless ``log`` is False). ``dry_run`` decides without
    moving anything. Raises PromotionError when the model, version or evidence is missing.
    """
    from recsys.comparison.report import load_comparison

    rule = rule or PromotionRule()
    client = _client()
    challenger_version = str(challenger_version)
    _check_version(client, name, challenger_version)
    current = champion_version(name, alias)
    base = {"name": name, "alias": alias, "challenger_version": challenger_version,
            "champion_version": current}
    if current == challenger_version:
        return Decision(False, f"{name} version {current} is already {alias}", rule,
                        f"{name}/{current}", f"{name}/{current}", *[math.nan] * 7, **base)
    run_id = comparison_run_id
    if comparison is None and comparison_run_id is not None:
        comparison = load_comparison(comparison_run_id)
    if comparison is None:
        if logs is None:
            raise PromotionError(message("evidence", "logs to compare on or a comparison run id",
                                         "neither", "give --logs or --comparison-run"))
        comparison, run_id = _compare(name, challenger_version, current, logs, rule,
                                      alpha=alpha, n_bootstrap=n_bootstrap,
                                      random_state=random_state, log=log)
    challenger = _find(comparison, name, challenger_version)
    champion = _find(comparison, name, current)
    missing = [f"{name} version {v}" if v else f"the {LOGGING} baseline"
               for v, found in ((challenger_version, challenger), (current, champion))
               if found is None]
    if missing:
        raise PromotionError(message("comparison", "the challenger and the champion (or, with no "
                                     "champion, the logging baseline)", "no " + " and no ".join(
                                         missing), "compare them on the same logs first"))
    decision = decide(comparison, champion, challenger, rule).with_(
        comparison_run_id=run_id, **base)
    if decision.promote and not dry_run:
        _move(client, name, alias, challenger_version, current, decision.reason)
        decision = decision.with_(applied=True)
    return decision


def _compare(name: str, challenger_version: str, current: str | None, logs: LoggedSlates,
             rule: PromotionRule, *, alpha: float, n_bootstrap: int, random_state: int,
             log: bool) -> tuple[Comparison, str | None]:
    from recsys.comparison.candidates import compare_candidates, parse_candidates
    from recsys.comparison.report import log_comparison

    specs = [f"models:/{name}/{challenger_version}",
             f"models:/{name}/{current}" if current else LOGGING]
    candidates = parse_candidates(specs, logs)
    comparison = compare_candidates(logs, candidates, estimators=[rule.estimator], alpha=alpha,
                                    n_bootstrap=n_bootstrap, random_state=random_state)
    run_id = log_comparison(comparison, primary=rule.estimator) if log else None
    return comparison, run_id


def _move(client: Any, name: str, alias: str, version: str, previous: str | None,
          reason: str) -> None:
    client.set_registered_model_alias(name, alias, version)
    history = _history(client, name)
    if previous is not None:
        history.append(previous)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    client.set_registered_model_tag(name, PREVIOUS_CHAMPION_TAG, previous or NO_CHAMPION)
    client.set_model_version_tag(name, version, PROMOTED_FROM_TAG, previous or LOGGING)
    client.set_model_version_tag(name, version, REASON_TAG, reason)


@dataclass(frozen=True)
class Rollback:
    """What a rollback did: ``alias`` moved from ``from_version`` back to ``to_version``."""

    name: str
    alias: str
    from_version: str | None
    to_version: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rollback(name: str, *, alias: str = "champion") -> Rollback:
    """Move ``alias`` back to the champion before the current one (repeatable: each call goes one
    further back along the recorded line). PromotionError when there is none to go back to."""
    client = _client()
    _check_model(client, name)
    history = _history(client, name)
    current = champion_version(name, alias)
    if not history:
        raise PromotionError(message(f"{name}", "a previous champion to roll back to",
                                     "none" if current is None else
                                     f"none (version {current} is the first {alias})"))
    target = history.pop()
    client.set_registered_model_alias(name, alias, target)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    client.set_registered_model_tag(name, PREVIOUS_CHAMPION_TAG,
                                    history[-1] if history else NO_CHAMPION)
    if current is not None:
        client.set_model_version_tag(name, current, ROLLED_BACK_TAG, target)
    return Rollback(name, alias, current, target)


def _check_model(client: Any, name: str) -> None:
    from recsys.registry.mlflow_io import check_registered

    try:
        check_registered(name)
    except ValueError as exc:
        raise PromotionError(str(exc)) from None
