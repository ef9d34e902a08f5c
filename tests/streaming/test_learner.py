"""Learners: the deltas of any interleaving of impressions and feedback add up to one
``learn(part="both")`` on the joined examples (known truth, and the joiner's own output), the state
restores mid-stream, and on the real broker and real Ray two learners and two shards reach the
truth."""

from __future__ import annotations

import io
import time
import zlib

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.bandits import GraphStats, SoftContexts, merge_parts, stats_from_arrays
from recsys.events import Context, Feedback, Impression, SlateEntry
from streaming.consumer import ConsumedEvent
from streaming.join import EventTimeJoiner, Reason
from streaming.learner import Learner, LearnerActor, LearnerCore
from streaming.shards import ParameterShard, dense_statistics, shard_parts
from tests.streaming.event_log import (
    LATENESS,
    MAPPING,
    WINDOW,
    Log,
    dense_contexts,
    generate_log,
    produce_log,
    truth_stats,
)
from tests.waiting import wait_until

IMPS, FBS = "imps", "fbs"
N_ITEMS = 52  # generate_log's items 0..49, and 51 for feedback on an item not in the slate
DIM = 3
N_SHARDS = 2
N_CLUSTERS = 6


# -- helpers -------------------------------------------------------------------------------


def streams(log: Log) -> dict[tuple[str, int], list[ConsumedEvent]]:
    """Each (topic, partition) of the log as the consumer would deliver it, with offsets."""
    out = {}
    for topic, by_partition in ((IMPS, log.impressions), (FBS, log.feedback)):
        for p, keyed in by_partition.items():
            out[(topic, p)] = [ConsumedEvent(e, topic, p, k, 0)
                               for k, (_, e) in enumerate(keyed)]
    return out


def interleaved(log: Log, seed: int, max_batch: int) -> list[list[ConsumedEvent]]:
    """Batches as polls return them: random chunks of random streams, each stream in order."""
    rng = np.random.default_rng(seed)
    queues = [list(q) for q in streams(log).values()]
    batches = []
    while any(queues):
        batch: list[ConsumedEvent] = []
        for _ in range(int(rng.integers(1, 4))):  # a poll may hold several partitions
            live = [q for q in queues if q]
            if not live:
                break
            queue = live[int(rng.integers(0, len(live)))]
            take = int(rng.integers(1, max_batch + 1))
            batch += queue[:take]
            del queue[:take]
        batches.append(batch)
    return batches


def shards_for(stats) -> list[ParameterShard]:
    return [ParameterShard(i, N_SHARDS, *part)
            for i, part in enumerate(shard_parts(stats, N_SHARDS))]


def learned(shards) -> object:
    return merge_parts([stats_from_arrays(*s.snapshot(max_staleness_ms=0)) for s in shards])


def feed(core: LearnerCore, shards, batches) -> None:
    for batch in batches:
        for s, deltas in enumerate(core.process(batch)):
            shards[s].apply(deltas)


def open_catalogue() -> tuple:
    return dense_statistics(np.zeros(0, dtype=np.int64), DIM).to_arrays()


def core(**kwargs) -> LearnerCore:
    kwargs.setdefault("template", open_catalogue())
    kwargs.setdefault("reward_mapping", MAPPING)
    return LearnerCore(kwargs.pop("template"), N_SHARDS, window_ms=WINDOW,
                       allowed_lateness_ms=LATENESS, **kwargs)


# -- the learner's logic, without Kafka ----------------------------------------------------


@pytest.mark.parametrize(("seed", "messy", "max_batch"),
                         [(0, False, 1), (1, False, 50), (2, True, 7), (3, True, 300)])
