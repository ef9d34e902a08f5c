"""``compare_policies``: every candidate evaluated on the same logged slates, streaming over chunks.

No ``n_requests × n_items × k`` array is ever held: for each chunk of requests (bounded in
cells, ``chunk_requests`` at most) each candidate gives ``action_dist(batch_chunk, k)`` over its
own items, and the chunk is reduced at once to per-row quantities (π_e of the logged item at its
position, E_{π_e}[q̂] at that position, the π_e mass on (item, position) pairs never logged) and
then to per-request columns (``recsys.comparison.estimates``). A logged item the candidate does not
know gets π_e = 0. Memory is O(rows) per candidate plus one chunk.

The pseudo-inverse slate estimator (``"pi"``, Swaminathan et al. 2017, ``recsys.ope``'s formula)
uses a context-free Γ estimated from the logged slates, so it is unbiased only when the logging
policy's slate distribution does not depend on the context; it costs O((n_items·k)²) memory and
O(n_items·k) per slot, so it is computed only when n_items·k ≤ ``max_pi_cells`` and the slates
have two or more slots, and otherwise named in ``Comparison.omitted`` with the reason.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from sklearn.base import clone
from threadpoolctl import threadpool_limits

from recsys.comparison.estimates import (
    DEFAULT_ESTIMATORS,
    ESTIMATORS,
    OMITTED_IIPS,
    ColumnLayout,
    row_terms,
)
from recsys.comparison.logs import LoggedSlates
from recsys.comparison.result import KINDS, CandidateResult, Comparison, Estimate
from recsys.comparison.reward_model import ShrunkRateModel
from recsys.ope import SlatePseudoInverse, bootstrap_means
from recsys.ope.bootstrap import check_interval_arguments
from recsys.policies.batch import RequestBatch
from recsys.progress import is_terminal, progress_bar
from recsys.validation import check_scalar, did_you_mean, message

__all__ = ["Candidate", "compare_policies"]

CHUNK_CELLS = 2**24
"""Cells (requests × items × positions) of one candidate's action_dist per chunk: 128 MB."""
MAX_CHUNK_REQUESTS = 20_000
REGISTERED_KINDS = {"bandit": "online", "scores": "offline", "baseline": "baseline"}
"""A registered policy's ``kind`` → the comparison's kind."""
_SUM_TOLERANCE = 1e-5 + 1e-8  # np.allclose's, as recsys.ope.scan checks action_dist


def _true_value(truth: Callable[[str, Any], float | None], name: str, candidate: Any
                ) -> float | None:
    value = truth(name, candidate)
    return None if value is None else float(value)


@runtime_checkable
class Candidate(Protocol):
    """What a comparison evaluates: items and OBP's ``action_dist`` on a request batch
    (``recsys.registry.RegisteredPolicy`` is one); ``name``, ``version``, ``kind`` and ``uri``
    attributes are read when present."""

    @property
    def item_ids_(self) -> Any: ...

    def action_dist(self, batch: RequestBatch, k: int) -> np.ndarray: ...


class _Prepared:
    """One candidate's fixed inputs to the chunk loop and its running sums."""

    def __init__(self, name: str, candidate: Any, logs: LoggedSlates, model: ShrunkRateModel,
                 layout: ColumnLayout) -> None:
        self.name = name
        self.candidate = candidate
        self.layout = layout
        items = _item_ids(name, candidate)
        self.n_items = items.size
        k = logs.len_list
        if items.size < k:
            raise ValueError(message(f"candidates[{name!r}].item_ids_",
                                     f"at least len_list={k} items (the logged slate length)",
                                     f"{items.size} items"))
        # Logged item (index into logs.items_) -> the candidate's column, -1 if unknown.
        order = np.argsort(items, kind="stable")
        where = np.searchsorted(items, logs.items_, sorter=order).clip(0, items.size - 1)
        known = items[order[where]] == logs.items_
        self.column_of_logged = np.where(known, order[where], -1)
        # Per fold: (C·k, 3k) with, for position q, the columns [q̂_f(·, q), unlogged(·, q), 1]
        # at the rows of position q, so one matrix product of a run of requests'
        # action_dist, reshaped (m, C·k), gives every per-position sum at once.
        tables = model.tables_for(items)  # [folds, C, k]
        logged = np.zeros((items.size, k), dtype=bool)
        logged[self.column_of_logged[known]] = logs.logged_pairs[known]
        self.blocks = []
        for table in tables:
            block = np.zeros((items.size, k, k, 3))
            for q in range(k):
                block[:, q, q] = np.column_stack([table[:, q], ~logged[:, q],
                                                  np.ones(items.size)])
            self.blocks.append(block.reshape(items.size * k, 3 * k))
        self.sum_w = self.sum_w2 = self.sum_unlogged = 0.0
        self.max_w = 0.0
        self.unknown_rows = int((self.column_of_logged[logs.action_code] < 0).sum())

    def absorb(self, part: _ChunkPart, block: np.ndarray) -> None:
        """Write a chunk's columns into its rows of the sample matrix; add its partial sums."""
        layout = self.layout
        block[:, layout.dm], block[:, layout.dr] = part.dm, part.dr
        block[:, layout.switch] = part.switch
        block[:, layout.weighted_reward()] = part.weighted_reward
        block[:, layout.weight()] = part.weight
        block[:, layout.weighted_residual()] = part.weighted_residual
        if part.pi is not None:
            block[:, layout.pi] = part.pi
        self.sum_w += part.sum_w
        self.sum_w2 += part.sum_w2
        self.sum_unlogged += part.sum_unlogged
        self.max_w = max(self.max_w, part.max_w)


