"""Prometheus exposition of the streaming pipeline: figures on synthetic readings checked against
hand computations, then a real pipeline on the real broker and Ray, scraped over loopback HTTP."""

from __future__ import annotations

import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from recsys.bandits import DenseStats, GraphStats, Publication
from streaming.coordinator import CheckpointReport
from streaming.metrics import PipelineMetrics, Reading, item_figures


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of an exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def series(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples(text).items() if n == name}


def _publication(shard: int, *, published_s: float, current_at_s: float) -> Publication:
    return Publication(ref=None, snapshot_id=f"s{shard}:1", version=1,
                       published_ms=int(published_s * 1000), current_at_ms=int(current_at_s * 1000),
                       shard_index=shard, n_shards=2)


def _centred(lam: float = 2.0) -> DenseStats:
    stats = DenseStats.empty(np.array([10, 11, 12, 13, 14]), 2, lam=lam, centred=True)
    items = np.array([12, 12, 12, 11, 11, 13, 13, 10])
    rewards = np.array([1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.5, 1.0])
    contexts = np.arange(16, dtype=np.float64).reshape(8, 2) / 10
    return stats.learn(contexts, items, rewards)


# ------------------------------------------------------------------------ per-item figures


def test_centred_expected_reward_is_the_reward_sum_over_count_plus_lambda() -> None:
    figs = item_figures([_centred(lam=2.0)], top_n=3)
    # exposures: 12 -> 3, 11 -> 2, 13 -> 2, 10 -> 1, 14 -> 0; ties (11, 13) by lower id
    assert figs.item_ids.tolist() == [12, 11, 13]
    assert figs.exposures.tolist() == [3.0, 2.0, 2.0]
    assert figs.rewards.tolist() == [2.0, 2.0, 0.5]
    np.testing.assert_allclose(figs.expected, [2 / (3 + 2), 2 / (2 + 2), 0.5 / (2 + 2)])


def test_top_n_breaks_ties_at_the_boundary_by_lower_item_id_across_shards() -> None:
    whole = _centred()
    shard_a, shard_b = whole.select([10, 13]), whole.select([11, 12, 14])
    figs = item_figures([shard_a, shard_b], top_n=2)
    assert figs.item_ids.tolist() == [12, 11]  # 11 and 13 tie on 2: 11 wins
    assert item_figures([shard_a, shard_b], top_n=0).item_ids.size == 0
    assert item_figures([shard_a, shard_b], top_n=50).item_ids.tolist() == [12, 11, 13, 10, 14]


def test_graph_figures_sum_the_item_edges() -> None:
    stats = GraphStats.empty([1, 2], 2, [0, 1, 0], [1, 1, 2], lam=1.0, weighting="linear")
    clusters = np.array([[0, 1], [0, 1], [0, -1]])
    weights = np.array([[0.5, 0.5], [0.25, 0.75], [1.0, 0.0]])
    stats.learn((clusters, weights), np.array([1, 1, 2]), np.array([1.0, 0.0, 1.0]))
    figs = item_figures([stats], top_n=5)
    # item 1: two events on two edges each -> 4 (event, edge) counts; Σw = 2, Σw·r = 1
    assert figs.item_ids.tolist() == [1, 2]
    assert figs.exposures.tolist() == [4.0, 1.0]
    np.testing.assert_allclose(figs.rewards, [1.0, 1.0])
    np.testing.assert_allclose(figs.expected, [1.0 / (2.0 + 1.0), 1.0 / (1.0 + 1.0)])


def test_uncentred_statistics_export_exposures_without_a_reward() -> None:
    stats = DenseStats.empty(np.array([1, 2]), 2, centred=False)
    stats.learn(np.ones((3, 2)), np.array([1, 1, 2]), np.array([1.0, 0.0, 1.0]))
    metrics = PipelineMetrics()
    metrics.update(Reading(at_s=100.0, statistics=[stats]))
    text = metrics.render()
    assert series(text, "recsys_stream_item_exposures") == {
        (("item", "1"),): 2.0, (("item", "2"),): 1.0}
    assert series(text, "recsys_stream_item_rewards") == {}
    assert series(text, "recsys_stream_item_expected_reward") == {}


