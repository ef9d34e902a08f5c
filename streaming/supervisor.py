"""What keeps a streaming pipeline running without a human: deadlines, retries, hooks.

``streaming.pipeline.StreamPipeline`` uses these pieces so that ``step``/``run_for``/
``run_to_end`` never raise for a transient failure:

* :class:`ActorCalls` is the only way the driver waits on actors: every wait has a deadline
  (``stream.actor_call_timeout_s``). An actor that does not answer in time is killed with
  ``ray.kill`` (``actor.deadline`` event) and reported, with the actors that died and those whose
  call failed with a transient Kafka error, as :class:`ActorsFailed` naming them, so the
  pipeline replaces exactly those. An exception inside an actor that is not transient is a bug
  and is raised as it is.
* :func:`is_transient` decides what a retry can cure: a Kafka or connection error
  (``recsys.kafka_clients.is_transient_kafka_error``), also when Ray wraps it in a
  ``RayTaskError`` raised inside an actor.
* :class:`Backoff` doubles the wait between failed attempts from ``stream.recovery_backoff_s`` to
  ``stream.recovery_backoff_max_s``; :class:`OutageClock` measures how long Kafka (or recovery)
  has been failing and raises :class:`PipelineFailed` beyond ``stream.kafka_outage_budget_s``.
* :class:`Hooks` lets tests and operators observe checkpoints, recoveries, outages, stuck readers
  and deadline kills (``hooks.subscribe(callback)`` → unsubscribe) without monkeypatching; a
  callback that raises is logged and never breaks the pipeline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray

from recsys.kafka_clients import is_transient_kafka_error

log = logging.getLogger(__name__)

KINDS = frozenset({
    "checkpoint.started", "checkpoint.completed", "checkpoint.failed",
    "recovery.started", "recovery.completed", "recovery.failed",
    "kafka.unreachable", "kafka.reachable", "reader.stuck", "actor.deadline",
})
"""Every ``PipelineEvent.kind`` (what its ``detail`` holds: README, "Supervision")."""

ACTOR_START_TIMEOUT_S = 120.0
"""Deadline of the first call on a freshly built actor: Ray starts a worker process and the
constructor connects to Kafka, which on a loaded machine takes far longer than a call."""


@dataclass(frozen=True)
class PipelineEvent:
    """One thing the supervisor did or saw: ``kind`` (see :data:`KINDS`), when
    (``time.monotonic()``) and what (``detail``)."""

    kind: str
    at_s: float
    detail: dict[str, Any] = field(default_factory=dict)


Callback = Callable[[PipelineEvent], None]


class Hooks:
    """Subscribers to a pipeline's :class:`PipelineEvent` s (thread-safe; see module docs)."""

    def __init__(self) -> None:
        self._callbacks: list[Callback] = []
        self._lock = threading.Lock()

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        """Call ``callback(event)`` for every event from now on; returns the unsubscribe."""
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return unsubscribe

    def emit(self, kind: str, **detail: Any) -> PipelineEvent:
        """Hand an event to every subscriber (one that raises is logged, never propagated)."""
        if kind not in KINDS:
            raise ValueError(f"unknown pipeline event kind {kind!r}; known: {sorted(KINDS)}")
        event = PipelineEvent(kind, time.monotonic(), detail)
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(event)
            except Exception:  # an observer never stops the pipeline
                log.exception("pipeline hook %r failed on %s", callback, kind)
        return event


class PipelineFailed(RuntimeError):
    """The pipeline gave up: a failure outlasted ``stream.kafka_outage_budget_s`` (or
    ``run_to_end``'s timeout). The message says what failed and for how long."""


class KafkaUnreachable(Exception):
    """Actor calls missed their deadline while the driver could not reach Kafka either: the
    actors are waiting on Kafka and are left alone (transient: the outage clock runs)."""


class ActorsFailed(Exception):
    """Actors that must be replaced: they died, missed their deadline (already killed), stood
    still while records waited, or failed with a transient Kafka error (``reason``)."""

    def __init__(self, actors: Sequence[str], reason: str, cause: BaseException | None = None,
                 method: str = "") -> None:
        self.actors = sorted(set(actors))
        self.reason = reason
        self.cause = cause
        self.method = method
        what = f" in {method}" if method else ""
        super().__init__(f"actor(s) {', '.join(self.actors)} {reason}{what}"
                         + (f": {type(cause).__name__}: {cause}" if cause is not None else ""))

    @property
    def kafka(self) -> bool:
        """Whether the failure was a transient Kafka error (the outage clock runs)."""
        return self.cause is not None and is_transient(self.cause)


