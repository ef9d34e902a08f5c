"""Admission control of one replica: shed load with 503 + ``Retry-After`` before it queues.

Scoring is CPU-bound and holds the GIL, so a replica scores one request at a time whatever it
does; what it can choose is where requests wait and which ones it gives up on. Decisions:

* **One scoring thread, the event loop stays free.** ``POST /recommend`` and ``/feedback`` run
  their synchronous work (scoring, logging, serialising) on the replica's single scoring thread
  (:class:`Gate`); the event loop only reads bodies, admits or sheds, and answers. So
  ``/metrics`` and ``/health*`` answer during overload (they never wait behind scoring), a
  request's arrival time is when it reached the app, and a client's disconnect is seen while
  its request waits. More threads would add GIL hand-offs, not throughput.
* **A bounded queue** (``serve.max_queued_requests``): a scoring request that finds that many
  admitted and not started is answered 503 at once, before its body is read (``queue_full``).
* **Shed at the door what would wait too long** (``expected_delay``): a request that finds
  ``n`` waiting while the recent work time per request (an exponential average) says those
  ``n`` take longer than ``serve.max_queue_delay_ms`` is answered 503 at once too, before its
  body is read or parsed: under overload most doomed requests then cost the replica almost
  nothing, instead of a parse and a wait before the same 503.
* **Shed while the event loop runs late** (``loop_lag``): when the replica's process is short
  of CPU (or of the GIL), requests wait in the socket before the app sees them, where no queue
  above can count them. A timer on the event loop measures how late it runs; while that lag
  exceeds half of ``serve.max_queue_delay_ms``, new scoring requests get a 503 at once, before
  their body is read, which gives the loop back the time their scoring would take, so it
  catches up (and ``/metrics`` and health are answered again) instead of falling further behind.
* **A bounded wait** (``serve.max_queue_delay_ms``): a request that has waited longer while
  others wait too is answered 503 without being scored or logged (``queue_delay``), as soon as
  the scoring thread is free, so no client waits much past the budget for a 503. The last one
  waiting is served however long it waited: shedding it would free nothing for anyone else
  (alone, it waited on the CPU, not on a queue).
* **Newest first when behind (adaptive LIFO).** While the oldest waiting request has waited
  over half the budget, the scoring thread takes the newest: under sustained overload the
  requests it serves are fresh (latency close to one scoring time) and the stale ones are the
  ones shed, instead of serving every request just before its budget runs out. Below that
  (normal load, short bursts) the order is first come, first served.
* **A gone client is not served.** A request whose client disconnected before its turn is
  dropped (``client_gone``: not scored, not logged as an impression); one that disconnects while
  it is scored is checked again just before its impression is queued (``wanted`` in
  :meth:`RecommenderService.recommend`). Ray Serve cancels a request's handler when its client
  disconnects; the cancellation is what marks the ticket.

Every shed answer is 503 with ``Retry-After: serve.retry_after_s`` and a JSON ``detail`` saying
why; ``/metrics`` counts them by reason (``recsys_serve_shed_total``) and records every
admitted request's wait (``recsys_serve_queue_seconds``). Only ``POST /recommend`` and
``POST /feedback`` are admitted this way: health, metrics and the docs are never shed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from recsys.config import ServeSettings
from recsys.serving.metrics import ServingMetrics

SCORED_PATHS = frozenset({"/recommend", "/feedback"})
"""The routes that run on the scoring thread and are admitted (and shed) here."""
TICKET = "recsys.ticket"
"""The ASGI scope key under which :class:`Admission` leaves a request's :class:`Ticket`."""

T = TypeVar("T")
INLINE_ENV = "RECSYS_SERVE_INLINE_SCORING"
"""Set to 1 (benchmarks only) to score on the event loop as before admission control: the
baseline that ``tests/benchmarks/bench_serving.py`` compares the scoring thread with."""


