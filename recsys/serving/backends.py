"""Scoring backends for the serving app: numpy by default, torch (CPU threads or CUDA) by config.

A backend turns (policy, contexts, k, optional candidate list) into a :class:`~recsys.bandits.Slate`
with exactly the semantics of ``policy.recommend(contexts, k)``: the same scores, the same
slate distribution and the same propensities. Why two: top-10 of 1M items at d=64 is ~14 ms in
numpy and well under a millisecond on a GPU, so large catalogues must not be stuck on numpy.

* :class:`NumpyScorer` is ``policy.recommend`` itself; a candidate list restricts the policy's
  view of the statistics to those rows (moments of the candidate rows only).
* :class:`TorchScorer` keeps the posterior arrays of each statistics snapshot on the device
  (uploaded once per ``snapshot_id``) and scores there: the rule-based policies (Diag-LinUCB,
  ε-greedy, greedy, uniform = ε-greedy with ε = 1) and diagonal Thompson sampling (DiagLinTS,
  InSlateTS) on :class:`~recsys.bandits.DenseStats`. Everything else — graph or full-covariance
  statistics, SquareCB, any policy that overrides the scoring — goes to :class:`NumpyScorer`, as
  does a request whose top scores tie (the numpy path breaks ties uniformly at random and gives
  tied items shared propensities; ``torch.topk`` does neither). Cold-start statistics, where every
  item has the same score, therefore run on numpy until the items have data.

Randomness: the policy's own numpy generator decides exploration (the uniform mix) and, for
Thompson sampling, seeds a ``torch.Generator`` per request, so a seeded policy gives reproducible
slates on one backend. The two backends do not consume the stream identically, so the same seed
gives the same *distribution* on both, not the same draws (deterministic policies give the same
slates).
"""

from __future__ import annotations

import copy
import numbers
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from recsys.bandits.base import BasePolicy
from recsys.bandits.dense import DenseStats
from recsys.bandits.slates import Slate, uniform_slate
from recsys.bandits.thompson import DiagLinTS
from recsys.bandits.ucb import DiagLinUCB
from recsys.bandits.validation import UnknownItemError, check_contexts
from recsys.validation import message

if TYPE_CHECKING:
    import torch

BACKENDS = ("numpy", "torch")
"""The values ``make_scorer`` accepts for ``backend``."""
DTYPES = ("float32", "float64")
"""Compute dtypes of :class:`TorchScorer` (None follows the statistics' dtype)."""

_MC_CELLS = {"cpu": 1 << 22, "cuda": 1 << 25}
"""Elements of one Monte Carlo replay block per device type (keeps memory flat)."""


class UnknownCandidateError(UnknownItemError, ValueError):
    """A candidate id the statistics do not hold. Both an :class:`UnknownItemError` and a
    ``ValueError``, so a caller may catch either."""


# ---------------------------------------------------------------------------------- validation
def _stats_of(policy: BasePolicy) -> Any:
    """The policy's statistics, or a RuntimeError saying how to give it some."""
    stats = getattr(policy, "stats_", None)
    if stats is None:
        raise RuntimeError(message(
            "policy", "a policy with statistics", f"{type(policy).__name__} without any",
            "call policy.use(stats) (or policy.init(items, dim)) before scoring"))
    return stats


def _check_k(k: Any, n_items: int) -> int:
    """A slate size in ``[1, n_items]``."""
    if isinstance(k, bool | np.bool_) or not isinstance(k, numbers.Integral):
        raise TypeError(message("k", "a positive integer", f"{k!r} of type {type(k).__name__}"))
    if k < 1:
        raise ValueError(message("k", "a positive integer", repr(k)))
    if k > n_items:
        raise ValueError(message("k", f"at most the {n_items} items the statistics hold",
                                 f"k={k}", "lower k"))
    return int(k)


