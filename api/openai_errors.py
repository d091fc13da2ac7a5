"""Errors on the OpenAI-compatible routes, in OpenAI's shape and with the statuses its SDKs
expect: `{"error": {"message", "type", "param", "code"}}`.

The SDK retries 409, so a state that refuses an action is a 400 there, as OpenAI answers;
validation failures are 400 too. `/v1/models` is shared with the native API: its errors keep
the native envelope and add `type` and `param`, and an unknown model is `model_not_found`.
"""

from __future__ import annotations

from typing import Any

OPENAI_PREFIXES = ("/v1/files", "/v1/fine_tuning", "/v1/chat")
SHARED_PREFIXES = ("/v1/models",)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}
_STATUS = {409: 400, 422: 400}


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


def _param(details: Any) -> str | None:
    """The request field an error is about, when the details name one."""
    if isinstance(details, list) and details and isinstance(details[0], dict):
        field = details[0].get("field")
        return str(field) if field and field != "body" else None
    if isinstance(details, dict) and isinstance(details.get("field"), str):
        return str(details["field"])
    return None


def shape(
    path: str, status: int, code: str, message: str, details: Any, kind: str | None = None
) -> tuple[int, dict[str, Any]]:
    """The status and body of an error on this path; `kind` names a missing object's kind."""
    if kind == "model" and code == "not_found" and _under(path, OPENAI_PREFIXES + SHARED_PREFIXES):
        code = "model_not_found"
    if _under(path, OPENAI_PREFIXES):
        status = _STATUS.get(status, status)
        error = {
            "message": message,
            "type": _TYPES.get(status, "server_error" if status >= 500 else "api_error"),
            "param": _param(details),
            "code": code,
        }
        return status, {"error": error}
    body: dict[str, Any] = {"code": code, "message": message, "details": details}
    if _under(path, SHARED_PREFIXES):
        body["type"] = _TYPES.get(status, "server_error" if status >= 500 else "api_error")
        body["param"] = _param(details)
    return status, {"error": body}
