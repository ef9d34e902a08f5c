"""What serving lets into the model: contexts it can learn from, and scores that are numbers.

Every slate is logged as an impression, and learners learn from its context, so a context the
statistics cannot learn from must be refused *before* it is scored or logged (issue 17: one
accepted request with 32 × 1e200 poisoned Thompson sampling for every user). The request schema
already refuses NaN and infinity and the layout's codec refuses the wrong dimension; here:

* **Norm.** A dense context, or a cluster-weight vector, whose Euclidean norm exceeds
  ``serve.max_context_norm`` is a 422 naming ``("context", "dense")`` (or ``cluster_weights``),
  the bound and the setting. The norm is computed without overflow (``1e200`` entries have a
  finite norm check, not an ``inf``). The same bound applies to a context read from the
  user-feature table, and then the message says the table's row is at fault. Soft memberships
  normally sum to one (norm ≤ 1), so the bound only stops hostile weights.
* **Scores.** A slate whose scores are not all finite is never answered (it would be ``null`` in
  JSON and break the schema): the service answers 503 "statistics not finite" and counts it in
  ``recsys_serve_non_finite_scores_total{policy}``. The context was already within the bound,
  so the statistics or the policy are at fault, not the client; the 503 says so and monitoring
  sees it.

Refusals are counted in ``recsys_serve_contexts_refused_total{reason}`` (``norm``,
``table_norm``). The learners clip what gets through to ``stream.context_clip_norm``
(``recsys.bandits.influence``), so keep ``serve.max_context_norm`` at or below it: then what
serving scores is exactly what learners learn.
"""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from recsys.bandits.influence import row_norms
from recsys.events import Context


class ContextRefused(ValueError):
    """A context serving will not score or log: ``loc`` is the field, ``msg`` why (a 422)."""

    def __init__(self, loc: tuple[str, ...], msg: str) -> None:
        super().__init__(f"{'.'.join(loc)}: {msg}")
        self.loc, self.msg = loc, msg


class StatisticsNotFinite(RuntimeError):
    """A slate scored with NaN or infinity: the statistics or the policy are broken (a 503)."""


def context_norm(values: tuple[float, ...] | list[float]) -> float:
    """The Euclidean norm of finite ``values``, without overflow in the squares."""
    if not values:
        return 0.0
    return float(row_norms(np.asarray(values, dtype=np.float64)[None, :])[0])


class ContextGuard:
    """Checks contexts and scores for one replica and counts what it refuses (module docs)."""

    def __init__(self, max_norm: float, registry: CollectorRegistry | None = None) -> None:
        self.max_norm = float(max_norm)
        self.refused = Counter("recsys_serve_contexts_refused", "Contexts refused before "
                               "scoring because serving could not learn from them, by reason "
                               "(norm, table_norm)", ["reason"], registry=registry)
        self.non_finite = Counter("recsys_serve_non_finite_scores", "Slates refused with a 503 "
                                  "because a score was NaN or infinite, by policy", ["policy"],
                                  registry=registry)
        for reason in ("norm", "table_norm"):
            self.refused.labels(reason)

    def check(self, context: Context, *, table_user: str | None = None) -> Context:
        """``context`` if its dense features and cluster weights are within ``max_norm``;
        raises :class:`ContextRefused`. ``table_user``: the context is that user's row of the
        user-feature table (the message then blames the table, not the request)."""
        for field, values in (("dense", context.dense),
                              ("cluster_weights", context.cluster_weights)):
            norm = context_norm(values)
            if norm <= self.max_norm:
                continue
            if table_user is not None:
                self.refused.labels("table_norm").inc()
                raise ContextRefused(("context",), (
                    f"expected a context: the row of user {table_user!r} in the user-feature "
                    f"table (serve.user_features_uri) has a {field} norm of {norm:.3g}, above "
                    f"serve.max_context_norm = {self.max_norm:g}; fix that row of the table, or "
                    "send the context with the request"))
            self.refused.labels("norm").inc()
            raise ContextRefused(("context", field), (
                f"expected a Euclidean norm of at most {self.max_norm:g} "
                f"(serve.max_context_norm), got {norm:.3g}; normalise or scale the features"))
        return context

    def check_scores(self, policy: str, scores: np.ndarray) -> None:
        """Raise :class:`StatisticsNotFinite` (and count it) unless every score is finite."""
        if np.isfinite(scores).all():
            return
        self.non_finite.labels(policy).inc()
        raise StatisticsNotFinite(
            f"statistics not finite: policy {policy!r} scored this slate with NaN or infinity "
            "(not served, not logged); the statistics or the policy's scale need attention")