def candidate_rows(stats: Any, candidates: Any, k: int) -> NDArray[np.intp]:
    """Rows (ascending) of the distinct ids in ``candidates``, for a slate of ``k`` items.

    Duplicates are dropped (a slate shows an item once). Raises :class:`UnknownCandidateError`
    naming ids the statistics do not hold, and ``ValueError`` for fewer than ``k`` distinct ids.
    """
    raw = np.asarray(candidates)
    if raw.ndim != 1:
        raise ValueError(message("candidates", "a 1-d array of item ids", f"shape {raw.shape}"))
    if raw.size and raw.dtype.kind not in "iu":
        raise ValueError(message("candidates", "integer item ids", f"dtype {raw.dtype}"))
    ids = np.unique(raw.astype(np.int64))
    held = stats.item_ids  # sorted and unique (ItemIndex), in every layout
    pos = np.searchsorted(held, ids)
    found = pos < held.size
    found[found] = held[pos[found]] == ids[found]
    if not found.all():
        bad = ids[~found]
        shown = ", ".join(str(i) for i in bad[:5].tolist()) + (", ..." if bad.size > 5 else "")
        raise UnknownCandidateError(message(
            "candidates", "item ids the statistics hold", f"{bad.size} unknown id(s) ({shown})",
            "drop them from the request, or add the items to the statistics first"))
    if ids.size < k:
        raise ValueError(message("candidates", f"at least k={k} distinct item ids",
                                 f"{ids.size}", "lower k or send more candidates"))
    return pos.astype(np.intp, copy=False)


# ---------------------------------------------------------------------------------- numpy
class _CandidateView:
    """Statistics seen through a candidate list: moments and item ids of those rows only.

    Just what a policy reads to score and recommend; a policy holding it cannot learn. Dense
    statistics compute the candidate rows only; other layouts compute all and keep the columns.
    """

    def __init__(self, stats: Any, rows: NDArray[np.intp]) -> None:
        self.stats = stats
        self.rows = rows
        self.lam = stats.lam
        self.layout = stats.layout
        self.item_ids = stats.item_ids[rows]
        self.n_items = int(rows.size)

    def moments(self, contexts: Any) -> tuple[NDArray[np.float64], NDArray[np.float64], Any]:
        if isinstance(self.stats, DenseStats):
            x = check_contexts(contexts, self.stats.dim)
            mean, var = self.stats.score_moments(x, self.rows)
            return mean, var, None
        mean, var, eligible = self.stats.moments(contexts)
        rows = self.rows
        return mean[:, rows], var[:, rows], None if eligible is None else eligible[:, rows]

    def moments_one(self, context: Any) -> tuple[NDArray[np.float64], NDArray[np.float64], Any]:
        mean, var, eligible = self.moments(context)
        return mean[0], var[0], None if eligible is None else eligible[0]


def restricted(policy: BasePolicy, rows: NDArray[np.intp]) -> BasePolicy:
    """A shallow copy of ``policy`` that scores only the statistics rows ``rows``.

    ``copy.copy`` (not ``sklearn.clone``): the copy shares the policy's random generator, so
    requests served through it advance the one stream instead of replaying it.
    """
    view = copy.copy(policy)
    view.stats_ = _CandidateView(_stats_of(policy), rows)
    return view


class NumpyScorer:
    """``policy.recommend`` on the host; a candidate list restricts the scored items."""

    name = "numpy"

    def prepare(self, stats: Any) -> None:
        """Build the snapshot's scoring cache now (call when one is published, so no request
        pays it: seconds for a million items); a no-op for layouts without one."""
        if isinstance(stats, DenseStats):
            stats.posterior()

    def recommend(
        self, policy: BasePolicy, contexts: Any, k: int, candidates: Any | None = None
    ) -> Slate:
        """Top-k slates for a batch of requests, as ``policy.recommend(contexts, k)`` (over
        ``candidates`` only when given)."""
        stats = _stats_of(policy)
        k = _check_k(k, stats.n_items)
        if candidates is None:
            return policy.recommend(contexts, k)
        rows = candidate_rows(stats, candidates, k)
        target = policy if rows.size == stats.n_items else restricted(policy, rows)
        return target.recommend(contexts, k)


# ---------------------------------------------------------------------------------- torch
def _import_torch() -> Any:
    try:
        import torch
    except ImportError as err:  # pragma: no cover - torch is a dependency of recsys
        raise ImportError(message("backend", "torch to be installed for backend='torch'",
                                  f"ImportError: {err}", "install torch or use backend='numpy'")
                          ) from err
    return torch


def _check_device(torch: Any, device: Any) -> torch.device:
    """``device`` as a torch device: CPU, or a CUDA device that exists."""
    expected = "'cpu', 'cuda' or 'cuda:<index>'"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(message("device", expected, repr(device))) from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(message("device", expected, repr(device)))
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(message(
                "device", "'cpu' or an available CUDA device",
                f"{device!r}, but torch {torch.__version__} sees no CUDA device "
                "(torch.cuda.is_available() is False)", "use device='cpu' or backend='numpy'"))
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(message("device", f"a CUDA index below {torch.cuda.device_count()}",
                                     repr(device)))
    return dev


