"""What one serving replica does, without HTTP: score with the newest snapshot, log every slate.

:class:`RecommenderService` holds the policies, the scoring backend, the snapshot poller and the
impression log. ``recsys.serving.app`` puts it behind FastAPI on Ray Serve; tests and benchmarks
can drive it directly. Errors a client caused are :class:`RequestError` (a 4xx naming the field),
the states the client cannot fix are :class:`Unavailable` (a 503 saying why).

Decisions:

* **Never serve blind.** An impression is queued for Kafka (idempotent producer, batched by
  ``linger_ms``, in the producer's background thread) before the slate is returned. If the queue
  is full (Kafka unreachable for a while), the request gets a 503 and is counted as ``rejected``;
  an impression queued but then not delivered is counted as ``undelivered``. Nothing is lost
  silently.
* **One snapshot per request.** A refresh builds new policy views over the new statistics and
  swaps one reference; a request reads that reference once, so it never mixes two snapshots.
  Policy views share one random generator per replica (a clone would replay the same draws).
* **Propensities are always > 0.** Thompson-sampling policies must log Monte Carlo propensities
  (``n_mc_draws > 0``) and keep an exploration floor > 0, so no shown item can be logged with
  an estimated propensity of 0; checked when the service starts.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recsys import topics
from recsys.bandits import (
    BasePolicy,
    ContextError,
    DiagLinTS,
    EpsilonGreedy,
    UnknownItemError,
    policy_from_spec,
    policy_spec,
)
from recsys.config import ServeSettings, Settings, parse_traffic
from recsys.events import Context, Feedback, Impression, SlateEntry
from recsys.producer import EventProducer
from recsys.schema import read_user_features
from recsys.serving.backends import make_scorer
from recsys.serving.metrics import ServingMetrics
from recsys.serving.schemas import FeedbackIn, Health, RecommendRequest, RecommendResponse
from recsys.serving.snapshots import ShardSnapshots, ShardsUnavailable, Snapshot


class RequestError(ValueError):
    """A request the client must fix: ``status`` (4xx), the field path and what was expected."""

    def __init__(self, loc: tuple[str | int, ...], msg: str, status: int = 422) -> None:
        super().__init__(f"{'.'.join(map(str, loc))}: {msg}")
        self.loc, self.msg, self.status = loc, msg, status

    def detail(self) -> list[dict[str, Any]]:
        """FastAPI's 422 body shape: ``[{"loc": [...], "msg": ..., "type": ...}]``."""
        return [{"loc": ["body", *self.loc], "msg": self.msg, "type": "value_error"}]


class Unavailable(RuntimeError):
    """The replica cannot answer now (no snapshot yet, Kafka buffer full): a 503 with why."""


def default_policies(settings: Settings) -> dict[str, dict[str, Any]]:
    """The default arms: Thompson sampling on the stream's statistics and a uniform control."""
    stream = settings.stream
    ts = DiagLinTS(v=0.5, n_mc_draws=100, exploration_floor=0.02, lam=stream.lam,
                   centred=stream.centred)
    uniform = EpsilonGreedy(epsilon=1.0, lam=stream.lam, centred=stream.centred)
    return {"diag_lin_ts": policy_spec(ts), "uniform": policy_spec(uniform)}


