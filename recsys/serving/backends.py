"""Scoring backends for the serving app: numpy by default, torch (CPU threads or CUDA) by config.

A backend turns (policy, contexts, k, optional candidate list) into a :class:`~recsys.bandits.Slate`
with exactly the semantics of ``policy.recommend(contexts, k)``: the same scores, the same
slate distribution and the same propensities. Why two: top-10 of 1M items at d=64 is ~14 ms in
numpy and well under a millisecond on a GPU, so large catalogues must not be stuck on numpy.

There is one scoring path: the policy's own ``recommend_on(arrays, contexts, k, rows)``
(``recsys.bandits``), run on an array backend (``recsys.bandits.arrays``). :class:`NumpyScorer`
runs it on numpy; :class:`TorchScorer` runs it on :class:`TorchArrays`, which keeps each
statistics snapshot's scoring arrays on the device (uploaded once per ``snapshot_id``) and scores
them with the statistics' own ``DensePosterior.moments``. A candidate list restricts the scored
item rows. Statistics without a linear posterior (graph, full covariance) and requests whose top
scores tie (numpy breaks ties uniformly at random and gives tied items shared propensities;
``torch.topk`` does neither) run on numpy; cold-start statistics, where every item has the same
score, therefore run on numpy until the items have data.

Randomness: the policy's own numpy generator decides exploration (the uniform mix) and, for
Thompson sampling, seeds a ``torch.Generator`` per request, so a seeded policy gives reproducible
slates on one backend. The two backends do not consume the stream identically, so the same seed
gives the same *distribution* on both, not the same draws (deterministic policies give the same
slates).
"""

from __future__ import annotations

import numbers
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from recsys.bandits.arrays import NUMPY, Tied, Unsupported
from recsys.bandits.base import BasePolicy
from recsys.bandits.dense import DensePosterior
from recsys.bandits.slates import Slate, monte_carlo_se, thompson_propensities
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
class NumpyScorer:
    """``policy.recommend`` on the host; a candidate list restricts the scored items."""

    name = "numpy"

    def prepare(self, stats: Any) -> None:
        """Build the snapshot's scoring cache now (call when one is published, so no request
        pays it: seconds for a million items)."""
        stats.prepare_scoring()

    def recommend(
        self, policy: BasePolicy, contexts: Any, k: int, candidates: Any | None = None
    ) -> Slate:
        """Top-k slates for a batch of requests, as ``policy.recommend(contexts, k)`` (over
        ``candidates`` only when given)."""
        stats = _stats_of(policy)
        k = _check_k(k, stats.n_items)
        rows = None if candidates is None else candidate_rows(stats, candidates, k)
        if rows is not None and rows.size == stats.n_items:
            rows = None
        return self._recommend(policy, contexts, k, rows)

    def _recommend(self, policy: BasePolicy, contexts: Any, k: int,
                   rows: NDArray[np.intp] | None) -> Slate:
        return policy.recommend_on(NUMPY, contexts, k, rows)


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


@dataclass(eq=False)
class _Uploaded:
    """One snapshot's scoring arrays on the device, and the snapshot they came from."""

    snapshot_id: str
    posterior: DensePosterior


