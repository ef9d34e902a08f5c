"""What a comparison returns: estimates with intervals per candidate, as a table or JSON.

One :class:`Comparison` holds every candidate's :class:`CandidateResult` (its estimates with
bootstrap intervals, its overlap diagnostics and, for simulator logs, its true value) and how it
was computed (logs, sizes, bootstrap settings, estimators left out and why). ``table()`` is the
long form that the report, the forest plot and the mlflow comparison run read; ``to_dict()`` is
its JSON-safe form (non-finite floats become None) and ``from_dict`` reads it back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from recsys.validation import did_you_mean, message

__all__ = ["CandidateResult", "Comparison", "Estimate"]

KINDS = ("online", "offline", "baseline")
"""Where a candidate comes from: a bandit learnt in the stream, an offline model, a baseline."""


def json_float(value: Any) -> float | None:
    """A float for JSON: NaN and infinities become None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


@dataclass(frozen=True)
class Estimate:
    """One estimator's policy value with its percentile bootstrap interval."""

    estimator: str
    value: float
    lower: float
    upper: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields."""
        return {"estimator": self.estimator, "value": json_float(self.value),
                "lower": json_float(self.lower), "upper": json_float(self.upper)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Estimate:
        return cls(str(data["estimator"]), _float(data["value"]), _float(data["lower"]),
                   _float(data["upper"]))


@dataclass
class CandidateResult:
    """A candidate's estimates (by estimator name), diagnostics and true value (or None)."""

    name: str
    kind: str
    uri: str | None
    model_name: str | None
    model_version: str | None
    estimates: dict[str, Estimate]
    diagnostics: dict[str, float]
    true_value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields."""
        return {
            "name": self.name,
            "kind": self.kind,
            "uri": self.uri,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "estimates": {k: e.to_dict() for k, e in self.estimates.items()},
            "diagnostics": {k: json_float(v) for k, v in self.diagnostics.items()},
            "true_value": json_float(self.true_value),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CandidateResult:
        return cls(
            name=str(data["name"]),
            kind=str(data["kind"]),
            uri=data.get("uri"),
            model_name=data.get("model_name"),
            model_version=data.get("model_version"),
            estimates={k: Estimate.from_dict(v) for k, v in data["estimates"].items()},
            diagnostics={k: _float(v) for k, v in data.get("diagnostics", {}).items()},
            true_value=None if data.get("true_value") is None else float(data["true_value"]),
        )


@dataclass
class Comparison:
    """Every candidate evaluated on the same logs with the same estimators and resamples.

    ``logs`` says which logs (``source``, the requested and observed time ``range``, the
    ``world`` they came from when a simulator wrote them); ``omitted`` names estimators that
    were asked for but not reported, with the reason (the pseudo-inverse on a large catalogue,
    say).
    """

    candidates: list[CandidateResult]
    n_requests: int
    n_rows: int
    len_list: int
    n_actions: int
    alpha: float
    n_bootstrap: int
    logs: dict[str, Any]
    estimators: list[str] = field(default_factory=list)
    omitted: dict[str, str] = field(default_factory=dict)

    def result(self, name: str) -> CandidateResult:
        """The result of candidate ``name``."""
        for candidate in self.candidates:
            if candidate.name == name:
                return candidate
        names = [c.name for c in self.candidates]
        raise KeyError(message("name", f"one of {names}", repr(name), did_you_mean(name, names)))

    def table(self) -> pl.DataFrame:
        """One row per (candidate, estimator): value, lower, upper, true_value and the model."""
        rows = [
            {
                "candidate": c.name,
                "kind": c.kind,
                "estimator": e.estimator,
                "value": e.value,
                "lower": e.lower,
                "upper": e.upper,
                "true_value": c.true_value,
                "model_name": c.model_name,
                "model_version": c.model_version,
                "uri": c.uri,
            }
            for c in self.candidates
            for e in c.estimates.values()
        ]
        schema = {"candidate": pl.String, "kind": pl.String, "estimator": pl.String,
                  "value": pl.Float64, "lower": pl.Float64, "upper": pl.Float64,
                  "true_value": pl.Float64, "model_name": pl.String,
                  "model_version": pl.String, "uri": pl.String}
        return pl.DataFrame(rows, schema=schema)

    def diagnostics_table(self) -> pl.DataFrame:
        """One row per candidate: its overlap diagnostics."""
        keys = sorted({k for c in self.candidates for k in c.diagnostics})
        return pl.DataFrame(
            [{"candidate": c.name, "kind": c.kind,
              **{k: c.diagnostics.get(k, math.nan) for k in keys}} for c in self.candidates],
            schema={"candidate": pl.String, "kind": pl.String, **dict.fromkeys(keys, pl.Float64)},
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form of the whole comparison."""
        return {
            "candidates": [c.to_dict() for c in self.candidates],
            "n_requests": int(self.n_requests),
            "n_rows": int(self.n_rows),
            "len_list": int(self.len_list),
            "n_actions": int(self.n_actions),
            "alpha": float(self.alpha),
            "n_bootstrap": int(self.n_bootstrap),
            "logs": self.logs,
            "estimators": list(self.estimators),
            "omitted": dict(self.omitted),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Comparison:
        """The comparison ``to_dict`` wrote."""
        return cls(
            candidates=[CandidateResult.from_dict(c) for c in data["candidates"]],
            n_requests=int(data["n_requests"]),
            n_rows=int(data["n_rows"]),
            len_list=int(data["len_list"]),
            n_actions=int(data["n_actions"]),
            alpha=float(data["alpha"]),
            n_bootstrap=int(data["n_bootstrap"]),
            logs=dict(data.get("logs", {})),
            estimators=list(data.get("estimators", [])),
            omitted=dict(data.get("omitted", {})),
        )
