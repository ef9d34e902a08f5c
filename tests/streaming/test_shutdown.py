"""SIGTERM (what Kubernetes sends) and SIGINT (Ctrl-C) stop ``recsys serve`` and ``recsys stream``
in order: one line naming what stops, a last checkpoint, exit status 0, no stack dump, and no
process of the run left (Ray's raylet, GCS, agents, workers, HAProxy; the Kafka JVM). A second
signal forces the exit and still kills every child.

The commands run as subprocesses with their own embedded broker and local Ray instance, never the
session's. Their processes are found two ways before the signal: the process tree under the
command, and every process whose environment carries a mark set for this run only (so one that
left the tree, reparented, is still found)."""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from recsys.checkpoint import CheckpointStore
from recsys.shutdown import descendants
from streaming.broker import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
MARK = "SHUTDOWN_TEST_MARK"  # not RECSYS_*: the configuration would warn about an unknown key
GRACE_S = 5.0
"""Seconds a process of a run may take to disappear after the command exits (reaping)."""
CRASH_DUMP = ("Traceback", "SIGTERM received at time", "*** ", "Aborted")


def _identity(pid: int) -> tuple[int, str] | None:
    """``(start time, command line)`` of a live process, None when gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    if stat[0] == b"Z":
        return None
    return int(stat[19]), cmdline.strip()


def _marked(mark: str) -> set[int]:
    """Processes whose environment carries ``MARK=mark``."""
    needle = f"{MARK}={mark}".encode()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if needle in Path(f"/proc/{entry}/environ").read_bytes():
                    found.add(int(entry))
            except OSError:
                continue
    return found


def _processes_of(root: int, mark: str) -> dict[int, tuple[int, str]]:
    """Every live process of the run: the tree under ``root`` and the marked ones."""
    pids = descendants(root) | _marked(mark) | {root}
    return {pid: ident for pid in pids if (ident := _identity(pid)) is not None}


def _survivors(processes: dict[int, tuple[int, str]]) -> list[str]:
    """The processes of ``processes`` still alive (same pid and start time) after the grace."""
    deadline = time.monotonic() + GRACE_S
    while True:
        alive = [f"{pid} {ident[1][:160]}" for pid, ident in processes.items()
                 if _identity(pid) == ident]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def _kill_all(processes: dict[int, tuple[int, str]]) -> None:
    """After a failure: leave nothing of the run behind for the next tests."""
    for pid, ident in processes.items():
        if _identity(pid) == ident:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _start(tmp_path: Path, mark: str, *command: str) -> subprocess.Popen[bytes]:
    """``recsys ... <command>`` in its own session (as from a terminal) with its own data dir,
    an embedded broker and a new local Ray instance (no RAY_/RECSYS_ variables inherited);
    stderr goes to ``tmp_path/stderr``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RECSYS_"))}
    env[MARK] = mark
    with open(tmp_path / "stderr", "wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "recsys.cli", "--data-dir", str(tmp_path / "state"),
             "--set", "stream.n_items=50", "--set", "stream.dim=4", "--set", "stream.learners=1",
         "--set", "stream.shards=1", "--set", "ray.object_store_memory_mb=128", *command],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=stderr,
            start_new_session=True)


