"""simtrack's error hierarchy, shared by the server's domain layer and the Python client.

Each class names the gRPC status code it travels as (by name, so this module needs no grpc); the
server maps them to a status in one place and the client maps statuses back to these classes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# How much of a caller's value an error repeats: enough to recognise it, never the whole of
# a huge one (a status travels in metadata, which gRPC caps at a few KiB).
QUOTE_MAX = 100


def prefix(value: str, limit: int = QUOTE_MAX) -> str:
    """``value`` cut to its first ``limit`` characters, ending in "…" when cut."""
    return value if len(value) <= limit else value[:limit] + "…"


def quote(value: str, limit: int = QUOTE_MAX) -> str:
    """``value`` as an error message repeats it: quoted, and only its first ``limit``
    characters (with its length) when it is longer.
    """
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value):,} characters)"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: its path (e.g. ``agent.name``) and what is wrong with it."""

    field: str
    description: str


class SimtrackError(Exception):
    """Base class of every error simtrack reports to a caller."""

    code_name = "UNKNOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(SimtrackError):
    """The request is malformed; ``violations`` name the fields."""

    code_name = "INVALID_ARGUMENT"

    def __init__(self, violations: Iterable[FieldViolation], message: str | None = None) -> None:
        self.violations = tuple(violations)
        text = message or "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(text or "invalid argument")

    @classmethod
    def of(cls, field: str, description: str) -> InvalidArgument:
        """A single-field violation."""
        return cls([FieldViolation(field, description)])


class NotFound(SimtrackError):
    """The named object does not exist (or is not visible to the caller)."""

    code_name = "NOT_FOUND"

    def __init__(self, resource_type: str, resource_id: str, field: str = "") -> None:
        self.resource_type = resource_type
        self.resource_id = prefix(resource_id)
        self.field = field
        where = f"{field}: " if field else ""
        super().__init__(f"{where}{resource_type} {quote(resource_id)} not found")


class AlreadyExists(SimtrackError):
    """An object with the same unique key exists."""

    code_name = "ALREADY_EXISTS"


class FailedPrecondition(SimtrackError):
    """The request is valid but the system is not in a state that allows it."""

    code_name = "FAILED_PRECONDITION"


class SequenceGap(FailedPrecondition):
    """A stream message skipped ahead of the run's sequence: resend from ``expected``."""

    reason = "SEQUENCE_GAP"

    def __init__(self, expected: int, received: int, message: str | None = None) -> None:
        self.expected = expected
        self.received = received
        super().__init__(
            message or f"seq: expected {expected}, got {received}: resend from the last ack"
        )


class Conflict(SimtrackError):
    """A concurrent change got in the way; retrying may succeed."""

    code_name = "ABORTED"


class Unauthenticated(SimtrackError):
    """No valid credentials."""

    code_name = "UNAUTHENTICATED"


class PermissionDenied(SimtrackError):
    """The credentials do not allow this call."""

    code_name = "PERMISSION_DENIED"


class Unavailable(SimtrackError):
    """A transient fault (e.g. the database is unreachable); retry later."""

    code_name = "UNAVAILABLE"


ERRORS_BY_CODE_NAME: dict[str, type[SimtrackError]] = {
    cls.code_name: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Conflict,
        Unauthenticated,
        PermissionDenied,
        Unavailable,
    )
}
