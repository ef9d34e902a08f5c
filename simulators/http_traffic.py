"""The simulator's users as HTTP traffic for a live serving app (the closed-loop demo).

``HttpUsers`` plays the simulator's users against a serving app on this machine: each round it
samples requests from the simulator, asks ``POST /recommend`` for a slate per request
(concurrently, over the shared client transport ``recsys.client.http``, which retries 503), lets
the simulator's choice model click, and posts the clicks to ``POST /feedback`` as one batched
list (every click: the position-based choice model can click several items of a slate). It counts
requests, clicks and *expected* clicks (``SlateSimulator.expected_clicks`` of each served slate
under the choice model, a lower-variance CTR) per policy arm and per round, and counts every HTTP
error by status.

Wire ids: a user is ``f"u{user_index}"`` (``user_id_on_wire``), the same ids that
``write_user_features`` writes into the user-feature table the serving app loads; an item id is
the simulator's item index. Only loopback servers are accepted (``recsys.client.guard``):
simulated clicks must never reach a real service's logs.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys import schema
from recsys.client.http import JsonClient
from recsys.validation import message
from simulators.model import Requests, SlateSimulator

USER_PREFIX = "u"
FEEDBACK_BATCH = 10_000
"""Events per ``POST /feedback`` at most (``recsys.serving.schemas.MAX_FEEDBACK_BATCH``)."""
MAX_ERROR_MESSAGES = 20
_CHUNK_CELLS = 2**22

HISTORY_SCHEMA: dict[str, Any] = {
    "round": pl.Int64,
    "wall_time_s": pl.Float64,
    "elapsed_s": pl.Float64,
    "arm": pl.String,
    "requests": pl.Int64,
    "clicks": pl.Int64,
    "expected_clicks": pl.Float64,
}


def user_id_on_wire(user_index: int | np.ndarray) -> str | list[str]:
    """The serving app's id of simulator user ``user_index``: ``"u{index}"``."""
    if isinstance(user_index, np.ndarray):
        return [f"{USER_PREFIX}{i}" for i in user_index.tolist()]
    return f"{USER_PREFIX}{int(user_index)}"


# ------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class ArmCounts:
    """Traffic of one policy arm: requests served, clicks, and expected clicks."""

    requests: int = 0
    clicks: int = 0
    expected_clicks: float = 0.0

    @property
    def ctr(self) -> float:
        """Clicks per served request (NaN with no requests)."""
        return self.clicks / self.requests if self.requests else float("nan")

    @property
    def expected_ctr(self) -> float:
        """Expected clicks per served request under the choice model: the arm's value as
        served, with the click coin flips averaged out."""
        return self.expected_clicks / self.requests if self.requests else float("nan")

    def __add__(self, other: ArmCounts) -> ArmCounts:
        return ArmCounts(
            self.requests + other.requests,
            self.clicks + other.clicks,
            self.expected_clicks + other.expected_clicks,
        )


@dataclass(frozen=True)
class RoundResult:
    """One round: ``sent`` requests, ``served`` of them got a valid slate; ``errors`` counts
    this round's failures by status (``"503"``, ``"422"``, ``"transport"``, ...)."""

    round_index: int
    wall_time_s: float
    """``time.time()`` when the round ended."""
    elapsed_s: float
    """Seconds since this ``HttpUsers`` started its first round."""
    duration_s: float
    sent: int
    served: int
    arms: dict[str, ArmCounts]
    feedback_posted: int
    feedback_accepted: int
    retries_503: int
    errors: dict[str, int]

    @property
    def clicks(self) -> int:
        return sum(a.clicks for a in self.arms.values())


