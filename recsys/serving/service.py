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
* **Retries change nothing.** A feedback batch is queued wholly or not at all (room for all its
  new events is checked first; a 503 queues none), and each event once per key within
  ``serve.idempotency_window_s``: a retry is answered as accepted, counted as ``duplicates``.
  A client ``request_id`` is served once: a repeat with the same body gets the original answer,
  with another body a 409. Across replicas the join makes repeats harmless
  (``recsys.serving.idempotency``).
* **Nothing the model cannot learn from.** A context (the request's or the user-feature
  table's) whose norm exceeds ``serve.max_context_norm`` is refused with a 422 before it is
  scored or logged, and a slate whose scores are not all finite gets a 503 "statistics not
  finite" instead of ``null`` scores (``recsys.serving.contexts``).
* **One snapshot per request.** A refresh builds new policy views over the new statistics and
  swaps one reference; a request reads that reference once, so it never mixes two snapshots.
  Policy views share one random generator per replica (a clone would replay the same draws).
* **Propensities are always > 0.** Thompson-sampling policies must log Monte Carlo propensities
  (``n_mc_draws > 0``) and keep an exploration floor > 0, so no shown item can be logged with
  an estimated propensity of 0; checked when the service starts (and when a model loads).
* **Arms may follow the registry.** A policy given as ``models:/NAME@ALIAS`` (or ``/VERSION``)
  is a model arm (``recsys.serving.models``): a background watcher re-resolves it every
  ``serve.model_refresh_s`` and swaps a new version in with the same one-reference rule, under
  the lock the snapshot refresher also takes (so neither undoes the other's swap). A bandit model
  serves its spec on the live statistics; a scores or baseline model its own fixed policy. Its
  impressions log ``policy_name`` = the registered model's name and ``policy_version`` = its
  version; spec arms log the arm name and the snapshot version. A model arm that has not loaded
  answers 503 with the reason, and ``/health`` shows it; the replica's other arms serve.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
import uuid
import zlib
from collections.abc import Callable
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
from recsys.bandits.slates import Slate
from recsys.config import ServeSettings, Settings, parse_traffic
from recsys.events import Context, Feedback, Impression, SlateEntry
from recsys.kafka_clients import is_transient_kafka_error
from recsys.policies import RequestBatch
from recsys.producer import EventProducer
from recsys.registry.uris import is_model_uri
from recsys.schema import read_user_table
from recsys.serving.admission import Gate
from recsys.serving.backends import make_scorer
from recsys.serving.contexts import ContextGuard, ContextRefused, StatisticsNotFinite
from recsys.serving.idempotency import (
    FeedbackOnce,
    NoRoom,
    PartlyQueued,
    Repeated,
    SlateReplays,
    feedback_key,
    key64,
)
from recsys.serving.metrics import ServingMetrics
from recsys.serving.models import (
    LoadedModel,
    ModelArm,
    ModelMetrics,
    ModelWatcher,
    check_serving_policy,
)
from recsys.serving.readiness import KafkaReadiness
from recsys.serving.schemas import (
    FeedbackIn,
    FeedbackResponse,
    Health,
    KafkaHealth,
    ModelArmHealth,
    RecommendRequest,
    RecommendResponse,
)
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
    policies: dict[str, dict[str, Any] | str]
    """Arm name → policy spec, or a registered model's URI (``models:/NAME@ALIAS``)."""
    traffic: dict[str, float]
    serve: ServeSettings = field(default_factory=ServeSettings)
    impressions_topic: str = topics.IMPRESSIONS
    feedback_topic: str = topics.FEEDBACK
    client_options: dict[str, Any] = field(default_factory=dict)
    compression: str = "lz4"
    seed: int | None = None
    tracking_uri: str | None = None
    """The mlflow store that model arms resolve and load from (``settings.mlflow_tracking_uri``;
    None: mlflow's own default)."""

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
            compression=settings.kafka.compression, tracking_uri=settings.mlflow_tracking_uri,
        )


def build_policies(specs: dict[str, dict[str, Any] | str], traffic: dict[str, float],
                   rng: np.random.Generator) -> dict[str, BasePolicy]:
    """The served spec policies, sharing ``rng``; checks what serving needs. Model URIs (model
    arms, built by the service) are skipped here but count as arms for ``traffic``."""
    if not specs:
        raise ValueError("policies: expected at least one {name: policy spec or model URI}, "
                         "got none")
    policies: dict[str, BasePolicy] = {}
    for name, spec in specs.items():
        if is_model_uri(spec):
            continue
        policy = policy_from_spec(spec)  # type: ignore[arg-type]
        check_serving_policy(name, policy)
        policies[name] = policy.set_params(random_state=rng)
    unknown = sorted(set(traffic) - set(specs))
    if unknown:
        raise ValueError(f"traffic: {unknown} are not among the policies {sorted(specs)}")
    return policies


@dataclass(frozen=True, eq=False)
class _Served:
    """One snapshot, the policy views over it (spec arms and bandit model arms) and the loaded
    model of every model arm that has one (swapped as a whole on refresh or model switch)."""

    snapshot: Snapshot
    policies: dict[str, BasePolicy]
    models: dict[str, LoadedModel] = field(default_factory=dict)


class UserFeatures:
    """The user-feature table (``recsys.schema.USER_FEATURES``), looked up by user id; when the
    table also has ``context_cluster_ids``/``context_cluster_weights`` (written by
    ``recsys export-online``), each user's context carries their cluster memberships too."""

    def __init__(self, uri: str) -> None:
        ids, self.matrix, self.clusters = read_user_table(uri, name="user_features_uri")
        self.index = dict(zip(ids, range(len(ids)), strict=True))

    def get(self, user_id: str) -> np.ndarray | None:
        row = self.index.get(user_id)
        return None if row is None else self.matrix[row]

    def context(self, user_id: str) -> Context | None:
        """The user's row as a context (dense, plus cluster memberships when the table has
        them); None for a user not in the table."""
        row = self.index.get(user_id)
        if row is None:
            return None
        if self.clusters is None:
            return Context(dense=tuple(self.matrix[row].tolist()))
        ids, weights = self.clusters.of(row)
        return Context(dense=tuple(self.matrix[row].tolist()), cluster_ids=ids,
                       cluster_weights=weights)


class RecommenderService:
    """Scores, logs and refreshes (see the module docs). ``start=False`` skips the background
    snapshot refresher and model watcher (tests call :meth:`refresh` and :meth:`check_models`)."""

    def __init__(self, config: ServiceConfig, *, start: bool = True) -> None:
        self.config = config
        self._rng = np.random.default_rng(config.seed)
        self._base = build_policies(config.policies, config.traffic, self._rng)
        self._names = list(config.policies)
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
        # contexts it cannot learn from, and non-finite scores, never pass (serving.contexts)
        self.contexts = ContextGuard(serve.max_context_norm, self.metrics.registry)
        self.gate = Gate(serve, self.metrics)  # the HTTP routes score on its one thread
        model_metrics = ModelMetrics(self.metrics.registry)
        self.models = {name: ModelArm(name, uri, tracking_uri=config.tracking_uri,
                                      rng=self._rng, metrics=model_metrics)
                       for name, uri in config.policies.items() if isinstance(uri, str)}
        self.producer = EventProducer(
            config.bootstrap, compression=config.compression, linger_ms=serve.linger_ms,
            max_block_ms=2000, **config.client_options)
        topics = [config.impressions_topic, config.feedback_topic]
        cold = False
        for topic in topics:  # each: a failed look-up still has the client track the topic
            try:
                self.producer.warm([topic])
            except Exception as exc:  # not created yet, Kafka not up yet: start unready
                if not is_transient_kafka_error(exc):
                    raise
                cold = True
        # /health/ready reads its verdict; it checks in the background (recsys.serving.readiness)
        self.kafka = KafkaReadiness(self.producer, topics, serve.max_buffered_events)
        if cold:  # the first verdict says why, not "fetched at start"
            self.kafka.check()
        # what this replica remembers to answer retries once (recsys.serving.idempotency)
        self.replays = SlateReplays(serve.idempotency_window_s, serve.idempotency_max_keys)
        self.feedback_once = FeedbackOnce(serve.idempotency_window_s, serve.idempotency_max_keys)
        self._served: _Served | None = None
        self._swap = threading.Lock()  # the refresher and the watcher build and swap under it
        self.last_refresh_error = ""
        self.metrics.bind(
            version=lambda: self._served.snapshot.version if self._served else 0,
            age_s=lambda: self._served.snapshot.age_ms() / 1000 if self._served else 0,
            buffered=lambda: self.producer.pending, delivered=lambda: self.producer.acked,
            undelivered=lambda: self.producer.failed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watcher: ModelWatcher | None = None
        if start:
            self._thread = threading.Thread(target=self._refresh_loop, name="snapshot-refresh",
                                            daemon=True)
            self._thread.start()
            if self.models:
                self._watcher = ModelWatcher(self.check_models, serve.model_refresh_s).start()
            self.kafka.start()

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
        with self._swap:
            served = self._served
            if served is not None and snapshot.stats is served.snapshot.stats:
                # same statistics, newer age
                self._served = dataclasses.replace(served, snapshot=snapshot)
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
            models: dict[str, LoadedModel] = {}
            for name, arm in self.models.items():
                loaded = arm.current
                if loaded is None:
                    continue
                if loaded.base is not None:
                    try:
                        policies[name] = copy.copy(loaded.base).use(snapshot.stats)
                    except ValueError as exc:  # the arm stops serving (and is loaded again
                        # at its next look-up); the others go on
                        arm.drop(f"{loaded.name}/{loaded.version} does not fit the live "
                                 f"statistics: {exc}")
                        continue
                models[name] = loaded
            self._served = _Served(snapshot, policies, models)
        self.metrics.refreshes.labels("new").inc()
        return True

    def _refresh_loop(self) -> None:
        interval = self.config.serve.refresh_interval_ms / 1000.0
        while not self._stop.is_set():
            started = time.monotonic()
            self.refresh()
            self._stop.wait(max(0.0, interval - (time.monotonic() - started)))

    # ------------------------------------------------------------------ model arms
    def check_models(self) -> int:
        """Re-resolve every model arm once and swap in the versions that changed (off the
        request path: a load happens here, the swap is one reference); how many switched."""
        return sum(self._install(arm, loaded) for arm in self.models.values()
                   if (loaded := arm.poll()) is not None)

    def _install(self, arm: ModelArm, loaded: LoadedModel) -> bool:
        """Serve ``loaded`` on ``arm`` from now on (False, old model kept, when it cannot)."""
        with self._swap:
            served = self._served
            policies = served.policies if served is not None else {}
            if served is not None and loaded.base is not None:
                try:
                    view = copy.copy(loaded.base).use(served.snapshot.stats)
                except ValueError as exc:
                    arm.fail(f"{loaded.name}/{loaded.version} does not fit the live "
                             f"statistics: {exc}")
                    return False
                policies = {**policies, arm.arm: view}
            arm.accept(loaded)
            if served is not None:
                self._served = _Served(served.snapshot, policies,
                                       {**served.models, arm.arm: loaded})
        return True

    def _models_checked(self) -> bool:
        return all(arm.checked for arm in self.models.values())

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until a snapshot is served and every model arm was looked up once (raise
        ``Unavailable`` after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while self._served is None or not self._models_checked():
            if self._thread is None:
                self.refresh()
            if self._watcher is None and not self._models_checked():
                self.check_models()
            if time.monotonic() > deadline:
                raise Unavailable(f"no snapshot after {timeout_s:.0f} s: "
                                  f"{self.last_refresh_error or 'the shards did not answer'}")
            time.sleep(0.02)

    # ------------------------------------------------------------------ endpoints
    def health(self) -> Health:
        """Ready once a snapshot is served, every model arm was looked up once and Kafka accepts
        writes (the background check's last verdict: nothing here waits on the network); a
        model arm that has not loaded is listed (``models``, ``detail``) without making the
        replica unready: its other arms serve."""
        served = self._served
        models = {name: ModelArmHealth(**arm.state()) for name, arm in self.models.items()}
        waiting = [f"{name} ({arm.ref.uri}: {arm.error or 'not looked up yet'})"
                   for name, arm in self.models.items() if arm.current is None]
        verdict = self.kafka.state()
        kafka = KafkaHealth(writable=verdict.writable, detail=verdict.detail,
                            checked_ms_ago=round(verdict.age_s() * 1000, 1))
        if served is None or not self._models_checked():
            detail = ("no snapshot loaded yet" + (f": {self.last_refresh_error}"
                                                  if self.last_refresh_error else "")
                      if served is None else "looking up the model arms")
            return Health(ready=False, snapshot_id=None if served is None
                          else served.snapshot.snapshot_id,
                          snapshot_age_ms=None if served is None else served.snapshot.age_ms(),
                          policies=self._names, detail=detail, models=models, kafka=kafka)
        if not verdict.writable:
            return Health(ready=False, snapshot_id=served.snapshot.snapshot_id,
                          snapshot_age_ms=served.snapshot.age_ms(), policies=self._names,
                          detail=f"Kafka does not accept writes: {verdict.detail}",
                          models=models, kafka=kafka)
        detail = "serving" + (f"; not ready: {'; '.join(waiting)}" if waiting else "")
        return Health(ready=True, snapshot_id=served.snapshot.snapshot_id,
                      snapshot_age_ms=served.snapshot.age_ms(), policies=self._names,
                      detail=detail, models=models, kafka=kafka)

    def _arm(self, request_id: str, asked: str | None) -> str:
        if asked is not None:
            if asked not in self.config.policies:
                raise RequestError(("policy",), f"expected one of {sorted(self._names)}, got "
                                   f"{asked!r}")
            return asked
        u = zlib.crc32(request_id.encode()) / 2**32
        return self._arms[min(int(np.searchsorted(self._cut, u, side="right")),
                              len(self._arms) - 1)]

    def _given(self, req: RecommendRequest) -> Context | None:
        """The context to log: the request's own, else the user's row of the feature table;
        one whose norm exceeds ``serve.max_context_norm`` is a 422 (``serving.contexts``)."""
        ctx = req.context
        try:
            if ctx is not None:
                return self.contexts.check(Context(
                    dense=tuple(ctx.dense), cluster_ids=tuple(ctx.cluster_ids),
                    cluster_weights=tuple(ctx.cluster_weights)))
            row = self.users.context(req.user_id) if self.users is not None else None
            return None if row is None else self.contexts.check(row, table_user=req.user_id)
        except ContextRefused as exc:
            raise RequestError(exc.loc, exc.msg) from None

    def _context(self, req: RecommendRequest, stats: Any) -> tuple[Any, Context]:
        """The request's scoring input for the statistics' layout and the context to log: the
        request's own, or the user's row of the feature table when it sends none."""
        given = self._given(req)
        if given is None:
            where = ("no user-feature table is configured" if self.users is None
                     else f"user {req.user_id!r} is not in the user-feature table")
            raise RequestError(("context",), f"expected a context: {where}")
        try:
            return stats.context_codec().one(given)
        except ContextError as exc:
            raise RequestError(("context", exc.field), exc.msg) from None

    def recommend(self, req: RecommendRequest,
                  wanted: Callable[[], bool] | None = None) -> RecommendResponse:
        """A slate for ``req`` (:meth:`_recommend`), once per client ``request_id``: a repeat
        with the same body within ``serve.idempotency_window_s`` gets the original answer (no
        new slate or impression); with another body, while the first is being served, or once
        its answer is no longer kept, a 409 (``recsys.serving.idempotency.SlateReplays``)."""
        if req.request_id is None:
            return self._recommend(req, wanted)
        try:
            replay = self.replays.begin(req.request_id, key64(req.model_dump_json()))
        except Repeated as exc:
            self.metrics.impressions.labels("repeat_refused").inc()
            raise RequestError(("request_id",), str(exc).partition(": ")[2],
                               status=409) from None
        if replay is not None:
            self.metrics.impressions.labels("replayed").inc()
            return RecommendResponse.model_validate_json(replay)
        try:
            answer = self._recommend(req, wanted)
        except BaseException:
            self.replays.abandon(req.request_id)  # not served: a retry is a new request
            raise
        self.replays.finish(req.request_id, answer.model_dump_json().encode())
        return answer

    def _recommend(self, req: RecommendRequest,
                   wanted: Callable[[], bool] | None = None) -> RecommendResponse:
        """Score, sample a slate with propensities, queue its impression, answer. When
        ``wanted()`` is False just before the impression would be queued (the client left),
        raise ``Shed`` (``client_gone``) instead: a slate no one sees is not logged."""
        served = self._served
        if served is None:
            raise Unavailable("no snapshot loaded yet: the shards have not answered "
                              f"({self.last_refresh_error or 'starting'})")
        request_id = req.request_id or uuid.uuid4().hex
        arm = self._arm(request_id, req.policy)
        loaded: LoadedModel | None = None
        if arm in self.models:
            loaded = served.models.get(arm)
            if loaded is None:
                model_arm = self.models[arm]
                raise Unavailable(f"policy {arm!r} follows {model_arm.ref.uri}, which is not "
                                  f"loaded: {model_arm.error or 'not looked up yet'}")
        if loaded is not None and loaded.base is None:
            slate, context = self._recommend_fixed(req, loaded)
        else:
            slate, context = self._recommend_bandit(req, served.policies[arm],
                                                    served.snapshot.stats)
        try:  # a null score would break the schema; a slate no one should see is not logged
            self.contexts.check_scores(arm, slate.scores[0])
        except StatisticsNotFinite as exc:
            raise Unavailable(str(exc)) from None
        name, version = ((arm, served.snapshot.version) if loaded is None
                         else (loaded.name, loaded.version))
        items = slate.items[0].tolist()
        scores = slate.scores[0].tolist()
        props = slate.propensities[0].tolist()
        ses = slate.propensity_se[0].tolist()
        impression = Impression(
            request_id=request_id, event_time_ms=int(time.time() * 1000), user_id=req.user_id,
            context=context, policy_name=name, policy_version=version,
            slate=tuple(SlateEntry(item_id=i, position=p, score=s, propensity=q,
                                   propensity_se=e)
                        for p, (i, s, q, e) in enumerate(zip(items, scores, props, ses,
                                                             strict=True))))
        if wanted is not None and not wanted():
            raise self.gate.client_gone()
        self._log(impression, self.config.impressions_topic, self.metrics.impressions)
        self.metrics.slates.labels(arm).inc()
        return RecommendResponse(
            request_id=request_id, user_id=req.user_id, policy=arm, policy_version=version,
            snapshot_id=served.snapshot.snapshot_id, snapshot_age_ms=served.snapshot.age_ms(),
            items=items, scores=scores, propensities=props, propensity_se=ses,
            model_name=None if loaded is None else loaded.name,
            model_version=None if loaded is None else loaded.version)

    def _recommend_bandit(self, req: RecommendRequest, policy: BasePolicy,
                          stats: Any) -> tuple[Slate, Context]:
        """A bandit policy's slate on the live statistics (spec arms and bandit models)."""
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
        return slate, context

    def _recommend_fixed(self, req: RecommendRequest, loaded: LoadedModel
                         ) -> tuple[Slate, Context]:
        """A scores or baseline model's slate: it scores its whole catalogue from the user id
        or the dense context (the request's, else the user-feature table's)."""
        if req.candidates is not None:
            raise RequestError(("candidates",), f"expected none for a model that scores its "
                               f"whole catalogue ({loaded.name}/{loaded.version}, "
                               f"{loaded.kind}), got {len(req.candidates)} ids")
        n_items = len(loaded.model.item_ids_)
        if req.k > n_items:
            raise RequestError(("k",), f"expected at most {n_items} (the catalogue size of "
                               f"{loaded.name}/{loaded.version}), got {req.k}")
        given = self._given(req)
        dense = given.dense if given is not None and given.dense else None
        batch = RequestBatch.of(user_ids=[req.user_id],
                                dense=None if dense is None else [dense])
        try:
            slate = loaded.model.recommend(batch, req.k)
        except ValueError as exc:
            raise RequestError(("context",), str(exc)) from None
        return slate, given if given is not None else Context()

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

    def feedback(self, events: list[FeedbackIn]) -> FeedbackResponse:
        """Queue a feedback batch for Kafka wholly or not at all, each event once per key
        (``recsys.serving.idempotency``). Accepted means queued for the idempotent producer;
        one that Kafka then fails to take is counted (``undelivered``), never silent."""
        from kafka.errors import KafkaError

        limit = self.config.serve.max_buffered_events
        if len(events) > limit:
            raise RequestError((), f"expected at most {limit} events per call (a batch is "
                               f"buffered whole, serve.max_buffered_events), got {len(events)}; "
                               "split it", status=413)
        now = int(time.time() * 1000)
        records = [Feedback(request_id=e.request_id, user_id=e.user_id, item_id=e.item_id,
                            position=e.position, event_type=e.event_type, value=e.value,
                            event_time_ms=now if e.event_time_ms is None else e.event_time_ms)
                   for e in events]
        topic, counter = self.config.feedback_topic, self.metrics.feedback
        try:
            fresh = self.feedback_once.queue(
                [feedback_key(e) for e in events], lambda: limit - self.producer.pending,
                lambda i: self.producer.send(records[i], topic))
        except NoRoom as exc:
            counter.labels("rejected").inc(exc.needed)
            raise Unavailable(f"{self.producer.pending} events are waiting for Kafka (at most "
                              f"{limit}), no room for this batch's {exc.needed} new events: "
                              "none was queued; Kafka is unreachable or slow, retry the batch "
                              "later") from None
        except PartlyQueued as exc:
            counter.labels("queued").inc(exc.queued)
            counter.labels("rejected").inc(exc.new - exc.queued)
            cause = exc.__cause__
            if not isinstance(cause, KafkaError):
                raise  # a bug, not Kafka (a 500); its cause is the send's error
            raise Unavailable(f"Kafka refused an event ({cause}); {exc.queued} of this batch's "
                              f"{exc.new} new events were queued and are remembered: retry the "
                              "whole batch, they are not queued twice") from None
        counter.labels("queued").inc(len(fresh))
        if len(fresh) < len(events):
            counter.labels("duplicate").inc(len(events) - len(fresh))
        return FeedbackResponse(accepted=len(events), duplicates=len(events) - len(fresh))

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every queued event is acknowledged by Kafka."""
        self.producer.flush(timeout_s)

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.gate.close()
        self.kafka.stop()
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