def test_negative_top_n_is_refused() -> None:
    with pytest.raises(ValueError, match="top_n: expected an integer >= 0, got -1"):
        PipelineMetrics(top_n=-1)
    with pytest.raises(ValueError, match="has no pipeline"):
        PipelineMetrics().collect()


# ------------------------------------------------------------------------ rendering


def _reading(at_s: float, learned: int, *, checkpoint: str | None = "000003") -> Reading:
    report = None if checkpoint is None else CheckpointReport(checkpoint, {}, 0.5, 0.25, 0.125)
    return Reading(
        at_s=at_s,
        readers={
            "joiner-0": {"impressions": 40, "feedback": 30, "undecodable": 2,
                         "late feedback": 3, "item not in the slate": 1, "rewards": 90},
            "learner-0": {"consumed": learned, "events": learned, "dead_lettered": 1},
            "lake-0": {"consumed": 72, "undecodable_reasons": {"invalid msgpack": 2},
                       "rejected_reasons": {"float32 overflow": 4}},
        },
        lag={"learner-0": {("imps", 0): 5, ("fbs", 0): 0}, "joiner-0": {("imps", 0): 7}},
        shards={0: {"version": 12, "n_items": 3, "nbytes": 480, "deltas_applied": 9},
                1: {"version": 4, "n_items": 2, "nbytes": 320, "deltas_applied": 3}},
        publications={0: _publication(0, published_s=at_s - 1.5, current_at_s=at_s - 0.03),
                      1: _publication(1, published_s=at_s, current_at_s=at_s)},
        statistics=[_centred()],
        checkpoint=report, checkpoint_id=checkpoint, recoveries=1,
    )


def test_render_names_labels_and_values() -> None:
    metrics = PipelineMetrics(top_n=2)
    metrics.update(_reading(1000.0, learned=100))
    text = metrics.render()
    assert series(text, "recsys_stream_consumer_lag_records") == {
        (("actor", "joiner-0"), ("partition", "0"), ("role", "joiner"), ("topic", "imps")): 7,
        (("actor", "learner-0"), ("partition", "0"), ("role", "learner"), ("topic", "fbs")): 0,
        (("actor", "learner-0"), ("partition", "0"), ("role", "learner"), ("topic", "imps")): 5,
    }
    assert series(text, "recsys_stream_records_total") == {
        (("actor", "joiner-0"), ("stage", "joiner")): 72.0,
        (("actor", "lake-0"), ("stage", "lake_writer")): 72.0,
        (("actor", "learner-0"), ("stage", "learner")): 100.0,
    }
    assert series(text, "recsys_stream_records_per_second") == {}  # one collection: no rate
    assert series(text, "recsys_stream_dead_letters_total") == {
        (("actor", "joiner-0"), ("reason", "item not in the slate")): 1.0,
        (("actor", "joiner-0"), ("reason", "late feedback")): 3.0,
        (("actor", "joiner-0"), ("reason", "undecodable")): 2.0,
        (("actor", "lake-0"), ("reason", "float32 overflow")): 4.0,
        (("actor", "lake-0"), ("reason", "invalid msgpack")): 2.0,
        (("actor", "lake-0"), ("reason", "undecodable")): 0.0,
        (("actor", "learner-0"), ("reason", "undecodable")): 1.0,
    }
    assert series(text, "recsys_stream_snapshot_version") == {
        (("shard", "0"),): 12.0, (("shard", "1"),): 4.0}
    assert series(text, "recsys_stream_snapshot_age_seconds") == pytest.approx(
        {(("shard", "0"),): 1.5, (("shard", "1"),): 0.0})
    assert series(text, "recsys_stream_shard_bytes")[(("shard", "1"),)] == 320.0
    assert series(text, "recsys_stream_checkpoint_duration_seconds") == {
        (("phase", "drain"),): 0.5, (("phase", "snapshot"),): 0.25,
        (("phase", "write"),): 0.125, (("phase", "total"),): 0.875}
    assert series(text, "recsys_stream_checkpoint_age_seconds") == {(): 0.0}
    assert series(text, "recsys_stream_recoveries_total") == {(): 1.0}
    assert series(text, "recsys_stream_item_exposures") == {
        (("item", "12"),): 3.0, (("item", "11"),): 2.0}
    assert series(text, "recsys_stream_item_expected_reward") == pytest.approx(
        {(("item", "12"),): 2 / 5, (("item", "11"),): 2 / 4})
    # freshness: one observation per shard: 0.03 s and 0 s
    assert series(text, "recsys_stream_freshness_seconds_count") == {(): 2.0}
    assert series(text, "recsys_stream_freshness_seconds_sum")[()] == pytest.approx(0.03)
    assert series(text, "recsys_stream_freshness_seconds_bucket")[(("le", "0.025"),)] == 1.0
    assert series(text, "recsys_stream_freshness_seconds_bucket")[(("le", "0.05"),)] == 2.0


