"""Progress output with one rule for every command: a live bar (or a status line redrawn in place)
only when the output is a terminal; otherwise a plain line every ``interval_s`` seconds and one at
the end, so that a log file gets readable lines instead of thousands of carriage-return updates.
"""

from __future__ import annotations

import math
import sys
import time
from typing import IO, Any

from tqdm import tqdm

PLAIN_INTERVAL_S = 30.0
"""Seconds between two plain progress lines when the output is not a terminal."""

__all__ = ["PLAIN_INTERVAL_S", "PlainProgress", "ProgressBar", "StatusLine", "is_terminal",
           "progress_bar"]


def is_terminal(stream: IO[str] | None) -> bool:
    """Whether ``stream`` is an interactive terminal (false for files, pipes and None)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class PlainProgress:
    """The part of tqdm's interface the project uses (``n``, ``total``, ``update``,
    ``set_postfix_str``, ``close``), written as one plain line every ``interval_s`` seconds and
    once at the end: ``desc: 12/60 s (20%), postfix``."""

    def __init__(self, total: float | None = None, *, desc: str = "", unit: str = "it",
                 file: IO[str] | None = None, disable: bool = False,
                 interval_s: float = PLAIN_INTERVAL_S) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.file = file
        self.disable = disable
        self.interval_s = float(interval_s)
        self.postfix = ""
        self._n: float = 0
        self._last_line_at = time.monotonic()
        self._closed = False

    @property
    def n(self) -> float:
        return self._n

    @n.setter
    def n(self, value: float) -> None:
        self._n = value
        self._maybe_write()

    def update(self, n: float = 1) -> None:
        self.n = self._n + n

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s
        self._maybe_write()

    def line(self) -> str:
        """The progress as one line of text."""
        done = f"{self._n:g}"
        if self.total:
            done += f"/{self.total:g} {self.unit} ({100 * self._n / self.total:.0f}%)"
        else:
            done += f" {self.unit}"
        head = f"{self.desc}: " if self.desc else ""
        return head + done + (f", {self.postfix}" if self.postfix else "")

    def _write(self) -> None:
        if not self.disable:
            print(self.line(), file=self.file or sys.stderr, flush=True)
        self._last_line_at = time.monotonic()

    def _maybe_write(self) -> None:
        if not self._closed and time.monotonic() - self._last_line_at >= self.interval_s:
            self._write()

    def close(self) -> None:
        """Write the final line (once)."""
        if not self._closed:
            self._write()
            self._closed = True

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


ProgressBar = tqdm | PlainProgress
"""What :func:`progress_bar` returns."""


def progress_bar(total: float | None = None, *, desc: str = "", unit: str = "it",
                 file: IO[str] | None = None, disable: bool = False,
                 interval_s: float = PLAIN_INTERVAL_S, **tqdm_options: Any) -> ProgressBar:
    """A tqdm bar on ``file`` (default stderr) when it is a terminal, else :class:`PlainProgress`
    lines every ``interval_s`` seconds; ``tqdm_options`` (``bar_format``, ``leave``, ...) only
    shape the terminal bar."""
    stream = file or sys.stderr
    if is_terminal(stream):
        return tqdm(total=total, desc=desc, unit=unit, file=stream, disable=disable,
                    **tqdm_options)
    return PlainProgress(total, desc=desc, unit=unit, file=stream, disable=disable,
                         interval_s=interval_s)


class StatusLine:
    """A one-line status that a long-running command refreshes often: redrawn in place on a
    terminal; otherwise printed as a plain line, the first one at once and then one every
    ``interval_s`` seconds."""

    def __init__(self, file: IO[str] | None = None, interval_s: float = PLAIN_INTERVAL_S) -> None:
        self.file = file or sys.stdout
        self.terminal = is_terminal(self.file)
        self.interval_s = float(interval_s)
        self._last_line_at = -math.inf
        self._drawn = False

    def show(self, text: str) -> None:
        """Show ``text`` as the current status."""
        if self.terminal:
            self.file.write(f"\r{text}   ")
            self._drawn = True
        elif time.monotonic() - self._last_line_at >= self.interval_s:
            self.file.write(f"{text}\n")
            self._last_line_at = time.monotonic()
        else:
            return
        self.file.flush()

    def close(self) -> None:
        """End the line redrawn in place, so that what is printed next starts on its own."""
        if self._drawn:
            self.file.write("\n")
            self.file.flush()
            self._drawn = False
