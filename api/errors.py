"""The error envelope: `{"error": {"code", "message", "details"}}` with the right status."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from api import openai_errors
from domain.errors import BadInput, Conflict, DomainError, Invalid, NotFound, QuotaExceeded

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error of the HTTP layer itself (authentication, the upload stream); the domain
    raises DomainError instead."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


# Each kind of domain refusal and its status; a subclass takes its nearest listed ancestor's.
STATUS: dict[type[DomainError], int] = {
    DomainError: 400,
    BadInput: 400,
    NotFound: 404,
    Conflict: 409,
    Invalid: 422,
    QuotaExceeded: 429,
}


def status_of(exc: DomainError) -> int:
    """The HTTP status of a domain error."""
    return next(STATUS[cls] for cls in type(exc).__mro__ if cls in STATUS)


def _respond(
    request: Request,
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
    kind: str | None = None,
) -> JSONResponse:
    """The error response, in the shape the request's path speaks (native or OpenAI)."""
    status, body = openai_errors.shape(request.url.path, status, code, message, details, kind)
    return JSONResponse(body, status_code=status, headers=headers)


def _field(loc: tuple[Any, ...]) -> str:
    # Drop the "body" prefix and pydantic's union-branch labels so the field reads as sent.
    parts = [str(p) for p in loc if p not in ("body", "query", "header", "path")]
    parts = [p for p in parts if not p[:1].isupper() and "[" not in p and "-" not in p]
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into the envelope."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _respond(request, exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(DomainError)
    async def _domain_error(request: Request, exc: DomainError) -> JSONResponse:
        kind = getattr(exc, "kind", None)
        return _respond(request, status_of(exc), exc.code, exc.message, exc.details, kind=kind)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = []
        for err in exc.errors():
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            loc = tuple(err.get("loc", ()))
            if err.get("type") == "extra_forbidden":
                msg = "unknown field"
            if err.get("type") == "json_invalid":
                # The location's last part is a character offset, not a field.
                where = loc[-1] if loc and isinstance(loc[-1], int) else "?"
                msg, loc = f"invalid JSON at character {where}: {msg}", ("body",)
            details.append({"field": _field(loc), "message": msg})
        first = details[0] if details else {"field": "body", "message": "invalid"}
        # A rule across fields names its fields in its own words; others get the field.
        message = (
            first["message"]
            if first["field"] == "body"
            else (f"{first['field']}: {first['message']}")
        )
        return _respond(request, 422, "invalid_request", message, details)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return _respond(request, 500, "internal_error", "internal server error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "error"
        )
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(sorted(_allowed_methods(app, request.url.path)))
        return _respond(request, exc.status_code, code, str(exc.detail), headers=headers)


def _allowed_methods(app: FastAPI, path: str) -> set[str]:
    """Every method any route serves at this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in _api_routes(app.routes, ""):
        if route[0].match(path):
            methods |= route[1]
    return methods


def _api_routes(routes: Any, prefix: str) -> list[tuple[Any, set[str]]]:
    found: list[tuple[Any, set[str]]] = []
    for route in routes:
        inner = getattr(route, "original_router", None)  # an included router
        if inner is not None:
            context = getattr(route, "include_context", None)
            found += _api_routes(inner.routes, prefix + getattr(context, "prefix", ""))
        elif isinstance(route, APIRoute):
            found.append((compile_path(prefix + route.path)[0], set(route.methods or ())))
    return found