def test_rates_checkpoint_age_and_scrape_errors_across_collections() -> None:
    metrics = PipelineMetrics()
    metrics.update(_reading(1000.0, learned=100))
    second = _reading(1004.0, learned=300)
    second.errors["shard-1"] += 1
    metrics.update(second)
    text = metrics.render()
    rates = series(text, "recsys_stream_records_per_second")
    assert rates[(("actor", "learner-0"), ("stage", "learner"))] == 50.0  # 200 records in 4 s
    assert rates[(("actor", "joiner-0"), ("stage", "joiner"))] == 0.0
    assert series(text, "recsys_stream_checkpoint_age_seconds") == {(): 4.0}
    assert series(text, "recsys_stream_scrape_errors_total") == {(("source", "shard-1"),): 1.0}
    assert metrics.status_line() == (
        "lag 12 · learners 50 ev/s · checkpoint 4 s ago (0.88 s) · recoveries 1 · errors 1")
    # a rebuilt learner counts from zero: the rate restarts from its new counter
    metrics.update(_reading(1006.0, learned=20, checkpoint="000004"))
    text = metrics.render()
    assert series(text, "recsys_stream_records_per_second")[
        (("actor", "learner-0"), ("stage", "learner"))] == 10.0
    assert series(text, "recsys_stream_checkpoint_age_seconds") == {(): 0.0}
    assert series(text, "recsys_stream_scrape_errors_total") == {(("source", "shard-1"),): 1.0}


def test_a_reading_without_statistics_keeps_the_last_item_figures() -> None:
    metrics = PipelineMetrics(top_n=1)
    metrics.update(_reading(1000.0, learned=100))
    later = _reading(1001.0, learned=100)
    later.statistics, later.publications = None, None
    metrics.update(later)
    text = metrics.render()
    assert series(text, "recsys_stream_item_exposures") == {(("item", "12"),): 3.0}
    assert series(text, "recsys_stream_snapshot_age_seconds")[(("shard", "0"),)] == 1.5
    assert series(text, "recsys_stream_freshness_seconds_count") == {(): 2.0}  # not re-observed


def test_the_supervisors_state_and_counts_are_exposed_and_on_the_status_line() -> None:
    metrics = PipelineMetrics()
    reading = _reading(1000.0, learned=100)
    reading.health = {"state": "kafka_unreachable", "recoveries": 1, "failed_recoveries": 2,
                      "deadline_kills": 1, "stuck_readers": 3, "kafka_outage_s": 45.2,
                      "kafka_outage_budget_s": 600.0}
    metrics.update(reading)
    text = metrics.render()
    assert series(text, "recsys_stream_supervisor_state") == {
        (("state", "running"),): 0.0, (("state", "recovering"),): 0.0,
        (("state", "kafka_unreachable"),): 1.0}
    assert series(text, "recsys_stream_failed_recoveries_total") == {(): 2.0}
    assert series(text, "recsys_stream_deadline_kills_total") == {(): 1.0}
    assert series(text, "recsys_stream_stuck_readers_total") == {(): 3.0}
    assert series(text, "recsys_stream_kafka_outage_seconds") == {(): 45.2}
    assert series(text, "recsys_stream_kafka_outage_budget_seconds") == {(): 600.0}
    assert metrics.status_line().endswith(
        "recoveries 1 · KAFKA UNREACHABLE 45 s of 600 s · failed recoveries 2 · deadline kills 1"
        " · stuck readers 3")
    calm = _reading(1001.0, learned=100)
    calm.health = {**reading.health, "state": "running", "failed_recoveries": 0,
                   "deadline_kills": 0, "stuck_readers": 0, "kafka_outage_s": 0.0}
    metrics.update(calm)
    assert metrics.status_line().endswith("recoveries 1")


