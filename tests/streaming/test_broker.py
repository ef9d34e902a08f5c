"""The embedded broker's lifecycle: no JVM and no open port is ever left behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recsys.config import load_settings
from streaming.broker import BrokerError, EmbeddedKafka, metadata_available, port_open
from streaming.services import kafka_cluster

pytestmark = pytest.mark.integration


def recsys(*args: str, data_dir: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "RECSYS_KAFKA_BOOTSTRAP"}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "recsys.cli", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    )


def pid_gone(pid: int, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def port_closed(port: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not port_open(port):
            return True
        time.sleep(0.1)
    return False


def test_cli_start_status_stop_leaves_no_process_and_no_port(tmp_path: Path) -> None:
    started = recsys("broker", "start", data_dir=tmp_path)
    assert started.returncode == 0, started.stdout + started.stderr
    state = json.loads((tmp_path / "kafka" / "broker.json").read_text())
    assert metadata_available(state["bootstrap"])

    again = recsys("broker", "start", data_dir=tmp_path)
    assert again.returncode == 0 and "already running" in again.stdout

    status = recsys("broker", "status", data_dir=tmp_path)
    assert status.returncode == 0 and "serving metadata" in status.stdout

    settings = load_settings(environ={}, cli={"data_dir": str(tmp_path)})
    with kafka_cluster(settings) as cluster:  # other commands use the running broker
        assert (cluster.origin, cluster.bootstrap) == ("detached broker", state["bootstrap"])

    stopped = recsys("broker", "stop", data_dir=tmp_path)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert pid_gone(state["pid"], timeout_s=1), "the JVM must be gone when stop returns"
    assert not port_open(state["port"]) and not port_open(state["controller_port"])
    assert not (tmp_path / "kafka" / "broker.json").exists()

    after = recsys("broker", "status", data_dir=tmp_path)
    assert after.returncode == 3 and "not running" in after.stdout


def test_configured_cluster_is_used_and_nothing_is_started(tmp_path, kafka_bootstrap) -> None:
    result = recsys(
        "broker", "start", data_dir=tmp_path, env={"RECSYS_KAFKA_BOOTSTRAP": kafka_bootstrap}
    )
    assert result.returncode == 0
    assert "nothing to start" in result.stdout and "reachable" in result.stdout
    assert not (tmp_path / "kafka").exists()


OWNER = """
import sys, time
from recsys.cli import exit_cleanly_on_sigterm
from streaming.broker import EmbeddedKafka
exit_cleanly_on_sigterm()
broker = EmbeddedKafka().start()
print(broker.pid, broker.port, broker.data_dir, flush=True)
time.sleep(600)
"""


SIGNALS = {"crash": signal.SIGKILL, "ctrl-c": signal.SIGINT, "sigterm": signal.SIGTERM}


@pytest.mark.parametrize("how", list(SIGNALS))
def test_jvm_dies_with_its_owner(how: str) -> None:
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True)
    try:
        pid, port, data_dir = owner.stdout.readline().split()
        pid, port = int(pid), int(port)
        assert not pid_gone(pid, timeout_s=0.1)
        owner.send_signal(SIGNALS[how])
        owner.wait(timeout=30)
        assert pid_gone(pid), f"the Kafka JVM outlived its owner ({how})"
        assert port_closed(port)
        if how != "crash":  # an orderly stop also deletes the temporary data directory
            assert not Path(data_dir).exists()
    finally:
        if owner.poll() is None:
            owner.kill()


def test_a_bad_heap_setting_fails_with_the_jvm_message(tmp_path: Path) -> None:
    broker = EmbeddedKafka(data_dir=tmp_path, heap="1k")
    with pytest.raises(BrokerError, match="heap size"):
        broker.start()
    assert not broker.is_running()


def test_missing_jars_give_a_clear_error(tmp_path: Path) -> None:
    broker = EmbeddedKafka(data_dir=tmp_path, jars_dir=tmp_path / "no-jars")
    with pytest.raises(BrokerError, match="make kafka-jars"):
        broker.start()
    assert not broker.is_running()


def test_a_jvm_that_dies_during_start_up_reports_its_log(tmp_path: Path) -> None:
    # Storage formatted for another node: the broker refuses it and exits.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meta.properties").write_text(
        "version=1\ncluster.id=MkU3OEVBNTcwNTJENDM2Qg\nnode.id=42\n"
        "directory.id=J8pmKJvZRkaJsj4eJkVvBg\n"
    )
    broker = EmbeddedKafka(data_dir=tmp_path)
    with pytest.raises(BrokerError, match="exited with code") as exc:
        broker.start()
    assert "node" in str(exc.value).lower(), "the error should carry the broker's own log lines"
    assert not broker.is_running()


def test_cluster_ids_never_look_like_flags() -> None:
    from streaming.broker import random_cluster_id

    ids = [random_cluster_id() for _ in range(5_000)]
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_killed_broker_restarts_on_its_data_and_ports(tmp_path: Path) -> None:
    """kill() is a crash (SIGKILL, nothing cleaned up); start() again keeps the KRaft storage
    (not formatted again), the ports, and the records written before the kill."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from streaming.topics import cluster_layout, ensure_topics

    broker = EmbeddedKafka(data_dir=tmp_path / "kafka").start()
    try:
        port, controller_port, pid = broker.port, broker.controller_port, broker.pid
        meta = (tmp_path / "kafka" / "data" / "meta.properties").read_text()
        cluster_id = cluster_layout(broker.bootstrap, []).cluster_id
        ensure_topics(broker.bootstrap, {"kept": 1})
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        for i in range(10):
            producer.send("kept", f"r{i}".encode())
        producer.flush()
        producer.close()

        broker.kill()
        assert pid_gone(pid, timeout_s=1) and not broker.is_running()
        assert (tmp_path / "kafka" / "data" / "meta.properties").read_text() == meta
        assert not port_open(port)

        broker.start()
        assert (broker.port, broker.controller_port) == (port, controller_port)
        assert broker.pid != pid
        assert (tmp_path / "kafka" / "data" / "meta.properties").read_text() == meta
        assert cluster_layout(broker.bootstrap, []).cluster_id == cluster_id
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)
        tp = TopicPartition("kept", 0)
        assert consumer.end_offsets([tp])[tp] == 10
        consumer.close()

        broker.kill()  # and another process takes its port: no silent move to a new address
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            with pytest.raises(BrokerError, match=rf"ports: \[{port}\] are in use"):
                broker.start()
        assert not broker.is_running()
    finally:
        broker.stop()
    assert not port_open(port)

