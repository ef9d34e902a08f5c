"""The OpenAPI schema a replica serves at ``/openapi.json``, built from what it really accepts.

FastAPI's own schema drifted from the app: bounds went through a float model (2**63 - 1 printed as
9.223372036854776e+18, which is 2**63), ``/metrics`` was declared JSON, the policy was a free
string and no error answer but 422 was listed. Here the schema is written per replica
(:class:`ServedApp` overrides ``FastAPI.openapi``): pydantic's JSON Schemas of the bodies (exact
integers), ``policy`` an enum of the configured arms, the dense context's length from the
statistics the replica scores with (their ``context_codec()``, so once a snapshot is loaded), the
error answers of every operation with their bodies and headers (401 and the security schemes
only when ``serve.auth_token`` is set, on every path but ``recsys.serving.auth.OPEN_PATHS``),
``/metrics`` as Prometheus text.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, routing
from pydantic import BaseModel, Field, TypeAdapter

from recsys.bandits.contexts import ClusterContexts, DenseContexts
from recsys.serving import service as replica
from recsys.serving.auth import OPEN_PATHS

REF = "#/components/schemas/{model}"
PROMETHEUS_TEXT = "text/plain"
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again "
                                              "(serve.retry_after_s).",
                               "required": True, "schema": {"type": "string",
                                                            "pattern": "^[0-9]+$"}}}
WWW_AUTHENTICATE = {"WWW-Authenticate": {"description": "How to authenticate: Bearer.",
                                         "required": True, "schema": {"type": "string"}}}


class ErrorItem(BaseModel):
    """One thing wrong with a request: where (``loc``: ``body`` then keys and list indices),
    what was expected (``msg``, at most 200 characters, never the input value) and a machine
    name (``type``: pydantic's, or ``json_invalid``, ``body_too_large``, ``value_error``)."""

    loc: list[str | int] = Field(max_length=8)
    msg: str = Field(max_length=200)
    type: str = Field(max_length=64)


class ErrorBody(BaseModel):
    """A 4xx for a request the client must fix: the first ``serve.max_error_items`` errors
    (about 8 KB at most) and how many more were left out."""

    detail: list[ErrorItem] = Field(min_length=1)
    omitted: int = Field(ge=0)


class Message(BaseModel):
    """An answer that is not about the body: why (``detail``)."""

    detail: str


# Which errors each operation can answer, beyond its success (401 is added when auth is on).
_ERRORS: dict[tuple[str, str], dict[int, str]] = {
    ("post", "/recommend"): {
        400: "The body is not JSON (the error names the line and column).",
        409: "The request_id was already used: with another body, while its first request is "
             "still being served, or too long ago for its answer to be kept (a repeat with the "
             "same body gets the original slate, 200).",
        413: "The body is larger than serve.max_body_bytes.",
        422: "The body does not validate, or asks for what this replica cannot score: k above "
             "the catalogue (or candidates) size, candidates outside the catalogue, a dense "
             "context whose norm exceeds serve.max_context_norm, no context for a user that "
             "is not in the user-feature table, cluster ids and weights that do not pair up.",
        503: "Not now: no snapshot yet, overloaded, Kafka cannot take the impression, or the "
             "policy's registered model is not loaded.",
    },
    ("post", "/feedback"): {
        400: "The body is not JSON (the error names the line and column).",
        413: "The body is larger than serve.max_body_bytes.",
        422: "An event does not validate.",
        503: "Not now: overloaded, or Kafka cannot take the batch (nothing of it was queued).",
    },
    ("get", "/health"): {503: "Not ready (the body says why)."},
    ("get", "/health/ready"): {503: "Not ready (the body says why)."},
}
_ERROR_STATUSES = {400: "Bad Request", 401: "Unauthorized", 409: "Conflict",
                   413: "Content Too Large", 422: "Unprocessable Content",
                   503: "Service Unavailable"}


def _body_type(route: Any) -> Any | None:
    """The annotation FastAPI validates the body with (None for routes without a body)."""
    field = route.body_field
    if field is None:
        return None
    from typing import Annotated

    info = field.field_info
    return Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation


def _operations(app: FastAPI) -> list[tuple[str, Any]]:
    """(method, route) of every documented API route (a FastAPI route context: path, methods,
    body field, response model, as FastAPI's own schema reads them)."""
    return [(method.lower(), route) for route in routing.iter_route_contexts(app.routes)
            if isinstance(route.original_route, routing.APIRoute) and route.include_in_schema
            for method in sorted(route.methods)]


def _codec(service: Any) -> Any | None:
    served = getattr(service, "_served", None) if service is not None else None
    return None if served is None else served.snapshot.stats.context_codec()


def fingerprint(service: Any) -> tuple[Any, ...]:
    """What the served schema depends on: the arms, the context layout, auth, the error cap."""
    if service is None:
        return (None,)
    serve = service.config.serve
    return (tuple(service.config.policies), _codec(service), bool(serve.auth_token),
            serve.max_error_items)


def build_schema(app: FastAPI, service: Any | None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app`` as ``service`` (a replica's
    :class:`~recsys.serving.service.RecommenderService`; None: no replica, the static parts)."""
    operations = _operations(app)
    inputs: list[tuple[Any, str, TypeAdapter[Any]]] = []
    for method, route in operations:
        body = _body_type(route)
        if body is not None:
            inputs.append(((method, route.path_format, "body"), "validation", TypeAdapter(body)))
        if route.response_model is not None:
            inputs.append(((method, route.path_format, "ok"), "serialization",
                           TypeAdapter(route.response_model)))
    for model in (ErrorBody, Message):
        inputs.append(((model.__name__,), "serialization", TypeAdapter(model)))
    by_mode, defs = TypeAdapter.json_schemas(inputs, ref_template=REF)
    refs = {key: schema for (key, _), schema in by_mode.items()}
    schemas = dict(sorted(defs.get("$defs", {}).items()))
    serve = service.config.serve if service is not None else None
    auth = bool(serve is not None and serve.auth_token)
    if serve is not None:
        schemas["ErrorBody"]["properties"]["detail"]["maxItems"] = serve.max_error_items
    _narrow(schemas, service)

    paths: dict[str, dict[str, Any]] = {}
    for method, route in operations:
        op: dict[str, Any] = {
            "operationId": route.unique_id,
            "summary": route.summary or route.name.replace("_", " ").capitalize(),
            "description": inspect.cleandoc(route.description or ""),
            "responses": _responses(method, route, refs, auth),
        }
        if (method, route.path_format, "body") in refs:
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": refs[(method, route.path_format, "body")]}}}
        if auth and route.path_format not in OPEN_PATHS:
            op["security"] = [{"bearer": []}, {"apiKey": []}]
        paths.setdefault(route.path_format, {})[method] = op
    components: dict[str, Any] = {"schemas": schemas}
    if auth:
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "Authorization: Bearer <serve.auth_token>"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                       "description": "X-API-Key: <serve.auth_token>"}}
    doc: dict[str, Any] = {"openapi": "3.1.0",
                           "info": {"title": app.title, "version": app.version,
                                    "description": app.description},
                           "paths": paths, "components": components}
    return doc


def _responses(method: str, route: Any, refs: dict[Any, Any], auth: bool
               ) -> dict[str, Any]:
    status = route.status_code or 200
    if route.path_format == "/metrics":
        content = {PROMETHEUS_TEXT: {"schema": {"type": "string"}}}
        ok = "Prometheus text exposition (version 0.0.4)."
    elif (method, route.path_format, "ok") in refs:
        content = {"application/json": {"schema": refs[(method, route.path_format, "ok")]}}
        ok = "Done."
    else:
        content, ok = {"application/json": {"schema": {}}}, "Done."
    responses: dict[str, Any] = {str(status): {"description": ok, "content": content}}
    errors = dict(_ERRORS.get((method, route.path_format), {}))
    if auth and route.path_format not in OPEN_PATHS:
        errors[401] = "No token, or not the configured one (serve.auth_token)."
    for code, why in sorted(errors.items()):
        if route.path_format.startswith("/health") and code == 503:  # the same body, not ready
            responses[str(code)] = {"description": why, "content": content}
            continue
        body = "ErrorBody" if code in (400, 409, 413, 422) else "Message"
        answer: dict[str, Any] = {
            "description": f"{_ERROR_STATUSES[code]}. {why}",
            "content": {"application/json": {"schema": {"$ref": REF.format(model=body)}}}}
        if code == 503:
            answer["headers"] = RETRY_AFTER
        elif code == 401:
            answer["headers"] = WWW_AUTHENTICATE
        responses[str(code)] = answer
    return responses


def _narrow(schemas: dict[str, Any], service: Any | None) -> None:
    """This replica's values in the body schemas: the arms as an enum, the context's layout."""
    if service is None:
        return
    names = list(service.config.policies)
    request = schemas.get("RecommendRequest")
    if request is not None:
        request["properties"]["policy"] = {
            "anyOf": [{"type": "string", "enum": names}, {"type": "null"}], "default": None,
            "description": "One of the configured policies; omitted or null: the traffic "
                           "split picks one."}
    response = schemas.get("RecommendResponse")
    if response is not None:
        response["properties"]["policy"] = {"type": "string", "enum": names}
    context = schemas.get("ContextIn")
    codec = _codec(service)
    if context is None or codec is None:
        return
    required = context.setdefault("required", [])
    if isinstance(codec, DenseContexts):
        dense = context["properties"]["dense"]
        dense.pop("default", None)
        dense.update(minItems=codec.dim, maxItems=codec.dim,
                     description=f"The user's {codec.dim} features (Euclidean norm at most "
                                 f"serve.max_context_norm). Cluster fields are ignored.")
        required.append("dense")
    elif isinstance(codec, ClusterContexts):
        for name in ("cluster_ids", "cluster_weights"):
            context["properties"][name].pop("default", None)
            context["properties"][name]["minItems"] = 1
            required.append(name)


class ServedApp(FastAPI):
    """FastAPI whose ``/openapi.json`` is :func:`build_schema` for this process's replica,
    rebuilt when what it depends on changes (the first snapshot fixes the context length)."""

    def openapi(self) -> dict[str, Any]:
        service = replica.current()
        key = fingerprint(service)
        cached = getattr(self, "_served_schema", None)
        if cached is None or cached[0] != key:
            cached = (key, build_schema(self, service))
            self._served_schema = cached
        return cached[1]


def undocumented(doc: dict[str, Any], app: FastAPI) -> Iterable[str]:
    """Operations of ``app`` missing from ``doc`` (for tests: every route is documented)."""
    for method, route in _operations(app):
        if method not in doc["paths"].get(route.path_format, {}):
            yield f"{method.upper()} {route.path_format}"