# ------------------------------------------------------------------------ the real pipeline


@pytest.mark.integration
def test_a_real_pipeline_is_exposed_and_scraped_over_loopback(
        kafka_bootstrap, unique_topics, ray_session, tmp_path) -> None:
    import ray

    from tests.streaming.event_log import generate_log, produce_log
    from tests.streaming.test_pipeline import _pipeline, _topics

    topics, names = _topics(unique_topics)
    log = generate_log(31, n_requests=300, partitions=2)
    produce_log(kafka_bootstrap, log, names)
    produced = sum(map(len, log.impressions.values())) + sum(map(len, log.feedback.values()))
    pipeline = _pipeline(kafka_bootstrap, topics, tmp_path)
    metrics = PipelineMetrics(pipeline, top_n=10, statistics_interval_s=0.0, max_staleness_ms=0)
    try:
        pipeline.start()
        pipeline.run_to_end()
        metrics.collect()
        text = metrics.render()

        lag = series(text, "recsys_stream_consumer_lag_records")
        assert len(lag) == 2 * 2 + 2 * 2  # joiner: 2 topics x 2 partitions; 2 learners: 2 x 1
        assert set(lag.values()) == {0.0}
        records = series(text, "recsys_stream_records_total")
        by_stage: dict[str, float] = {}
        for labels, n in records.items():
            stage = dict(labels)["stage"]
            by_stage[stage] = by_stage.get(stage, 0.0) + n
        assert by_stage == {"joiner": produced, "learner": produced}
        total = series(text, "recsys_stream_checkpoint_duration_seconds")[(("phase", "total"),)]
        assert total == pytest.approx(pipeline.coordinator.last.duration_s) and total > 0
        versions = [s["version"] for s in ray.get([s.counters.remote()
                                                    for s in pipeline.actors.shards])]
        assert series(text, "recsys_stream_snapshot_version") == {
            (("shard", str(i)),): float(v) for i, v in enumerate(versions)}
        # every learner delta carries its oldest record's timestamp: one observation per merge
        applied = sum(s["deltas_applied"] for s in ray.get([s.counters.remote()
                                                           for s in pipeline.actors.shards]))
        assert series(text, "recsys_stream_record_to_shard_seconds_count") == {(): applied}
        assert applied > 0

        stats = pipeline.statistics()
        rows = np.lexsort((stats.item_ids, -stats.count))[:10]
        exposures = series(text, "recsys_stream_item_exposures")
        assert exposures == {(("item", str(i)),): float(c)
                             for i, c in zip(stats.item_ids[rows], stats.count[rows], strict=True)}
        expected = series(text, "recsys_stream_item_expected_reward")
        assert expected == pytest.approx({
            (("item", str(i)),): s / (c + stats.lam)
            for i, s, c in zip(stats.item_ids[rows], stats.sr[rows], stats.count[rows],
                               strict=True)})

        port = metrics.start(0)
        for _ in range(2):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                assert reply.status == 200
                scraped = reply.read().decode()
        assert series(scraped, "recsys_stream_item_exposures") == exposures
        assert series(scraped, "recsys_stream_consumer_lag_records") == lag
        metrics.stop()
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)

        # an actor that does not answer is a scrape error, not an exception
        ray.kill(pipeline.actors.learners[0], no_restart=True)
        metrics.collect()
        errors = series(metrics.render(), "recsys_stream_scrape_errors_total")
        assert errors[(("source", "learner-0"),)] >= 1
        pipeline.recover()
        metrics.collect()
        assert series(metrics.render(), "recsys_stream_recoveries_total") == {(): 1.0}
    finally:
        metrics.stop()
        pipeline.stop(checkpoint=False)