def test_fresh_deltas_add_up_to_learning_the_joined_examples(seed, messy, max_batch) -> None:
    log = generate_log(seed, n_requests=300, partitions=2, messy=messy)
    base = dense_statistics(np.arange(N_ITEMS), DIM)
    shards = shards_for(base)
    learner = core()
    feed(learner, shards, interleaved(log, seed, max_batch))
    truth = truth_stats(base, log, dense_contexts)
    assert learned(shards).allclose(truth, rtol=1e-9, atol=1e-12)
    # the same as learning what the joiner emits for these events
    joiner = EventTimeJoiner(WINDOW, LATENESS, MAPPING)
    for (_, p), events in streams(log).items():
        joiner.add([c.event for c in events], p)
    rewards = joiner.flush().rewards
    joined = base.copy().learn(dense_contexts(rewards), np.array([r.item_id for r in rewards]),
                               np.array([r.reward for r in rewards]))
    assert learned(shards).allclose(joined, rtol=1e-9, atol=1e-12)
    # rejected on arrival for the joiner's reasons, counted the joiner's way
    for reason in (Reason.UNMAPPED_TYPE, Reason.LATE_FEEDBACK, Reason.LATE_IMPRESSION,
                   Reason.NOT_IN_SLATE):
        assert learner.counts[reason] == joiner.counts[reason], reason
    if messy:
        assert learner.counts[Reason.NOT_IN_SLATE] > 0 and learner.counts[Reason.UNMAPPED_TYPE]
    if max_batch == 1:
        assert learner.counts["held_feedback"] > 0  # feedback did come before its impression


def joiner_rewards(log: Log) -> list:
    """What the joiner emits for the log (each stream whole, then a flush)."""
    joiner = EventTimeJoiner(WINDOW, LATENESS, MAPPING)
    for (_, p), events in streams(log).items():
        joiner.add([c.event for c in events], p)
    return joiner.flush().rewards


@settings(max_examples=30)
@given(seed=st.integers(0, 2**31), order=st.integers(0, 2**31), max_batch=st.integers(1, 60),
       sweep_every=st.integers(1, 8))
def test_any_interleaving_and_sweep_schedule_learns_what_the_joiner_emits(
        seed, order, max_batch, sweep_every) -> None:
    """Whatever the interleaving, batch cuts and the points where windows are closed, the
    learner's statistics equal learning the joiner's rewards (one join decides both)."""
    log = generate_log(seed, n_requests=120, partitions=2, messy=True, max_gap_ms=150)
    base = dense_statistics(np.arange(N_ITEMS), DIM)
    shards = shards_for(base)
    learner = core()
    for k, batch in enumerate(interleaved(log, order, max_batch)):
        feed(learner, shards, [batch])
        if k % sweep_every == 0:
            learner.sweep()
    rewards = joiner_rewards(log)
    joined = base.copy().learn(dense_contexts(rewards), np.array([r.item_id for r in rewards]),
                               np.array([r.reward for r in rewards]))
    assert learned(shards).allclose(joined, rtol=1e-9, atol=1e-12)


def _imp(rid: str, t: int, items=(10, 11, 12), user: str = "u1", dense=(1.0, -2.0, 0.5)):
    return Impression(
        request_id=rid, event_time_ms=t, user_id=user, context=Context(dense=dense),
        policy_name="ts", policy_version=1,
        slate=tuple(SlateEntry(item_id=i, position=k, score=0.0, propensity=0.5)
                    for k, i in enumerate(items)))


def _fb(rid: str, t: int, item: int, kind: str = "click", position: int | None = None,
        user: str = "u1"):
    return Feedback(request_id=rid, event_time_ms=t, user_id=user, item_id=item,
                    position=item - 10 if position is None else position, event_type=kind)


def _consumed(events, topic: str = IMPS, partition: int = 0):
    return [ConsumedEvent(e, topic, partition, k, 0) for k, e in enumerate(events)]


