"""An orderly stop on SIGTERM and SIGINT for the commands that run until stopped (``recsys serve``,
``recsys stream``): the same stop for Kubernetes' SIGTERM and a terminal's Ctrl-C.

The first signal prints one line naming what will stop and raises :class:`StopRequested` in the
main thread (at once, or, when that thread is inside Ray, at its next :meth:`Stopping.check`), so
the context managers that started things (the serving app, the pipeline with its last checkpoint,
Ray, an embedded Kafka broker) stop them in order on the way out; the command then exits 0,
since a stop that was asked for and completed is a success (what Kubernetes expects after a clean
drain). A second signal during that stop, or a stop that takes over :data:`STOP_DEADLINE_S`,
forces the exit: every process descending from this one is frozen and
killed, and the command exits 128 + the signal number. The signals are counted by a watcher thread
that reads the signal wakeup fd, so the exit is forced even while the main thread is stuck in
native code (a Ray call, a join).

No process outlives the command: it is the subreaper of what it starts (an orphan is re-parented
to it, not to init), and after the block whatever it started that still runs is killed and named.
Only its own descendants are touched: a Ray cluster or a Kafka broker it connected to but did not
start is left running.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator
from types import FrameType
from typing import IO, NoReturn

from recsys.progress import is_terminal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""The signals that ask a long-running command to stop."""

STOP_DEADLINE_S = 30.0
"""Seconds an orderly stop may take before the exit is forced (Kubernetes' default grace period:
it kills the pod then). A stop that cannot reach a service (e.g. a signal sent to the whole
process group or cgroup stopped Ray's own processes at once) ends here instead of hanging."""

DEFER_INSIDE = ("ray",)
"""Packages inside which the first signal does not raise at once but at the next
:meth:`Stopping.check` (Ray's native code calls back into Python and does not expect the
exception)."""

LEFT_BEHIND_GRACE_S = 2.0
"""Seconds a process that the command started may take to exit after the command's block ends,
before it is killed as left behind."""

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
_forced_exit_actions: list[Callable[[], None]] = []


class StopRequested(BaseException):
    """A stop signal arrived; raised in the main thread. A BaseException (like KeyboardInterrupt),
    so ``except Exception`` in cleanup code does not swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"{signal.Signals(signum).name} received")
        self.signum = signum


class Stopping:
    """What :func:`stop_on_signals` yields: the parts that a stop would end, named as they start,
    so that the line printed on the first signal says what it stops and what it leaves running;
    and :meth:`check`, for the points where a stop that had to wait is raised."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.parts: list[str] = []
        self.kept: list[str] = []
        self.signum: int | None = None
        self.since: float | None = None
        self.raised = False
        self.done = False

    def check(self) -> None:
        """Raise :class:`StopRequested` if a stop signal came while the main thread was inside
        Ray (where an exception raised from a signal handler can surface as a SystemError from
        its native code, not as itself); call it where the command can stop."""
        if self.signum is not None and not self.raised and not self.done:
            self.raised = True
            raise StopRequested(self.signum)

    def started(self, part: str) -> None:
        """Name a part that the stop will end (they stop in reverse order of start)."""
        self.parts.append(part)

    def keeps(self, part: str) -> None:
        """Name a part that the stop leaves running (a cluster this command only connected to)."""
        self.kept.append(part)

    def line(self, signum: int) -> str:
        """The line printed on the first signal."""
        parts = ", ".join(reversed(self.parts)) or "what has started so far"
        kept = f"; leaving {', '.join(self.kept)} running" if self.kept else ""
        return (f"{self.command}: {signal.Signals(signum).name} received, stopping {parts}{kept} "
                "(a second signal forces the exit)")


def at_forced_exit(action: Callable[[], None]) -> Callable[[], None]:
    """Run ``action`` (quick, e.g. deleting a temporary folder) after the processes are killed by
    a forced exit; returns a function that unregisters it."""
    _forced_exit_actions.append(action)
    return lambda: _remove(action)


def _remove(action: Callable[[], None]) -> None:
    with contextlib.suppress(ValueError):
        _forced_exit_actions.remove(action)


@contextlib.contextmanager
def stop_on_signals(command: str, *, deadline_s: float = STOP_DEADLINE_S,
                    out: IO[str] | None = None) -> Iterator[Stopping]:
    """Stop the block in order on the first SIGTERM or SIGINT (its :class:`StopRequested` ends
    here, so the command goes on to exit 0); force the exit on a second signal, or when the stop
    takes more than ``deadline_s``. Any process started in the block and still running after it
    (one orphaned by a crashed parent included: this process is made their subreaper) is killed
    and named. The previous handlers are restored after the block. Outside the main thread it
    only yields."""
    stopping = Stopping(command)
    if threading.current_thread() is not threading.main_thread():
        yield stopping
        return
    stream = out or sys.stdout

    def first_signal(signum: int, frame: FrameType | None) -> None:
        if stopping.signum is not None or stopping.done:
            return  # the watcher thread forces the exit; or the block is over
        stopping.signum, stopping.since = signum, time.monotonic()
        _write_line(stream, stopping.line(signum))
        if not _inside(frame, DEFER_INSIDE):
            stopping.check()  # raises now; inside Ray, at the next check

    already_running = descendants(os.getpid())
    was_subreaper = _subreaper(True)
    previous = current_handlers()
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    watcher = threading.Thread(target=_watch, args=(read_end, stopping, deadline_s, stream),
                               daemon=True, name="stop-signal-watcher")
    watcher.start()
    for signum in STOP_SIGNALS:
        signal.signal(signum, first_signal)
    try:
        yield stopping
    except StopRequested:
        took = time.monotonic() - (stopping.since or time.monotonic())
        _write_line(stream, f"{command}: stopped in {took:.1f} s")
    finally:
        stopping.done = True  # a first signal now changes nothing; a second still forces
        left = _kill_left_behind(already_running)
        if left:
            _write_line(stream, f"{command}: killed {len(left)} processes left behind: "
                                f"{', '.join(left)}")
        reinstall_stop_handlers(previous)
        signal.set_wakeup_fd(previous_fd)
        os.close(write_end)  # the watcher reads the end of the pipe and returns
        watcher.join(timeout=5)
        os.close(read_end)
        _subreaper(was_subreaper)