def is_transient(exc: BaseException) -> bool:
    """Whether a retry can cure ``exc``: a transient Kafka or connection error, raised here or
    inside an actor (a ``RayTaskError``'s cause). Actor deaths are not Kafka's: the pipeline
    replaces dead actors whatever this says."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, KafkaUnreachable):
            return True
        if isinstance(current, ActorsFailed):
            current = current.cause
            continue
        if isinstance(current, ray.exceptions.RayTaskError):
            cause = getattr(current, "cause", None)
            if cause is None or cause is current:
                return False
            current = cause
            continue
        if is_transient_kafka_error(current):
            return True
        current = current.__cause__ or current.__context__
    return False


class Backoff:
    """Waits that double from ``first_s`` up to ``max_s`` (``reset`` starts again)."""

    def __init__(self, first_s: float, max_s: float) -> None:
        if first_s < 0 or max_s < first_s:
            raise ValueError(f"backoff: expected 0 <= recovery_backoff_s ({first_s}) <= "
                             f"recovery_backoff_max_s ({max_s}); fix [stream]")
        self.first_s, self.max_s = float(first_s), float(max_s)
        self.attempts = 0

    def next(self) -> float:
        """The next wait in seconds (and count one more attempt)."""
        wait = min(self.max_s, self.first_s * (2.0 ** self.attempts))
        self.attempts += 1
        return wait

    def reset(self) -> None:
        self.attempts = 0


class OutageClock:
    """How long something has been failing, against a budget (``stream.kafka_outage_budget_s``).

    ``failing(error)`` starts the clock at the first failure and raises :class:`PipelineFailed`
    once the budget is spent; ``ok()`` stops it and returns how long the outage lasted (None if
    there was none)."""

    def __init__(self, budget_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_s = float(budget_s)
        self._clock = clock
        self.since: float | None = None
        self.last_error: str = ""
        self.total_s = 0.0

    @property
    def running(self) -> bool:
        return self.since is not None

    def elapsed(self) -> float:
        return 0.0 if self.since is None else self._clock() - self.since

    def failing(self, error: BaseException | str, what: str = "Kafka") -> float:
        """Note a failure; returns the seconds failing so far, or raises beyond the budget."""
        if self.since is None:
            self.since = self._clock()
        self.last_error = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        elapsed = self.elapsed()
        if elapsed > self.budget_s:
            raise PipelineFailed(
                f"{what} has been failing for {elapsed:.0f} s, beyond stream.kafka_outage_budget_s"
                f" = {self.budget_s:g} s; last error: {self.last_error}. Check the cluster, then "
                "restart the pipeline (it resumes from its last checkpoint)")
        return elapsed

    def ok(self) -> float | None:
        if self.since is None:
            return None
        outage = self.elapsed()
        self.total_s += outage
        self.since = None
        return outage


Named = tuple[str, Any, Any]
"""(actor name, actor handle, ObjectRef of one call on it)."""


class ActorCalls:
    """Waits on actor calls with a deadline (see the module docs); counts deadline kills."""

    def __init__(self, timeout_s: float, hooks: Hooks,
                 kafka_down: Callable[[], BaseException | None] | None = None) -> None:
        self.timeout_s = float(timeout_s)
        self.hooks = hooks
        self.kafka_down = kafka_down
        """Asked when calls miss their deadline: the error that shows Kafka is unreachable (the
        actors are then waiting on Kafka, not frozen, and are left alone), or None."""
        self.deadline_kills = 0
        self._fresh: set[Any] = set()  # actor ids not yet answered once (start-up deadline)

    def started(self, actors: Sequence[Any]) -> None:
        """Mark freshly built actors: their first call gets :data:`ACTOR_START_TIMEOUT_S`."""
        self._fresh |= {a._actor_id for a in actors}

    def call(self, method: str, actors: Sequence[tuple[str, Any]], *args: Any,
             **kwargs: Any) -> list[Any]:
        """``actor.method.remote(*args, **kwargs)`` on each (name, actor); the results in order."""
        return self.get(method, [(n, a, getattr(a, method).remote(*args, **kwargs))
                                 for n, a in actors])

    def get(self, method: str, named: Sequence[Named], timeout_s: float | None = None
            ) -> list[Any]:
        """The results of ``named`` calls, or :class:`ActorsFailed` naming every actor that
        died, missed the deadline (killed here) or failed with a transient Kafka error."""
        if not named:
            return []
        fresh = any(a._actor_id in self._fresh for _, a, _ in named)
        timeout = timeout_s or (max(self.timeout_s, ACTOR_START_TIMEOUT_S) if fresh
                                else self.timeout_s)
        refs = [ref for _, _, ref in named]
        _, late = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if late:
            down = self.kafka_down() if self.kafka_down is not None else None
            if down is not None:  # they wait on Kafka: an outage, not frozen actors
                raise KafkaUnreachable(f"{len(late)} call(s) of {method} missed the "
                                       f"{timeout:g} s deadline while Kafka is unreachable: "
                                       f"{type(down).__name__}: {down}") from down
            late_ids = {ref.hex() for ref in late}
            frozen = [(n, a) for n, a, ref in named if ref.hex() in late_ids]
            for name, actor in frozen:
                ray.kill(actor, no_restart=True)
                self.deadline_kills += 1
                self.hooks.emit("actor.deadline", actor=name, method=method, timeout_s=timeout)
            raise ActorsFailed([n for n, _ in frozen], "missed the deadline", method=method)
        results, failed, cause = [], [], None
        for name, actor, ref in named:
            try:
                results.append(ray.get(ref))
                self._fresh.discard(actor._actor_id)
            except ray.exceptions.RayActorError as exc:
                failed.append(name)
                cause = cause or exc
            except ray.exceptions.RayTaskError as exc:
                if not is_transient(exc):
                    raise  # a bug inside the actor: never retried
                failed.append(name)
                cause = cause or exc
        if failed:
            reason = "died" if isinstance(cause, ray.exceptions.RayActorError) else "failed"
            raise ActorsFailed(failed, reason, cause, method)
        return results