def _check_threads(threads: Any) -> int | None:
    if threads is None:
        return None
    if isinstance(threads, bool | np.bool_) or not isinstance(threads, numbers.Integral):
        raise TypeError(message("threads", "None or a positive integer",
                                f"{threads!r} of type {type(threads).__name__}"))
    if threads < 1:
        raise ValueError(message("threads", "None or a positive integer", repr(threads)))
    return int(threads)


def _scoring_kind(policy: BasePolicy, stats: Any) -> str | None:
    """Which device path reproduces ``policy.recommend``: "mean", "ucb", "thompson" or None.

    Decided by the methods the policy's class actually uses, so a subclass that changes the
    scoring (SquareCB, a custom ``_rule``) or a layout other than dense falls back to numpy.
    """
    if not isinstance(stats, DenseStats):
        return None
    cls = type(policy)
    if cls._moments is not BasePolicy._moments:
        return None
    if cls.recommend is BasePolicy.recommend:
        if cls._rule is BasePolicy._rule:
            return "mean"
        if cls._rule is DiagLinUCB._rule:
            return "ucb"
        return None
    if cls.recommend is DiagLinTS.recommend:
        return "thompson"
    return None


@dataclass(eq=False)
class _DevicePosterior:
    """One snapshot's scoring tensors on the device (see ``DenseStats._posterior``)."""

    snapshot_id: str
    theta: torch.Tensor
    inv_d: torch.Tensor
    w1: torch.Tensor | None
    b0: torch.Tensor | None
    c0: torch.Tensor | None

    def rows(self, rows: torch.Tensor | None) -> _DevicePosterior:
        """The tensors of some item rows (a candidate list), or self for all rows."""
        if rows is None:
            return self

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.index_select(0, rows)

        return _DevicePosterior(self.snapshot_id, pick(self.theta), pick(self.inv_d),
                                pick(self.w1), pick(self.b0), pick(self.c0))


