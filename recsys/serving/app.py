"""The HTTP API: FastAPI routes on a Ray Serve deployment, around :class:`RecommenderService`.

``POST /recommend``, ``POST /feedback``, ``GET /health``, ``GET /metrics``; ``/docs`` and
``/openapi.json`` (this replica's schema, ``recsys.serving.openapi``). A body over
``serve.max_body_bytes`` gets a 413, one that is not JSON a 400 naming the line and column, one
that does not validate a 422 whose ``detail`` names the field (``loc``) and what was expected
(``msg``); a request the service refuses for a client reason gets the same shape
(:class:`RequestError`); these bodies are bounded (``recsys.serving.bodies``). A request the
replica cannot answer now gets a 503 with the reason (no snapshot yet, Kafka buffer full, a
policy that follows a registered model whose URI has not resolved or loaded yet). Every answer
is counted by endpoint and status on ``/metrics``.
"""

# No `from __future__ import annotations`: Ray Serve re-wraps the routes, and FastAPI must see
# the body types themselves, not strings it can no longer resolve.

import sys
import time
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException

from recsys.serving import bodies
from recsys.serving import service as replica
from recsys.serving.admission import Admission, Shed, ticket_of
from recsys.serving.auth import RequireToken, bind_replica_http
from recsys.serving.bodies import LimitBody
from recsys.serving.openapi import ServedApp
from recsys.serving.schemas import (
    FeedbackBody,
    FeedbackResponse,
    Health,
    Live,
    RecommendRequest,
    RecommendResponse,
)
from recsys.serving.service import RecommenderService, RequestError, ServiceConfig, Unavailable

app = ServedApp(
    title="recsys serving",
    description="Slates scored with the newest bandit snapshot or the registered model a policy "
                "follows (models:/NAME@ALIAS), every one logged to Kafka with its propensities "
                "and the model version that served it; feedback in; health and Prometheus "
                "metrics.",
    version="1",
)

_ENDPOINTS = {"/recommend", "/feedback", "/health", "/health/live", "/health/ready", "/metrics"}


class CountAnswers:
    """Pure ASGI middleware: counts every answer by endpoint and status and times it (cheaper
    than Starlette's ``BaseHTTPMiddleware``, which re-streams every response)."""

    def __init__(self, asgi: Any) -> None:
        self.asgi = asgi

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.asgi(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.asgi(scope, receive, sending)
        finally:
            service = replica.current()
            if service is not None:
                path = scope.get("path", "")
                path = path if path in _ENDPOINTS else "other"
                service.metrics.requests.labels(path, str(status)).inc()
                service.metrics.latency.labels(path).observe(time.perf_counter() - started)


# Starlette runs the last added outermost: answers are counted and timed from arrival, callers
# are authenticated before anything is read, load is shed before a body is parsed, and the body
# size is bounded before the routes see it.
app.add_middleware(LimitBody)
app.add_middleware(Admission)
app.add_middleware(RequireToken)
app.add_middleware(CountAnswers)


@app.exception_handler(RequestValidationError)
async def _invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
    """400 for a body that is not JSON, 422 for one that does not validate; bounded, and never
    echoing the input (a body holding NaN parses but could not be written back as JSON)."""
    status, body = bodies.validation_answer(exc)
    return JSONResponse(body, status_code=status)


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> Response:
    """FastAPI's bare "There was an error parsing the body" with what was wrong; the others as
    FastAPI answers them."""
    from fastapi.exception_handlers import http_exception_handler

    answer = bodies.http_error_answer(exc)
    if answer is None:
        return await http_exception_handler(request, exc)
    return JSONResponse(answer[1], status_code=answer[0])


@app.exception_handler(RequestError)
async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
    return JSONResponse(bodies.error_body(exc.detail()), status_code=exc.status)


@app.exception_handler(Unavailable)
async def _unavailable(_: Request, exc: Unavailable) -> JSONResponse:
    """503 with why and ``Retry-After: serve.retry_after_s``."""
    service = replica.current()
    retry = service.config.serve.retry_after_s if service is not None else 1
    return JSONResponse({"detail": str(exc)}, status_code=503,
                        headers={"Retry-After": str(retry)})


@app.exception_handler(Shed)
async def _shed(_: Request, exc: Shed) -> JSONResponse:
    """Admission control's 503 (``recsys.serving.admission``): overloaded or the client left."""
    return JSONResponse({"detail": exc.detail}, status_code=503, headers=exc.headers())


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256,
                  health_check_period_s=5, graceful_shutdown_timeout_s=5,
                  graceful_shutdown_wait_loop_s=1)
@serve.ingress(app)
class Recommender:
    """One replica: a :class:`RecommenderService` behind the routes."""

    def __init__(self, config: dict[str, Any]) -> None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)  # a request is one small product: BLAS threads only add wake-ups
        # The request loop shares the GIL with the snapshot refresher and Kafka's sender thread;
        # with the default 5 ms switch interval a request waits up to that long at every hand-off.
        sys.setswitchinterval(0.0005)
        self.service = RecommenderService(ServiceConfig.from_dict(config))
        replica.set_current(self.service)
        serve_settings = self.service.config.serve  # before Ray starts this replica's HTTP port
        bind_replica_http(serve_settings.replica_host, serve_settings.host)

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(self, body: RecommendRequest, request: Request) -> Response:
        """A slate for one user, with the propensity of every item at its position."""
        ticket = ticket_of(request.scope)
        wanted = None if ticket is None else ticket.wanted

        def score() -> Response:  # on the scoring thread (recsys.serving.admission)
            # serialised here, once: FastAPI would validate the model again and re-encode it
            return Response(self.service.recommend(body, wanted).model_dump_json(),
                            media_type="application/json")

        return await self.service.gate.run(ticket, score)

    @app.post("/feedback", response_model=FeedbackResponse, status_code=202)
    async def feedback(self, body: FeedbackBody,
                       request: Request) -> FeedbackResponse:
        """User actions on shown items, one event or a list (at most 10,000)."""
        events = body if isinstance(body, list) else [body]
        # all or none of the batch, each event once per key (recsys.serving.idempotency)
        return await self.service.gate.run(ticket_of(request.scope),
                                           lambda: self.service.feedback(events))

    @app.get("/health/live", response_model=Live)
    async def live(self) -> Live:
        """200 while this replica's process and event loop answer; nothing else is checked (a
        liveness probe: failing it on Kafka or a snapshot would restart a healthy replica)."""
        return Live(live=True)

    @app.get("/health/ready", response_model=Health)
    async def ready(self) -> JSONResponse:
        """200 once a snapshot is loaded, every model arm was looked up once and Kafka accepts
        writes (checked in the background, never on this request), 503 with why otherwise;
        ``models`` shows each model arm's version or why it is not loaded (a readiness probe)."""
        state = self.service.health()
        return JSONResponse(state.model_dump(), status_code=200 if state.ready else 503)

    @app.get("/health", response_model=Health)
    async def health(self) -> JSONResponse:
        """The same as ``GET /health/ready`` (kept for existing clients and probes)."""
        state = self.service.health()
        return JSONResponse(state.model_dump(), status_code=200 if state.ready else 503)

    @app.get("/metrics")
    async def metrics(self) -> Response:
        """Prometheus text exposition of this replica."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(self.service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    def __del__(self) -> None:
        service = getattr(self, "service", None)
        if service is not None:
            service.close()
