"""The one exception tree of release_coordinator.

Every error the library raises on purpose derives from :class:`ReleaseCoordinatorError`.
Errors of the libraries underneath (httpx, SQLAlchemy, shapely, PyYAML) are translated at the
adapter's edge and never leak::

    ReleaseCoordinatorError
    ├── ConfigurationError          a setting or argument that cannot work
    ├── ValidationError             bad input; .problems lists every (path, message)
    │   ├── StrategyError           a rollout strategy document that does not hold
    │   ├── GeoJSONError            an area that is not a valid WGS84 (Multi)Polygon
    │   └── BundleError             a release bundle (function archive) that is refused
    ├── NotFoundError               an id that names nothing
    ├── ConflictError               the stored state does not allow what was asked
    │   ├── InvalidTransitionError  a state machine refuses the event from this state
    │   └── ConcurrentUpdateError   a compare-and-set lost against another writer
    ├── TransportError              talking to a peer (task service, parent manager) failed
    │   ├── TransientTransportError trouble that a retry may cure
    │   │   ├── PeerUnreachableError   connection refused, reset or dropped
    │   │   ├── PeerTimeoutError       no answer in time
    │   │   └── BadGatewayError        502/504 from a proxy in front of the peer
    │   └── PeerAnswerError         a real answer that is not a success (400, 404, 500, 503 ...)
    │       └── MalformedAnswerError   a 200 whose body breaks the protocol
    ├── WebhookSignatureError       a webhook delivery whose signature does not verify
    └── StorageError                the store failed underneath (driver error, schema)
        └── SchemaError             the stored schema is missing or of another version

The HTTP layer maps them to status codes through :attr:`ReleaseCoordinatorError.http_status`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

__all__ = [
    "BadGatewayError",
    "BundleError",
    "ConcurrentUpdateError",
    "ConfigurationError",
    "ConflictError",
    "GeoJSONError",
    "InvalidTransitionError",
    "MalformedAnswerError",
    "NotFoundError",
    "PeerAnswerError",
    "PeerTimeoutError",
    "PeerUnreachableError",
    "Problem",
    "ReleaseCoordinatorError",
    "SchemaError",
    "StorageError",
    "StrategyError",
    "TransientTransportError",
    "TransportError",
    "ValidationError",
    "WebhookSignatureError",
]


class ReleaseCoordinatorError(Exception):
    """Root of every error raised by release_coordinator."""

    #: Stable machine-readable code, used in JSON error bodies.
    code: ClassVar[str] = "error"
    #: HTTP status the server layer answers with.
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details

    def to_dict(self) -> dict[str, Any]:
        """The error as the JSON body ``{"error": {"code", "message", "details"}}``."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class ConfigurationError(ReleaseCoordinatorError):
    """A setting or argument that cannot work (a negative interval, an unknown URL scheme)."""

    code = "configuration"
    http_status = 500


Problem = tuple[str, str]
"""One validation problem: (path, message); the path is dotted/indexed, e.g. ``stages[1].name``."""


class ValidationError(ReleaseCoordinatorError):
    """Input that is refused; :attr:`problems` lists every problem found with its path."""

    code = "invalid"
    http_status = 422

    def __init__(self, message: str, problems: Iterable[Problem] = (), **details: Any) -> None:
        self.problems: list[Problem] = list(problems)
        if self.problems:
            listed = "; ".join(f"{path or '<root>'}: {msg}" for path, msg in self.problems)
            message = f"{message}: {listed}"
        super().__init__(
            message, problems=[{"path": p, "message": m} for p, m in self.problems], **details
        )


class StrategyError(ValidationError):
    """A rollout strategy document that does not parse or does not hold together."""

    code = "invalid_strategy"


class GeoJSONError(ValidationError):
    """An area that is not a valid GeoJSON Polygon/MultiPolygon in WGS84 lon/lat."""

    code = "invalid_area"
    http_status = 400


class BundleError(ValidationError):
    """A release bundle (strategy + function archive) that is refused."""

    code = "invalid_bundle"


