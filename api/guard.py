"""What one client may ask of the shared service, checked before a route reads the body.

An ASGI middleware in front of every `/v1` route: the API key is checked first (so a
request without a valid key gets its 401 before a byte of its body is read), then the
key's token bucket for the kind of call (reads, writes, uploads; shared by every API
process when Redis is configured, see api/limits.py), then, for JSON routes,
the body's size (413 past `max_json_bytes`, with or without Content-Length). Upload routes
stream their own bodies under their own caps (api/uploads.py).
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError
from api.limits import Buckets, Rate, shared_store
from trainyard.settings import Settings

# Routes that take a multipart body and bound it themselves, as they stream it to disk.
UPLOAD_ROUTES = {
    ("POST", "/v1/datasets"),
    ("POST", "/v1/models/import"),
    ("POST", "/v1/tokenizers"),
}
READ_METHODS = {"GET", "HEAD", "OPTIONS"}


def budget_of(method: str, path: str) -> str:
    """Which budget a call spends: uploads, reads or writes."""
    if (method, path.rstrip("/")) in UPLOAD_ROUTES:
        return "uploads"
    return "reads" if method in READ_METHODS else "writes"


async def _reply(send: Send, status: int, error: ApiError, headers: dict[str, str]) -> None:
    body = json.dumps(
        {"error": {"code": error.code, "message": error.message, "details": error.details}}
    ).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    # Close the connection: the client may still be sending a body nobody will read.
    raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Authenticate, rate-limit and bound the body of every `/v1` request."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.max_json = settings.max_json_bytes
        self.buckets: Buckets | None = None
        if settings.rate_limits == "on":
            self.buckets = Buckets(
                {
                    "reads": Rate.parse(settings.read_rate),
                    "writes": Rate.parse(settings.write_rate),
                    "uploads": Rate.parse(settings.upload_rate),
                },
                shared_store,
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        from api.deps import authenticate  # deps imports the database layer

        headers = Headers(scope=scope)
        try:
            key_hash, project_id = await authenticate(headers.get("authorization"))
        except ApiError as exc:
            await _reply(send, exc.status, exc, {**exc.headers, "WWW-Authenticate": "Bearer"})
            return
        scope.setdefault("state", {})["project_id"] = project_id
        method = scope["method"]
        budget = budget_of(method, scope["path"])
        limit_headers: dict[str, str] = {}
        if self.buckets is not None:
            allowed, limit_headers = await self.buckets.take(budget, key_hash)
            if not allowed:
                error = ApiError(
                    429,
                    "rate_limited",
                    f"too many {budget} for this API key; retry in "
                    f"{limit_headers['Retry-After']} s",
                    {"budget": budget},
                )
                await _reply(send, 429, error, limit_headers)
                return
        if budget != "uploads" and method not in READ_METHODS:
            body = await self._bounded_body(headers, receive)
            if body is None:
                error = ApiError(
                    413,
                    "body_too_large",
                    f"the request body exceeds the limit of {self.max_json} bytes",
                    {"limit_bytes": self.max_json},
                )
                await _reply(send, 413, error, limit_headers)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, _with_headers(send, limit_headers))

    async def _bounded_body(self, headers: Headers, receive: Receive) -> bytes | None:
        """The whole body if it is within the limit, else None (reading no further)."""
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_json):
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away; the route will see an empty body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_json:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive channel that hands over the already-read body, then the real channel."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _with_headers(send: Send, extra: dict[str, str]) -> Send:
    if not extra:
        return send
    raw = [(k.lower().encode(), v.encode()) for k, v in extra.items()]

    async def sender(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *raw]}
        await send(message)

    return sender


def state_project(scope: MutableMapping[str, Any]) -> str | None:
    """The project the guard authenticated for this request, if it ran."""
    state = scope.get("state") or {}
    value = state.get("project_id")
    return str(value) if value is not None else None