class _Stdout:
    """A child's stdout read as it comes (unbuffered, so no line waits in a buffer unseen)."""

    def __init__(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        self.process = process
        self.fd = process.stdout.fileno()
        self.data = b""

    @property
    def text(self) -> str:
        return self.data.decode(errors="replace")

    def _read(self, deadline: float) -> bool:
        """Read what is there (waiting until ``deadline``); False at the end of the stream."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.fd, selectors.EVENT_READ)
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                return True
        chunk = os.read(self.fd, 65536)
        self.data += chunk
        return bool(chunk)

    def until(self, prefix: str, timeout_s: float) -> None:
        """Read until a whole line that starts with ``prefix`` has come."""
        deadline = time.monotonic() + timeout_s
        pattern = re.compile(rf"^{re.escape(prefix)}.*\n", re.M)
        while not pattern.search(self.text):
            if time.monotonic() > deadline or not self._read(deadline):
                raise AssertionError(f"no line starting with {prefix!r} within {timeout_s:.0f} "
                                     f"s; stdout so far:\n{self.text}")

    def rest(self, timeout_s: float) -> str:
        """Everything, once the process has closed its stdout and exited."""
        deadline = time.monotonic() + timeout_s
        while self._read(deadline):
            if time.monotonic() > deadline:
                raise AssertionError(f"stdout still open after {timeout_s:.0f} s:\n{self.text}")
        self.process.wait(timeout=max(1.0, deadline - time.monotonic()))
        return self.text


def _kafka_data_dir(processes: dict[int, tuple[int, str]]) -> Path:
    """The embedded broker's temporary data folder, read from its JVM's command line."""
    jvms = [cmd for _, cmd in processes.values() if "kafka.Kafka" in cmd]
    assert len(jvms) == 1, jvms
    found = re.search(r"-Dlog4j2\.configurationFile=(\S+)/log4j2\.properties", jvms[0])
    assert found, jvms[0]
    return Path(found.group(1))


def _assert_a_whole_stack(processes: dict[int, tuple[int, str]]) -> None:
    """The run did start what the test means to see stopped (else it would prove nothing)."""
    commands = " ".join(cmd for _, cmd in processes.values())
    for part in ("raylet", "gcs_server", "kafka.Kafka", "ray::"):
        assert part in commands, f"no {part} among the run's processes: {commands[:2000]}"


class _Run:
    """A command run by a test: its process, the processes of the stack it started (recorded
    once up), and those still alive after it ended (filled on the way out)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.stack: dict[int, tuple[int, str]] = {}
        self.left: list[str] = []


@contextlib.contextmanager
def _running(tmp_path: Path, mark: str, *command: str) -> Iterator[_Run]:
    """Start ``recsys COMMAND``; on the way out kill it if still running, note which of its
    stack's processes outlived it (``left``) and kill those, so no test leaves any behind."""
    run = _Run(_start(tmp_path, mark, *command))
    try:
        yield run
    finally:
        if run.process.poll() is None:
            run.process.kill()
        run.left = _survivors(run.stack)
        _kill_all(run.stack)


def _no_crash_dump(text: str) -> None:
    dumps = [line for line in text.splitlines() if any(dump in line for dump in CRASH_DUMP)]
    assert not dumps, text


@pytest.mark.integration
def test_sigterm_stops_serve_in_order_with_a_last_checkpoint_and_leaves_no_process(
        tmp_path) -> None:
    mark, port = uuid.uuid4().hex, free_port()
    with _running(tmp_path, mark, "serve", "--port", str(port), "--no-lake") as run:
        server = run.process
        stdout = _Stdout(server)
        deadline = time.monotonic() + 150
        while True:
            assert server.poll() is None, (tmp_path / "stderr").read_text()
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "recsys serve never became healthy"
            time.sleep(0.5)
        run.stack = _processes_of(server.pid, mark)
        _assert_a_whole_stack(run.stack)
        assert "haproxy" in " ".join(cmd for _, cmd in run.stack.values())
        kafka_dir = _kafka_data_dir(run.stack)
        signalled_ms = time.time() * 1000
        server.send_signal(signal.SIGTERM)
        out = stdout.rest(timeout_s=120)
    left = run.left
    err = (tmp_path / "stderr").read_text()
    assert server.returncode == 0, out + err
    _no_crash_dump(out + err)
    stopping = [line for line in out.splitlines() if "SIGTERM received" in line]
    assert stopping == ["recsys serve: SIGTERM received, stopping the serving app, the pipeline "
                        "(with a last checkpoint), the local Ray instance, the embedded Kafka "
                        "broker (a second signal forces the exit)"], out
    assert re.search(r"^recsys serve: stopped in \d+\.\d s$", out, re.M), out
    assert left == [], "left running after the stop:\n" + "\n".join(left)
    assert not kafka_dir.exists()
    store = CheckpointStore(str(next((tmp_path / "state" / "checkpoints").iterdir())))
    newest = store.read(store.list()[-1])
    assert (newest.created_ms or 0) >= signalled_ms  # the last checkpoint, taken on the way out


@pytest.mark.integration
def test_ctrl_c_stops_stream_and_a_second_one_forces_the_exit_killing_every_child(
        tmp_path) -> None:
    mark = uuid.uuid4().hex
    with _running(tmp_path, mark, "stream", "--no-lake") as run:
        stream = run.process
        stdout = _Stdout(stream)
        stdout.until("recsys stream: kafka", timeout_s=150)
        run.stack = _processes_of(stream.pid, mark)
        _assert_a_whole_stack(run.stack)
        kafka_dir = _kafka_data_dir(run.stack)
        os.killpg(stream.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole group
        stdout.until("recsys stream: SIGINT received", timeout_s=30)
        os.killpg(stream.pid, signal.SIGINT)  # again, while it stops
        out = stdout.rest(timeout_s=60)
    left = run.left
    err = (tmp_path / "stderr").read_text()
    assert stream.returncode == 128 + signal.SIGINT, out + err
    _no_crash_dump(out + err)
    assert ("recsys stream: SIGINT received, stopping the pipeline (with a last checkpoint), the "
            "local Ray instance, the embedded Kafka broker (a second signal forces the exit)\n"
            ) in out
    assert re.search(r"^recsys stream: SIGINT again: forced exit, \d+ child processes killed$",
                     out, re.M), out
    assert left == [], "left running after the forced exit:\n" + "\n".join(left)
    assert not kafka_dir.exists()  # deleted by the forced exit too


# -- the signal handling alone, on a small process tree (fast, no services) ----------------------

_TREE = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    from pathlib import Path
    from recsys import shutdown
    from recsys.shutdown import at_forced_exit, stop_on_signals

    folder, mode = Path(sys.argv[1]), sys.argv[2]
    at_forced_exit(lambda: (folder / "forced-action-ran").touch())
    with stop_on_signals("tree", deadline_s=float(sys.argv[3])) as stopping:
        # a child with a grandchild, in a session of their own: a signal to us reaches neither
        # ``: > settled`` is a builtin: once it exists, mv has exited and been reaped, so the
        # tree is exactly sh and sleep (a loaded machine showed mv still alive at "ready")
        child = subprocess.Popen(["sh", "-c", "sleep 600 & echo $! > grandchild.tmp; "
                                  "mv grandchild.tmp grandchild; : > settled; wait"],
                                 cwd=folder, start_new_session=True)
        stopping.started("the sleepers")
        stopping.keeps("the cluster")
        try:
            while not (folder / "settled").exists():
                time.sleep(0.01)
            if mode == "deferred":  # the signal comes inside a package that must not be cut
                (folder / "slow").mkdir()
                (folder / "slow" / "__init__.py").write_text(
                    "import time\\n"
                    "def work(folder):\\n"
                    "    print('ready', flush=True)\\n"
                    "    while not (folder / 'release').exists():\\n"
                    "        time.sleep(0.01)\\n"
                    "    (folder / 'work-finished').touch()\\n")
                sys.path.insert(0, str(folder))
                import slow
                shutdown.DEFER_INSIDE = ("slow",)
                slow.work(folder)
                stopping.check()
            print("ready", flush=True)
            time.sleep(600)
        finally:
            while mode == "stuck":  # a stop that never ends
                time.sleep(600)
            if mode == "orphan":  # the child ends, its child (orphaned) goes on
                os.kill(child.pid, signal.SIGKILL)
            else:
                os.killpg(child.pid, signal.SIGTERM)
            child.wait()
            (folder / "cleaned").touch()
    print("returned", flush=True)
""")


def _tree(tmp_path: Path, mode: str, deadline_s: float = 600
          ) -> tuple[subprocess.Popen[bytes], _Stdout]:
    """The script above, once its processes run: a child ``sh`` and its child ``sleep``."""
    process = subprocess.Popen([sys.executable, "-c", _TREE, str(tmp_path), mode,
                                str(deadline_s)],
                               cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    stdout = _Stdout(process)
    stdout.until("ready", timeout_s=60)
    return process, stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_unwinds_the_block_and_exits_normally(tmp_path, signum) -> None:
    process, stdout = _tree(tmp_path, "orderly")
    process.send_signal(signum)
    lines = stdout.rest(timeout_s=30).splitlines()
    assert process.returncode == 0
    assert process.stderr is not None and process.stderr.read() == b""
    name = signal.Signals(signum).name
    assert lines[:2] == ["ready", f"tree: {name} received, stopping the sleepers; leaving the "
                                  "cluster running (a second signal forces the exit)"]
    assert re.fullmatch(r"tree: stopped in \d+\.\d s", lines[2])
    assert lines[3:] == ["returned"]
    assert (tmp_path / "cleaned").exists() and not (tmp_path / "forced-action-ran").exists()


def test_a_second_signal_kills_the_whole_tree_even_when_the_stop_hangs(tmp_path) -> None:
    process, stdout = _tree(tmp_path, "stuck")
    tree = descendants(process.pid)
    assert int((tmp_path / "grandchild").read_text()) in tree and len(tree) == 2
    processes = {pid: ident for pid in tree if (ident := _identity(pid)) is not None}
    process.send_signal(signal.SIGTERM)
    stdout.until("tree: SIGTERM received", timeout_s=10)
    process.send_signal(signal.SIGINT)
    lines = stdout.rest(timeout_s=30).splitlines()
    left = _survivors(processes)
    _kill_all(processes)
    assert process.returncode == 128 + signal.SIGINT
    assert lines[2:] == ["tree: SIGINT again: forced exit, 2 child processes killed"]
    assert process.stderr is not None and process.stderr.read() == b""
    assert left == []
    assert (tmp_path / "forced-action-ran").exists() and not (tmp_path / "cleaned").exists()


def test_a_stop_that_takes_longer_than_the_deadline_is_forced(tmp_path) -> None:
    process, stdout = _tree(tmp_path, "stuck", deadline_s=1)
    processes = {pid: ident for pid in descendants(process.pid)
                 if (ident := _identity(pid)) is not None}
    process.send_signal(signal.SIGTERM)
    lines = stdout.rest(timeout_s=30).splitlines()
    left = _survivors(processes)
    _kill_all(processes)
    assert process.returncode == 128 + signal.SIGTERM
    assert lines[2:] == ["tree: the stop took over 1 s: forced exit, 2 child processes killed"]
    assert left == [] and len(processes) == 2


def test_an_orphan_of_the_command_is_killed_and_named_after_the_block(tmp_path) -> None:
    process, stdout = _tree(tmp_path, "orphan")
    grandchild = int((tmp_path / "grandchild").read_text())
    identity = _identity(grandchild)
    process.send_signal(signal.SIGINT)
    lines = stdout.rest(timeout_s=30).splitlines()
    assert process.returncode == 0
    assert lines[3:] == [f"tree: killed 1 processes left behind: {grandchild} sleep", "returned"]
    assert _survivors({grandchild: identity}) == []


def test_a_signal_inside_a_package_that_must_not_be_cut_stops_at_the_next_check(tmp_path
                                                                                  ) -> None:
    process, stdout = _tree(tmp_path, "deferred")
    process.send_signal(signal.SIGTERM)
    stdout.until("tree: SIGTERM received", timeout_s=10)
    assert not (tmp_path / "work-finished").exists()
    (tmp_path / "release").touch()
    lines = stdout.rest(timeout_s=30).splitlines()
    assert process.returncode == 0
    assert (tmp_path / "work-finished").exists() and (tmp_path / "cleaned").exists()
    assert re.fullmatch(r"tree: stopped in \d+\.\d s", lines[2]) and lines[3:] == ["returned"]
