"""What the domain refuses, and why: each error carries a machine-readable code, a message a
person can act on, and optional details. The API maps each kind to an HTTP status."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A refusal a caller can act on."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class BadInput(DomainError):
    """The input cannot be read at all (an empty file)."""


class NotFound(DomainError):
    """No such object, or one of another project: the two are indistinguishable."""

    def __init__(self, kind: str, object_id: str, message: str | None = None) -> None:
        super().__init__("not_found", message or f"{kind} {object_id} not found")
        self.kind = kind


class Conflict(DomainError):
    """The request is well formed but the objects' current state refuses it."""


class Invalid(DomainError):
    """The request is well formed but asks for something that cannot work."""


class QuotaExceeded(DomainError):
    """The project is over one of its quotas."""


class IllegalTransition(Conflict):
    """A status change the job state machine does not allow."""

    def __init__(self, current: str, wanted: str) -> None:
        super().__init__(
            "illegal_transition",
            f"a {current} job cannot become {wanted}",
            {"status": current, "wanted": wanted},
        )
