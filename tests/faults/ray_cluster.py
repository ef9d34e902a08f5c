"""A multi-node Ray cluster on this machine made of separate ``ray start`` processes, for the
fault-injection tests: a head node and worker nodes, each with its own ports and temporary
directory, so that killing one node (its raylet, its workers and its agents) is what losing a
machine is to the rest of the cluster.

The head gets no CPUs, so the pipeline's readers (which ask for CPU) are placed on worker nodes
only; zero-CPU actors (the shards) may land on any node. A driver connects with
``ray.init(address=cluster.address)`` and is attached to the head (Ray prefers the head among
nodes on one host), so it survives the loss of a worker node.

Each node runs ``ray start --block`` as a child of the test, with a temporary directory of its
own. A node's processes are that ``ray start``, every process whose command line names the node's
directory (raylet, log monitor, agents; orphaned or not) and all they descend to (the raylet's
workers): :meth:`RayCluster.processes` finds them and :meth:`RayCluster.kill` freezes then kills
them all at once (so no raylet restarts a worker in between). Worker nodes are started one at a
time and a start that fails is retried: ``ray start`` gives a raylet a fixed 30 s to register,
which a loaded machine sometimes misses.

Node death is detected by the GCS's health checks; the head is given a 1 s period and 3 misses
(Ray's defaults are 3 s and 5, about 15 s) so a test sees a node declared dead in a few seconds.
Every node and driver runs with ``RAY_AUTH_MODE=disabled``: a head turns token authentication on by
default and a joining ``ray start`` does not, which the head's GCS then refuses; the cluster
listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from streaming.broker import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))

HEALTH_CHECK_ENV = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}
"""GCS health-check settings of the head (see module docs)."""


WORKER_PORTS_FROM = 22_000
"""Each node's workers get a block of 200 ports from 22000-29999, a block no other node of the
cluster has: not Ray's default range (10002-19999), which a local Ray of the same test session
walks through port by port, and below Linux's ephemeral ports (32768-), which clients take."""


class RayClusterError(RuntimeError):
    """A node of the test cluster could not be started or found; the message says why."""


