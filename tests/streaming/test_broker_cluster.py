"""The multi-broker KRaft cluster of ``streaming.broker_cluster``: its nodes' configuration (fast,
no JVM), and on three real JVMs that a replicated topic keeps every acknowledged record, once and
in order, through the SIGKILL of its leader broker and the broker's return."""

from __future__ import annotations

import time

import pytest

from streaming.broker_cluster import KafkaBrokerCluster


def _properties(path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line)


def test_every_node_is_a_voter_with_replicated_defaults(tmp_path) -> None:
    cluster = KafkaBrokerCluster(3, data_dir=tmp_path)
    props = {}
    for node_id, node in cluster.nodes.items():
        node.data_dir.mkdir(parents=True)
        path, _ = node._write_config()
        props[node_id] = _properties(path)
    voters = {p["controller.quorum.voters"] for p in props.values()}
    assert len(voters) == 1  # one quorum, known to all
    assert sorted(v.split("@")[0] for v in voters.pop().split(",")) == ["1", "2", "3"]
    for node_id, p in props.items():
        assert p["node.id"] == str(node_id)
        assert p["process.roles"] == "broker,controller"
        assert p["default.replication.factor"] == "3"
        assert p["min.insync.replicas"] == "2"
        assert p["offsets.topic.replication.factor"] == "3"
        assert p["transaction.state.log.replication.factor"] == "3"
        assert p["transaction.state.log.min.isr"] == "2"
        assert p["message.max.bytes"] == "8388608"  # the embedded broker's other settings stay
    ports = [int(p) for node in cluster.nodes.values()
             for p in (node.port, node.controller_port)]
    assert len(set(ports)) == 6
    assert cluster.bootstrap == ",".join(f"127.0.0.1:{n.port}" for n in cluster.nodes.values())


@pytest.mark.parametrize(("size", "rf", "isr"), [(0, None, None), (2, 3, None), (3, 3, 4)])
def test_impossible_replication_is_refused(size, rf, isr) -> None:
    with pytest.raises(ValueError, match=r"size|min_insync_replicas"):
        KafkaBrokerCluster(size, replication_factor=rf, min_insync_replicas=isr)


@pytest.mark.faults
@pytest.mark.integration
def test_a_replicated_topic_keeps_every_record_through_its_leaders_death() -> None:
    from kafka import KafkaConsumer, TopicPartition

    from recsys.producer import EventProducer
    from streaming.topics import ensure_topics

    with KafkaBrokerCluster(3) as cluster:
        assert cluster.brokers() == {1, 2, 3}
        ensure_topics(cluster.bootstrap, {"survivor": 2}, replication_factor=3)
        before = cluster.partitions("survivor")
        assert all(sorted(p["replicas"]) == [1, 2, 3] == sorted(p["isr"])
                   for p in before.values()), before
        leader = cluster.leader_of("survivor", 0)

        producer = EventProducer(cluster.bootstrap)  # idempotent, acks=all
        sent = {0: [], 1: []}

        def send(n: int) -> None:
            for _ in range(n):
                i = len(sent[0]) + len(sent[1])
                value = f"record-{i}".encode()
                producer.send_raw("survivor", None, value, partition=i % 2)
                sent[i % 2].append(value)

        try:
            send(2_000)
            producer.flush()
            cluster.kill(leader)
            send(2_000)  # to a partition whose leader is gone: retried until a new one leads
            producer.flush()
        finally:
            producer.close()
        assert cluster.running() == sorted(set(cluster.nodes) - {leader})
        assert cluster.leader_of("survivor", 0) not in (leader, -1)
        assert leader not in cluster.partitions("survivor")[0]["isr"]

        consumer = KafkaConsumer(bootstrap_servers=cluster.bootstrap,
                                 isolation_level="read_committed", enable_auto_commit=False)
        try:
            tps = [TopicPartition("survivor", p) for p in (0, 1)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            read = {0: [], 1: []}
            deadline = time.monotonic() + 60
            while sum(map(len, read.values())) < 4_000 and time.monotonic() < deadline:
                for tp, records in consumer.poll(timeout_ms=500).items():
                    read[tp.partition] += [r.value for r in records]
        finally:
            consumer.close()
        assert read == sent  # every acknowledged record, once, in its partition's order

        cluster.restart(leader)
        assert cluster.brokers() == {1, 2, 3}
        cluster.wait_in_sync(["survivor"], timeout_s=60)
        assert leader in cluster.partitions("survivor")[0]["isr"]
