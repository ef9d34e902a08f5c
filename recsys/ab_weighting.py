"""A/B tests whose arms share a training loop: the weighted training of Si et al. (2023).

When a treatment and a control policy are served side by side (traffic share ``p`` to treatment)
and their models are retrained on the *pooled* logs, each arm learns from data the other arm
collected: a greedy control free-rides on the treatment's exploration, two learners drift towards
one model, and the measured difference is not what either policy would do alone at 100 % of the
traffic (the global treatment effect). Si, Tu, Wang et al., *Tackling Interference Induced by
Data Training Loops in A/B Tests: A Weighted Training Approach* (arXiv 2310.17496) fit

    e(x) = P(treatment | logged data point x)

and train the treatment model on *all* logs with weight ``e(x)/p`` and the control model with
``(1 − e(x))/(1 − p)``. With the pooled density ``p·f_T + (1 − p)·f_C`` these weights turn it into
``f_T`` (resp. ``f_C``) and their mean is 1, so each model sees, in expectation, the data it would
collect alone at full traffic, and as much of it.

What ``p`` is: the share of the *logged data points* that the treatment arm produced, in
expectation: the traffic share ``serve.traffic`` gives the treatment when each request is
randomised independently and logs one data point per shown item for every arm alike (the
demo's case). If the arms log differently (slates of different lengths, say), pass the share of
data points instead; :func:`ab_weights` takes the realised share of ``arm_is_treatment`` when
``p`` is None.

The data point's features (:func:`ab_features`) are what a learner learns from: the context
crossed with the shown item's one-hot, so ``e`` can follow each arm's choice of item per
context (saturated, hence exact, for one-hot contexts). Fit ``e`` on the same window of logs the
models are retrained on (the arms' policies change between trainings).

Why here and not in ``recsys.bandits``: the weights are a property of the logs, not of a
statistics layout; any model trained on pooled logs (the bandit statistics' ``sample_weight``,
an offline model's ``sample_weight``) takes them. :func:`run_ab` is the closed-loop harness on a
bandit environment (the protocol of ``recsys.bandits.regret``) that measures the bias.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Self

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression

from recsys.validation import check_scalar, message

if TYPE_CHECKING:
    from recsys.bandits.base import BasePolicy
    from recsys.bandits.regret import Environment

Weighting = Literal["pooled", "si2023"]
WEIGHTINGS = ("pooled", "si2023")


def ab_features(contexts: ArrayLike, items: ArrayLike, item_ids: ArrayLike) -> sp.csr_matrix:
    """Features of logged data points for e(x): the shown item's one-hot, then the context
    crossed with it (``x ⊗ onehot(item)``), as a sparse [n, n_items·(1 + dim)] matrix.

    ``contexts`` [n, dim] dense; ``items`` [n] ids among ``item_ids`` (the catalogue, any order).
    """
    x = np.asarray(contexts, dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError(message("contexts", "a finite array [n, dim]",
                                 f"shape {x.shape}" if x.ndim != 2 else "NaN or infinity"))
    catalogue = np.asarray(item_ids, dtype=np.int64).ravel()
    order = np.argsort(catalogue)
    ids = np.asarray(items, dtype=np.int64).ravel()
    if ids.shape != (x.shape[0],):
        raise ValueError(message("items", f"one item per context, shape [{x.shape[0]}]",
                                 f"shape {ids.shape}"))
    if catalogue.size == 0:
        raise ValueError(message("item_ids", "the catalogue's item ids", "none"))
    pos = np.minimum(np.searchsorted(catalogue[order], ids), catalogue.size - 1)
    known = catalogue[order][pos] == ids
    if not known.all():
        raise ValueError(message("items", "ids among item_ids",
                                 f"unknown ids such as {ids[~known][:5].tolist()}"))
    col = order[pos]  # each item's index in the catalogue
    n, dim = x.shape
    n_items = catalogue.size
    rows = np.repeat(np.arange(n), 1 + dim)
    cols = np.concatenate([col[:, None], n_items + col[:, None] * dim + np.arange(dim)], axis=1)
    vals = np.concatenate([np.ones((n, 1)), x], axis=1)
    return sp.csr_matrix((vals.ravel(), (rows, cols.ravel())), shape=(n, n_items * (1 + dim)))


class TreatmentPropensity(ClassifierMixin, BaseEstimator):
    """e(x) = P(treatment | data point): logistic regression, probabilities clipped to
    [eps, 1 − eps] so that no weight ``e/p`` or ``(1 − e)/(1 − p)`` is 0 or huge.

    scikit-learn conventions: hyperparameters here, :meth:`fit` (y: 1 = the treatment arm
    logged the point), :meth:`predict_proba` ([n, 2]: control, treatment), learned ``model_``.
    ``solver="newton-cholesky"`` suits the few, one-hot-crossed features of :func:`ab_features`.
    Weak regularisation by default (``C=100``): e must be calibrated, and shrinking it towards
    the overall share leaks the other arm's data back into each model (on the simulator's A/B
    bias table, C = 1 left about twice the residual bias of C = 100).
    """

    def __init__(self, C: float = 100.0, *, eps: float = 0.001, solver: str = "newton-cholesky",
                 max_iter: int = 100) -> None:
        self.C = C
        self.eps = eps
        self.solver = solver
        self.max_iter = max_iter

    def fit(self, X: Any, y: ArrayLike, sample_weight: ArrayLike | None = None) -> Self:
        """Fit on logged data points ``X`` and their arm ``y`` (1/True: treatment)."""
        check_scalar(self.eps, "eps", 0.0, 0.5, low_open=True, high_open=True)
        t = np.asarray(y).astype(bool).ravel()
        if t.all() or not t.any():
            raise ValueError(message("y", "data points from both arms",
                                     f"only {'treatment' if t.all() else 'control'} points",
                                     "fit e(x) on a window of logs in which both arms served"))
        self.model_ = LogisticRegression(C=self.C, solver=self.solver, max_iter=self.max_iter)
        self.model_.fit(X, t, sample_weight=sample_weight)
        self.classes_ = np.array([False, True])
        self.n_features_in_ = self.model_.n_features_in_
        self.treatment_share_ = float(t.mean())
        return self

    def predict_proba(self, X: Any) -> NDArray[np.float64]:
        """[n, 2]: P(control | x), P(treatment | x), clipped to [eps, 1 − eps]."""
        e = np.clip(self.model_.predict_proba(X)[:, 1], self.eps, 1.0 - self.eps)
        return np.column_stack([1.0 - e, e])

    def predict(self, X: Any) -> NDArray[np.bool_]:
        """True where the treatment arm is the more likely origin of the data point."""
        return self.predict_proba(X)[:, 1] > 0.5


def ab_weights(arm_is_treatment: ArrayLike, e: ArrayLike, p: float | None = None
               ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Si et al.'s training weights for every logged data point: ``(e/p, (1 − e)/(1 − p))``.

    The first trains the treatment model on all logs, the second the control model. ``e``:
    e(x) of each point in (0, 1) (:class:`TreatmentPropensity`); ``p``: the treatment's share of
    the logged data points (module docs), by default the realised share of ``arm_is_treatment``.
    """
    t = np.asarray(arm_is_treatment).astype(bool).ravel()
    prob = np.asarray(e, dtype=np.float64).ravel()
    if prob.shape != t.shape:
        raise ValueError(message("e", f"one propensity per data point, shape {t.shape}",
                                 f"shape {prob.shape}"))
    if prob.size and not (np.isfinite(prob).all() and prob.min() > 0.0 and prob.max() < 1.0):
        raise ValueError(message("e", "propensities strictly inside (0, 1)",
                                 f"values in [{prob.min()}, {prob.max()}]",
                                 "clip them (TreatmentPropensity(eps=...))"))
    share = float(t.mean()) if p is None else p
    share = check_scalar(share, "p", 0.0, 1.0, low_open=True, high_open=True)
    return prob / share, (1.0 - prob) / (1.0 - share)