def _item_ids(name: str, candidate: Any) -> np.ndarray:
    for attribute in ("item_ids_", "action_dist"):
        if not hasattr(candidate, attribute):
            raise TypeError(message(f"candidates[{name!r}]",
                                    "an object with item_ids_ and action_dist(batch, k)",
                                    f"a {type(candidate).__name__} without {attribute}"))
    items = np.asarray(candidate.item_ids_)
    if items.ndim != 1 or items.size == 0:
        raise ValueError(message(f"candidates[{name!r}].item_ids_", "a non-empty 1-d array",
                                 f"shape {items.shape}"))
    if not np.issubdtype(items.dtype, np.integer):
        try:
            items = items.astype(np.int64)
        except (TypeError, ValueError):
            raise ValueError(message(f"candidates[{name!r}].item_ids_",
                                     "integer item ids (like the logs' item_id)",
                                     f"dtype {items.dtype}")) from None
    items = items.astype(np.int64, copy=False)
    if np.unique(items).size != items.size:
        raise ValueError(message(f"candidates[{name!r}].item_ids_", "distinct item ids",
                                 f"{items.size - np.unique(items).size} repeated"))
    return items


def _kind(name: str, candidate: Any, kinds: Mapping[str, str] | None) -> str:
    kind = (kinds or {}).get(name)
    if kind is None:
        own = getattr(candidate, "kind", None)
        kind = own if own in KINDS else REGISTERED_KINDS.get(own, "offline")
    if kind not in KINDS:
        raise ValueError(message(f"kinds[{name!r}]", f"one of {list(KINDS)}", repr(kind)))
    return kind


def _uri(candidate: Any) -> tuple[str | None, str | None, str | None]:
    model, version = getattr(candidate, "name", None), getattr(candidate, "version", None)
    model = None if model is None else str(model)
    version = None if version is None else str(version)
    uri = getattr(candidate, "uri", None)
    if uri is None and model is not None and version is not None:
        uri = f"models:/{model}/{version}"
    return uri, model, version


def _check_arguments(logs: Any, candidates: Any, estimators: Sequence[str],
                     chunk_requests: Any, n_jobs: Any) -> list[str]:
    if not isinstance(logs, LoggedSlates):
        raise TypeError(message("logs", "a LoggedSlates (from_frame, from_lake, from_parquet)",
                                type(logs).__name__))
    if not isinstance(candidates, Mapping) or not candidates:
        raise ValueError(message("candidates", "a non-empty mapping name -> policy",
                                 repr(candidates)[:80]))
    if isinstance(estimators, str):
        estimators = [estimators]
    names = list(dict.fromkeys(estimators))
    for name in names:
        if name not in ESTIMATORS:
            raise ValueError(message("estimators", f"names among {list(ESTIMATORS)}",
                                     repr(name), did_you_mean(str(name), ESTIMATORS)))
    if not names:
        raise ValueError(message("estimators", "at least one estimator name", "none"))
    if chunk_requests is not None and (
            isinstance(chunk_requests, bool) or not isinstance(chunk_requests, numbers.Integral)
            or chunk_requests < 1):
        raise ValueError(message("chunk_requests", "None or an integer >= 1",
                                 repr(chunk_requests)))
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, numbers.Integral) or n_jobs < 1:
        raise ValueError(message("n_jobs", "an integer >= 1", repr(n_jobs)))
    return names


