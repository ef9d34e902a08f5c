"""Admission control: shed load with 503 + Retry-After, keep /metrics and /health answering, never
log a slate that was shed or whose client left (``recsys.serving.admission``).

The :class:`Gate` itself is checked in-process (its order and its budgets, with tickets dated in
the past, so nothing depends on the machine's speed); then one live stack (real Kafka, real Ray
Serve behind HAProxy, the streaming pipeline) with a tiny budget takes a concurrent burst while
its scoring thread is held by a 10,000-event feedback batch, and a client that hangs up while
its request waits. No latency is asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import requests

from recsys.bandits import DiagLinUCB, EpsilonGreedy, policy_spec
from recsys.config import ServeSettings
from recsys.events import Impression, decode
from recsys.serving.admission import Gate, Shed, Ticket
from recsys.serving.metrics import ServingMetrics
from tests.serving.live import serving_stack

N_ITEMS, DIM = 200, 8
RETRY_AFTER_S = 2


def shed_count(metrics: ServingMetrics, reason: str) -> float:
    return metrics.shed.labels(reason)._value.get()


def gate(max_queued: int = 4, max_delay_ms: int = 10_000) -> Gate:
    return Gate(ServeSettings(max_queued_requests=max_queued, max_queue_delay_ms=max_delay_ms,
                              retry_after_s=RETRY_AFTER_S), ServingMetrics())


async def hold(g: Gate) -> tuple[threading.Event, asyncio.Task]:
    """Occupy the scoring thread until the returned event is set."""
    started, release = threading.Event(), threading.Event()

    def block() -> str:
        started.set()
        release.wait(10)
        return "held"

    task = asyncio.create_task(g.run(None, block))
    while not started.is_set():
        await asyncio.sleep(0.001)
    return release, task


def test_requests_that_would_wait_past_the_budget_are_shed_at_the_door() -> None:
    g = gate(max_queued=100, max_delay_ms=200)
    try:
        assert asyncio.run(g.run(g.enter(), lambda: time.sleep(0.03) or 1)) == 1
        fit = int(0.2 // g.work_s) + 1  # n waiting are admitted while n × work ≤ 200 ms
        assert g.work_s >= 0.03 and fit >= 1
        admitted = [g.enter() for _ in range(fit)]
        with pytest.raises(Shed) as shed:
            g.enter()
        assert shed.value.reason == "expected_delay" and "max_queue_delay_ms = 200" in str(
            shed.value)
        assert shed_count(g.metrics, "expected_delay") == 1 and g.waiting == fit
        for ticket in admitted:
            g.leave(ticket)
        assert g.enter() is not None  # room again once they are gone
    finally:
        g.close()


def test_a_late_event_loop_is_measured_and_sheds_new_requests_at_the_door() -> None:
    g = gate(max_queued=100, max_delay_ms=50)

    async def block_the_loop() -> float:
        g.loop_lag.watch()
        await asyncio.sleep(0.02)
        time.sleep(0.08)  # what a starved process looks like from its event loop
        await asyncio.sleep(0.01)
        return g.loop_lag.lag_s

    try:
        assert g.enter() is not None  # on time: admitted
        assert asyncio.run(block_the_loop()) >= 0.05
        with pytest.raises(Shed) as shed:
            g.enter()
        assert shed.value.reason == "loop_lag" and "max_queue_delay_ms = 50" in str(shed.value)
        assert shed_count(g.metrics, "loop_lag") == 1
        g.loop_lag.lag_s = 0.0  # caught up: admitted again
        assert g.enter() is not None
    finally:
        g.close()


def test_a_full_queue_sheds_at_admission_and_frees_places_as_requests_end() -> None:
    g = gate(max_queued=2)
    try:
        a, b = g.enter(), g.enter()
        with pytest.raises(Shed) as shed:
            g.enter()
        assert shed.value.reason == "queue_full" and "serve.max_queued_requests = 2" in str(
            shed.value)
        assert shed.value.headers() == {"Retry-After": str(RETRY_AFTER_S)}
        assert shed_count(g.metrics, "queue_full") == 1 and g.waiting == 2
        g.leave(a)
        g.leave(a)  # idempotent: a request ends once
        assert g.waiting == 1
        assert asyncio.run(g.run(b, lambda: 7)) == 7  # starting gives the place back
        assert g.waiting == 0
        g.leave(b)
        assert g.waiting == 0
        waits = {s.name: s.value for s in g.metrics.queue_delay.collect()[0].samples}
        assert waits["recsys_serve_queue_seconds_count"] == 1  # one wait observed
    finally:
        g.close()


def test_a_request_over_its_wait_budget_is_shed_unscored_unless_it_is_the_last() -> None:
    async def scenario(g: Gate) -> tuple[list[str], list[object]]:
        scored: list[str] = []
        release, held = await hold(g)
        stale, fresh = g.enter(), g.enter()
        stale.arrived -= 1.0  # it has waited a second already
        runs = [asyncio.create_task(g.run(t, lambda name=name: scored.append(name)))
                for t, name in ((stale, "stale"), (fresh, "fresh"))]
        await asyncio.sleep(0.02)
        release.set()
        await held
        return scored, await asyncio.gather(*runs, return_exceptions=True)

    g = gate(max_delay_ms=100)
    try:
        scored, (stale, fresh) = asyncio.run(scenario(g))
        assert fresh is None  # served: list.append returns None
        assert isinstance(stale, Shed) and stale.reason == "queue_delay"
        assert "max_queue_delay_ms = 100" in str(stale)
        assert scored == ["fresh"] and g.waiting == 0
        assert shed_count(g.metrics, "queue_delay") == 1
        alone = g.enter()  # the last one waiting is served, however long it waited
        alone.arrived -= 1.0
        asyncio.run(g.run(alone, lambda: scored.append("alone")))
        assert scored == ["fresh", "alone"] and shed_count(g.metrics, "queue_delay") == 1
    finally:
        g.close()


def test_first_come_first_served_until_behind_then_newest_first() -> None:
    """Fresh requests run in arrival order; once the oldest has waited over half the budget,
    the newest runs first (the stale ones are the ones that get shed)."""
    async def scenario(g: Gate, ages_s: list[float]) -> list[int]:
        order: list[int] = []
        release, held = await hold(g)
        tickets = [g.enter() for _ in ages_s]
        for ticket, age in zip(tickets, ages_s, strict=True):
            ticket.arrived -= age
        runs = [asyncio.create_task(g.run(t, lambda i=i: order.append(i)))
                for i, t in enumerate(tickets)]
        await asyncio.sleep(0.05)  # all queued behind the held job
        release.set()
        await asyncio.gather(held, *runs)
        return order

    g = gate(max_delay_ms=10_000)
    try:
        assert asyncio.run(scenario(g, [0.0, 0.0, 0.0])) == [0, 1, 2]
        # the oldest waited 6 s of a 10 s budget: newest first, then the rest, newest first,
        # while the oldest is still over half the budget
        assert asyncio.run(scenario(g, [6.0, 0.0, 0.0])) == [2, 1, 0]
    finally:
        g.close()


def test_a_request_whose_client_left_is_never_scored() -> None:
    async def scenario(g: Gate) -> list[int]:
        scored: list[int] = []
        release, held = await hold(g)
        ticket = g.enter()
        waiting = asyncio.create_task(g.run(ticket, lambda: scored.append(1)))
        await asyncio.sleep(0.02)
        waiting.cancel()  # what Ray Serve does when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert ticket.gone and not ticket.wanted()
        release.set()
        await held
        g.leave(ticket)
        return scored

    g = gate()
    try:
        assert asyncio.run(scenario(g)) == []
        deadline = time.monotonic() + 5
        while shed_count(g.metrics, "client_gone") < 1 and time.monotonic() < deadline:
            time.sleep(0.01)  # the scoring thread counts it when the job reaches the front
        assert shed_count(g.metrics, "client_gone") == 1 and g.waiting == 0
    finally:
        g.close()


def test_a_ticket_knows_its_client_is_gone() -> None:
    ticket = Ticket()
    assert ticket.wanted()
    ticket.gone = True
    assert not ticket.wanted()


# ---------------------------------------------------------------------------- the live stack
@pytest.fixture(scope="module")
def live(kafka_bootstrap, ray_session, tmp_path_factory):
    policies = {"ucb": policy_spec(DiagLinUCB(alpha=0.5, epsilon=0.1, centred=True)),
                "uniform": policy_spec(EpsilonGreedy(epsilon=1.0, centred=True))}
    with serving_stack(kafka_bootstrap, tmp_path_factory.mktemp("overload"), "overload",
                       n_items=N_ITEMS, dim=DIM, policies=policies,
                       stream={"batch_size": 2000, "window_ms": 1000, "allowed_lateness_ms": 0},
                       serve={"max_queued_requests": 2, "max_queue_delay_ms": 30_000,
                              "retry_after_s": RETRY_AFTER_S},
                       # scoring_held's hold is a 10,000-event feedback batch, whose cost is
                       # mostly the client's sends: librdkafka's are quick enough that the batch
                       # could end before a hung-up client's request arrives
                       client_options={"client": "kafka-python"}) as (stack, topics):
        yield stack, topics


def metric(url: str, name: str) -> float:
    """One sample of the replica's /metrics (0 when absent)."""
    for line in requests.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def recommend_body(request_id: str) -> dict:
    return {"user_id": "u1", "request_id": request_id, "k": 3,
            "context": {"dense": [0.1] * DIM}}


