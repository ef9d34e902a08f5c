"""Liveness vs readiness, and where replicas listen (``recsys.serving.readiness``, the
``/health/*`` routes, ``serve.replica_host``).

The Kafka half of readiness is checked against a broker of its own that is stopped mid-test (the
session's broker is shared): a replica's service built on the live stack's shards and that
broker is ready, then not ready with the reason once the broker is gone, without its health
call waiting on the network. The counter rules (stalled deliveries, a full buffer, a checker
that stopped) are unit-checked on counters alone. The live stack listens on all interfaces
(``serve.host`` 0.0.0.0) while its replica's own port stays on loopback.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from recsys.serving.readiness import KafkaReadiness
from tests.serving.live import serving_stack

N_ITEMS, DIM = 20, 4


# ---------------------------------------------------------------------------- counters alone
def counters(acked: int = 0, pending: int = 0) -> SimpleNamespace:
    """What KafkaReadiness reads of an EventProducer before it asks the brokers (no client:
    asking them fails, which these tests never reach or expect)."""
    return SimpleNamespace(acked=acked, pending=pending, failed=0, _producer=None)


def test_queued_events_without_acknowledgement_mean_kafka_is_not_taking_writes() -> None:
    producer = counters(pending=3)
    readiness = KafkaReadiness(producer, ["imp"], max_buffered=100, stall_s=0.05)
    time.sleep(0.1)
    state = readiness.check()
    assert not state.writable and state.detail.startswith("3 events have waited")
    assert state.detail.endswith("with no acknowledgement from Kafka")
    producer.acked = 1  # one acknowledgement: progress, not stalled (then the brokers are asked)
    assert "no acknowledgement" not in readiness.check().detail


def test_a_full_buffer_is_not_ready() -> None:
    readiness = KafkaReadiness(counters(pending=5), ["imp"], max_buffered=5)
    state = readiness.check()
    assert not state.writable
    assert state.detail == "5 events are waiting for Kafka (serve.max_buffered_events is 5)"


def test_a_checker_that_stopped_makes_the_replica_unready() -> None:
    readiness = KafkaReadiness(counters(), ["imp"], max_buffered=5, interval_s=3600,
                               max_age_s=0.05).start()
    readiness.stop()
    time.sleep(0.1)
    state = readiness.state()
    assert not state.writable and state.detail.startswith("the Kafka check has not finished")


# ---------------------------------------------------------------------------- live
@pytest.fixture(scope="module")
def live(kafka_bootstrap, ray_session, tmp_path_factory):
    # the ingress on every interface, the replica's own port on loopback only
    with serving_stack(kafka_bootstrap, tmp_path_factory.mktemp("readiness"), "ready",
                       n_items=N_ITEMS, dim=DIM,
                       serve={"host": "0.0.0.0", "replica_host": "127.0.0.1"}) as (stack, _):
        yield stack, stack.service_config.serve.port


@pytest.mark.integration
def test_live_and_ready_when_serving(live) -> None:
    _, port = live
    url = f"http://127.0.0.1:{port}"
    alive = requests.get(f"{url}/health/live", timeout=30)
    assert alive.status_code == 200 and alive.json() == {"live": True}
    ready = requests.get(f"{url}/health/ready", timeout=30)
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["ready"] is True and body["detail"] == "serving" and body["snapshot_id"]
    assert body["kafka"]["writable"] is True, body["kafka"]
    health = requests.get(f"{url}/health", timeout=30)
    assert health.status_code == 200 and set(health.json()) == set(body)


def listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket process ``pid`` listens on (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # /proc prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((socket.inet_ntop(family, raw), int(port, 16)))
    return found


def refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.integration
def test_the_replica_port_listens_on_loopback_only(live) -> None:
    import ray
    from ray import serve
    from ray.serve._private.common import RequestProtocol

    from recsys.serving.server import APP_NAME

    _, port = live
    client = serve.context._get_global_client()
    # the replica's own HTTP port, as the controller hands it to HAProxy
    groups = ray.get(client._controller.get_target_groups.remote(APP_NAME, True))
    targets = [t for g in groups if g.protocol == RequestProtocol.HTTP for t in g.targets]
    assert len(targets) == 1, groups
    replica_port = targets[0].port
    details = client.get_serve_details()
    pids = [r["pid"] for d in details["applications"][APP_NAME]["deployments"].values()
            for r in d["replicas"]]
    assert len(pids) == 1, details
    bound = [host for host, p in listening(pids[0]) if p == replica_port]
    assert bound == ["127.0.0.1"], listening(pids[0])
    assert requests.get(f"http://127.0.0.1:{replica_port}/health/live", timeout=30).json() == {
        "live": True}
    node_ip = ray.util.get_node_ip_address()
    if ipaddress_is_loopback(node_ip):
        pytest.skip(f"this machine's only address is loopback ({node_ip}): the bound address "
                    "was checked, reachability from another interface cannot be")
    # the ingress answers on that interface (serve.host 0.0.0.0), so a refusal means something
    assert requests.get(f"http://{node_ip}:{port}/health/live", timeout=30).status_code == 200
    assert refused(node_ip, replica_port)


def ipaddress_is_loopback(host: str) -> bool:
    import ipaddress

    return ipaddress.ip_address(host).is_loopback


@pytest.fixture
def own_broker():
    """A broker of this test's own, to be stopped while a replica's service uses it."""
    from streaming.broker import EmbeddedKafka

    broker = EmbeddedKafka(startup_timeout_s=90)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.mark.integration
def test_ready_needs_kafka_to_accept_writes(live, own_broker) -> None:
    from recsys.serving.service import RecommenderService
    from streaming.topics import ensure_topics

    stack, _ = live
    config = dataclasses.replace(stack.service_config, bootstrap=own_broker.bootstrap,
                                 client_options={})
    ensure_topics(own_broker.bootstrap, {config.impressions_topic: 1, config.feedback_topic: 1})
    service = RecommenderService(config, start=False)
    try:
        service.wait_ready(30)
        state = service.kafka.check()
        assert state.writable and state.detail == "brokers answer", state
        health = service.health()
        assert health.ready and health.kafka is not None and health.kafka.writable

        watcher = KafkaReadiness(service.producer, [config.impressions_topic],
                                 config.serve.max_buffered_events, interval_s=0.1).start()
        try:
            own_broker.stop()
            state = service.kafka.check()  # what the background loop does every second
            assert not state.writable, state
            assert state.detail.startswith(("the brokers did not answer a metadata request",
                                            "the metadata request failed")), state
            health = service.health()
            assert not health.ready and health.snapshot_id is not None
            assert health.detail == f"Kafka does not accept writes: {state.detail}"
            assert health.kafka is not None and not health.kafka.writable
            # a started checker finds it without being asked
            deadline = time.monotonic() + 30
            while watcher.state().writable:
                assert time.monotonic() < deadline, "the background check never saw Kafka go"
                time.sleep(0.05)
        finally:
            watcher.stop()
    finally:
        service.close()
