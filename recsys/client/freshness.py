"""Freshness end to end, measured from outside: post a click, poll until the served score moves.

A probe item has no reward yet, so every policy that scores the posterior mean serves it with a
score of exactly 0 (no reward means zero reward sums, whatever the exposures: the probe's own
impressions and any other traffic's leave it at 0). The probe asks ``POST /recommend`` for that
item alone (``candidates=[item]``, a mean-scoring ``policy`` such as the uniform control, whose
score is the posterior mean), posts a click on that impression, and polls the same request until
the score is above 0: the time from the click's ``202`` to the first changed score is one
observation of click → Kafka → learner → shard → snapshot → replica. Like every client, it
only talks to a loopback server (``recsys.client.guard``), never through a proxy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import requests

from recsys.client.guard import check_loopback
from recsys.client.http import auth_headers


@dataclass
class FreshnessResult:
    """Click → changed score latencies (seconds) and the probes that timed out."""

    latencies_s: list[float] = field(default_factory=list)
    timeouts: int = 0
    skipped: list[str] = field(default_factory=list)

    def percentiles_ms(self) -> dict[str, float]:
        """p50, p99 and max in milliseconds (NaN when no probe got through)."""
        if not self.latencies_s:
            return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
        ms = np.asarray(self.latencies_s) * 1000
        return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
                "max": float(ms.max())}


PROBE_USER = "freshness-probe"


def _session(token: str | None = None) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # never via a proxy from the environment: the target is loopback
    session.headers.update(auth_headers(token))
    return session


def _probe_body(user_id: str, context: list[float], policy: str, item: int) -> dict[str, Any]:
    """``POST /recommend`` for ``item`` alone, scored by ``policy`` for this context."""
    return {"user_id": user_id, "context": {"dense": list(map(float, context))}, "k": 1,
            "candidates": [item], "policy": policy}


def wait_until_served(url: str, item: int, context: list[float], *, policy: str,
                      timeout_s: float = 30.0, token: str | None = None) -> None:
    """Block until the app at ``url`` serves ``item`` (e.g. just added to the catalogue: replicas
    see it with their next snapshot); ``TimeoutError`` with the last answer otherwise.
    ``token``: the server's ``serve.auth_token``."""
    check_loopback(url)
    body = _probe_body(PROBE_USER, context, policy, item)
    deadline = time.monotonic() + timeout_s
    with _session(token) as http:
        while True:
            response = http.post(f"{url}/recommend", json=body, timeout=30)
            if response.status_code == 200:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"item {item} was not served within {timeout_s:.0f} s; last "
                                   f"answer {response.status_code}: {response.text[:300]}")
            time.sleep(0.1)


def measure_freshness(url: str, items: list[int], context: list[float], *, policy: str,
                      user_id: str = PROBE_USER, timeout_s: float = 5.0,
                      poll_interval_s: float = 0.005,
                      token: str | None = None) -> FreshnessResult:
    """One probe per item in ``items`` (each must have no reward yet; see the module docs)
    against the app at ``url``; a probe whose score has not moved ``timeout_s`` after its click
    counts as a timeout. ``token``: the server's ``serve.auth_token``."""
    check_loopback(url)
    result = FreshnessResult()
    with _session(token) as http:
        def score(item: int) -> tuple[float, dict]:
            response = http.post(f"{url}/recommend", timeout=30,
                                 json=_probe_body(user_id, context, policy, item))
            response.raise_for_status()
            served = response.json()
            return served["scores"][0], served

        for item in items:
            first, served = score(item)
            if first != 0.0:
                result.skipped.append(f"item {item} already scores {first} (it has rewards)")
                continue
            click = {"request_id": served["request_id"], "user_id": user_id, "item_id": item,
                     "position": 0, "event_type": "click"}
            http.post(f"{url}/feedback", json=click, timeout=30).raise_for_status()
            clicked = time.perf_counter()
            while True:
                now, _ = score(item)
                elapsed = time.perf_counter() - clicked
                if now > 0.0:
                    result.latencies_s.append(elapsed)
                    break
                if elapsed > timeout_s:
                    result.timeouts += 1
                    break
                time.sleep(poll_interval_s)
    return result