class Shed(Exception):
    """A request answered 503 by admission control; ``reason`` is one of
    ``recsys.serving.metrics.SHED_REASONS``."""

    def __init__(self, reason: str, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.retry_after_s = reason, detail, retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}

    async def send(self, send: Any) -> None:
        """Answer with this 503 on a raw ASGI ``send``."""
        from fastapi.responses import JSONResponse

        response = JSONResponse({"detail": self.detail}, status_code=503,
                                headers=self.headers())
        await send({"type": "http.response.start", "status": 503,
                    "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


@dataclass(eq=False)
class Ticket:
    """One admitted request: when it arrived (``time.perf_counter``), whether it still holds a
    place in the queue, and whether its client is gone."""

    arrived: float = field(default_factory=time.perf_counter)
    queued: bool = False
    gone: bool = False

    def wanted(self) -> bool:
        """False once the client disconnected: the answer would reach no one."""
        return not self.gone


class LoopLag:
    """How late the event loop runs a short timer (seconds): the wait a request meets before
    the app sees it, which no queue inside the app can count. Started on the loop it measures."""

    PERIOD_S = 0.005

    def __init__(self) -> None:
        self.lag_s = 0.0
        self._task: asyncio.Task | None = None

    def watch(self) -> None:
        """Start measuring on the running event loop (once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._measure())

    async def _measure(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self.PERIOD_S)
            late = loop.time() - started - self.PERIOD_S
            # a late tick counts at once; the lag then decays (halving every ~3 ticks)
            self.lag_s = max(late, 0.8 * self.lag_s)

    def stop(self) -> None:
        """Stop measuring (from any thread)."""
        task = self._task
        if task is not None and not task.done():
            with contextlib.suppress(RuntimeError):  # its loop is already closed
                task.get_loop().call_soon_threadsafe(task.cancel)


@dataclass(eq=False)
class _Job:
    ticket: Ticket
    work: Callable[[], Any]
    future: concurrent.futures.Future


class Gate:
    """One replica's scoring lane: a single worker thread, at most ``max_queued_requests``
    requests admitted and waiting for it, none waiting over ``max_queue_delay_ms``."""

    def __init__(self, serve: ServeSettings, metrics: ServingMetrics) -> None:
        self.max_queued = serve.max_queued_requests
        self.max_delay_s = serve.max_queue_delay_ms / 1000.0
        self.lifo_after_s = self.max_delay_s / 2
        self.retry_after_s = serve.retry_after_s
        self.metrics = metrics
        self._cond = threading.Condition(threading.Lock())
        self._waiting = 0  # admitted and not started (body being read, or in _jobs)
        self._jobs: deque[_Job] = deque()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._work_s = 0.0  # exponential average of the work time per request (0: none yet)
        self.loop_lag = LoopLag()
        self.inline = os.environ.get(INLINE_ENV) == "1"
        metrics.bind_queue(lambda: self._waiting)

    @property
    def work_s(self) -> float:
        """The recent work time per request (an exponential average; 0 before the first)."""
        return self._work_s

    @property
    def waiting(self) -> int:
        """Requests admitted and not started yet."""
        return self._waiting

    # ------------------------------------------------------------------ the event loop's side
    def enter(self) -> Ticket:
        """Admit a request now (its queue place is held until it starts or ends), or raise
        :class:`Shed`: ``queue_full`` when ``max_queued_requests`` are already waiting,
        ``expected_delay`` when those waiting would take over ``max_queue_delay_ms``."""
        lag_s = self.loop_lag.lag_s
        if lag_s > self.lifo_after_s:
            raise self._shed("loop_lag", f"the replica's event loop runs {1e3 * lag_s:.0f} ms "
                             f"late (more than half of serve.max_queue_delay_ms = "
                             f"{1e3 * self.max_delay_s:.0f})")
        with self._cond:
            waiting, expected_s = self._waiting, self._waiting * self._work_s
            if waiting < self.max_queued and expected_s <= self.max_delay_s:
                self._waiting += 1
                return Ticket(queued=True)
        if waiting >= self.max_queued:
            raise self._shed("queue_full", f"{waiting} requests are already waiting to be "
                             f"scored (serve.max_queued_requests = {self.max_queued})")
        raise self._shed("expected_delay", f"{waiting} requests waiting take about "
                         f"{1e3 * expected_s:.0f} ms to score (serve.max_queue_delay_ms = "
                         f"{1e3 * self.max_delay_s:.0f})")

    def leave(self, ticket: Ticket) -> None:
        """The request is over; give back its queue place if it never started."""
        with self._cond:
            self._release(ticket)

    async def run(self, ticket: Ticket | None, work: Callable[[], T]) -> T:
        """``work()`` on the scoring thread, once this request's turn comes; raises
        :class:`Shed` instead when it waited over the budget or its client left. ``ticket``
        None (the request did not pass :class:`Admission`): timed from now, not counted."""
        ticket = ticket if ticket is not None else Ticket()
        if self.inline:  # the baseline: on the event loop, nothing shed
            with self._cond:
                self._release(ticket)
            return work()
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the scoring gate is closed: the replica is stopping")
            self._jobs.append(_Job(ticket, work, future))
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="recsys-scoring",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:  # the client disconnected (Ray Serve cancels us)
            ticket.gone = True  # a job already running checks this before it logs
            raise

    def close(self) -> None:
        """Stop the scoring thread after the jobs already queued."""
        self.loop_lag.stop()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # ------------------------------------------------------------------ the scoring thread
    def _release(self, ticket: Ticket) -> None:
        """Give back the queue place (under ``_cond``; idempotent)."""
        if ticket.queued:
            ticket.queued = False
            self._waiting -= 1

    def _shed(self, reason: str, why: str) -> Shed:
        self.metrics.shed.labels(reason).inc()
        return Shed(reason, f"overloaded: {why}; retry after {self.retry_after_s} s",
                    self.retry_after_s)

    def _next(self) -> tuple[_Job | None, list[_Job]]:
        """The job to run now (None when closed and empty) and the stale jobs to shed."""
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            now = time.perf_counter()
            stale = []  # the last job waiting is kept: shedding it would relieve no one
            while len(self._jobs) > 1 and now - self._jobs[0].ticket.arrived > self.max_delay_s:
                stale.append(self._jobs.popleft())
            job = None
            if self._jobs:
                behind = now - self._jobs[0].ticket.arrived > self.lifo_after_s
                job = self._jobs.pop() if behind else self._jobs.popleft()
            for taken in (*stale, *([job] if job is not None else [])):
                self._release(taken.ticket)
            return job, stale

    def _work(self) -> None:
        while True:
            job, stale = self._next()
            now = time.perf_counter()
            for old in stale:
                self.metrics.queue_delay.observe(now - old.ticket.arrived)
                if old.future.set_running_or_notify_cancel():
                    old.future.set_exception(self._shed(
                        "queue_delay", f"waited {1e3 * (now - old.ticket.arrived):.0f} ms for "
                        f"the scoring thread (serve.max_queue_delay_ms = "
                        f"{1e3 * self.max_delay_s:.0f})"))
                else:
                    self.metrics.shed.labels("client_gone").inc()
            if job is None:
                if not stale:
                    return  # closed and drained
                continue
            self.metrics.queue_delay.observe(now - job.ticket.arrived)
            if not job.future.set_running_or_notify_cancel() or job.ticket.gone:
                self.metrics.shed.labels("client_gone").inc()
                continue
            result, error = None, None
            try:
                result = job.work()
            except BaseException as exc:  # handed to the request, raised there
                error = exc
                if isinstance(exc, Shed):
                    self.metrics.shed.labels(exc.reason).inc()
            # the work time is counted before the request is answered, so whoever the answer
            # wakes sees it
            took = time.perf_counter() - now
            self.metrics.work.observe(took)
            self._work_s = took if not self._work_s else 0.9 * self._work_s + 0.1 * took
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)

    def client_gone(self) -> Shed:
        """The exception for a request whose client left while it was scored (raise it before
        logging; :meth:`_work` counts it)."""
        return Shed("client_gone", "the client disconnected before its answer was ready",
                    self.retry_after_s)


def ticket_of(scope: dict) -> Ticket | None:
    """The :class:`Ticket` :class:`Admission` gave this request (None if it gave none)."""
    return scope.get(TICKET)


class Admission:
    """Pure ASGI middleware: admits ``POST /recommend`` and ``/feedback`` into the replica's
    :class:`Gate` (or answers 503 before the body is read); everything else passes."""

    def __init__(self, asgi: Any) -> None:
        self.asgi = asgi

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") not in SCORED_PATHS:
            await self.asgi(scope, receive, send)
            return
        from recsys.serving.service import current  # the service module imports this one

        service = current()
        if service is None:
            await self.asgi(scope, receive, send)
            return
        gate: Gate = service.gate
        gate.loop_lag.watch()
        try:
            ticket = gate.enter()
        except Shed as shed:
            await shed.send(send)
            return
        scope[TICKET] = ticket
        try:
            await self.asgi(scope, receive, send)
        finally:
            gate.leave(ticket)
