"""Prometheus exposition for the streaming pipeline: lag, throughput, dead letters, freshness,
checkpoints, shard versions and per-item exposure/reward figures.

:class:`PipelineMetrics` reads a :class:`~streaming.pipeline.StreamPipeline`'s actors when the
driver calls :meth:`~PipelineMetrics.collect` (the CLI does it once per status line), keeps the
figures of the last collection, and serves them in the Prometheus text format from a private
``prometheus_client`` registry: :meth:`~PipelineMetrics.render` for tests and the status line,
:meth:`~PipelineMetrics.start` for an HTTP endpoint (loopback by default). A scrape never calls
the actors; it shows the last collection (``recsys_stream_last_collection_timestamp_seconds``).

What each family measures (``actor`` is the pipeline's name: ``joiner-0``, ``learner-1``, ...):

* ``recsys_stream_consumer_lag_records{role,actor,topic,partition}``: end offset − position of
  every partition a reader owns (records still to read), from the actors' ``end_offsets`` and
  ``positions``.
* ``recsys_stream_records_total{stage,actor}`` and ``recsys_stream_records_per_second``: Kafka
  records read (learners and lake writers: ``consumed``; joiners: impressions + feedback +
  undecodable records), and their rate between the last two collections (a counter that went down,
  after a rebuilt actor, counts from zero).
* ``recsys_stream_dead_letters_total{actor,reason}``: records sent to the dead-letter topic, by
  reason: joiners' join rejections (``streaming.join.Reason``) and undecodable records; lake
  writers' undecodable and unfit records by reason; learners' undecodable records and the
  joined examples they refuse as unlearnable (``streaming.learner.REFUSED_REWARD``; the learner
  drops the events the join rejects without dead-lettering them: the joiner does).
* ``recsys_stream_freshness_seconds`` (histogram): **shard-side visibility delay only**. At each
  statistics pull, for each shard, the age of the oldest delta the shard has merged but readers
  cannot see yet (now − the snapshot's ``current_at_ms``; 0 when the published snapshot is
  current). The pull asks for the snapshot with the readers' staleness bound, so it republishes
  when stale as a serving reader's would, and the figure stays under that bound unless the shard
  is too busy to answer: it shows how much of the bound is used. It does not include the time an
  event spends in Kafka and in the learner: the actors do not record event time with deltas
  today. The lag families bound that part in records.
* ``recsys_stream_record_to_shard_seconds`` (histogram): from a record's Kafka timestamp (the
  producer's create time) to the moment the shard merges the delta it is in, one observation per
  delta with its oldest record, over all shards. Add the readers' staleness bound (or
  ``recsys_stream_freshness_seconds``) for "produced → visible to serving".
* ``recsys_stream_snapshot_age_seconds{shard}``: at the last statistics pull, the age of the
  snapshot readers get (pull time − its ``published_ms``);
  ``recsys_stream_snapshot_version{shard}``: the shard statistics' version (every merge bumps it),
  with ``recsys_stream_shard_items`` and ``recsys_stream_shard_bytes``;
  ``recsys_stream_shard_non_finite_deltas{shard}``: deltas refused whole because they held NaN
  or infinity or would overflow the shard's sums (``streaming.shards``).
* ``recsys_stream_checkpoint_age_seconds``: time since the newest checkpoint, measured from the
  collection that first saw it (so up to one collection interval late), or from its
  ``created_ms`` for the checkpoint the pipeline restored at start;
  ``recsys_stream_checkpoint_duration_seconds{phase}``: drain, snapshot, write and total of the
  last checkpoint (``CheckpointReport``).
* ``recsys_stream_item_exposures{item}``, ``recsys_stream_item_rewards{item}`` and
  ``recsys_stream_item_expected_reward{item}`` for the ``top_n`` items by exposure (ties: lower
  item id first), from the shards' published snapshots (see :func:`item_figures` for each
  layout's formula).
* The supervisor (``StreamPipeline.health()``, ``streaming.supervisor``; driver memory, no actor
  call): ``recsys_stream_recoveries_total`` (local or global), ``recsys_stream_supervisor_state
  {state}`` (1 for running, recovering or kafka_unreachable), ``recsys_stream_failed_recoveries
  _total`` (attempts retried after a backoff), ``recsys_stream_deadline_kills_total`` (actors
  killed for missing ``stream.actor_call_timeout_s``), ``recsys_stream_stuck_readers_total``,
  ``recsys_stream_kafka_outage_seconds`` (the outage now, 0 when reachable) against
  ``recsys_stream_kafka_outage_budget_seconds``.
* ``recsys_stream_scrape_errors_total{source}``: an actor (or the statistics pull) that raised or
  did not answer within ``timeout_s``; the collection goes on without it.

Cost: the reader and shard counters are small and read at every collection. The per-item figures
and the freshness need the shards' snapshots (every array, moved to the driver), so they are
pulled at most once per ``statistics_interval_s``. Clocks: ages subtract the shards' wall clock
from the driver's, so cross-node clock skew adds to them.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIServer

import numpy as np
import ray
from prometheus_client import CollectorRegistry, Histogram, generate_latest, start_http_server
from prometheus_client import Counter as PromCounter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from recsys.bandits import ItemSummary, Publication, stats_from_arrays
from recsys.bandits.protocol import Statistics
from recsys.validation import message
from streaming.coordinator import CheckpointReport
from streaming.join import Reason
from streaming.learner import REFUSED_REWARD
from streaming.shards import MERGE_DELAY_BUCKETS_S

log = logging.getLogger(__name__)

Offsets = dict[tuple[str, int], int]
JOIN_REASONS = frozenset(v for k, v in vars(Reason).items() if not k.startswith("_"))
"""The join rejection categories (counter names in a joiner's stats, dead-letter reasons)."""
FRESHNESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STAGES = {"joiner": "joiner", "learner": "learner", "lake": "lake_writer"}
"""Actor name prefix -> the stage label."""


# -------------------------------------------------------------------------- per-item figures


def item_figures(parts: Sequence[Statistics], top_n: int) -> ItemSummary:
    """The ``top_n`` items by exposure over ``parts`` (disjoint shards), ties by lower item id,
    top items first; each layout's figures are its ``item_summary`` (exposure, reward sum and
    exploration-free expected reward; NaN, not exported, where the layout has no
    context-free reward)."""
    if top_n < 0:
        raise ValueError(message("top_n", "an integer >= 0", top_n))
    figs = [p.item_summary() for p in parts]
    if not figs:
        empty = np.zeros(0)
        return ItemSummary(np.zeros(0, dtype=np.int64), empty, empty, empty)
    ids, exp_, rew, mean = (np.concatenate([getattr(f, name) for f in figs])
                            for name in ("item_ids", "exposures", "rewards", "expected"))
    n, k = ids.size, min(top_n, ids.size)
    if k == 0:
        pick = np.zeros(0, dtype=np.intp)
    elif k < n:  # O(n) selection; the boundary ties go to the lower ids
        threshold = np.partition(exp_, n - k)[n - k]
        above = np.flatnonzero(exp_ > threshold)
        tied = np.flatnonzero(exp_ == threshold)
        tied = tied[np.argsort(ids[tied], kind="stable")][: k - above.size]
        pick = np.concatenate([above, tied])
    else:
        pick = np.arange(n)
    pick = pick[np.lexsort((ids[pick], -exp_[pick]))]
    return ItemSummary(ids[pick], exp_[pick], rew[pick], mean[pick])


# -------------------------------------------------------------------------- one collection


@dataclass
class Reading:
    """What one collection read from the pipeline (``PipelineMetrics.update`` takes it).

    ``readers``: each reader's ``counters()`` as a mapping; ``lag``: records behind per (topic,
    partition) per reader; ``shards``: each shard's ``counters()``; ``publications``: each shard's
    :class:`~recsys.bandits.Publication` and ``statistics`` the shards' statistics, both only
    when the statistics were pulled; ``checkpoint_created_s``: wall time of the checkpoint when
    known (a restored one); ``errors``: failures by source.
    """

    at_s: float
    readers: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    lag: dict[str, Offsets] = field(default_factory=dict)
    shards: dict[int, Mapping[str, Any]] = field(default_factory=dict)
    publications: dict[int, Publication] | None = None
    statistics: list[Statistics] | None = None
    checkpoint: CheckpointReport | None = None
    checkpoint_id: str | None = None
    checkpoint_created_s: float | None = None
    recoveries: int = 0
    health: Mapping[str, Any] | None = None
    errors: Counter[str] = field(default_factory=Counter)


def _mapping(stats: Any) -> Mapping[str, Any]:
    """A reader's ``counters()``: a dict, or a dataclass (``LakeWriterCounters``)."""
    return dataclasses.asdict(stats) if dataclasses.is_dataclass(stats) else dict(stats)


class _Calls:
    """Actor calls sharing one deadline; a failure or timeout is counted, never raised."""

    def __init__(self, timeout_s: float, errors: Counter[str]) -> None:
        self.deadline = time.monotonic() + timeout_s
        self.errors = errors

    def get(self, source: str, ref: Any) -> Any:
        try:
            return ray.get(ref, timeout=max(0.0, self.deadline - time.monotonic()))
        except Exception as exc:  # a dead, hung or failing actor must not stop the pipeline
            log.warning("metrics: %s did not answer: %s", source, exc)
            self.errors[source] += 1
            return None


def read_pipeline(pipeline: Any, *, statistics: bool, max_staleness_ms: float,
                  timeout_s: float = 5.0) -> Reading:
    """Read every actor of a started ``StreamPipeline`` (see the module docs); never raises."""
    reading = Reading(at_s=time.time(), recoveries=int(getattr(pipeline, "recoveries", 0)))
    if hasattr(pipeline, "health"):  # the supervisor's state (driver memory, no actor call)
        reading.health = pipeline.health()
    actors = pipeline.actors
    if actors is None:  # not started, or between a kill and the rebuild
        reading.errors["pipeline"] += 1
        return reading
    calls = _Calls(timeout_s, reading.errors)
    named = actors.readers()
    asked = [(name, a.counters.remote(), a.positions.remote(), a.end_offsets.remote())
             for name, a in named]
    shard_refs = [(s.counters.remote(),
                   s.publication.remote(max_staleness_ms) if statistics else None)
                  for s in actors.shards]
    for name, stats_ref, pos_ref, end_ref in asked:
        stats, pos, end = (calls.get(name, r) for r in (stats_ref, pos_ref, end_ref))
        if stats is not None:
            reading.readers[name] = _mapping(stats)
        if pos is not None and end is not None:
            reading.lag[name] = {tp: max(0, int(o) - int(pos.get(tp, o))) for tp, o in end.items()}
    parts: list[Statistics] = []
    publications: dict[int, Publication] = {}
    for i, (stats_ref, pub_ref) in enumerate(shard_refs):
        stats = calls.get(f"shard-{i}", stats_ref)
        if stats is not None:
            reading.shards[i] = stats
        if pub_ref is None:
            continue
        pub = calls.get(f"shard-{i}", pub_ref)
        snap = None if pub is None else calls.get(f"shard-{i}", pub.ref)
        if snap is not None:
            publications[i] = pub
            parts.append(stats_from_arrays(*snap))
    if statistics:
        reading.publications = publications
        reading.statistics = parts if len(parts) == len(shard_refs) else None
    reading.checkpoint = pipeline.coordinator.last
    restored = getattr(pipeline, "restored", None)
    if reading.checkpoint is not None:
        reading.checkpoint_id = reading.checkpoint.checkpoint_id
    elif restored is not None:
        reading.checkpoint_id = restored.checkpoint_id
        reading.checkpoint_created_s = restored.created_ms / 1000.0
    return reading


# -------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Figures:
    """Everything one scrape shows, derived from a :class:`Reading` (and the previous one)."""

    at_s: float
    reading: Reading
    records: dict[str, float]  # actor -> records read so far
    rates: dict[str, float]  # actor -> records/s since the previous collection
    dead_letters: dict[tuple[str, str], float]  # (actor, reason) -> count
    checkpoint_age_s: float | None
    snapshot_age_s: dict[int, float]  # shard -> age of its publication at the last pull
    items: ItemSummary | None


def records_read(actor: str, stats: Mapping[str, Any]) -> float:
    """Kafka records an actor has read, from its counters (module docs)."""
    if actor.startswith("joiner"):
        return float(sum(int(stats.get(k, 0)) for k in ("impressions", "feedback",
                                                         "undecodable")))
    return float(stats.get("consumed", 0))


def dead_letters(actor: str, stats: Mapping[str, Any]) -> dict[str, float]:
    """Dead letters by reason, from an actor's counters (module docs)."""
    if actor.startswith("joiner"):
        out = {r: float(stats[r]) for r in sorted(JOIN_REASONS) if stats.get(r)}
        return {**out, "undecodable": float(stats.get("undecodable", 0))}
    if actor.startswith("lake"):
        out: Counter[str] = Counter({"undecodable": 0})
        out.update(stats.get("undecodable_reasons") or {})
        out.update(stats.get("rejected_reasons") or {})
        return {k: float(v) for k, v in out.items()}
    out = {"undecodable": float(stats.get("dead_lettered", 0))}
    refused = float((stats.get("counts") or {}).get(REFUSED_REWARD, 0))
    if refused:
        out[REFUSED_REWARD] = refused
    return out


def _stage(actor: str) -> str:
    return STAGES.get(actor.rsplit("-", 1)[0], actor.rsplit("-", 1)[0])


def _g(name: str, doc: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _c(name: str, doc: str, labels: Sequence[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


SUPERVISOR_STATES = ("running", "recovering", "kafka_unreachable")
"""``StreamPipeline.health()["state"]`` values (``recsys_stream_supervisor_state{state}``)."""


def supervision_text(health: Mapping[str, Any] | None) -> str:
    """The supervisor's part of a status line: empty while all is well and nothing happened;
    else its state (Kafka unreachable for N s of the budget, recovering) and what it did."""
    if not health:
        return ""
    parts = []
    if health["state"] == "kafka_unreachable":
        parts.append(f"KAFKA UNREACHABLE {health['kafka_outage_s']:.0f} s of "
                     f"{health['kafka_outage_budget_s']:.0f} s")
    elif health["state"] == "recovering":
        parts.append("RECOVERING")
    for key, label in (("failed_recoveries", "failed recoveries"),
                       ("deadline_kills", "deadline kills"), ("stuck_readers", "stuck readers")):
        if health.get(key):
            parts.append(f"{label} {health[key]}")
    return " · ".join(parts)


def families(f: Figures | None) -> list[Metric]:
    """The gauge and counter families of one collection (empty families before the first)."""
    lag = _g("recsys_stream_consumer_lag_records",
             "Records still to read per partition (end offset - position)",
             ["role", "actor", "topic", "partition"])
    records = _c("recsys_stream_records", "Kafka records read by each actor", ["stage", "actor"])
    rates = _g("recsys_stream_records_per_second",
               "Records read per second between the last two collections", ["stage", "actor"])
    dead = _c("recsys_stream_dead_letters", "Records sent to the dead-letter topic, by reason",
              ["actor", "reason"])
    age = _g("recsys_stream_snapshot_age_seconds",
             "Age of the snapshot readers get, at the last statistics pull", ["shard"])
    version = _g("recsys_stream_snapshot_version", "Version of the shard's statistics",
                 ["shard"])
    n_items = _g("recsys_stream_shard_items", "Items the shard holds", ["shard"])
    nbytes = _g("recsys_stream_shard_bytes", "Bytes of the shard's statistics arrays", ["shard"])
    merged = _c("recsys_stream_shard_deltas_applied", "Deltas merged by the shard", ["shard"])
    non_finite = _c("recsys_stream_shard_non_finite_deltas", "Deltas the shard refused whole "
                    "because they held NaN or infinity or would overflow its sums", ["shard"])
    ckpt_age = _g("recsys_stream_checkpoint_age_seconds", "Seconds since the newest checkpoint")
    ckpt_dur = _g("recsys_stream_checkpoint_duration_seconds",
                  "Duration of the last checkpoint by phase", ["phase"])
    recoveries = _c("recsys_stream_recoveries", "Recoveries (local or global) after actors "
                    "failed")
    state = _g("recsys_stream_supervisor_state", "1 for the supervisor's current state",
               ["state"])
    failed_recoveries = _c("recsys_stream_failed_recoveries",
                           "Recovery attempts that failed and were retried after a backoff")
    deadline_kills = _c("recsys_stream_deadline_kills",
                        "Actors killed and replaced for missing stream.actor_call_timeout_s")
    stuck = _c("recsys_stream_stuck_readers",
               "Readers replaced for standing still while records waited")
    outage = _g("recsys_stream_kafka_outage_seconds",
                "How long Kafka has been unreachable now (0 when reachable)")
    budget = _g("recsys_stream_kafka_outage_budget_seconds",
                "stream.kafka_outage_budget_s: the outage the pipeline rides through")
    exposures = _g("recsys_stream_item_exposures", "Exposure count of the top items", ["item"])
    rewards = _g("recsys_stream_item_rewards", "Reward sum of the top items", ["item"])
    expected = _g("recsys_stream_item_expected_reward",
                  "Exploration-free expected reward of the top items", ["item"])
    last = _g("recsys_stream_last_collection_timestamp_seconds",
              "Wall time of the collection these figures come from")
    merge_delay = HistogramMetricFamily(
        "recsys_stream_record_to_shard_seconds",
        "From a record's Kafka timestamp to the shard merging the delta it is in (the oldest "
        "record of each delta), all shards", labels=[])
    out = [lag, records, rates, dead, age, version, n_items, nbytes, merged, non_finite, ckpt_age,
           ckpt_dur,
           recoveries, exposures, rewards, expected, last, merge_delay, state,
           failed_recoveries, deadline_kills, stuck, outage, budget]
    if f is None:
        return out
    r = f.reading
    last.add_metric([], f.at_s)
    for actor, offsets in sorted(r.lag.items()):
        for (topic, partition), behind in sorted(offsets.items()):
            lag.add_metric([_stage(actor), actor, topic, str(partition)], behind)
    for actor, n in sorted(f.records.items()):
        records.add_metric([_stage(actor), actor], n)
    for actor, rate in sorted(f.rates.items()):
        rates.add_metric([_stage(actor), actor], rate)
    for (actor, reason), n in sorted(f.dead_letters.items()):
        dead.add_metric([actor, reason], n)
    for i, s in sorted(r.shards.items()):
        version.add_metric([str(i)], float(s["version"]))
        n_items.add_metric([str(i)], float(s["n_items"]))
        nbytes.add_metric([str(i)], float(s["nbytes"]))
        merged.add_metric([str(i)], float(s["deltas_applied"]))
        non_finite.add_metric([str(i)], float(s.get("non_finite_deltas", 0)))
    counts = [s.get("merge_delay_bucket_counts") for s in r.shards.values()]
    if counts and all(c is not None for c in counts):
        total = np.sum(np.asarray(counts, dtype=np.int64), axis=0)
        bounds = [*(str(b) for b in MERGE_DELAY_BUCKETS_S), "+Inf"]
        merge_delay.add_metric([], list(zip(bounds, np.cumsum(total).tolist(), strict=True)),
                               sum(s["merge_delay_sum_s"] for s in r.shards.values()))
    for i, seconds in sorted(f.snapshot_age_s.items()):
        age.add_metric([str(i)], seconds)
    if f.checkpoint_age_s is not None:
        ckpt_age.add_metric([], f.checkpoint_age_s)
    if r.checkpoint is not None:
        c = r.checkpoint
        for phase, s in (("drain", c.drain_s), ("snapshot", c.snapshot_s), ("write", c.write_s),
                         ("total", c.duration_s)):
            ckpt_dur.add_metric([phase], s)
    recoveries.add_metric([], r.recoveries)
    if r.health is not None:
        h = r.health
        for name in SUPERVISOR_STATES:
            state.add_metric([name], float(h["state"] == name))
        failed_recoveries.add_metric([], h["failed_recoveries"])
        deadline_kills.add_metric([], h["deadline_kills"])
        stuck.add_metric([], h["stuck_readers"])
        outage.add_metric([], h["kafka_outage_s"])
        budget.add_metric([], h["kafka_outage_budget_s"])
    if f.items is not None:
        it = f.items
        for j, item in enumerate(it.item_ids.tolist()):
            exposures.add_metric([str(item)], float(it.exposures[j]))
            if not np.isnan(it.rewards[j]):
                rewards.add_metric([str(item)], float(it.rewards[j]))
                expected.add_metric([str(item)], float(it.expected[j]))
    return out


class _Exporter:
    """The registry's view of the last figures (a scrape reads them; it calls no actor)."""

    def __init__(self, owner: PipelineMetrics) -> None:
        self._owner = owner

    def describe(self) -> Iterable[Metric]:
        return families(None)

    def collect(self) -> Iterable[Metric]:
        return families(self._owner.figures)


# -------------------------------------------------------------------------- the front


class PipelineMetrics:
    """Collects a pipeline's figures and exposes them in the Prometheus format (module docs).

    ``pipeline`` may be None to feed :meth:`update` with readings directly (tests).
    ``max_staleness_ms`` is the staleness bound passed to the shards' ``snapshot`` (default: the
    pipeline's ``snapshot_staleness_ms``, what a serving reader gets).
    """

    def __init__(
        self,
        pipeline: Any = None,
        *,
        top_n: int = 20,
        statistics_interval_s: float = 15.0,
        max_staleness_ms: float | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        if top_n < 0:
            raise ValueError(message("top_n", "an integer >= 0", top_n))
        self.pipeline = pipeline
        self.top_n = int(top_n)
        self.statistics_interval_s = float(statistics_interval_s)
        if max_staleness_ms is None:
            settings = getattr(pipeline, "settings", None)
            max_staleness_ms = float(getattr(settings, "snapshot_staleness_ms", 200))
        self.max_staleness_ms = float(max_staleness_ms)
        self.timeout_s = float(timeout_s)
        self.registry = CollectorRegistry()
        self.registry.register(_Exporter(self))
        self.freshness = Histogram(
            "recsys_stream_freshness_seconds",
            "Age of the oldest merged delta readers cannot see yet, per shard and pull "
            "(shard-side visibility delay only)", buckets=FRESHNESS_BUCKETS,
            registry=self.registry)
        self.scrape_errors = PromCounter(
            "recsys_stream_scrape_errors", "Actors or pulls that failed or timed out in a "
            "collection", ["source"], registry=self.registry)
        self.figures: Figures | None = None
        self._items: ItemSummary | None = None
        self._snapshot_age: dict[int, float] = {}
        self._pulled_at = -np.inf
        self._checkpoint: tuple[str, float] | None = None  # (id, wall time first known)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # -- collecting --------------------------------------------------------------------------

    def collect(self) -> Figures | None:
        """Read the pipeline once and update the figures; never raises (failures are counted
        in ``recsys_stream_scrape_errors_total``)."""
        if self.pipeline is None:
            raise ValueError("collect: this PipelineMetrics has no pipeline (use update)")
        now = time.monotonic()
        pull = now - self._pulled_at >= self.statistics_interval_s
        try:
            reading = read_pipeline(self.pipeline, statistics=pull,
                                    max_staleness_ms=self.max_staleness_ms,
                                    timeout_s=self.timeout_s)
        except Exception as exc:  # the pipeline object itself misbehaved: count, go on
            log.warning("metrics: reading the pipeline failed: %s", exc)
            self.scrape_errors.labels("pipeline").inc()
            return self.figures
        if reading.statistics is not None:
            self._pulled_at = now
        return self.update(reading)

    def update(self, reading: Reading) -> Figures:
        """Derive the figures of ``reading`` (rates against the previous one) and publish them."""
        previous = self.figures
        for source, n in reading.errors.items():
            self.scrape_errors.labels(source).inc(n)
        records = {a: records_read(a, s) for a, s in reading.readers.items()}
        rates: dict[str, float] = {}
        if previous is not None and reading.at_s > previous.at_s:
            dt = reading.at_s - previous.at_s
            for actor, n in records.items():
                before = previous.records.get(actor)
                if before is not None:
                    rates[actor] = (n - before if n >= before else n) / dt
        dead = {(a, reason): n for a, s in reading.readers.items()
                for reason, n in dead_letters(a, s).items()}
        if reading.publications is not None:
            self._snapshot_age = {i: max(0.0, reading.at_s - p.published_ms / 1000.0)
                                  for i, p in reading.publications.items()}
            for pub in reading.publications.values():
                self.freshness.observe(max(0.0, reading.at_s - pub.current_at_ms / 1000.0))
        if reading.statistics is not None:
            self._items = item_figures(reading.statistics, self.top_n)
        self.figures = Figures(reading.at_s, reading, records, rates, dead,
                               self._checkpoint_age(reading), self._snapshot_age, self._items)
        return self.figures

    def _checkpoint_age(self, reading: Reading) -> float | None:
        if reading.checkpoint_id is None:
            return None
        if self._checkpoint is None or self._checkpoint[0] != reading.checkpoint_id:
            created = reading.checkpoint_created_s
            self._checkpoint = (reading.checkpoint_id,
                                reading.at_s if created is None else created)
        return max(0.0, reading.at_s - self._checkpoint[1])

    # -- exposing ----------------------------------------------------------------------------

    def render(self) -> str:
        """The Prometheus text exposition of the last collection."""
        return generate_latest(self.registry).decode()

    def status_line(self) -> str:
        """One line for a terminal: total lag, learners' events/s, checkpoint age, errors."""
        f = self.figures
        if f is None:
            return "no collection yet"
        lag = sum(sum(o.values()) for o in f.reading.lag.values())
        rate = sum(v for a, v in f.rates.items() if a.startswith("learner"))
        parts = [f"lag {lag:,}", f"learners {rate:,.0f} ev/s"]
        if f.checkpoint_age_s is not None:
            parts.append(f"checkpoint {f.checkpoint_age_s:.0f} s ago")
        if f.reading.checkpoint is not None:
            parts[-1] += f" ({f.reading.checkpoint.duration_s:.2f} s)"
        errors = sum(f.reading.errors.values())
        parts += [f"recoveries {f.reading.recoveries}"] + ([f"errors {errors}"] if errors else [])
        supervision = supervision_text(f.reading.health)
        return " · ".join(parts + ([supervision] if supervision else []))

    def start(self, port: int = 9464, addr: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` over HTTP on ``addr:port`` (0: any free port); returns the port."""
        if self._server is not None:
            raise RuntimeError(f"metrics server already running on port {self.port}")
        self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        return self.port

    @property
    def port(self) -> int | None:
        return None if self._server is None else int(self._server.server_port)

    def stop(self) -> None:
        """Stop the HTTP server (no-op when not running)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._server, self._thread = None, None
