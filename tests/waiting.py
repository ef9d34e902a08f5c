"""Bounded waiting for tests: every loop that waits for a service has a deadline and a reason."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    condition: Callable[[], object], *, timeout_s: float, what: str, interval_s: float = 0.0
) -> None:
    """Call ``condition`` until it returns something true; fail naming ``what`` after
    ``timeout_s``. ``condition`` may do work each call (poll a consumer, drain a learner)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        if interval_s:
            time.sleep(interval_s)