def _inside(frame: FrameType | None, packages: Collection[str]) -> bool:
    """Whether ``frame`` or one of its callers runs code of one of the imported ``packages``."""
    folders = tuple(os.path.dirname(module.__file__) + os.sep for name in packages
                    if (module := sys.modules.get(name)) is not None and module.__file__)
    while folders and frame is not None:
        if frame.f_code.co_filename.startswith(folders):
            return True
        frame = frame.f_back
    return False


def reinstall_stop_handlers(handlers: dict[int, object]) -> None:
    """Put back the Python handlers of ``handlers`` (from :func:`current_handlers`): Ray's
    ``ray.init`` replaces SIGTERM's, first with its own Python handlers, then, in its native core
    worker, with a crash handler that dumps a stack and aborts."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, handler in handlers.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def current_handlers() -> dict[int, object]:
    """The Python handlers of the stop signals now."""
    return {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}


def _watch(read_end: int, stopping: Stopping, deadline_s: float, stream: IO[str]) -> None:
    """Count the stop signals written to the wakeup fd: force the exit on the second, or once
    ``deadline_s`` has passed since the first; return when the pipe is closed."""
    first_at: float | None = None
    while True:
        timeout = None if first_at is None else max(0.0, first_at + deadline_s - time.monotonic())
        if not select.select([read_end], [], [], timeout)[0]:  # the deadline passed
            force_exit(stopping.signum or signal.SIGTERM, stream,
                       f"{stopping.command}: the stop took over {deadline_s:g} s")
        try:
            data = os.read(read_end, 64)
        except OSError:
            return
        if not data:
            return
        for signum in data:
            if signum in STOP_SIGNALS:
                if first_at is not None:
                    force_exit(signum, stream,
                               f"{stopping.command}: {signal.Signals(signum).name} again")
                first_at = time.monotonic()


def force_exit(signum: int, stream: IO[str] | None = None, why: str = "forced") -> NoReturn:
    """Kill every process descending from this one (frozen first, so none starts another while
    they are killed), run the :func:`at_forced_exit` actions and exit 128 + ``signum`` at once;
    ``why`` begins the line that says so."""
    killed = kill_descendants()
    _write_line(stream or sys.stdout, f"{why}: forced exit, {len(killed)} child processes killed",
                flush=False)  # the main thread may hold the stream's lock
    for action in list(_forced_exit_actions):
        with contextlib.suppress(Exception):
            action()
    os._exit(128 + signum)


def descendants(pid: int) -> set[int]:
    """The live processes descending from ``pid`` now (children, theirs, ...; zombies, which
    have exited, left out), read from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def kill_descendants(pid: int | None = None, *, exclude: Collection[int] = (),
                     rounds: int = 10) -> list[str]:
    """SIGSTOP the processes descending from ``pid`` (default: this one), but not those in
    ``exclude``, until no new one appears, then SIGKILL them all; returns them as ``"pid name"``.
    """
    root = os.getpid() if pid is None else pid
    frozen: dict[int, str] = {}
    for _ in range(rounds):
        new = descendants(root) - set(exclude) - frozen.keys()
        if not new:
            break
        for child in new:
            frozen[child] = f"{child} {_name(child)}"
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGSTOP)
    for child in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    return sorted(frozen.values())


def _kill_left_behind(already_running: Collection[int]) -> list[str]:
    """Kill what this process started and is still running after :data:`LEFT_BEHIND_GRACE_S`
    (a process that was just told to stop may still be exiting); returns them as "pid name"."""
    deadline = time.monotonic() + LEFT_BEHIND_GRACE_S
    while descendants(os.getpid()) - set(already_running) and time.monotonic() < deadline:
        time.sleep(0.05)
    return kill_descendants(exclude=already_running)


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip()
    except OSError:
        return "?"


def _subreaper(on: bool) -> bool:
    """Make this process the subreaper of its descendants (orphans are re-parented to it, not to
    init, so they stay among its descendants) or stop being one; returns the previous state.
    Linux only: elsewhere it does nothing and returns False."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        before = ctypes.c_int(0)
        libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(before), 0, 0, 0)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)
    except (OSError, AttributeError):
        return False
    return bool(before.value)


def _write_line(stream: IO[str], text: str, flush: bool = True) -> None:
    """Write a line from a signal handler or thread: straight to the file descriptor, since the
    main thread may be inside a write to the same buffered stream (a reentrant write raises)."""
    prefix = "\n" if is_terminal(stream) else ""  # after a status line redrawn in place
    if flush:  # what was printed before comes first
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            stream.flush()
    with contextlib.suppress(OSError, ValueError):
        os.write(stream.fileno(), f"{prefix}{text}\n".encode())