@dataclass
class RayNode:
    """One ``ray start --block`` process and the ports it was given."""

    name: str
    head: bool
    node_manager_port: int
    temp_dir: Path
    command: list[str]
    cpus: int = 0
    resources: dict[str, float] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    killed_at: float | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.temp_dir / "ray-start.log"

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class RayCluster:
    """A head and ``workers`` worker nodes on 127.0.0.1 (see module docs).

    >>> with RayCluster(workers=2, worker_cpus=4) as cluster:   # doctest: +SKIP
    ...     subprocess.run([sys.executable, "driver.py", cluster.address])
    """

    def __init__(self, workers: int = 2, worker_cpus: int = 4,
                 object_store_bytes: int = 100 * 1024 * 1024,
                 startup_timeout_s: float = 90.0) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))  # short: socket paths
        self._taken: set[int] = set()  # every port given to a node of this cluster
        self._blocks = random.sample(range(40), 40)  # worker-port blocks, one per node start
        self.gcs_port = self._ports(1)[0]
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.object_store_bytes = object_store_bytes
        self.startup_timeout_s = startup_timeout_s
        self.nodes: list[RayNode] = [self._node("head", head=True, cpus=0)]
        self.nodes += [self._node(f"worker-{i}", head=False, cpus=worker_cpus,
                                  resources={"pipeline_node": 1})
                       for i in range(workers)]
        self.startup_seconds: float | None = None

    # -- commands -----------------------------------------------------------------------------

    def _node(self, name: str, head: bool, cpus: int,
              resources: dict[str, float] | None = None, suffix: str = "") -> RayNode:
        temp_dir = self.root / f"{name}{suffix}"
        temp_dir.mkdir()
        ports = self._ports(6)
        low = WORKER_PORTS_FROM + 200 * self._blocks.pop()  # a block of 200 of its own
        cmd = [
            RAY, "start", "--block", "--node-ip-address", "127.0.0.1",
            "--num-cpus", str(cpus), "--num-gpus", "0",
            "--object-store-memory", str(self.object_store_bytes),
            "--temp-dir", str(temp_dir), "--disable-usage-stats",
            "--node-manager-port", str(ports[0]), "--object-manager-port", str(ports[1]),
            "--metrics-export-port", str(ports[2]),
            "--dashboard-agent-listen-port", str(ports[3]),
            "--dashboard-agent-grpc-port", str(ports[4]),
            "--runtime-env-agent-port", str(ports[5]),
            "--min-worker-port", str(low), "--max-worker-port", str(low + 199),
        ]
        if resources:
            cmd += ["--resources", json.dumps(resources)]
        if head:
            cmd += ["--head", "--port", str(self.gcs_port), "--include-dashboard", "false",
                    "--ray-client-server-port", str(self._ports(1)[0])]
        else:
            cmd += ["--address", self.address]
        return RayNode(name, head, ports[0], temp_dir, cmd, cpus, dict(resources or {}))

    def _ports(self, n: int) -> list[int]:
        """``n`` free ports that no node of this cluster was given before (nor its workers'
        port blocks, below the ephemeral range ``free_port`` draws from)."""
        ports: list[int] = []
        while len(ports) < n:
            port = free_port()
            if port not in self._taken:
                self._taken.add(port)
                ports.append(port)
        return ports

    def _environment(self) -> dict[str, str]:
        """The environment of every node and driver of this cluster (drivers should use it)."""
        env = dict(os.environ)
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
        env.update(HEALTH_CHECK_ENV)
        # One mode for every node and driver (module docs); a GCS client in this process reads
        # its mode when Ray is imported, and the default there is disabled too.
        env["RAY_AUTH_MODE"] = "disabled"
        env.pop("RAY_ADDRESS", None)
        return env

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> RayCluster:
        """Start the head, then each worker; returns once the GCS holds them all alive."""
        started = time.monotonic()
        try:
            head, *workers = self.nodes
            self._spawn(head)
            self._wait_for_gcs(head)
            self.wait_for_nodes(1)
            for i, node in enumerate(workers, start=1):
                self.nodes[i] = self._start_worker(node)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _start_worker(self, node: RayNode, attempts: int = 3) -> RayNode:
        """Start a worker node and wait until it is alive. ``ray start`` gives a raylet 30 s to
        register (not configurable): on a loaded machine that fails now and then, so a failed
        start is cleaned up and tried again on fresh ports."""
        for attempt in range(1, attempts + 1):
            self._spawn(node)
            deadline = time.monotonic() + self.startup_timeout_s
            while time.monotonic() < deadline and node.is_running():
                with contextlib.suppress(Exception):  # the GCS may not answer yet
                    if self.alive()[node.name]:
                        return node
                time.sleep(0.5)
            failure = self._tail(node)
            self._kill_processes(node)
            if attempt < attempts:
                retry = self._node(node.name, head=False, cpus=node.cpus,
                                   resources=node.resources, suffix=f"-{attempt + 1}")
                node = retry
        raise RayClusterError(f"Ray node {node.name} did not start in {attempts} attempts; "
                              f"the last said:\n{failure}")

    def _spawn(self, node: RayNode) -> None:
        with open(node.log, "ab") as log:
            node.process = subprocess.Popen(
                node.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self._environment(), cwd=REPO_ROOT, start_new_session=True)

    def _wait_for_gcs(self, head: RayNode) -> None:
        from streaming.broker import port_open

        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            self._check_alive(head)
            if port_open(self.gcs_port):
                return
            time.sleep(0.2)
        raise RayClusterError(f"the Ray head did not open its GCS port {self.gcs_port} in "
                              f"{self.startup_timeout_s:.0f}s:\n{self._tail(head)}")

    def _check_alive(self, node: RayNode) -> None:
        if not node.is_running():
            raise RayClusterError(f"ray start for {node.name} exited during start-up:\n"
                                  f"{self._tail(node)}")

    def _tail(self, node: RayNode, lines: int = 30) -> str:
        if not node.log.exists():
            return "(no output)"
        return "\n".join(node.log.read_text(errors="replace").splitlines()[-lines:])

    def nodes_info(self) -> list[dict]:
        """What the GCS says of every node that joined (``ray.nodes()``'s source): node id,
        alive, node-manager port. Asked through a GCS client, not ``ray.init``: this process
        may have a Ray of its own, and a driver costs seconds."""
        from ray._raylet import GcsClient
        from ray.core.generated.gcs_pb2 import GcsNodeInfo

        client = GcsClient(address=self.address)
        infos = client.get_all_node_info(timeout=10)
        return [{"NodeID": info.node_id.hex(),
                 "Alive": info.state == GcsNodeInfo.GcsNodeState.ALIVE,
                 "NodeManagerPort": int(info.node_manager_port)}
                for info in infos.values()]

    def alive(self) -> dict[str, bool]:
        """By node name: whether the GCS holds that node alive (never joined: False)."""
        by_port = {n["NodeManagerPort"]: n["Alive"] for n in self.nodes_info()}
        return {node.name: bool(by_port.get(node.node_manager_port)) for node in self.nodes}

    def wait_for_nodes(self, count: int) -> None:
        """Block until ``count`` nodes are alive in ``ray.nodes()``."""
        deadline = time.monotonic() + self.startup_timeout_s
        seen = 0
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.process is not None and node.killed_at is None:
                    self._check_alive(node)
            with contextlib.suppress(Exception):  # the GCS may not answer yet
                seen = sum(self.alive().values())
                if seen >= count:
                    return
            time.sleep(0.5)
        raise RayClusterError(f"only {seen} of {count} Ray nodes became alive in "
                              f"{self.startup_timeout_s:.0f}s; logs under {self.root}")

    # -- a node's processes ---------------------------------------------------------------------

    def node(self, name: str) -> RayNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no Ray node {name!r}: nodes are {[n.name for n in self.nodes]}")

    def processes(self, name: str) -> dict[int, str]:
        """The node's processes (pid -> command line): its ``ray start``, every process whose
        command line names the node's temporary directory (its raylet and agents, orphaned or
        not), and everything those descend to (the raylet's workers)."""
        return _node_processes(self.node(name))

    def actors(self, name: str) -> list[str]:
        """The actor classes whose worker processes run on the node (``ray::Learner`` and
        ``ray::Learner.step`` both give ``Learner``)."""
        found = []
        for cmdline in self.processes(name).values():
            if cmdline.startswith("ray::"):
                actor = cmdline[5:].split()[0].split(".")[0]
                if actor != "IDLE" and not actor.endswith("Agent"):  # Ray's own processes
                    found.append(actor)
        return sorted(found)

    def kill(self, name: str) -> list[int]:
        """Freeze then SIGKILL every process of a worker node (a machine lost); returns the
        pids killed."""
        node = self.node(name)
        if node.head:
            raise ValueError("kill a worker node: the head holds the GCS and the driver")
        pids = self._kill_processes(node)
        node.killed_at = time.monotonic()
        return pids

    def _kill_processes(self, node: RayNode) -> list[int]:
        pids = list(_node_processes(node))
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        if node.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(timeout=10)
        return pids

    def stop(self) -> None:
        """Kill every node's processes (workers first) and delete the temporary directories."""
        for node in reversed(self.nodes):
            self._kill_processes(node)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> RayCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _node_processes(node: RayNode) -> dict[int, str]:
    """See :meth:`RayCluster.processes`."""
    marker = re.compile(re.escape(str(node.temp_dir)) + r"(?=[/\s=,]|$)")  # not worker-1-2
    roots = [pid for pid in _all_pids() if marker.search(_cmdline(pid))]
    if node.process is not None and node.process.poll() is None:
        roots.append(node.process.pid)
    pids = set(roots)
    tree = _children()
    for root in roots:
        pids.update(_descendants(root, tree))
    pids.discard(os.getpid())
    return {pid: _cmdline(pid) for pid in sorted(pids)}


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _descendants(pid: int, tree: dict[int, list[int]] | None = None) -> list[int]:
    tree, out, todo = tree if tree is not None else _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()