class TorchArrays:
    """The torch array backend (``recsys.bandits.arrays.ArrayBackend``) on one device.

    ``dtype``: the compute dtype, "float32", "float64" or None for the statistics' dtype. Scores
    statistics with a linear posterior only (``stats.linear_posterior()``; others raise
    ``Unsupported``), where every item is a candidate; selections that depend on a tie raise
    ``Tied``. The posterior cache holds one entry per statistics object (weakly: it goes when
    the object does) and re-uploads when its ``snapshot_id`` changes; on the CPU with a matching
    dtype the tensors share the numpy arrays' memory (no copy). Thread-safe.
    """

    name = "torch"

    def __init__(self, torch: Any, device: torch.device, dtype: str | None) -> None:
        self._torch = torch
        self.device = device
        self.dtype = dtype
        self._cache: weakref.WeakKeyDictionary[Any, _Uploaded] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._mc_cells = _MC_CELLS[device.type]

    # ------------------------------------------------------------------ device state
    def _tensor(self, array: NDArray[Any], dtype: torch.dtype | None = None) -> torch.Tensor:
        if not array.flags.writeable:  # torch.from_numpy wants writable memory
            array = array.copy()
        return self._torch.from_numpy(array).to(device=self.device, dtype=dtype)

    def upload(self, stats: Any) -> DensePosterior:
        """The snapshot's posterior on the device: cached, uploaded again once it changes."""
        with self._lock:
            sid = stats.snapshot_id  # read before the arrays: a racing update only re-uploads
            entry = self._cache.get(stats)
            if entry is None or entry.snapshot_id != sid:
                post = stats.linear_posterior()  # the cached posterior numpy scores with
                if post is None:
                    raise Unsupported(f"{stats.layout} statistics have no linear posterior")
                dtype = getattr(self._torch, self.dtype or post.theta.dtype.name)
                entry = _Uploaded(sid, post.map(lambda a: self._tensor(a, dtype)))
                self._cache[stats] = entry
            return entry.posterior

    # ------------------------------------------------------------------ ArrayBackend
    def moments(self, stats: Any, contexts: Any, rows: NDArray[np.intp] | None
                ) -> tuple[torch.Tensor, torch.Tensor, None]:
        post = self.upload(stats)
        x = check_contexts(contexts, int(post.theta.shape[1]))
        if rows is not None:
            index = self._torch.from_numpy(rows.astype(np.int64)).to(self.device)
            post = post.map(lambda t: t.index_select(0, index))
        mean, var = post.moments(self._tensor(np.ascontiguousarray(x), post.theta.dtype))
        return mean, var.sqrt_(), None

    def eligible_counts(self, scores: torch.Tensor, k: int) -> NDArray[np.int64]:
        return np.full(scores.shape[0], scores.shape[1], dtype=np.int64)  # every item

    def top_k(self, scores: torch.Tensor, k: int, rng: np.random.Generator
              ) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
        vals, idx = self._torch.topk(scores, min(k + 1, scores.shape[1]), dim=1)
        top = _host(vals)
        if (top[:, 1:] == top[:, :-1]).any():
            raise Tied("tied top scores")
        cols = idx[:, :k].cpu().numpy().astype(np.intp, copy=False)
        return cols, np.ascontiguousarray(top[:, :k])

    def greedy_marginals(self, scores: torch.Tensor, shown: NDArray[np.intp],
                         greedy: NDArray[np.intp]) -> NDArray[np.float64]:
        return (shown == greedy).astype(np.float64)  # no ties (top_k): the greedy slate is sure

    def eligibility(self, scores: torch.Tensor) -> NDArray[np.float64]:
        return np.broadcast_to(0.0, tuple(scores.shape))  # every item

    def take(self, values: torch.Tensor, rows: NDArray[np.intp], cols: NDArray[np.intp]
             ) -> NDArray[np.float64]:
        r = self._torch.from_numpy(rows.astype(np.int64)).to(self.device)
        c = self._torch.from_numpy(np.ascontiguousarray(cols, dtype=np.int64)).to(self.device)
        return _host(values.index_select(0, r).gather(1, c))

    def host(self, values: torch.Tensor) -> NDArray[np.float64]:
        return _host(values)

    def generator(self, rng: np.random.Generator) -> torch.Generator:
        gen = self._torch.Generator(device=self.device)
        gen.manual_seed(int(rng.integers(np.iinfo(np.int64).max)))
        return gen

    def _normal(self, shape: tuple[int, ...], like: torch.Tensor,
                gen: torch.Generator) -> torch.Tensor:
        return self._torch.randn(shape, generator=gen, device=self.device, dtype=like.dtype)

    def thompson_select(
        self, mean: torch.Tensor, scale: torch.Tensor, k: int, gen: torch.Generator, *,
        per_slot: bool,
    ) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
        torch = self._torch
        batch, n = mean.shape
        if not per_slot:
            sampled = self._normal((batch, n), mean, gen).mul_(scale).add_(mean)
            vals, idx = torch.topk(sampled, min(k + 1, n), dim=1)
            if bool((vals[:, 1:] == vals[:, :-1]).any()):
                raise Tied("tied sampled scores")
            return idx[:, :k].cpu().numpy().astype(np.intp, copy=False), _host(vals[:, :k])
        taken = torch.zeros((batch, n), dtype=torch.bool, device=self.device)
        shown = torch.empty((batch, k), dtype=torch.int64, device=self.device)
        values = torch.empty((batch, k), dtype=mean.dtype, device=self.device)
        rows = torch.arange(batch, device=self.device)
        for p in range(k):  # loop over slots, vectorised over requests and items
            sampled = self._normal((batch, n), mean, gen).mul_(scale).add_(mean)
            sampled.masked_fill_(taken, -torch.inf)
            vals, idx = torch.topk(sampled, min(2, n - p), dim=1)
            if vals.shape[1] == 2 and bool((vals[:, 0] == vals[:, 1]).any()):
                raise Tied("tied sampled scores")
            shown[:, p] = idx[:, 0]
            values[:, p] = vals[:, 0]
            taken[rows, idx[:, 0]] = True
        return shown.cpu().numpy().astype(np.intp, copy=False), _host(values)

    def thompson_propensities(
        self, mean: torch.Tensor, scale: torch.Tensor, shown: NDArray[np.intp], n_draws: int,
        gen: torch.Generator, *, per_slot: bool,
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Top-k slates: :func:`recsys.bandits.slates.thompson_propensities` on the host (exact at
        cold start, quadrature elsewhere, conditional Monte Carlo as its fallback: a pass over
        2·n numbers, so copying the moments beats a device port and both backends log the same
        estimator). In-slate TS:
        how often ``n_draws`` fresh replays of the sampler put ``shown[b, p]`` at ``p``, in blocks
        of draws that bound memory, and the binomial standard error."""
        torch = self._torch
        if not per_slot:
            seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=self.device))
            return thompson_propensities(_host(mean), _host(scale), shown, n_draws,
                                         np.random.default_rng(seed), per_slot=False)
        batch, n = mean.shape
        k = shown.shape[1]
        target = torch.from_numpy(np.ascontiguousarray(shown, dtype=np.int64)).to(self.device)
        chunk = max(1, min(n_draws, self._mc_cells // max(1, batch * n)))
        hits = torch.zeros((batch, k), dtype=torch.int64, device=self.device)
        mu, sc = mean[:, None, :], scale[:, None, :]
        done = 0
        while done < n_draws:  # loop over blocks of draws, vectorised over requests and draws
            m = min(chunk, n_draws - done)
            taken = torch.zeros((batch, m, n), dtype=torch.bool, device=self.device)
            for p in range(k):  # loop over slots, vectorised over requests and draws
                sampled = self._normal((batch, m, n), mean, gen).mul_(sc).add_(mu)
                sampled.masked_fill_(taken, -torch.inf)
                best = sampled.argmax(dim=2)  # [batch, m]
                hits[:, p] += (best == target[:, p:p + 1]).sum(dim=1)
                taken.scatter_(2, best[:, :, None], True)
            done += m
        p_hat = hits.cpu().numpy().astype(np.float64) / n_draws
        return p_hat, monte_carlo_se(p_hat, n_draws)


class TorchScorer(NumpyScorer):
    """Scores on a torch device (:class:`TorchArrays`), with numpy where torch cannot.

    ``device``: "cpu", "cuda" or "cuda:<i>". ``threads``: intra-op CPU threads
    (``torch.set_num_threads``, which is process-wide); None leaves torch's setting. ``dtype``:
    the compute dtype, "float32" or "float64"; None follows the statistics' dtype, so float64
    statistics on the CPU give numpy's results up to BLAS rounding, and float32 statistics are
    scored in float32 end to end (numpy applies the rule in float64), equal to float32 rounding.
    Slates always come back as numpy arrays (float64 scores and propensities, int64 item ids).
    Scoring many requests at once from several threads is safe; a policy's numpy generator,
    shared by its requests, is not, exactly as with ``policy.recommend``. After a refresh the
    first request, or :meth:`prepare`, pays the copy to the device; later requests reuse it.
    """

    name = "torch"

    def __init__(self, device: str = "cpu", threads: int | None = None,
                 dtype: str | None = None) -> None:
        torch = _import_torch()
        self._torch = torch
        self.threads = _check_threads(threads)
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(message("dtype", f"None or one of {DTYPES}", repr(dtype)))
        self.arrays = TorchArrays(torch, _check_device(torch, device), dtype)
        if self.threads is not None:
            torch.set_num_threads(self.threads)

    def __repr__(self) -> str:
        return (f"TorchScorer(device={str(self.arrays.device)!r}, threads={self.threads}, "
                f"dtype={self.arrays.dtype!r})")

    def prepare(self, stats: Any) -> None:
        """Build the scoring cache and upload it now (call when a snapshot is published, so no
        request pays the copy); statistics torch does not score are only prepared for numpy."""
        stats.prepare_scoring()
        if stats.linear_posterior() is not None:
            self.arrays.upload(stats)

    def _recommend(self, policy: BasePolicy, contexts: Any, k: int,
                   rows: NDArray[np.intp] | None) -> Slate:
        try:
            with self._torch.inference_mode():
                return policy.recommend_on(self.arrays, contexts, k, rows)
        except (Unsupported, Tied):  # see the module docs
            return super()._recommend(policy, contexts, k, rows)


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