class NotFoundError(ReleaseCoordinatorError):
    """An id that names no stored object."""

    code = "not_found"
    http_status = 404

    def __init__(self, kind: str, ident: object) -> None:
        super().__init__(f"unknown {kind} {ident!r}", kind=kind, id=str(ident))
        self.kind = kind
        self.ident = ident


class ConflictError(ReleaseCoordinatorError):
    """The stored state does not allow what was asked (nothing was changed)."""

    code = "conflict"
    http_status = 409


class InvalidTransitionError(ConflictError):
    """A state machine refuses an event from the current state; nothing was changed."""

    code = "invalid_transition"

    def __init__(
        self, machine: str, state: object, event: str, *, subject: str = "", hint: str = ""
    ) -> None:
        state = _wire_name(state)
        who = f" {subject}" if subject else ""
        message = f"{machine}{who} cannot '{event}' from state '{state}'"
        if hint:
            message = f"{message}: {hint}"
        super().__init__(message, machine=machine, state=state, event=event, subject=subject)
        self.machine = machine
        self.state = state
        self.event = event


def _wire_name(state: object) -> str:
    """A state as the wire names it: a protocol status's name (``Doing``), an enum's value
    (``initializing``), never a Python repr."""
    wire = getattr(state, "wire_name", None)
    if isinstance(wire, str):
        return wire
    value = getattr(state, "value", state)
    return str(value)


class ConcurrentUpdateError(ConflictError):
    """A compare-and-set lost: the stored state was no longer one of the expected ones."""

    code = "concurrent_update"

    def __init__(
        self, kind: str, ident: object, expected: Iterable[object], actual: object
    ) -> None:
        expected = sorted(_wire_name(e) for e in expected)
        actual = _wire_name(actual)
        wanted = " or ".join(f"'{e}'" for e in expected) or "nothing"
        super().__init__(
            f"{kind} '{ident}' is '{actual}', expected {wanted}",
            kind=kind,
            id=str(ident),
            expected=expected,
            actual=actual,
        )
        self.kind = kind
        self.ident = ident
        self.expected = tuple(expected)
        self.actual = actual


class TransportError(ReleaseCoordinatorError):
    """Talking to a peer failed. :attr:`peer` names it (a base URL or in-process name)."""

    code = "transport"
    http_status = 502

    def __init__(self, message: str, *, peer: str = "", **details: Any) -> None:
        super().__init__(message, peer=peer, **details)
        self.peer = peer


class TransientTransportError(TransportError):
    """Trouble that is not an answer; retrying may cure it."""

    code = "transient"


class PeerUnreachableError(TransientTransportError):
    """Connection refused, reset, or dropped before an answer arrived."""

    code = "unreachable"


class PeerTimeoutError(TransientTransportError):
    """The peer did not answer within the time-out."""

    code = "timeout"
    http_status = 504


class BadGatewayError(TransientTransportError):
    """A proxy in front of the peer answered 502 or 504."""

    code = "bad_gateway"


class PeerAnswerError(TransportError):
    """The peer answered, and the answer is not a success. Never retried."""

    code = "peer_error"

    def __init__(self, message: str, *, peer: str = "", status_code: int, body: str = "") -> None:
        super().__init__(message, peer=peer, status_code=status_code, body=body[:500])
        self.status_code = status_code
        self.body = body


class MalformedAnswerError(PeerAnswerError):
    """A success status whose body breaks the protocol."""

    code = "malformed_answer"


class WebhookSignatureError(ReleaseCoordinatorError):
    """A webhook delivery whose signature does not verify (``verify_webhook``, on the
    receiver's side)."""

    code = "invalid_signature"
    http_status = 401


class StorageError(ReleaseCoordinatorError):
    """The store failed underneath (a driver error, a lost connection)."""

    code = "storage"
    http_status = 503


class SchemaError(StorageError):
    """The stored schema is missing, or of a version this library does not speak."""

    code = "schema"