@contextlib.contextmanager
def scoring_held(stack) -> Iterator[None]:
    """Hold the replica's scoring thread with a 10,000-event feedback batch; yields once the
    batch has started on that thread (its wait was recorded)."""
    key = "recsys_serve_queue_seconds_count"
    before = metric(stack.url, key)
    batch = [{"request_id": uuid.uuid4().hex, "user_id": "u1", "item_id": 1, "position": 0}
             for _ in range(10_000)]
    with ThreadPoolExecutor(1) as pool:
        posted = pool.submit(requests.post, f"{stack.url}/feedback", json=batch, timeout=120)
        deadline = time.monotonic() + 60
        while metric(stack.url, key) == before:
            assert time.monotonic() < deadline and not posted.done(), (
                posted.result().text if posted.done() else "the batch never started")
            time.sleep(0.005)
        yield
        assert posted.result().status_code == 202, posted.result().text


def impressions(bootstrap: str, topic: str, until: str, timeout_s: float = 30.0) -> set[str]:
    """Request ids of every impression on ``topic`` once ``until`` was read (the last one a
    test sent: anything the replica logged before it is in by then), plus one more second."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    seen: set[str] = set()
    deadline, extra = time.monotonic() + timeout_s, None
    try:
        while time.monotonic() < deadline and (extra is None or time.monotonic() < extra):
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    event = decode(record.value)
                    assert isinstance(event, Impression)
                    seen.add(event.request_id)
            if until in seen and extra is None:
                extra = time.monotonic() + 1.0
    finally:
        consumer.close()
    assert until in seen, f"{until} never reached Kafka"
    return seen


def answered_now(stack) -> str:
    """One more slate, answered 200: the marker read last from Kafka."""
    rid = f"marker-{uuid.uuid4().hex}"
    response = requests.post(f"{stack.url}/recommend", json=recommend_body(rid), timeout=60)
    assert response.status_code == 200, response.text
    return rid


@pytest.mark.integration
def test_a_burst_is_shed_with_retry_after_and_only_served_slates_are_logged(live) -> None:
    stack, topics = live
    ids = [f"burst-{i}-{uuid.uuid4().hex}" for i in range(40)]
    side: dict[str, list[int]] = {"metrics": [], "health": []}
    with scoring_held(stack), ThreadPoolExecutor(len(ids)) as pool:
        answers = list(pool.map(
            lambda rid: requests.post(f"{stack.url}/recommend", json=recommend_body(rid),
                                      timeout=60), ids))
        for _ in range(3):  # while the burst's admitted requests wait behind the batch
            side["metrics"].append(requests.get(f"{stack.url}/metrics", timeout=30).status_code)
            side["health"].append(requests.get(f"{stack.url}/health", timeout=30).status_code)
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 503}, [(a.status_code, a.text[:200]) for a in answers]
    assert 503 in statuses and 200 in statuses, statuses
    for answer in answers:
        if answer.status_code == 503:
            assert answer.headers["Retry-After"] == str(RETRY_AFTER_S)
            assert "overloaded" in answer.json()["detail"]
    assert side == {"metrics": [200] * 3, "health": [200] * 3}
    shed_at_the_door = sum(metric(stack.url, f'recsys_serve_shed_total{{reason="{reason}"}}')
                           for reason in ("queue_full", "expected_delay"))
    assert shed_at_the_door >= statuses.count(503)
    logged = impressions(stack.pipeline.bootstrap, topics.impressions, answered_now(stack))
    served = {rid for rid, a in zip(ids, answers, strict=True) if a.status_code == 200}
    assert logged & set(ids) == served  # no shed request was logged; every served one was


def hang_up_after(url: str, body: dict, seconds: float) -> None:
    """Send ``POST /recommend`` over a raw socket, then close it after ``seconds`` unanswered."""
    parts = urlsplit(url)
    data = json.dumps(body).encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        sock.settimeout(seconds)
        with pytest.raises(TimeoutError):  # still waiting behind the batch: no answer yet
            sock.recv(1)


@pytest.mark.integration
def test_a_client_that_hung_up_while_waiting_is_not_logged(live) -> None:
    stack, topics = live
    key = 'recsys_serve_shed_total{reason="client_gone"}'
    before = metric(stack.url, key)
    rid = f"gone-{uuid.uuid4().hex}"
    with scoring_held(stack):  # the client hangs up while its request waits for the thread
        hang_up_after(stack.url, recommend_body(rid), 0.3)
    logged = impressions(stack.pipeline.bootstrap, topics.impressions, answered_now(stack))
    assert rid not in logged
    assert metric(stack.url, key) >= before + 1