def test_each_edge_case_by_hand() -> None:
    base = dense_statistics(np.arange(100), DIM)
    shards = shards_for(base)
    learner = core()
    # feedback before its impression is held, then learned when the impression arrives
    feed(learner, shards, [_consumed([_fb("a", 1_100, 10)], FBS)])
    assert learner.held_feedback == 1 and learned(shards).sxr.sum() == 0
    feed(learner, shards, [_consumed([_imp("a", 1_000)])])
    assert learner.held_feedback == 0
    feed(learner, shards, [_consumed([
        _fb("a", 1_100, 10),                              # duplicate: nothing more
        _fb("a", 1_200, 11, "add_to_cart"),               # 0.5 ...
        _fb("a", 1_300, 11, "purchase"),                  # ... raised to 1 by the max
        _fb("a", 1_300, 11, "click"),                     # another 1: nothing more
        _fb("a", 1_400, 12, "skip"),                      # mapped to 0
        _fb("a", 1_500, 99),                              # not in the slate
        _fb("a", 1_500, 12, position=0),                  # shown, but at another position
        _fb("a", 1_500, 12, user="u2"),                   # another user
        _fb("a", 1_500, 12, "dwell"),                     # unmapped type
        _fb("a", 1_000 + WINDOW, 12, "click"),            # at the window's end: outside
        _fb("a", 1_600, 10, "purchase"),                  # below the feedback watermark: late
    ], FBS)])
    x = np.array([[1.0, -2.0, 0.5]] * 3)
    truth = base.copy().learn(x, np.array([10, 11, 12]), np.array([1.0, 1.0, 0.0]))
    assert learned(shards).allclose(truth)
    c = learner.counts
    assert (c[Reason.OUTSIDE_WINDOW], c[Reason.NOT_IN_SLATE], c[Reason.USER_MISMATCH],
            c[Reason.UNMAPPED_TYPE], c[Reason.LATE_FEEDBACK]) == (1, 2, 1, 1, 1)
    # an impression repeated while open teaches nothing; a late one neither
    feed(learner, shards, [_consumed([_imp("a", 1_000), _imp("b", 5_000),
                                      _imp("late", 5_000 - LATENESS - 1)])])
    c = learner.counts
    assert (c["duplicate_impressions"], c[Reason.LATE_IMPRESSION]) == (1, 1)
    truth.learn(x, np.array([10, 11, 12]), np.zeros(3))
    assert learned(shards).allclose(truth)


def test_windows_close_and_held_feedback_expires_with_the_watermarks() -> None:
    learner = core()
    shards = shards_for(dense_statistics(np.arange(100), DIM))
    feed(learner, shards, [_consumed([_imp("a", 1_000)]),
                           _consumed([_fb("orphan", 1_500, 10)], FBS)])
    assert (learner.open_requests, learner.held_feedback) == (1, 1)
    # the feedback watermark passes a's window end; the impression watermark passes the orphan
    far = 1_000 + WINDOW + LATENESS + 1
    feed(learner, shards, [_consumed([_imp("b", far)]),
                           _consumed([_fb("other", far, 10)], FBS)])
    learner.sweep()
    assert learner.open_requests == 1  # b
    assert learner.counts["closed_windows"] == 1
    assert learner.counts[Reason.NO_IMPRESSION] == 1
    assert learner.held_feedback == 1  # "other" may still see its impression


def test_an_impression_repeated_after_its_window_closed_is_not_learned_again() -> None:
    base = dense_statistics(np.arange(100), DIM)
    shards = shards_for(base)
    learner = core()
    imp = _imp("a", 1_000)
    feed(learner, shards, [_consumed([imp]),
                           _consumed([_fb("other", 1_000 + WINDOW + LATENESS, 10)], FBS)])
    learner.sweep()
    assert learner.open_requests == 0  # closed, but the impression watermark has not passed it
    feed(learner, shards, [_consumed([imp])])
    learner.sweep()
    feed(learner, shards, [_consumed([_imp("b", 1_000 + LATENESS + 1)])])
    learner.sweep()  # now a is forgotten, and a repeat of it is late
    feed(learner, shards, [_consumed([imp])])
    c = learner.counts
    assert (c["duplicate_impressions"], c[Reason.LATE_IMPRESSION]) == (1, 1)
    x = np.array([[1.0, -2.0, 0.5]] * 6)
    truth = base.copy().learn(x, np.array([10, 11, 12] * 2), np.zeros(6))
    assert learned(shards).allclose(truth)


def test_open_requests_are_bounded_and_the_overflow_counted() -> None:
    learner = core(max_open_requests=3)
    shards = shards_for(dense_statistics(np.arange(100), DIM))
    feed(learner, shards, [_consumed([_imp(f"r{k}", 1_000 + k) for k in range(5)])])
    learner.sweep()
    assert learner.open_requests == 3 and learner.counts["closed_over_capacity"] == 2


