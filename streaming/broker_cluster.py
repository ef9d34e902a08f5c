"""A multi-broker KRaft Kafka cluster on this machine, from the jars the embedded broker uses: what
the fault-injection tests run the pipeline on to see it ride through a broker failure the way it
would in production (replicated topics, leader election, a controller quorum that loses a voter).

Every node is a combined broker + controller (``process.roles=broker,controller``) and the
controllers form a static quorum of all nodes (``controller.quorum.voters``). Three JVMs rather
than three brokers plus three controllers: on a 2-core machine the JVMs are what costs, and killing
a partition leader then sometimes kills the active controller too, so a test also exercises the
quorum electing a new one (a harder case than a dedicated controller tier would give).

Defaults are a production-shaped cluster of three: topics and the internal topics (consumer
offsets, transaction state) are replicated 3 times, ``min.insync.replicas`` is 2, so writes with
``acks=all`` go on with one broker down and no acknowledged record is lost. Failure detection uses
Kafka's defaults (a broker is fenced ``broker.session.timeout.ms`` = 9 s after its last heartbeat).

Each node is an :class:`streaming.broker.EmbeddedKafka` with the cluster's properties, so start-up,
logs and clean-up are the embedded broker's. JVMs are started from one long-lived launcher thread:
``PR_SET_PDEATHSIG`` kills a child when the *thread* that started it exits, so a node restarted
from a short-lived thread (a fault injector's timer) would die with that thread.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from streaming.broker import (
    BrokerError,
    EmbeddedKafka,
    free_port,
    port_open,
    random_cluster_id,
)


class ClusterNode(EmbeddedKafka):
    """One combined broker + controller of a :class:`KafkaBrokerCluster` (node ids from 1)."""

    def __init__(self, node_id: int, cluster_id: str, overrides: dict[str, str],
                 data_dir: Path, port: int, controller_port: int, **kwargs: object) -> None:
        super().__init__(data_dir=data_dir, **kwargs)  # type: ignore[arg-type]
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.overrides = overrides
        self.port = port
        self.controller_port = controller_port
        self._ports = (port, controller_port)

    def _write_config(self) -> tuple[Path, Path]:
        """The embedded broker's properties with the cluster's keys replacing its own."""
        props, log4j = super()._write_config()
        settings: dict[str, str] = {}
        for line in props.read_text().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                settings[key] = value
        settings.update(self.overrides)
        props.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        return props, log4j

    def _format_storage(self, props: Path, log4j: Path) -> None:
        """Format once, with the cluster's id (every voter must share it)."""
        if (self.data_dir / "data" / "meta.properties").exists():
            return
        cmd = self._java_command(
            "kafka.tools.StorageTool", log4j, "format", "-t", self.cluster_id, "-c", str(props))
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise BrokerError(f"formatting KRaft storage of node {self.node_id} failed:\n"
                              f"{result.stdout}{result.stderr}")

    def _wait_until_ready(self, started: float) -> None:
        """A node alone serves nothing until a quorum of voters is up: the cluster waits for
        all of them; here only a JVM that fails to come up at all is reported."""
        assert self._process is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=0.5)
            raise BrokerError(f"Kafka node {self.node_id} exited with code "
                              f"{self._process.returncode} during start-up; last log lines:\n"
                              f"{self._log_tail()}")
        if (self.port, self.controller_port) != self._ports:
            raise BrokerError(f"node {self.node_id} could not keep its ports {self._ports} "
                              "(another process holds one): the quorum's voters are fixed")