@dataclass
class HttpErrors:
    """Every failed call, counted by status (``"503"``, ``"transport"``, ``"invalid_response"``,
    ...) with the first ``MAX_ERROR_MESSAGES`` messages kept; ``retries_503`` counts retries."""

    by_status: Counter[str] = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)
    retries_503: int = 0

    def add(self, status: str, message: str) -> None:
        self.by_status[status] += 1
        if len(self.messages) < MAX_ERROR_MESSAGES:
            self.messages.append(message)

    @property
    def total(self) -> int:
        return sum(self.by_status.values())

    def by_class(self) -> dict[str, int]:
        """Counts grouped as ``4xx``, ``5xx`` and the non-HTTP kinds."""
        out: Counter[str] = Counter()
        for status, n in self.by_status.items():
            out[f"{status[0]}xx" if status.isdigit() else status] += n
        return dict(out)


@dataclass(frozen=True)
class ServedValue:
    """The true value of served slates: expected clicks per request over the simulator's user
    distribution. ``user_coverage`` is the user weight the slates cover (1: every user)."""

    value: float
    standard_error: float
    user_coverage: float
    n_slates: int


# ------------------------------------------------------------------------------- the client
class HttpUsers:
    """The simulator's users, sent to a serving app on this machine over HTTP.

    ``send_context``: True sends ``context.dense`` = the user's observable features (rounded to
    float32, as in the user-feature table); False sends only ``user_id`` so the server looks the
    user up in its table (see ``write_user_features``). ``policy``: force one arm; by default the
    server's traffic split picks and the arm is read from the response. ``seed`` fixes the
    client's draws (users, clicks); the server's randomness is its own. ``concurrency`` bounds the
    requests in flight; it and the 503-retry and timeout settings configure the transport
    (``recsys.client.http.JsonClient``); ``token`` is the server's ``serve.auth_token``, sent as
    a bearer token.
    """

    def __init__(
        self,
        base_url: str,
        sim: SlateSimulator,
        k: int | None = None,
        *,
        send_context: bool = True,
        concurrency: int = 32,
        seed: int = 0,
        policy: str | None = None,
        max_retries_503: int = 5,
        backoff_s: float = 0.05,
        max_backoff_s: float = 1.0,
        request_timeout_s: float = 10.0,
        keep_served: bool = True,
        token: str | None = None,
    ) -> None:
        self.sim = sim
        self.k = sim.config.slate_size if k is None else k
        if not 1 <= self.k <= sim.config.slate_size:
            raise ValueError(
                f"k must be in [1, sim.config.slate_size={sim.config.slate_size}] (the choice "
                f"model has examination weights for that many positions), got {self.k}"
            )
        if not (isinstance(concurrency, int) and concurrency >= 1):
            raise ValueError(f"concurrency: expected an integer >= 1, got {concurrency!r}")
        self.client = JsonClient(base_url, max_connections=concurrency,
                                 timeout_s=request_timeout_s, max_retries_503=max_retries_503,
                                 backoff_s=backoff_s, max_backoff_s=max_backoff_s, token=token)
        self.send_context = send_context
        self.concurrency = concurrency
        self.policy = policy
        self.keep_served = keep_served
        self.rng = np.random.default_rng(seed)
        self.errors = HttpErrors()
        self.rounds: list[RoundResult] = []
        self._rows: list[tuple] = []
        self._served: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {}
        self._t0: float | None = None

    async def __aenter__(self) -> HttpUsers:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session (a later round opens a new one)."""
        await self.client.aclose()

    # ---------------------------------------------------------------------------- calls
    async def _post(self, path: str, payload: Any, errors: Counter[str]) -> Any | None:
        """POST JSON (503 retried by the client); the body, or None with the failure counted."""
        reply = await self.client.post_json(path, payload)
        if reply.retries_503:
            self.errors.retries_503 += reply.retries_503
            errors["retries_503"] += reply.retries_503
        if reply.ok:
            return reply.body
        self.errors.add(reply.status, reply.error or reply.status)
        errors[reply.status] += 1
        return None

    async def _recommend(
        self, payload: dict, gate: asyncio.Semaphore, errors: Counter[str]
    ) -> dict | None:
        async with gate:
            return await self._post("/recommend", payload, errors)

    def _payloads(self, requests: Requests) -> list[dict]:
        ids = user_id_on_wire(requests.user_id)
        base: dict[str, Any] = {"k": self.k}
        if self.policy is not None:
            base["policy"] = self.policy
        if not requests.available.all():  # new-item arrivals: the server cannot know them
            base["candidates"] = np.flatnonzero(requests.available).tolist()
        if not self.send_context:
            return [{"user_id": u, **base} for u in ids]
        dense = requests.context.astype(np.float32).tolist()
        pairs = zip(ids, dense, strict=True)
        return [{"user_id": u, "context": {"dense": d}, **base} for u, d in pairs]

    def _valid(self, body: dict, available: np.ndarray, errors: Counter[str]) -> bool:
        """A usable slate: k distinct, existing, available items and the fields feedback needs."""
        try:
            items = np.asarray(body["items"], dtype=np.int64)
            ok = (
                isinstance(body["request_id"], str)
                and isinstance(body["policy"], str)
                and isinstance(body["user_id"], str)
                and items.shape == (self.k,)
                and items.min() >= 0
                and items.max() < self.sim.config.n_items
                and np.unique(items).size == self.k
                and bool(available[items].all())
            )
            reason = f"items={body['items']!r} (want {self.k} distinct available item ids)"
        except (KeyError, TypeError, ValueError) as exc:
            ok, reason = False, f"{type(exc).__name__}: {exc}"
        if not ok:
            self.errors.add("invalid_response", f"POST /recommend -> 200 but unusable: {reason}")
            errors["invalid_response"] += 1
        return ok

    # ---------------------------------------------------------------------------- rounds
    async def run_round(self, n_requests: int) -> RoundResult:
        """One round: ``n_requests`` users ask for slates, click, and their clicks are posted."""
        if n_requests < 1:
            raise ValueError(message("n_requests", "an integer >= 1", n_requests))
        start = time.monotonic()
        if self._t0 is None:
            self._t0 = start
        errors: Counter[str] = Counter()
        requests = self.sim.sample_requests(n_requests, rng=self.rng)
        gate = asyncio.Semaphore(self.concurrency)
        bodies = await asyncio.gather(
            *(self._recommend(p, gate, errors) for p in self._payloads(requests))
        )
        ok = np.array(
            [b is not None and self._valid(b, requests.available, errors) for b in bodies],
            dtype=bool,
        )
        rows = np.flatnonzero(ok)
        arms: dict[str, ArmCounts] = {}
        posted = accepted = 0
        round_index = len(self.rounds)
        if rows.size:
            served = [bodies[i] for i in rows]
            slates = np.array([b["items"] for b in served], dtype=np.int64)
            kept = Requests(
                requests.user_id[rows], requests.context[rows], requests.time[rows],
                requests.available,
            )
            expected = self.sim.expected_clicks(kept.user_id, slates)  # before the state moves
            responses = self.sim.respond(kept, slates, rng=self.rng)
            arm_of = np.array([b["policy"] for b in served])
            for arm in np.unique(arm_of).tolist():
                mask = arm_of == arm
                arms[arm] = ArmCounts(
                    int(mask.sum()),
                    int(responses.clicks[mask].sum()),
                    float(expected[mask].sum()),
                )
                if self.keep_served:
                    self._served.setdefault(arm, []).append(
                        (round_index, kept.user_id[mask].copy(), slates[mask])
                    )
            posted, accepted = await self._post_clicks(served, responses.clicks, errors)
        end = time.monotonic()
        result = RoundResult(
            round_index=round_index,
            wall_time_s=time.time(),
            elapsed_s=end - self._t0,
            duration_s=end - start,
            sent=n_requests,
            served=int(rows.size),
            arms=arms,
            feedback_posted=posted,
            feedback_accepted=accepted,
            retries_503=errors.pop("retries_503", 0),
            errors=dict(errors),
        )
        self.rounds.append(result)
        self._rows.extend(
            (round_index, result.wall_time_s, result.elapsed_s, arm, c.requests, c.clicks,
             c.expected_clicks)
            for arm, c in arms.items()
        )
        return result

    async def _post_clicks(
        self, served: list[dict], clicks: np.ndarray, errors: Counter[str]
    ) -> tuple[int, int]:
        """One feedback event per click (``clicks``: (n, k) 0/1 per served slot), posted as one
        list per round (chunked at ``FEEDBACK_BATCH``). Returns (events posted, accepted)."""
        now_ms = int(time.time() * 1000)
        rows, positions = np.nonzero(clicks)
        events = [
            {
                "request_id": served[i]["request_id"],
                "user_id": served[i]["user_id"],
                "item_id": int(served[i]["items"][p]),
                "position": int(p),
                "event_type": "click",
                "value": 1.0,
                "event_time_ms": now_ms,
            }
            for i, p in zip(rows.tolist(), positions.tolist(), strict=True)
        ]
        posted = accepted = 0
        for start in range(0, len(events), FEEDBACK_BATCH):
            batch = events[start : start + FEEDBACK_BATCH]
            posted += len(batch)
            body = await self._post("/feedback", batch, errors)
            if body is not None:
                n = int(body.get("accepted", 0)) if isinstance(body, dict) else 0
                accepted += n
                if n != len(batch):
                    self.errors.add(
                        "feedback_not_accepted",
                        f"POST /feedback accepted {n} of {len(batch)} events: {body!r:.300}",
                    )
                    errors["feedback_not_accepted"] += 1
        return posted, accepted

    async def run_async(
        self,
        *,
        duration_s: float | None = None,
        n_rounds: int | None = None,
        round_size: int = 100,
        on_round: Callable[[RoundResult], bool | None] | None = None,
        pause_s: float = 0.0,
    ) -> list[RoundResult]:
        """Rounds until ``duration_s`` has passed or ``n_rounds`` ran (whichever comes first);
        ``on_round(result)`` after each, returning False stops early. Closes the session."""
        if duration_s is None and n_rounds is None:
            raise ValueError("give duration_s or n_rounds (or both: the first reached stops)")
        start = time.monotonic()
        out: list[RoundResult] = []
        try:
            while (n_rounds is None or len(out) < n_rounds) and (
                duration_s is None or time.monotonic() - start < duration_s
            ):
                result = await self.run_round(round_size)
                out.append(result)
                if on_round is not None and on_round(result) is False:
                    break
                if pause_s:
                    await asyncio.sleep(pause_s)
        finally:
            await self.aclose()
        return out

    def run(self, **options: Any) -> list[RoundResult]:
        """Synchronous ``run_async`` (same keyword arguments) on its own event loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("HttpUsers.run() starts its own event loop; inside a running "
                               "loop use `await users.run_async(...)`")
        return asyncio.run(self.run_async(**options))

    # ------------------------------------------------------------------------ accounting
    def history(self) -> pl.DataFrame:
        """One row per (round, arm): requests, clicks, expected clicks, the round's CTRs and
        the arm's cumulative counts and CTRs so far."""
        frame = pl.DataFrame(self._rows, schema=HISTORY_SCHEMA, orient="row")
        cum = [pl.col(c).cum_sum().over("arm").alias(f"cum_{c}")
               for c in ("requests", "clicks", "expected_clicks")]
        return (
            frame.sort("round", "arm")
            .with_columns(*cum)
            .with_columns(
                ctr=pl.col("clicks") / pl.col("requests"),
                expected_ctr=pl.col("expected_clicks") / pl.col("requests"),
                cum_ctr=pl.col("cum_clicks") / pl.col("cum_requests"),
                cum_expected_ctr=pl.col("cum_expected_clicks") / pl.col("cum_requests"),
            )
        )

    def totals(self) -> dict[str, ArmCounts]:
        """Cumulative counts per arm over all rounds."""
        out: dict[str, ArmCounts] = {}
        for r in self.rounds:
            for arm, c in r.arms.items():
                out[arm] = out.get(arm, ArmCounts()) + c
        return out

    def served(self, arm: str, since_round: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(user indices (m,), slates (m, k)) that ``arm`` served from round ``since_round``
        on; needs ``keep_served``."""
        if not self.keep_served:
            raise ValueError("served slates are not kept: construct HttpUsers(keep_served=True)")
        parts = [(u, s) for r, u, s in self._served.get(arm, []) if r >= since_round]
        if not parts:
            return np.empty(0, dtype=np.int64), np.empty((0, self.k), dtype=np.int64)
        return np.concatenate([u for u, _ in parts]), np.concatenate([s for _, s in parts])

    def true_value(self, arm: str, since_round: int = 0) -> ServedValue:
        """``true_value_of_slates`` of the slates ``arm`` served from ``since_round`` on, in the
        simulator's current state."""
        users, slates = self.served(arm, since_round)
        if users.size == 0:
            raise ValueError(f"arm {arm!r} served nothing since round {since_round}; arms seen: "
                             f"{sorted(self._served)}")
        return true_value_of_slates(self.sim, users, slates)


# ------------------------------------------------------------------------------- helpers
def true_value_of_slates(
    sim: SlateSimulator, user_ids: np.ndarray | Sequence[int], slates: np.ndarray
) -> ServedValue:
    """The true value of the given (user, slate) pairs: expected clicks per request over the
    simulator's user distribution, in its current state.

    Each user's value is the mean expected clicks of the slates given for that user; users are
    then weighted by ``sim.user_weights``. One slate per user for every user is exact for a
    deterministic arm; the slates an arm served to sampled traffic give a consistent estimate,
    renormalised over the users they cover (``user_coverage``). ``standard_error`` is the
    weighted-mean sandwich error over slates: the policy's own randomness and, conservatively,
    the spread between users.
    """
    users = np.asarray(user_ids, dtype=np.int64)
    slates = np.asarray(slates)
    if users.ndim != 1 or slates.ndim != 2 or slates.shape[0] != users.size or users.size == 0:
        raise ValueError(f"need user_ids (m,) and slates (m, k) with m >= 1, got {users.shape} "
                         f"and {slates.shape}")
    n_users = sim.config.n_users
    if users.min() < 0 or users.max() >= n_users:
        raise ValueError(message("user_ids", f"simulator user indices in [0, {n_users})",
                                 f"values in [{users.min()}, {users.max()}]"))
    clicks = np.empty(users.size)
    step = max(1, _CHUNK_CELLS // (slates.shape[1] * sim.config.dim))
    for i in range(0, users.size, step):  # bounds the (rows, k, dim) utility intermediate
        rows = slice(i, i + step)
        clicks[rows] = sim.expected_clicks(users[rows], slates[rows])
    count = np.bincount(users, minlength=n_users)
    per_user = np.bincount(users, weights=clicks, minlength=n_users)
    covered = count > 0
    coverage = float(sim.user_weights[covered].sum())
    if coverage <= 0:
        raise ValueError("the given users all have zero arrival weight in the simulator")
    value = float(sim.user_weights[covered] @ (per_user[covered] / count[covered]) / coverage)
    a = sim.user_weights[users] / (count[users] * coverage)  # each slate's weight; they sum to 1
    se = float(np.sqrt(np.sum(a**2 * (clicks - value) ** 2)))
    return ServedValue(value, se, coverage, int(users.size))


def write_user_features(sim: SlateSimulator, path: str | Path) -> Path:
    """Write the simulator's observable user features as the serving app's user-feature table
    (``recsys.schema.USER_FEATURES``), users named ``"u{i}"``."""
    ids = user_id_on_wire(np.arange(sim.config.n_users))
    schema.write_user_features(path, ids, sim.user_features())
    return Path(path)