@dataclass
class ServiceConfig:
    """Everything a replica needs: the ``[serve]`` settings and where the running system is
    (Kafka, topics, the shards' names); plain data, so it travels to Ray Serve as a dict
    (:meth:`to_dict` / :meth:`from_dict`)."""

    bootstrap: str
    shard_names: list[str]
    shard_namespace: str | None
    policies: dict[str, dict[str, Any]]
    traffic: dict[str, float]
    serve: ServeSettings = field(default_factory=ServeSettings)
    impressions_topic: str = topics.IMPRESSIONS
    feedback_topic: str = topics.FEEDBACK
    client_options: dict[str, Any] = field(default_factory=dict)
    compression: str = "lz4"
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServiceConfig:
        return cls(**{**data, "serve": ServeSettings(**data.get("serve", {}))})

    @classmethod
    def from_settings(cls, settings: Settings, *, bootstrap: str, shard_names: list[str],
                      shard_namespace: str | None, client_options: dict[str, Any] | None = None,
                      impressions_topic: str = topics.IMPRESSIONS,
                      feedback_topic: str = topics.FEEDBACK) -> ServiceConfig:
        """The replica configuration of ``[serve]`` for a running pipeline's shards."""
        import json

        serve = settings.serve
        policies = json.loads(serve.policies) if serve.policies else default_policies(settings)
        return cls(
            bootstrap=bootstrap, shard_names=shard_names, shard_namespace=shard_namespace,
            policies=policies, traffic=parse_traffic(serve.traffic),
            impressions_topic=impressions_topic, feedback_topic=feedback_topic,
            client_options=dict(client_options or {}), serve=serve,
            compression=settings.kafka.compression,
        )


def build_policies(specs: dict[str, dict[str, Any]], traffic: dict[str, float],
                   rng: np.random.Generator) -> dict[str, BasePolicy]:
    """The served policies from their specs, sharing ``rng``; checks what serving needs."""
    if not specs:
        raise ValueError("policies: expected at least one {name: policy spec}, got none")
    policies: dict[str, BasePolicy] = {}
    for name, spec in specs.items():
        policy = policy_from_spec(spec)
        if isinstance(policy, DiagLinTS) and (policy.n_mc_draws == 0
                                              or policy.exploration_floor <= 0):
            raise ValueError(f"policies.{name}: a Thompson-sampling policy that serves must log "
                             f"propensities: set n_mc_draws > 0 and exploration_floor > 0 (got "
                             f"{policy.n_mc_draws} and {policy.exploration_floor})")
        policies[name] = policy.set_params(random_state=rng)
    unknown = sorted(set(traffic) - set(policies))
    if unknown:
        raise ValueError(f"traffic: {unknown} are not among the policies {sorted(policies)}")
    return policies


@dataclass(frozen=True, eq=False)
class _Served:
    """One snapshot and the policy views over it (swapped as a whole on refresh)."""

    snapshot: Snapshot
    policies: dict[str, BasePolicy]


class UserFeatures:
    """The user-feature table (``recsys.schema.USER_FEATURES``), looked up by user id."""

    def __init__(self, uri: str) -> None:
        ids, self.matrix = read_user_features(uri, name="user_features_uri")
        self.index = dict(zip(ids, range(len(ids)), strict=True))

    def get(self, user_id: str) -> np.ndarray | None:
        row = self.index.get(user_id)
        return None if row is None else self.matrix[row]