def test_bad_contexts_and_unknown_items_are_counted_and_skipped() -> None:
    catalogue = dense_statistics(np.arange(20), DIM)
    learner = core(template=catalogue.to_arrays())
    shards = shards_for(catalogue)
    feed(learner, shards, [_consumed([_imp("a", 1_000, dense=(1.0, 2.0)),
                                      _imp("b", 1_000, items=(10, 11, 55))])])
    assert learner.counts["bad_context"] == 1 and learner.counts["unknown_item"] == 1
    x = np.array([[1.0, -2.0, 0.5]] * 2)
    truth = catalogue.copy().learn(x, np.array([10, 11]), np.zeros(2))
    assert learned(shards).allclose(truth)
    with pytest.raises(ValueError, match=r"^reward_mapping: expected feedback types"):
        core(reward_mapping={"like": 1.0})
    with pytest.raises(ValueError, match=r"^mode: expected 'fresh' or 'window', got 'batch'"):
        core(mode="batch")


def _with_clusters(log: Log) -> Log:
    """The same log with graph contexts: two clusters per request, from its id."""
    def recluster(imp: Impression) -> Impression:
        h = zlib.crc32(imp.request_id.encode())
        context = Context(cluster_ids=(h % N_CLUSTERS, (h // 7) % N_CLUSTERS + N_CLUSTERS),
                          cluster_weights=(0.7, 0.3))
        return msgspec.structs.replace(imp, context=context)

    return Log({p: [(k, recluster(e)) for k, e in keyed] for p, keyed in log.impressions.items()},
               log.feedback, log.truth, log.bad)


def test_graph_statistics_learn_the_same_way() -> None:
    log = _with_clusters(generate_log(5, n_requests=250, partitions=2, messy=True))
    c, i = np.meshgrid(np.arange(2 * N_CLUSTERS), np.arange(N_ITEMS), indexing="ij")
    keep = (c.ravel() + i.ravel()) % 3 != 0  # not every (cluster, item) pair is an edge
    graph = GraphStats.empty(np.arange(N_ITEMS), 2 * N_CLUSTERS, c.ravel()[keep],
                             i.ravel()[keep], lam=0.5)
    shards = shards_for(graph)
    learner = core(template=graph.to_arrays())
    feed(learner, shards, interleaved(log, 5, 40))

    def soft(events):
        return SoftContexts.of(np.array([e.context.cluster_ids for e in events]),
                               np.array([e.context.cluster_weights for e in events]))

    truth = truth_stats(graph, log, soft)
    assert learned(shards).allclose(truth, rtol=1e-9, atol=1e-12)


def test_window_mode_learns_the_joined_examples() -> None:
    log = generate_log(6, n_requests=200, partitions=2, messy=True)
    rewards = joiner_rewards(log)
    base = dense_statistics(np.arange(N_ITEMS), DIM)
    shards = shards_for(base)
    learner = core(mode="window")
    feed(learner, shards, [_consumed(rewards[:100], "rewards"), _consumed(rewards[100:],
                                                                          "rewards")])
    assert learned(shards).allclose(truth_stats(base, log, dense_contexts), rtol=1e-9)
    feed(learner, shards, [_consumed([_imp("x", 1)])])  # not a joined example: counted
    assert learner.counts["unexpected_event_type"] == 1


@pytest.mark.parametrize("cut", [0.2, 0.5, 0.8])
def test_state_restored_mid_stream_continues_as_if_undisturbed(cut: float) -> None:
    log = generate_log(7, n_requests=300, partitions=2, messy=True)
    batches = interleaved(log, 7, 30)
    at = int(len(batches) * cut)
    base = dense_statistics(np.arange(N_ITEMS), DIM)
    undisturbed = shards_for(base)
    feed(core(), undisturbed, batches)

    shards = shards_for(base)
    first = core()
    feed(first, shards, batches[:at])
    buffer = io.BytesIO()
    np.savez(buffer, **first.state_arrays())  # what a checkpoint stores: plain arrays
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as saved:
        state = dict(saved)
    second = core()
    second.load_state(state)
    assert (second.open_requests, second.held_feedback) == (first.open_requests,
                                                            first.held_feedback)
    feed(second, shards, batches[at:])
    assert learned(shards).allclose(learned(undisturbed), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="saved with"):
        core(mode="window").load_state(state)
    with pytest.raises(ValueError, match="learner state: format"):
        core().load_state({"format": np.array("something else")})


# -- on the real broker and real Ray --------------------------------------------------------


def _kafka_log(unique_topics, kafka_bootstrap, seed: int):
    topics = unique_topics({"imps": 2, "fbs": 2})
    log = generate_log(seed, n_requests=400, partitions=2, messy=True)
    produce_log(kafka_bootstrap, log, topics)
    halves = [[(topics["imps"], p), (topics["fbs"], p)] for p in (0, 1)]
    return topics, log, halves


def _options(topics) -> dict:
    from recsys.events import Feedback as F
    from recsys.events import Impression as I

    return {"template": open_catalogue(), "window_ms": WINDOW,
            "allowed_lateness_ms": LATENESS, "reward_mapping": MAPPING,
            "expected_types": {topics["imps"]: I, topics["fbs"]: F}}


@pytest.mark.integration
def test_two_learner_actors_and_two_shard_actors_reach_the_truth(
        kafka_bootstrap, unique_topics, ray_session) -> None:
    ray = ray_session
    from streaming.shards import start_shards

    topics, log, halves = _kafka_log(unique_topics, kafka_bootstrap, seed=8)
    base = dense_statistics(np.arange(N_ITEMS), DIM)
    shards = start_shards(base, N_SHARDS)
    learners = [LearnerActor.remote(kafka_bootstrap, half, shards, **_options(topics))
                for half in halves]
    try:
        targets = ray.get([lr.end_offsets.remote() for lr in learners])
        assert sum(sum(t.values()) for t in targets) == log.n_events
        pending = list(range(len(learners)))
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            progress = ray.get([learners[i].drain.remote(targets[i]) for i in pending])
            pending = [i for i, step in zip(pending, progress, strict=True) if not step.done]
        assert not pending, "the learners did not reach the end offsets within 60 s"
        ray.get([lr.flush.remote() for lr in learners])
        snapshots = ray.get([s.snapshot.remote(0) for s in shards])
        assert merge_parts([stats_from_arrays(*s) for s in snapshots]).allclose(
            truth_stats(base, log, dense_contexts), rtol=1e-9, atol=1e-12)
        stats = ray.get([lr.counters.remote() for lr in learners])
        assert sum(s["events"] for s in stats) == log.n_events
        assert all(s["dead_lettered"] == 0 for s in stats)
        positions = ray.get([lr.positions.remote() for lr in learners])
        assert positions == targets
    finally:
        for actor in [*learners, *shards]:
            ray.kill(actor)


@pytest.mark.integration
@pytest.mark.parametrize("transactional", [False, True])
def test_a_learner_rebuilt_from_a_mid_stream_checkpoint_finishes_like_an_undisturbed_one(
        kafka_bootstrap, unique_topics, transactional) -> None:
    topics, log, halves = _kafka_log(unique_topics, kafka_bootstrap, seed=9)
    tid = {"transactional_id": f"test.{topics['imps']}.learner-0"} if transactional else {}
    assignment = [tp for half in halves for tp in half]
    base = dense_statistics(np.arange(N_ITEMS), DIM)

    undisturbed = shards_for(base)
    learner = Learner(kafka_bootstrap, assignment, undisturbed, **_options(topics))
    end = learner.end_offsets()
    wait_until(lambda: learner.drain(end).done, timeout_s=120, what="the learner to drain")
    learner.close()

    shards = shards_for(base)
    first = Learner(kafka_bootstrap, assignment, shards, **_options(topics), **tid)
    middle = {tp: offset // 2 for tp, offset in end.items()}
    wait_until(lambda: first.drain(middle, max_records=37).done, timeout_s=120,
               what="the first learner to reach the middle offsets")
    offsets = first.pause()
    assert offsets == middle
    state = first.state_arrays()
    checkpoints = [s.checkpoint() for s in shards]
    saved = [({k: v.copy() for k, v in a.items()}, m) for a, m in checkpoints]
    first.close()

    restored = shards_for(base)
    for shard, (arrays, meta) in zip(restored, saved, strict=True):
        shard.restore(arrays, meta)
    second = Learner(kafka_bootstrap, assignment, restored, **_options(topics), **tid)
    second.restore(offsets, state)
    wait_until(lambda: second.drain(end).done, timeout_s=120,
               what="the restored learner to drain")
    second.close()
    assert learned(restored).allclose(learned(undisturbed), rtol=1e-9, atol=1e-12)
    assert learned(restored).allclose(truth_stats(base, log, dense_contexts), rtol=1e-9)