class TorchScorer:
    """Scores on a torch device with the posterior cached there per statistics snapshot.

    ``device``: "cpu", "cuda" or "cuda:<i>". ``threads``: intra-op CPU threads
    (``torch.set_num_threads``, which is process-wide); None leaves torch's setting. ``dtype``:
    the compute dtype, "float32" or "float64"; None follows the statistics' dtype, so float64
    statistics on the CPU give numpy's results up to BLAS rounding, and float32 statistics are
    scored in float32 end to end (numpy applies the rule in float64), equal to float32 rounding.
    Slates always come back as numpy arrays (float64 scores and propensities, int64 item ids).
    Scoring many requests at once from several threads is safe; a policy's numpy generator,
    shared by its requests, is not, exactly as with ``policy.recommend``.

    The cache holds one entry per statistics object (weakly: it goes when the object does) and
    re-uploads when its ``snapshot_id`` changes, so after a refresh the first request — or
    :meth:`prepare` — pays the copy and every later request reuses it. On the CPU with a matching
    dtype the tensors share the numpy arrays' memory (no copy). Thread-safe.
    """

    name = "torch"

    def __init__(self, device: str = "cpu", threads: int | None = None,
                 dtype: str | None = None) -> None:
        self._torch = _import_torch()
        self.device = _check_device(self._torch, device)
        self.threads = _check_threads(threads)
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(message("dtype", f"None or one of {DTYPES}", repr(dtype)))
        self.dtype = dtype
        if self.threads is not None:
            self._torch.set_num_threads(self.threads)
        self._numpy = NumpyScorer()
        self._cache: weakref.WeakKeyDictionary[Any, _DevicePosterior] = (
            weakref.WeakKeyDictionary())
        self._lock = threading.Lock()
        self._mc_cells = _MC_CELLS[self.device.type]

    def __repr__(self) -> str:
        return (f"TorchScorer(device={str(self.device)!r}, threads={self.threads}, "
                f"dtype={self.dtype!r})")

    # ------------------------------------------------------------------ device state
    def _tensor(self, array: NDArray[Any] | None, dtype: torch.dtype) -> torch.Tensor | None:
        if array is None:
            return None
        if not array.flags.writeable:  # torch.from_numpy wants writable memory
            array = array.copy()
        return self._torch.from_numpy(array).to(device=self.device, dtype=dtype)

    def _compute_dtype(self, stats: DenseStats) -> torch.dtype:
        name = self.dtype or stats.sxx.dtype.name
        return getattr(self._torch, name)

    def _posterior(self, stats: DenseStats) -> _DevicePosterior:
        """The snapshot's tensors on the device: cached, uploaded again once it changes."""
        with self._lock:
            sid = stats.snapshot_id  # read before the arrays: a racing update only re-uploads
            entry = self._cache.get(stats)
            if entry is None or entry.snapshot_id != sid:
                post = stats._posterior()  # the cached posterior numpy scores with
                dtype = self._compute_dtype(stats)
                t = self._tensor
                entry = _DevicePosterior(sid, t(post.theta, dtype), t(post.inv_d, dtype),
                                         t(post.w1, dtype), t(post.b0, dtype), t(post.c0, dtype))
                self._cache[stats] = entry
            return entry

    def prepare(self, stats: Any) -> None:
        """Upload a snapshot now (call when one is published, so no request pays the copy);
        a no-op for layouts this backend does not score."""
        if isinstance(stats, DenseStats):
            self._posterior(stats)

    # ------------------------------------------------------------------ scoring
    def _device_moments(
        self, post: _DevicePosterior, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Score mean and variance [batch, items]: ``DenseStats.score_moments`` on the device.

        The same terms as numpy (centred: the intercept ``b0``, the constant ``c0`` and the
        cross term ``-2·x·w1``), fused into matrix products and in-place updates because each
        new [batch, items] temporary costs as much as the arithmetic for large catalogues.
        """
        torch = self._torch
        if post.w1 is None or post.b0 is None or post.c0 is None:
            return x @ post.theta.T, (x * x) @ post.inv_d.T
        mean = torch.addmm(post.b0, x, post.theta.T)
        var = torch.addmm(post.c0, x * x, post.inv_d.T)
        var.addmm_(x, post.w1.T, alpha=-2.0).clamp_(min=0.0)
        return mean, var

    def _prepare_request(
        self, stats: DenseStats, contexts: Any, k: int, candidates: Any
    ) -> tuple[torch.Tensor, torch.Tensor, NDArray[np.int64], NDArray[np.intp] | None]:
        """Validated inputs on the device: moments (mean, variance), the scored ids, the rows."""
        torch = self._torch
        x_np = check_contexts(contexts, stats.dim)
        rows = None if candidates is None else candidate_rows(stats, candidates, k)
        if rows is not None and rows.size == stats.n_items:
            rows = None
        post = self._posterior(stats)
        if rows is not None:
            post = post.rows(torch.from_numpy(rows.astype(np.int64)).to(self.device))
        x = self._tensor(np.ascontiguousarray(x_np), post.theta.dtype)
        mean, var = self._device_moments(post, x)
        ids = stats.item_ids if rows is None else stats.item_ids[rows]
        return mean, var, ids, rows

    def moments(
        self, policy: BasePolicy, contexts: Any, candidates: Any | None = None
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Score mean and standard deviation [batch, items] as the policy computes them
        (columns: the statistics' items, or the sorted distinct candidates)."""
        stats = _stats_of(policy)
        if not isinstance(stats, DenseStats):
            rows = None if candidates is None else candidate_rows(stats, candidates, 1)
            view = policy if rows is None else restricted(policy, rows)
            return view._moments(contexts)
        with self._torch.inference_mode():
            mean, var, _, _ = self._prepare_request(stats, contexts, 1, candidates)
            return _host(mean), _host(var.sqrt_())

    def recommend(
        self, policy: BasePolicy, contexts: Any, k: int, candidates: Any | None = None
    ) -> Slate:
        """Top-k slates for a batch of requests, as ``policy.recommend(contexts, k)`` (over
        ``candidates`` only when given); see the class and module docs for the fallbacks."""
        stats = _stats_of(policy)
        k = _check_k(k, stats.n_items)
        kind = _scoring_kind(policy, stats)
        if kind is None:
            return self._numpy.recommend(policy, contexts, k, candidates)
        with self._torch.inference_mode():
            mean, var, ids, rows = self._prepare_request(stats, contexts, k, candidates)
            if kind == "thompson":
                slate = self._thompson(policy, mean, var, ids, k)
            else:  # in place, in numpy's order: mean + α·sd
                scores = var.sqrt_().mul_(policy._alpha).add_(mean) if kind == "ucb" else mean
                slate = self._rule_based(policy, scores, ids, k)
        if slate is not None:
            return slate
        # tied top scores: the numpy path breaks ties at random with shared propensities
        target = policy if rows is None else restricted(policy, rows)
        return target.recommend(contexts, k)

    def _explore(
        self, policy: BasePolicy, shown: NDArray[np.int64], n: int
    ) -> tuple[NDArray[np.intp], float]:
        """Rows whose slate the uniform mix replaces (drawn from the policy's generator), with
        the uniformly random slates written into ``shown``; as ``slates.mix_with_uniform``."""
        eps = policy._uniform_mix
        if eps <= 0.0:
            return np.empty(0, dtype=np.intp), eps
        rng = policy._rng
        rows = np.flatnonzero(rng.random(shown.shape[0]) < eps)
        if rows.size:  # every item is eligible: a broadcast row stands in for the scores
            shown[rows] = uniform_slate(np.broadcast_to(0.0, (rows.size, n)), shown.shape[1],
                                        rng)
        return rows, eps

    def _gather(self, values: torch.Tensor, rows: NDArray[np.intp],
                cols: NDArray[np.int64]) -> NDArray[np.float64]:
        """``values[rows[i], cols[i, p]]`` as a float64 host array."""
        r = self._torch.from_numpy(rows.astype(np.int64)).to(self.device)
        c = self._torch.from_numpy(np.ascontiguousarray(cols, dtype=np.int64)).to(self.device)
        return _host(values.index_select(0, r).gather(1, c))

    def _rule_based(
        self, policy: BasePolicy, scores: torch.Tensor, ids: NDArray[np.int64], k: int
    ) -> Slate | None:
        """Greedy top-k of deterministic scores mixed with uniform slates; None on ties.

        Without ties the greedy slate is certain, so P_greedy(item at p) is 1 for the greedy
        item at p and 0 otherwise, and the propensity is ``(1-ε)·P_greedy + ε/n``.
        """
        batch, n = scores.shape
        if policy._uniform_mix < 1.0:
            top_vals, top_idx = self._torch.topk(scores, min(k + 1, n), dim=1)
            vals = _host(top_vals)
            if (vals[:, 1:] == vals[:, :-1]).any():
                return None
            greedy = top_idx[:, :k].cpu().numpy()
            shown = greedy.copy()
            out_scores = np.ascontiguousarray(vals[:, :k])
        else:  # uniform: the greedy slate never shows, skip it
            greedy = np.full((batch, k), -1, dtype=np.int64)
            shown = greedy.copy()
            out_scores = np.empty((batch, k))
        explored, eps = self._explore(policy, shown, n)
        if explored.size:
            out_scores[explored] = self._gather(scores, explored, shown[explored])
        p_greedy = (shown == greedy).astype(np.float64)
        prop = (1.0 - eps) * p_greedy + eps / n
        return Slate(items=ids[shown], propensities=prop, propensity_se=np.zeros_like(prop),
                     scores=out_scores)

    def _thompson(
        self, policy: BasePolicy, mean: torch.Tensor, var: torch.Tensor,
        ids: NDArray[np.int64], k: int,
    ) -> Slate | None:
        """Thompson-sampled slates with Monte Carlo propensities, as ``DiagLinTS.recommend``;
        None when the sampled top scores tie."""
        torch = self._torch
        n = mean.shape[1]
        scale = var.sqrt_().mul_(policy._v)  # in place: the variance is not needed again
        per_slot = policy._per_slot
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(policy._rng.integers(np.iinfo(np.int64).max)))
        picked = self._thompson_select(mean, scale, k, gen, per_slot)
        if picked is None:
            return None
        shown_t, sampled_t = picked
        shown = shown_t.cpu().numpy()
        sampled = _host(sampled_t)
        explored, floor = self._explore(policy, shown, n)
        if explored.size:  # an explored slate logs the mean of what it shows, as numpy does
            sampled[explored] = self._gather(mean, explored, shown[explored])
            shown_t = torch.from_numpy(shown).to(self.device)
        n_draws = policy._n_mc_draws
        if n_draws:
            hits = self._replay_hits(mean, scale, shown_t, n_draws, gen, per_slot)
            p_hat = hits / n_draws
            prop = (1.0 - floor) * p_hat + floor / n
            se = (1.0 - floor) * np.sqrt(p_hat * (1.0 - p_hat) / n_draws)
        else:
            prop = np.full(shown.shape, np.nan)
            se = np.full(shown.shape, np.nan)
        return Slate(items=ids[shown], propensities=prop, propensity_se=se, scores=sampled)

    def _normal(self, shape: tuple[int, ...], like: torch.Tensor,
                gen: torch.Generator) -> torch.Tensor:
        return self._torch.randn(shape, generator=gen, device=self.device, dtype=like.dtype)

    def _thompson_select(
        self, mean: torch.Tensor, scale: torch.Tensor, k: int, gen: torch.Generator,
        per_slot: bool,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One slate per request (as ``slates.thompson_select``): columns and sampled scores;
        None when a selection depends on a tie."""
        torch = self._torch
        batch, n = mean.shape
        if not per_slot:
            sampled = self._normal((batch, n), mean, gen).mul_(scale).add_(mean)
            vals, idx = torch.topk(sampled, min(k + 1, n), dim=1)
            if bool((vals[:, 1:] == vals[:, :-1]).any()):
                return None
            return idx[:, :k], vals[:, :k]
        taken = torch.zeros((batch, n), dtype=torch.bool, device=self.device)
        shown = torch.empty((batch, k), dtype=torch.int64, device=self.device)
        values = torch.empty((batch, k), dtype=mean.dtype, device=self.device)
        rows = torch.arange(batch, device=self.device)
        for p in range(k):  # loop over slots, vectorised over requests and items
            sampled = self._normal((batch, n), mean, gen).mul_(scale).add_(mean)
            sampled.masked_fill_(taken, -torch.inf)
            vals, idx = torch.topk(sampled, min(2, n - p), dim=1)
            if vals.shape[1] == 2 and bool((vals[:, 0] == vals[:, 1]).any()):
                return None
            shown[:, p] = idx[:, 0]
            values[:, p] = vals[:, 0]
            taken[rows, idx[:, 0]] = True
        return shown, values

    def _replay_hits(
        self, mean: torch.Tensor, scale: torch.Tensor, shown: torch.Tensor, n_draws: int,
        gen: torch.Generator, per_slot: bool,
    ) -> NDArray[np.float64]:
        """How often ``n_draws`` fresh replays of the sampler put ``shown[b, p]`` at ``p``
        (as ``slates.thompson_propensities``), in blocks of draws that bound memory."""
        torch = self._torch
        batch, n = mean.shape
        k = shown.shape[1]
        chunk = max(1, min(n_draws, self._mc_cells // max(1, batch * n)))
        hits = torch.zeros((batch, k), dtype=torch.int64, device=self.device)
        mu, sc = mean[:, None, :], scale[:, None, :]
        done = 0
        while done < n_draws:  # loop over blocks of draws, vectorised over requests and draws
            m = min(chunk, n_draws - done)
            if not per_slot:
                sampled = self._normal((batch, m, n), mean, gen).mul_(sc).add_(mu)
                replay = torch.topk(sampled, k, dim=2).indices  # [batch, m, k]
                hits += (replay == shown[:, None, :]).sum(dim=1)
            else:
                taken = torch.zeros((batch, m, n), dtype=torch.bool, device=self.device)
                for p in range(k):  # loop over slots, vectorised over requests and draws
                    sampled = self._normal((batch, m, n), mean, gen).mul_(sc).add_(mu)
                    sampled.masked_fill_(taken, -torch.inf)
                    best = sampled.argmax(dim=2)  # [batch, m]
                    hits[:, p] += (best == shown[:, p:p + 1]).sum(dim=1)
                    taken.scatter_(2, best[:, :, None], True)
            done += m
        return hits.cpu().numpy().astype(np.float64)


def _host(t: torch.Tensor) -> NDArray[np.float64]:
    """A device tensor as a float64 numpy array."""
    return t.detach().to("cpu").numpy().astype(np.float64, copy=False)


# ---------------------------------------------------------------------------------- factory
def make_scorer(
    backend: str = "numpy", *, device: str = "cpu", threads: int | None = None
) -> NumpyScorer | TorchScorer:
    """The scoring backend the configuration names: "numpy" (default) or "torch".

    ``device`` and ``threads`` configure torch; numpy accepts only their defaults, so that a
    configuration asking for a GPU or a thread count never silently runs without one.
    """
    if backend not in BACKENDS:
        raise ValueError(message("backend", f"one of {', '.join(map(repr, BACKENDS))}",
                                 repr(backend)))
    if backend == "torch":
        return TorchScorer(device=device, threads=threads)
    if device != "cpu":
        raise ValueError(message("device", "'cpu' for backend='numpy'", repr(device),
                                 "use backend='torch' to score on another device"))
    if threads is not None:
        raise ValueError(message(
            "threads", "None for backend='numpy'", repr(threads),
            "numpy's BLAS threads come from OPENBLAS_NUM_THREADS / OMP_NUM_THREADS; use "
            "backend='torch' to set threads here"))
    return NumpyScorer()