class RecommenderService:
    """Scores, logs and refreshes (see the module docs). ``start=False`` skips the background
    refresher (tests call :meth:`refresh`)."""

    def __init__(self, config: ServiceConfig, *, start: bool = True) -> None:
        self.config = config
        self._rng = np.random.default_rng(config.seed)
        self._base = build_policies(config.policies, config.traffic, self._rng)
        self._arms = list(config.traffic)
        self._cut = np.cumsum([config.traffic[a] for a in self._arms])
        serve = config.serve
        self.scorer = (make_scorer("torch", device=serve.torch_device,
                                   threads=serve.torch_threads)
                       if serve.backend == "torch" else make_scorer(serve.backend))
        self.users = UserFeatures(serve.user_features_uri) if serve.user_features_uri else None
        shard_staleness = max(0.0, serve.max_staleness_ms - serve.refresh_interval_ms)
        self.snapshots = ShardSnapshots(config.shard_names, config.shard_namespace,
                                        shard_staleness)
        self.metrics = ServingMetrics()
        self.producer = EventProducer(
            config.bootstrap, compression=config.compression, linger_ms=serve.linger_ms,
            max_block_ms=2000, **config.client_options)
        self.producer.warm([config.impressions_topic, config.feedback_topic])
        self._served: _Served | None = None
        self.last_refresh_error = ""
        self.metrics.bind(
            version=lambda: self._served.snapshot.version if self._served else 0,
            age_s=lambda: self._served.snapshot.age_ms() / 1000 if self._served else 0,
            buffered=lambda: self.producer.pending, delivered=lambda: self.producer.acked,
            undelivered=lambda: self.producer.failed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._refresh_loop, name="snapshot-refresh",
                                            daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ snapshots
    def refresh(self) -> bool:
        """Poll the shards once; True when a new snapshot is now served."""
        served = self._served
        try:
            snapshot = self.snapshots.poll(served.snapshot if served else None)
        except ShardsUnavailable as exc:
            self.metrics.refreshes.labels("error").inc()
            self.last_refresh_error = str(exc)
            return False
        assert snapshot is not None
        if served is not None and snapshot.stats is served.snapshot.stats:
            self._served = _Served(snapshot, served.policies)  # same statistics, newer age
            self.metrics.refreshes.labels("unchanged").inc()
            return False
        try:  # random_state is the replica's Generator: use() keeps it, the views share it
            policies = {name: copy.copy(base).use(snapshot.stats)
                        for name, base in self._base.items()}
            self.scorer.prepare(snapshot.stats)  # here, so that no request pays for it
        except ValueError as exc:  # a policy's λ that does not match the statistics
            self.metrics.refreshes.labels("error").inc()
            self.last_refresh_error = f"the snapshot does not fit the policies: {exc}"
            return False
        self._served = _Served(snapshot, policies)
        self.metrics.refreshes.labels("new").inc()
        return True

    def _refresh_loop(self) -> None:
        interval = self.config.serve.refresh_interval_ms / 1000.0
        while not self._stop.is_set():
            started = time.monotonic()
            self.refresh()
            self._stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until a snapshot is served (raise ``Unavailable`` after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while self._served is None:
            if self._thread is None:
                self.refresh()
            if time.monotonic() > deadline:
                raise Unavailable(f"no snapshot after {timeout_s:.0f} s: "
                                  f"{self.last_refresh_error or 'the shards did not answer'}")
            time.sleep(0.02)

    # ------------------------------------------------------------------ endpoints
    def health(self) -> Health:
        served = self._served
        if served is None:
            return Health(ready=False, snapshot_id=None, snapshot_age_ms=None,
                          policies=list(self._base), detail="no snapshot loaded yet"
                          + (f": {self.last_refresh_error}" if self.last_refresh_error else ""))
        return Health(ready=True, snapshot_id=served.snapshot.snapshot_id,
                      snapshot_age_ms=served.snapshot.age_ms(), policies=list(self._base),
                      detail="serving")

    def _arm(self, request_id: str, asked: str | None) -> str:
        if asked is not None:
            if asked not in self._base:
                raise RequestError(("policy",), f"expected one of {sorted(self._base)}, got "
                                   f"{asked!r}")
            return asked
        u = zlib.crc32(request_id.encode()) / 2**32
        return self._arms[min(int(np.searchsorted(self._cut, u, side="right")),
                              len(self._arms) - 1)]

    def _context(self, req: RecommendRequest, stats: Any) -> tuple[Any, Context]:
        """The request's scoring input for the statistics' layout and the context to log: the
        request's own, or the user's row of the feature table when it sends none."""
        ctx = req.context
        if ctx is None:
            dense = self.users.get(req.user_id) if self.users is not None else None
            if dense is None:
                where = ("no user-feature table is configured" if self.users is None
                         else f"user {req.user_id!r} is not in the user-feature table")
                raise RequestError(("context",), f"expected a context: {where}")
            given = Context(dense=tuple(dense.tolist()))
        else:
            given = Context(dense=tuple(ctx.dense), cluster_ids=tuple(ctx.cluster_ids),
                            cluster_weights=tuple(ctx.cluster_weights))
        try:
            return stats.context_codec().one(given)
        except ContextError as exc:
            raise RequestError(("context", exc.field), exc.msg) from None

    def recommend(self, req: RecommendRequest) -> RecommendResponse:
        """Score, sample a slate with propensities, queue its impression, answer."""
        served = self._served
        if served is None:
            raise Unavailable("no snapshot loaded yet: the shards have not answered "
                              f"({self.last_refresh_error or 'starting'})")
        request_id = req.request_id or uuid.uuid4().hex
        arm = self._arm(request_id, req.policy)
        policy = served.policies[arm]
        stats = served.snapshot.stats
        contexts, context = self._context(req, stats)
        k = req.k
        candidates = None if req.candidates is None else np.asarray(req.candidates,
                                                                     dtype=np.int64)
        pool = stats.n_items
        if candidates is not None:
            unknown = candidates[~np.isin(candidates, stats.item_ids)]
            if unknown.size:
                raise RequestError(("candidates",), f"expected item ids of the catalogue, got "
                                   f"unknown ids {unknown[:10].tolist()}")
            pool = np.unique(candidates).size
        if k > pool:
            raise RequestError(("k",), f"expected at most {pool} (the "
                               f"{'candidates' if candidates is not None else 'catalogue'} "
                               f"size), got {k}")
        try:
            slate = self.scorer.recommend(policy, contexts, k, candidates)
        except UnknownItemError as exc:
            raise RequestError(("candidates",), str(exc)) from None
        except ValueError as exc:
            loc = ("candidates",) if candidates is not None else ("context",)
            raise RequestError(loc, str(exc)) from None
        items = slate.items[0].tolist()
        scores = slate.scores[0].tolist()
        props = slate.propensities[0].tolist()
        ses = slate.propensity_se[0].tolist()
        impression = Impression(
            request_id=request_id, event_time_ms=int(time.time() * 1000), user_id=req.user_id,
            context=context, policy_name=arm, policy_version=served.snapshot.version,
            slate=tuple(SlateEntry(item_id=i, position=p, score=s, propensity=q,
                                   propensity_se=e)
                        for p, (i, s, q, e) in enumerate(zip(items, scores, props, ses,
                                                             strict=True))))
        self._log(impression, self.config.impressions_topic, self.metrics.impressions)
        self.metrics.slates.labels(arm).inc()
        return RecommendResponse(
            request_id=request_id, user_id=req.user_id, policy=arm,
            policy_version=served.snapshot.version, snapshot_id=served.snapshot.snapshot_id,
            snapshot_age_ms=served.snapshot.age_ms(), items=items, scores=scores,
            propensities=props, propensity_se=ses)

    def _log(self, event: Impression | Feedback, topic: str, counter: Any) -> None:
        from kafka.errors import KafkaError

        full = self.producer.pending >= self.config.serve.max_buffered_events
        try:
            if full:
                raise KafkaError("buffer full")
            self.producer.send(event, topic)
        except KafkaError:
            counter.labels("rejected").inc()
            raise Unavailable(f"{self.producer.pending} events are waiting for Kafka (at most "
                              f"{self.config.serve.max_buffered_events}): Kafka is unreachable "
                              "or slow; not serving a slate that cannot be logged") from None
        counter.labels("queued").inc()

    def feedback(self, events: list[FeedbackIn]) -> int:
        """Queue validated feedback events for Kafka; returns how many."""
        now = int(time.time() * 1000)
        for e in events:
            self._log(Feedback(request_id=e.request_id, user_id=e.user_id, item_id=e.item_id,
                               position=e.position, event_type=e.event_type, value=e.value,
                               event_time_ms=now if e.event_time_ms is None
                               else e.event_time_ms),
                      self.config.feedback_topic, self.metrics.feedback)
        return len(events)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every queued event is acknowledged by Kafka."""
        self.producer.flush(timeout_s)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.producer.close()


_current: RecommenderService | None = None


def set_current(service: RecommenderService | None) -> None:
    """Register this process's replica, so the app's middleware can count every answer (Ray Serve
    ships the FastAPI app by value: a global of the app module would be a copy)."""
    global _current
    _current = service


def current() -> RecommenderService | None:
    """This process's replica, if one is running."""
    return _current