class KafkaBrokerCluster:
    """``size`` KRaft brokers on 127.0.0.1, each killable and restartable (see module docs).

    >>> with KafkaBrokerCluster(3) as cluster:              # doctest: +SKIP
    ...     leader = cluster.leader_of("events", 0)
    ...     cluster.kill(leader); cluster.restart(leader)

    Nodes are named by their Kafka node id, 1 to ``size``.
    """

    def __init__(self, size: int = 3, *, replication_factor: int | None = None,
                 min_insync_replicas: int | None = None, data_dir: str | Path | None = None,
                 jars_dir: str | Path | None = None, heap: str = "384m",
                 startup_timeout_s: float = 120.0,
                 broker_properties: dict[str, str] | None = None) -> None:
        if size < 1:
            raise ValueError(f"size: a cluster needs at least 1 node, got {size}")
        self.size = size
        self.replication_factor = replication_factor or min(size, 3)
        self.min_insync_replicas = min_insync_replicas or max(1, self.replication_factor - 1)
        if not 1 <= self.min_insync_replicas <= self.replication_factor <= size:
            raise ValueError(
                "need 1 <= min_insync_replicas <= replication_factor <= size, got "
                f"{self.min_insync_replicas}, {self.replication_factor}, {size}")
        self._temporary = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(
            tempfile.mkdtemp(prefix="recsys-kafka-cluster-"))
        self.startup_timeout_s = startup_timeout_s
        self.cluster_id = random_cluster_id()
        ports = _distinct_free_ports(2 * size)
        voters = ",".join(f"{i + 1}@127.0.0.1:{ports[size + i]}" for i in range(size))
        rf, isr = str(self.replication_factor), str(self.min_insync_replicas)
        self.nodes = {
            i + 1: ClusterNode(
                i + 1, self.cluster_id,
                {
                    "node.id": str(i + 1),
                    "controller.quorum.voters": voters,
                    "default.replication.factor": rf,
                    "min.insync.replicas": isr,
                    "offsets.topic.replication.factor": rf,
                    "transaction.state.log.replication.factor": rf,
                    "transaction.state.log.min.isr": isr,
                    "share.coordinator.state.topic.replication.factor": rf,
                    "share.coordinator.state.topic.min.isr": isr,
                    **(broker_properties or {}),
                },
                data_dir=self.data_dir / f"node-{i + 1}", port=ports[i],
                controller_port=ports[size + i], jars_dir=jars_dir, heap=heap,
                startup_timeout_s=startup_timeout_s,
            )
            for i in range(size)
        }
        self._launcher: concurrent.futures.ThreadPoolExecutor | None = None
        self.startup_seconds: float | None = None

    # -- addresses ----------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """Every node's listener, comma-separated: clients start from whichever is up."""
        return ",".join(node.bootstrap for node in self.nodes.values())

    def node(self, node_id: int) -> ClusterNode:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise KeyError(f"no Kafka node {node_id}: this cluster's nodes are "
                           f"{sorted(self.nodes)}") from None

    def running(self) -> list[int]:
        """The ids of the nodes whose JVM is running."""
        return [i for i, node in self.nodes.items() if node.is_running()]

    # -- lifecycle ----------------------------------------------------------------------------

    def _launch(self, node: ClusterNode) -> None:
        """Start ``node``'s JVM from the launcher thread (see module docs) and wait for that."""
        if self._launcher is None:
            self._launcher = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="kafka-cluster-launcher")
        self._launcher.submit(node.start).result()

    def start(self) -> KafkaBrokerCluster:
        """Format and start every node; returns when all have registered with the quorum."""
        started = time.monotonic()
        try:
            for node in self.nodes.values():
                self._launch(node)
            self.wait_for_brokers(self.nodes, timeout_s=self.startup_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def kill(self, node_id: int) -> None:
        """SIGKILL one node (``EmbeddedKafka.kill``: a crash, data left as it is): its partitions
        lose their leader or a replica until it returns."""
        self.node(node_id).kill()

    def restart(self, node_id: int, timeout_s: float | None = None) -> float:
        """Start a killed (or stopped) node again on its data and ports; returns the seconds
        until the cluster lists it as a broker again."""
        started = time.monotonic()
        node = self.node(node_id)
        if node.is_running():
            raise BrokerError(f"Kafka node {node_id} is running: kill it before a restart")
        self._launch(node)
        self.wait_for_brokers([node_id], timeout_s=timeout_s or self.startup_timeout_s)
        return time.monotonic() - started

    def stop(self) -> None:
        """Kill every JVM (no controlled shutdown: the last nodes would wait for a quorum that is
        going away) and delete a temporary cluster's data."""
        for node in self.nodes.values():
            node.kill()
            node.stop(timeout_s=5.0)
        if self._launcher is not None:
            self._launcher.shutdown(wait=False)
            self._launcher = None
        if self._temporary:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> KafkaBrokerCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the cluster says ----------------------------------------------------------------

    def _admin(self, timeout_s: float = 5.0):
        from kafka.admin import KafkaAdminClient

        return KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="recsys-cluster",
                                request_timeout_ms=int(timeout_s * 1000))

    def brokers(self) -> set[int]:
        """The node ids the cluster lists as live (registered and not fenced) brokers."""
        admin = self._admin()
        try:
            return {int(b["broker_id"]) for b in admin.describe_cluster()["brokers"]
                    if not b.get("is_fenced")}
        finally:
            admin.close()

    def wait_for_brokers(self, node_ids: Iterable[int], timeout_s: float = 60.0) -> None:
        """Block until every one of ``node_ids`` is a live broker of the cluster."""
        wanted = set(node_ids)
        deadline = time.monotonic() + timeout_s
        last: BaseException | set[int] | None = None
        while time.monotonic() < deadline:
            for node_id in wanted:
                node = self.node(node_id)
                if not node.is_running():
                    raise BrokerError(f"Kafka node {node_id} exited; last log lines:\n"
                                      f"{node._log_tail()}")
            if any(port_open(self.node(i).port) for i in wanted):
                try:
                    last = self.brokers()
                    if wanted <= last:
                        return
                except Exception as exc:  # not up yet: reported on timeout
                    last = exc
            time.sleep(0.5)
        raise BrokerError(f"Kafka nodes {sorted(wanted)} did not all register within "
                          f"{timeout_s:.0f}s (last seen: {last!r}); node logs are under "
                          f"{self.data_dir}")

    def partitions(self, topic: str) -> dict[int, dict]:
        """Per partition of ``topic``: its ``leader`` (node id, -1 when none), ``replicas`` and
        ``isr`` as the cluster reports them."""
        admin = self._admin()
        try:
            described = admin.describe_topics([topic])
        finally:
            admin.close()
        if not described or described[0].get("error_code") or not described[0]["partitions"]:
            raise KeyError(f"topic {topic!r} does not exist on {self.bootstrap}")
        return {
            int(p["partition_index"]): {
                "leader": int(p["leader_id"]),
                "replicas": [int(r) for r in p["replica_nodes"]],
                "isr": [int(r) for r in p["isr_nodes"]],
            }
            for p in described[0]["partitions"]
        }

    def leader_of(self, topic: str, partition: int) -> int:
        """The node id leading ``topic``'s ``partition`` now (-1 while it has none)."""
        return self.partitions(topic)[partition]["leader"]

    def wait_in_sync(self, topics: Iterable[str], timeout_s: float = 60.0) -> None:
        """Block until every partition of ``topics`` has all its replicas in sync (after a
        restart the returning node catches up before it counts again)."""
        deadline = time.monotonic() + timeout_s
        lagging: list[str] = []
        while time.monotonic() < deadline:
            lagging = [f"{t}[{p}]" for t in topics for p, info in self.partitions(t).items()
                       if sorted(info["isr"]) != sorted(info["replicas"])]
            if not lagging:
                return
            time.sleep(0.5)
        raise BrokerError(f"partitions {', '.join(lagging)} still have replicas out of sync "
                          f"after {timeout_s:.0f}s")


def _distinct_free_ports(n: int) -> list[int]:
    """``n`` different ports that are free now."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports
