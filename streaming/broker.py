"""The embedded single-node Apache Kafka broker (KRaft, combined broker + controller).

It runs the real ``kafka.Kafka`` from the jars that Maven resolves into ``infra/kafka/lib``
(``make kafka-jars``). Lifecycle guarantees:

- ``start`` formats KRaft storage (once per data directory), writes the broker properties with a
  listener on 127.0.0.1 and free ports, starts the JVM and returns only when a client can fetch
  metadata; if the JVM dies first, the error carries the tail of its log.
- ``stop`` sends SIGTERM (controlled shutdown), escalates to SIGKILL after a timeout, and waits
  until the port is closed.
- ``kill`` is a crash (SIGKILL, nothing cleaned up, as fault-injection tests want); ``start``
  after it restarts on the same data directory (the KRaft storage is not formatted again: its
  ``meta.properties`` is kept) and on the same ports, so clients of the killed broker reconnect.
- No JVM outlives its owner: an in-process broker is stopped by ``atexit`` and context managers, and
  the JVM is started with ``PR_SET_PDEATHSIG`` so the kernel kills it if the parent crashes. It runs
  in its own session, so Ctrl-C reaches Python, which then stops it in order; a forced exit
  (``recsys.shutdown``) kills it with the other children and still deletes its temporary data.
- A *detached* broker (``recsys broker start``) outlives the command and is described by a state
  file; ``recsys broker stop`` checks through ``/proc`` that the pid is still that JVM before
  killing it.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from recsys.config import Settings
from recsys.shutdown import at_forced_exit

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JARS_DIR = REPO_ROOT / "infra" / "kafka" / "lib"
POM = REPO_ROOT / "infra" / "kafka" / "pom.xml"
STATE_FILE_NAME = "broker.json"
_PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """The embedded broker could not be started, reached or stopped; the message says why."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((host, port)) == 0


def ensure_jars(jars_dir: Path | None = None, resolve: bool = True) -> Path:
    """The folder of broker jars; resolves it with Maven first when it is missing or empty."""
    jars = Path(jars_dir) if jars_dir else DEFAULT_JARS_DIR
    if jars.is_dir() and any(jars.glob("kafka_2.13-*.jar")):
        return jars
    if not resolve or jars != DEFAULT_JARS_DIR:
        raise BrokerError(
            f"no Kafka broker jars in {jars}: run `make kafka-jars` "
            f"(mvn -q -f {POM} dependency:copy-dependencies) or set kafka.jars_dir"
        )
    if shutil.which("mvn") is None:
        raise BrokerError("Kafka jars are missing and Maven (mvn) is not installed: install Maven")
    cmd = [
        "mvn",
        "-q",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={jars}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BrokerError(
            f"Maven could not resolve the Kafka jars:\n{result.stdout}{result.stderr}"
        )
    return jars


def _kill_me_with_parent() -> None:
    """preexec_fn: ask the kernel to SIGKILL this child when the parent thread dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def random_cluster_id() -> str:
    """A KRaft cluster id (URL-safe base64 of a UUID). Like Kafka's ``Uuid.randomUuid`` it never
    starts with '-', which the storage tool would take for a command-line flag."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


@dataclass
class BrokerState:
    """What a detached broker leaves behind so another process can find and stop it."""

    pid: int
    bootstrap: str
    port: int
    controller_port: int
    data_dir: str
    log_file: str
    started_at: float


class EmbeddedKafka:
    """A single-node KRaft Kafka broker run as a child JVM.

    >>> with EmbeddedKafka() as kafka:      # doctest: +SKIP
    ...     print(kafka.bootstrap)          # 127.0.0.1:<port>
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        jars_dir: str | Path | None = None,
        heap: str = "512m",
        startup_timeout_s: float = 60.0,
        detached: bool = False,
    ) -> None:
        self._temporary = data_dir is None
        self.data_dir = (
            Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="recsys-kafka-"))
        )
        self.jars_dir = Path(jars_dir) if jars_dir else None
        self.heap = heap
        self.startup_timeout_s = startup_timeout_s
        self.detached = detached
        self.port: int | None = None
        self.controller_port: int | None = None
        self.startup_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._forget_data_dir: Callable[[], None] | None = None
        self._killed = False  # a restart after kill() must come back on the same ports

    @classmethod
    def from_settings(
        cls, settings: Settings, detached: bool = False, temporary: bool = True
    ) -> EmbeddedKafka:
        """A broker configured from ``settings.kafka``; in ``temporary`` mode its data is
        deleted on stop, otherwise it lives in ``<data_dir>/kafka``."""
        return cls(
            data_dir=None if temporary else settings.kafka_data_dir,
            jars_dir=settings.kafka.jars_dir,
            heap=settings.kafka.heap,
            startup_timeout_s=settings.kafka.startup_timeout_s,
            detached=detached,
        )

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise BrokerError("the broker has not been started")
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def log_file(self) -> Path:
        return self.data_dir / "logs" / "server.log"

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- files -------------------------------------------------------------------------------

    def _write_config(self) -> tuple[Path, Path]:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={self.data_dir / 'data'}",
                    "num.partitions=1",
                    "auto.create.topics.enable=false",
                    "num.network.threads=2",
                    "num.io.threads=4",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=4",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    # one partition, not 50: the first transactional producer waits for them all
                    "transaction.state.log.num.partitions=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "log.segment.bytes=67108864",
                    "log.retention.hours=168",
                    "message.max.bytes=8388608",
                    "",
                ]
            )
        )
        log4j = self.data_dir / "log4j2.properties"
        log4j.write_text(
            "\n".join(
                [
                    "status = error",
                    "appender.file.type = RollingFile",
                    "appender.file.name = FILE",
                    f"appender.file.fileName = {self.log_file}",
                    f"appender.file.filePattern = {self.log_file}.%i",
                    "appender.file.layout.type = PatternLayout",
                    "appender.file.layout.pattern = [%d] %p %m (%c)%n",
                    "appender.file.policies.type = Policies",
                    "appender.file.policies.size.type = SizeBasedTriggeringPolicy",
                    "appender.file.policies.size.size = 20MB",
                    "appender.file.strategy.type = DefaultRolloverStrategy",
                    "appender.file.strategy.max = 3",
                    "rootLogger.level = INFO",
                    "rootLogger.appenderRef.file.ref = FILE",
                    "logger.kafka.name = kafka",
                    "logger.kafka.level = WARN",
                    "logger.apache.name = org.apache.kafka",
                    "logger.apache.level = WARN",
                    "logger.started.name = kafka.server.KafkaRaftServer",
                    "logger.started.level = INFO",
                    "",
                ]
            )
        )
        return props, log4j

    def _java_command(self, main_class: str, log4j: Path, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise BrokerError("java was not found on PATH: install a JDK 17+ to run the broker")
        jars = ensure_jars(self.jars_dir)
        return [
            java,
            f"-Xmx{self.heap}",
            "-Xms128m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            f"{jars}/*",
            main_class,
            *args,
        ]

    def _format_storage(self, props: Path, log4j: Path) -> None:
        if (self.data_dir / "data" / "meta.properties").exists():
            return
        cmd = self._java_command(
            "kafka.tools.StorageTool", log4j, "format", "-t", random_cluster_id(), "-c", str(props)
        )
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise BrokerError(f"formatting KRaft storage failed:\n{result.stdout}{result.stderr}")

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> EmbeddedKafka:
        """Start the broker and block until it serves metadata."""
        if self.is_running():
            return self
        started = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._killed:  # a crash restart: same ports, or fail (never a new address)
            self._reclaim_ports()
        # A restart keeps its address when it can, so clients of the stopped broker reconnect.
        if self.port is None or port_open(self.port):
            self.port = free_port()
        if self.controller_port is None or port_open(self.controller_port):
            self.controller_port = free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()
        props, log4j = self._write_config()
        self._format_storage(props, log4j)
        stdout = open(self.data_dir / "logs" / "stdout.log", "ab")  # noqa: SIM115 - child owns it
        try:
            self._process = subprocess.Popen(
                self._java_command("kafka.Kafka", log4j, str(props)),
                stdout=stdout,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=None if self.detached else _kill_me_with_parent,
            )
        finally:
            stdout.close()
        if not self.detached:
            atexit.unregister(self.stop)  # once, however often it is restarted
            atexit.register(self.stop)
        if self._temporary and self._forget_data_dir is None:  # a forced exit skips stop()
            self._forget_data_dir = at_forced_exit(
                functools.partial(shutil.rmtree, self.data_dir, ignore_errors=True))
        try:
            self._wait_until_ready(started)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        self._killed = False
        if self.detached:
            self._write_state()
        return self

    def _reclaim_ports(self, timeout_s: float = 10.0) -> None:
        """Wait until the killed JVM's ports are free again; a port taken by another process is
        an error, since a broker that comes back elsewhere is not the one its clients knew."""
        taken = [p for p in (self.port, self.controller_port) if p is not None]
        deadline = time.monotonic() + timeout_s
        while taken and time.monotonic() < deadline:
            taken = [p for p in taken if port_open(p)]
            if taken:
                time.sleep(0.1)
        if taken:
            raise BrokerError(
                f"cannot restart the killed broker on its ports: {taken} are in use by another "
                f"process {timeout_s:.0f}s after the kill; free them, or stop() and start() it "
                "to take new ports")

    def kill(self) -> None:
        """SIGKILL the JVM, as a crash would: no controlled shutdown, the data directory (and a
        temporary one) is left as it is. ``start`` restarts it on the same directory and ports;
        ``stop`` still cleans up."""
        process, self._process = self._process, None
        if process is None:
            return
        self._killed = True
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(timeout=30)  # reaped: the kernel has closed its sockets

    def _wait_until_ready(self, started: float) -> None:
        deadline = started + self.startup_timeout_s
        assert self._process is not None and self.port is not None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerError(
                    f"the Kafka JVM exited with code {self._process.returncode} during start-up; "
                    f"last log lines:\n{self._log_tail()}"
                )
            if port_open(self.port) and metadata_available(self.bootstrap, timeout_s=2.0):
                return
            time.sleep(0.2)
        raise BrokerError(
            f"the broker did not serve metadata within {self.startup_timeout_s:.0f}s "
            f"(kafka.startup_timeout_s); last log lines:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 25) -> str:
        out = []
        for path in (self.data_dir / "logs" / "stdout.log", self.log_file):
            if path.exists():
                out += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(out[-lines:])

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the JVM (SIGTERM, then SIGKILL), wait for its port to close, drop temporary data."""
        process, self._process = self._process, None
        self._killed = False
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if process is not None and process.poll() is None:
            _terminate(process.pid, timeout_s, wait=process.wait)
        if self.port is not None:
            _wait_port_closed(self.port, timeout_s=5.0)
        if self.detached:
            (self.data_dir / STATE_FILE_NAME).unlink(missing_ok=True)
        if self._temporary:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        if self._forget_data_dir is not None:
            self._forget_data_dir()
            self._forget_data_dir = None

    def __enter__(self) -> EmbeddedKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _write_state(self) -> None:
        assert self.pid is not None and self.port is not None and self.controller_port is not None
        state = BrokerState(
            pid=self.pid,
            bootstrap=self.bootstrap,
            port=self.port,
            controller_port=self.controller_port,
            data_dir=str(self.data_dir),
            log_file=str(self.log_file),
            started_at=time.time(),
        )
        path = self.data_dir / STATE_FILE_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2))
        os.replace(tmp, path)


def _terminate(pid: int, timeout_s: float, wait=None) -> None:
    """SIGTERM ``pid``, then SIGKILL if it has not exited within ``timeout_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if wait is not None:
        try:
            wait(timeout=timeout_s)
            return
        except subprocess.TimeoutExpired:
            pass
    else:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.1)
        if not _pid_alive(pid):
            return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if wait is not None:
        wait(timeout=10)
    else:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.05)


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def _wait_port_closed(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and port_open(port):
        time.sleep(0.1)


def metadata_available(bootstrap: str, timeout_s: float = 5.0, **client_options: object) -> bool:
    """True when a Kafka client can connect to ``bootstrap`` and fetch cluster metadata."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaConfigurationError, KafkaError

    from recsys.kafka_clients import kafka_python_options

    try:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            request_timeout_ms=max(1000, int(timeout_s * 1000)),
            **kafka_python_options(client_options),
        )
    except KafkaConfigurationError:
        raise  # a mistake in the client settings: retrying will not help
    except (KafkaError, OSError, ValueError):
        return False
    try:
        consumer.topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        consumer.close()


# -- detached brokers (recsys broker start|stop|status) ------------------------------------------


def read_state(data_dir: Path) -> BrokerState | None:
    """The state of a detached broker in ``data_dir``, or None when there is none."""
    path = data_dir / STATE_FILE_NAME
    if not path.exists():
        return None
    try:
        return BrokerState(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise BrokerError(
            f"{path} is corrupt ({exc}); delete it once no broker is running"
        ) from exc


def is_our_jvm(state: BrokerState) -> bool:
    """True when ``state.pid`` is alive and still the Kafka JVM started on that data directory."""
    try:
        cmdline = Path(f"/proc/{state.pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    props = str(Path(state.data_dir) / "server.properties").encode()
    return _pid_alive(state.pid) and b"kafka.Kafka" in cmdline and props in cmdline


def stop_detached(data_dir: Path, timeout_s: float = 20.0) -> BrokerState | None:
    """Stop the detached broker recorded in ``data_dir``; returns its state, or None if none ran."""
    state = read_state(data_dir)
    if state is None:
        return None
    if is_our_jvm(state):
        _terminate(state.pid, timeout_s)
    _wait_port_closed(state.port, timeout_s=5.0)
    (data_dir / STATE_FILE_NAME).unlink(missing_ok=True)
    return state
