"""Synthetic impression + feedback traffic for smoke tests, the demo and Kafka benchmarks.

Slates come from a uniform random logging policy, so every shown item's propensity is exact:
the slate for a request is ``start, start + step, …`` modulo ``n_items`` with a uniform
``start`` and a step coprime to ``n_items``, hence P(item i at position k) = 1 / n_items.
Clicks are Bernoulli with a logistic model of user and item vectors, calibrated to a few percent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from recsys.events import Context, Feedback, Impression, SlateEntry
from recsys.validation import message

POLICY_NAME = "uniform-random"


@dataclass(frozen=True)
class SyntheticTraffic:
    impressions: list[Impression]
    feedback: list[Feedback]

    @property
    def n_events(self) -> int:
        return len(self.impressions) + len(self.feedback)

    def interleaved(self) -> list[Impression | Feedback]:
        """Events in event-time order, each impression before its feedback."""
        events: list[Impression | Feedback] = [*self.impressions, *self.feedback]
        events.sort(key=lambda e: e.event_time_ms)
        return events


def generate_traffic(
    n_events: int,
    n_users: int = 10_000,
    n_items: int = 1_000,
    dim: int = 8,
    slate_size: int = 5,
    base_ctr: float = 0.03,
    start_time_ms: int = 1_790_000_000_000,
    seed: int = 0,
) -> SyntheticTraffic:
    """Exactly ``n_events`` events: impressions and the click feedback they caused."""
    if n_events < 1:
        raise ValueError(message("n_events", "an integer >= 1", n_events))
    if not 1 <= slate_size <= n_items:
        raise ValueError(message("slate_size", f"an integer in [1, n_items={n_items}]", slate_size))
    rng = np.random.default_rng(seed)
    user_vecs = rng.normal(size=(n_users, dim)) / math.sqrt(dim)
    item_vecs = rng.normal(size=(n_items, dim))
    bias = math.log(base_ctr / (1 - base_ctr))

    n_requests = n_events  # an upper bound; trimmed below
    users = rng.integers(0, n_users, size=n_requests)
    steps_pool = np.array([s for s in range(1, n_items) if math.gcd(s, n_items) == 1] or [1])
    starts = rng.integers(0, n_items, size=n_requests)
    steps = rng.choice(steps_pool, size=n_requests)
    slates = (starts[:, None] + steps[:, None] * np.arange(slate_size)) % n_items
    noise = rng.normal(scale=0.1, size=(n_requests, dim))
    contexts = user_vecs[users] + noise
    logits = bias + np.einsum("rd,rkd->rk", contexts, item_vecs[slates])
    clicks = rng.random(size=logits.shape) < 1 / (1 + np.exp(-logits))

    per_request = 1 + clicks.sum(axis=1)
    cumulative = np.cumsum(per_request)
    n_full = int(np.searchsorted(cumulative, n_events, side="right"))
    remainder = n_events - (int(cumulative[n_full - 1]) if n_full else 0)
    # Fill the remainder with click-less requests so the total is exact.
    clicks[n_full : n_full + remainder] = False
    n_requests = n_full + remainder

    times = start_time_ms + np.arange(n_requests) * 7
    scores = rng.random(size=(n_requests, slate_size))
    propensity = 1.0 / n_items
    impressions: list[Impression] = []
    feedback: list[Feedback] = []
    slates_l, contexts_l, scores_l = slates.tolist(), contexts.round(5).tolist(), scores.tolist()
    users_l, times_l = users.tolist(), times.tolist()
    click_rows, click_pos = np.nonzero(clicks[:n_requests])
    delays = rng.integers(500, 30_000, size=click_rows.size).tolist()
    for r in range(n_requests):
        impressions.append(
            Impression(
                request_id=f"req-{seed}-{r}",
                event_time_ms=times_l[r],
                user_id=f"user-{users_l[r]}",
                context=Context(dense=tuple(contexts_l[r])),
                policy_name=POLICY_NAME,
                policy_version=1,
                slate=tuple(
                    SlateEntry(item_id=item, position=k, score=score, propensity=propensity)
                    for k, (item, score) in enumerate(zip(slates_l[r], scores_l[r], strict=True))
                ),
            )
        )
    for (r, k), delay in zip(
        zip(click_rows.tolist(), click_pos.tolist(), strict=True), delays, strict=True
    ):
        feedback.append(
            Feedback(
                request_id=f"req-{seed}-{r}",
                event_time_ms=times_l[r] + delay,
                user_id=f"user-{users_l[r]}",
                item_id=slates_l[r][k],
                position=k,
                event_type="click",
            )
        )
    return SyntheticTraffic(impressions, feedback)