def _pseudo_inverse(logs: LoggedSlates) -> np.ndarray:
    """Γ⁺ of the logged slates' empirical, context-free Γ (``recsys.ope.SlatePseudoInverse``'s
    pinv), ``[n_items·k, n_items·k]``; Γ from pair counts, one bincount per pair of positions."""
    k, m = logs.len_list, logs.items_.size
    size = m * k
    cells = np.full((logs.n_requests, k), -1, dtype=np.int64)
    cells[logs.request_index, logs.position] = logs.action_code * k + logs.position
    gamma = np.zeros(size * size)
    for p in range(k):  # loops over position pairs, each one vectorised over requests
        for q in range(k):
            both = (cells[:, p] >= 0) & (cells[:, q] >= 0)
            gamma += np.bincount(cells[both, p] * size + cells[both, q], minlength=size * size)
    gamma = gamma.reshape(size, size) / logs.n_requests
    return np.linalg.pinv(gamma, rcond=SlatePseudoInverse().rcond, hermitian=True)


def compare_policies(
    logs: LoggedSlates,
    candidates: Mapping[str, Any],
    *,
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    alpha: float = 0.05,
    n_bootstrap: int = 1000,
    chunk_requests: int | None = None,
    random_state: int = 0,
    truth: Callable[[str, Any], float | None] | None = None,
    reward_model: ShrunkRateModel | None = None,
    switch_tau: float = math.inf,
    max_pi_cells: int = 2000,
    kinds: Mapping[str, str] | None = None,
    progress: bool | Callable[[int, int], None] | None = None,
    n_jobs: int = 1,
) -> Comparison:
    """Estimate every candidate's value (expected sum of slot rewards per request) on ``logs``.

    ``estimators``: names of ``recsys.comparison.estimates.ESTIMATORS``. ``alpha``,
    ``n_bootstrap``, ``random_state``: percentile bootstrap over requests, one resample stream for
    all candidates and estimators. ``chunk_requests``: requests per chunk (default: as many as fit
    in ``CHUNK_CELLS`` cells, at most 20k). ``truth(name, candidate)``: the candidate's true value
    (simulator logs). ``reward_model``: q̂ for DM/DR (default ``ShrunkRateModel()``, cloned and
    fitted here). ``switch_tau``: Switch-DR's weight threshold (OBP's default, ∞, makes it DR).
    ``kinds``: name → "online" | "offline" | "baseline" (default from the candidate's ``kind``).
    ``progress``: True / False / a callback ``(done, total)``; None shows a bar on a terminal.
    ``n_jobs``: threads reducing chunks at once (numpy releases the GIL in the heavy steps); the
    candidates' ``action_dist`` must then be safe to call from several threads. The numbers do
    not depend on ``chunk_requests`` or ``n_jobs``.
    """
    names = _check_arguments(logs, candidates, estimators, chunk_requests, n_jobs)
    check_interval_arguments(alpha, n_bootstrap, random_state)
    switch_tau = check_scalar(switch_tau, "switch_tau", 0.0)
    max_pi_cells = int(check_scalar(max_pi_cells, "max_pi_cells", 0.0))
    k, n = logs.len_list, logs.n_requests
    omitted: dict[str, str] = {}
    if "iips" in names:
        omitted["iips"] = OMITTED_IIPS
    with_pi = "pi" in names
    if with_pi and k == 1:
        with_pi, omitted["pi"] = False, "one-slot logs: slate estimators reduce to ips"
    elif with_pi and logs.items_.size * k > max_pi_cells:
        with_pi = False
        omitted["pi"] = (f"n_items·k = {logs.items_.size}·{k} = {logs.items_.size * k} > "
                         f"max_pi_cells = {max_pi_cells}: Γ would be too large to invert")
    reported = [e for e in names if e not in omitted]

    model = clone(reward_model) if reward_model is not None else ShrunkRateModel()
    model.fit(logs.items_, logs.action, logs.position, logs.reward, logs.request_index, k)
    q_factual = model.predict(logs.action, logs.position, logs.request_index)
    request_fold = model.fold_of(np.arange(n))
    g_plus = _pseudo_inverse(logs) if with_pi else None

    prepared: list[_Prepared] = []
    offset = k  # the first k columns are the shared position counts C_k
    for name, candidate in candidates.items():
        layout = ColumnLayout(offset, k, with_pi)
        prepared.append(_Prepared(str(name), candidate, logs, model, layout))
        offset += layout.width
    samples = np.zeros((n, offset), order="F")
    samples[logs.request_index, logs.position] = 1.0

    # Kinds and true values first: what would fail does so before the long part.
    kind_of = {p.name: _kind(p.name, p.candidate, kinds) for p in prepared}
    true_values = {p.name: None if truth is None else _true_value(truth, p.name, p.candidate)
                   for p in prepared}

    widest = max(p.n_items for p in prepared) * k
    step = chunk_requests or max(1, min(MAX_CHUNK_REQUESTS, CHUNK_CELLS // widest))
    spans = [(start, min(start + step, n)) for start in range(0, n, step)]

    def reduce_span(span: tuple[int, int]) -> list[_ChunkPart]:
        start, stop = span
        batch = logs.requests.take(slice(start, stop))
        rows = slice(int(logs.row_start[start]), int(logs.row_start[stop]))
        return [_reduce_chunk(p, logs, batch, start, stop, rows, q_factual, request_fold,
                              switch_tau, g_plus) for p in prepared]

    report = _progress(progress, len(spans) * len(prepared))
    pool = ThreadPoolExecutor(max_workers=n_jobs) if n_jobs > 1 else None
    # Threads each run single-threaded BLAS rather than n_jobs pools competing for the cores.
    limits = threadpool_limits(1, user_api="blas") if pool is not None else nullcontext()
    try:
        with limits:
            # In order, whatever the threads: the running sums add up chunk by chunk alike.
            parts = pool.map(reduce_span, spans) if pool is not None else map(reduce_span, spans)
            for (start, stop), chunk in zip(spans, parts, strict=True):
                for p, part in zip(prepared, chunk, strict=True):
                    p.absorb(part, samples[start:stop])
                    report(1)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        report(None)

    resampled = bootstrap_means(samples, n_bootstrap, random_state)
    point = samples.mean(axis=0)
    results = []
    for p in prepared:
        values = p.layout.values(point, point[:k])
        boot = p.layout.values(resampled, resampled[:, :k])
        estimates = {
            e: Estimate(e, float(values[e]),
                        float(np.percentile(boot[e], 100 * alpha / 2)),
                        float(np.percentile(boot[e], 100 * (1 - alpha / 2))))
            for e in reported
        }
        uri, model_name, version = _uri(p.candidate)
        results.append(CandidateResult(
            name=p.name, kind=kind_of[p.name], uri=uri,
            model_name=model_name, model_version=version, estimates=estimates,
            diagnostics=_diagnostics(p, logs), true_value=true_values[p.name]))
    return Comparison(candidates=results, n_requests=n, n_rows=logs.n_rows, len_list=k,
                      n_actions=int(logs.items_.size), alpha=float(alpha),
                      n_bootstrap=int(n_bootstrap), logs=logs.describe(), estimators=reported,
                      omitted=omitted)


@dataclass(frozen=True, eq=False)
class _ChunkPart:
    """One candidate's per-request columns on one chunk, and its diagnostics' partial sums."""

    dm: np.ndarray
    dr: np.ndarray
    switch: np.ndarray
    weighted_reward: np.ndarray  # (m, k)
    weight: np.ndarray
    weighted_residual: np.ndarray
    pi: np.ndarray | None
    sum_w: float
    sum_w2: float
    max_w: float
    sum_unlogged: float


def _position_sums(p: _Prepared, dist: np.ndarray, folds: np.ndarray, start: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """E_{π_e}[q̂] and the unlogged mass per (request, position), one matrix product per run of
    requests in one fold; checks that each position's probabilities sum to 1."""
    m, c, k = dist.shape
    flat = np.ascontiguousarray(dist).reshape(m, c * k)
    sums = np.empty((m, k, 3))
    edges = np.flatnonzero(np.diff(folds)) + 1
    for lo, hi in zip(np.r_[0, edges], np.r_[edges, m], strict=True):
        sums[lo:hi] = (flat[lo:hi] @ p.blocks[folds[lo]]).reshape(hi - lo, k, 3)
    total = sums[:, :, 2]
    off = np.abs(total - 1.0)
    if not off.max() <= _SUM_TOLERANCE:  # NaN fails too
        request, position = np.unravel_index(int(np.argmax(~(off <= _SUM_TOLERANCE))), off.shape)
        raise ValueError(message(
            f"candidates[{p.name!r}].action_dist",
            "a distribution over its items at every position (sums to 1)",
            f"request {start + request} position {position} summing to "
            f"{total[request, position]:.6g}"))
    return sums[:, :, 0] / total, sums[:, :, 1]


def _reduce_chunk(p: _Prepared, logs: LoggedSlates, batch: RequestBatch, start: int, stop: int,
                  rows: slice, q_factual: np.ndarray, request_fold: np.ndarray,
                  switch_tau: float, g_plus: np.ndarray | None) -> _ChunkPart:
    """One candidate on requests ``[start, stop)``: its per-request columns and partial sums."""
    m, k = stop - start, logs.len_list
    dist = np.asarray(p.candidate.action_dist(batch, k))
    if dist.shape != (m, p.n_items, k):
        raise ValueError(message(f"candidates[{p.name!r}].action_dist(batch, k={k})",
                                 f"shape {(m, p.n_items, k)} (requests, its items, positions)",
                                 f"shape {dist.shape}"))
    if dist.min() < 0:
        raise ValueError(message(f"candidates[{p.name!r}].action_dist", "probabilities >= 0",
                                 f"a minimum of {dist.min():.6g} in requests [{start}, {stop})"))
    expected, unlogged = _position_sums(p, dist, request_fold[start:stop], start)
    local = logs.request_index[rows] - start
    position = logs.position[rows]
    column = p.column_of_logged[logs.action_code[rows]]
    known = column >= 0
    pi_factual = np.zeros(local.size)
    pi_factual[known] = dist[local[known], column[known], position[known]]
    terms = row_terms(logs.reward[rows], logs.pscore[rows], pi_factual, q_factual[rows],
                      expected[local, position], switch_tau)

    def per_request(key: str) -> np.ndarray:
        return np.bincount(local, weights=terms[key], minlength=m)

    def per_position(key: str) -> np.ndarray:
        out = np.zeros((m, k))
        out[local, position] = terms[key]
        return out

    w = terms["weight"]
    return _ChunkPart(
        dm=per_request("dm"), dr=per_request("dr"), switch=per_request("switch"),
        weighted_reward=per_position("ips"), weight=per_position("weight"),
        weighted_residual=per_position("residual"),
        pi=None if g_plus is None else _pi_chunk(p, logs, dist, local, position, rows, m,
                                                 g_plus),
        sum_w=float(w.sum()), sum_w2=float((w * w).sum()),
        max_w=float(w.max()) if w.size else 0.0,
        sum_unlogged=float(unlogged[local, position].sum()))


def _pi_chunk(p: _Prepared, logs: LoggedSlates, dist: np.ndarray, local: np.ndarray,
              position: np.ndarray, rows: slice, m: int, g_plus: np.ndarray) -> np.ndarray:
    """Per-request pseudo-inverse estimates r_s · θ_sᵀ Γ⁺ 1_s, θ over the logged items (as
    ``recsys.ope.SlatePseudoInverse.estimate_round_rewards``, with Γ⁺ computed once)."""
    k, n_logged = logs.len_list, logs.items_.size
    known = p.column_of_logged >= 0
    theta = np.zeros((m, n_logged, k))
    theta[:, known, :] = dist[:, p.column_of_logged[known], :]
    theta = theta.reshape(m, n_logged * k)
    cell = logs.action_code[rows] * k + position
    contrib = np.einsum("nj,nj->n", theta[local], g_plus[cell])
    weight = np.bincount(local, weights=contrib, minlength=m)
    return np.bincount(local, weights=logs.reward[rows], minlength=m) * weight


def _diagnostics(p: _Prepared, logs: LoggedSlates) -> dict[str, float]:
    n_rows = logs.n_rows
    ess = p.sum_w**2 / p.sum_w2 if p.sum_w2 > 0 else 0.0
    return {
        "n_rows": float(n_rows),
        "effective_sample_size": ess,
        "effective_sample_ratio": ess / n_rows,
        "max_weight": p.max_w,
        "mean_weight": p.sum_w / n_rows,
        "unlogged_target_mass": p.sum_unlogged / n_rows,
        "unknown_item_rows": p.unknown_rows / n_rows,
    }


def _progress(progress: bool | Callable[[int, int], None] | None, total: int
              ) -> Callable[[int | None], None]:
    """``report(steps)`` advancing the chosen progress display; ``report(None)`` closes it."""
    if callable(progress):
        done = [0]

        def call(steps: int | None) -> None:
            if steps is not None:
                done[0] += steps
                progress(done[0], total)

        return call
    enabled = is_terminal(sys.stderr) if progress is None else bool(progress)
    bar = progress_bar(total=total, desc="compare", unit="chunk", disable=not enabled)

    def advance(steps: int | None) -> None:
        if steps is None:
            bar.close()
        else:
            bar.update(steps)

    return advance