def si2023_weights(
    contexts: ArrayLike, items: ArrayLike, item_ids: ArrayLike, arm_is_treatment: ArrayLike, *,
    p: float | None = None, propensity: TreatmentPropensity | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Fit e(x) on these logs (:func:`ab_features`) and return :func:`ab_weights`."""
    model = TreatmentPropensity() if propensity is None else propensity
    X = ab_features(contexts, items, item_ids)
    e = model.fit(X, arm_is_treatment).predict_proba(X)[:, 1]
    return ab_weights(arm_is_treatment, e, p)


# ------------------------------------------------------------------ the closed loop


@dataclass(frozen=True)
class ABRun:
    """One simulated A/B test: each arm's true value of what it served (mean expected reward
    of its requests over the run), its observed mean reward and its request count."""

    value_treatment: float
    value_control: float
    reward_treatment: float
    reward_control: float
    n_treatment: int
    n_control: int

    @property
    def effect(self) -> float:
        """The A/B estimate of the treatment effect on true values: treatment − control."""
        return self.value_treatment - self.value_control


def run_ab(
    env: Environment, treatment: BasePolicy, control: BasePolicy | None, *, p: float,
    n_rounds: int, batch_size: int = 400, weighting: Weighting = "pooled",
    propensity: TreatmentPropensity | None = None, random_state: int | None = None,
) -> ABRun:
    """Serve ``n_rounds`` batches, each request to treatment with probability ``p`` (else to
    control; ``control=None`` is uniformly random and learns nothing), and retrain after each
    batch (the training loop), for ``weighting``:

    * ``"pooled"``: one set of statistics learns every event and both arms score with it (what
      a shared learner does);
    * ``"si2023"``: each arm has its own statistics, learning every event with its weight
      (:func:`si2023_weights`, e(x) fitted on the batch).

    ``p=1`` (``p=0``) runs treatment (control) alone at 100 % of the traffic: its value is the
    truth the A/B test estimates. Policies are (re)initialised over items ``0 .. n_actions-1``.
    """
    check_scalar(p, "p", 0.0, 1.0)
    if weighting not in WEIGHTINGS:
        raise ValueError(message("weighting", f"one of {WEIGHTINGS}", repr(weighting)))
    rng = np.random.default_rng(random_state)
    items = np.arange(env.n_actions)
    treatment.init(items, env.dim)
    if control is not None:
        if weighting == "pooled":
            control.use(treatment.stats_)
        else:
            control.init(items, env.dim)
    value = [0.0, 0.0]
    reward = [0.0, 0.0]
    count = [0, 0]
    for _ in range(n_rounds):
        x = env.contexts(batch_size)
        mu = env.expected_rewards(x)
        t = rng.random(batch_size) < p
        a = np.empty(batch_size, dtype=np.int64)
        if t.any():
            a[t] = treatment.recommend(x[t], k=1).items[:, 0]
        if (~t).any():
            a[~t] = (rng.integers(0, env.n_actions, int((~t).sum())) if control is None
                     else control.recommend(x[~t], k=1).items[:, 0])
        r = env.sample_rewards(x, a)
        served = mu[np.arange(batch_size), a]
        for arm, mask in ((0, t), (1, ~t)):
            value[arm] += float(served[mask].sum())
            reward[arm] += float(r[mask].sum())
            count[arm] += int(mask.sum())
        if weighting == "pooled":
            treatment.stats_.learn(x, a, r)
            continue
        if t.all() or not t.any():  # one arm served the batch: e = 1 (or 0), it learns alone
            w_t, w_c = t.astype(np.float64), (~t).astype(np.float64)
        else:
            w_t, w_c = si2023_weights(x, a, items, t, p=p, propensity=propensity)
        treatment.stats_.learn(x, a, r, sample_weight=w_t)
        if control is not None:
            control.stats_.learn(x, a, r, sample_weight=w_c)

    def mean(total: float, n: int) -> float:
        return total / n if n else float("nan")

    return ABRun(mean(value[0], count[0]), mean(value[1], count[1]), mean(reward[0], count[0]),
                 mean(reward[1], count[1]), count[0], count[1])
