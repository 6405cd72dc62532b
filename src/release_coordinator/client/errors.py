"""The operator APIs' refusals as the library's exceptions.

Every refusal of the server is ``{"error": {"code", "message", "details"}}``
(:meth:`~release_coordinator.errors.ReleaseCoordinatorError.to_dict`); :func:`error_from_answer`
turns it back into the exception the server raised, with the server's message and details:

- ``invalid`` (400, 422): :class:`~release_coordinator.errors.ValidationError`, and
  ``invalid_area``, ``invalid_strategy``, ``invalid_bundle``: ``GeoJSONError``,
  ``StrategyError``, ``BundleError`` (each with its ``problems``);
- ``not_found`` (404): ``NotFoundError``;
- ``conflict``, ``invalid_transition``, ``concurrent_update`` (409): ``ConflictError``,
  ``InvalidTransitionError``, ``ConcurrentUpdateError``;
- ``storage``, ``schema`` (503): ``StorageError``, ``SchemaError``;
- 401, 403: :class:`AccessDeniedError` (a role's 403 says the role needed and the role held,
  also as :attr:`~AccessDeniedError.required_role` and :attr:`~AccessDeniedError.role`);
- 502, 504 without the error shape (a proxy's answer): ``BadGatewayError``;
- anything else (413, 415, 500, 503 ``unavailable`` ...): ``PeerAnswerError`` with its
  ``status_code``.

Trouble before an answer is ``PeerUnreachableError`` or ``PeerTimeoutError``.
"""

from __future__ import annotations

from typing import Any, TypeVar

import httpx

from release_coordinator.errors import (
    BadGatewayError,
    BundleError,
    ConcurrentUpdateError,
    ConflictError,
    GeoJSONError,
    InvalidTransitionError,
    MalformedAnswerError,
    NotFoundError,
    PeerAnswerError,
    ReleaseCoordinatorError,
    SchemaError,
    StorageError,
    StrategyError,
    ValidationError,
)

__all__ = ["AccessDeniedError", "error_from_answer", "malformed"]

E = TypeVar("E", bound=ReleaseCoordinatorError)


class AccessDeniedError(PeerAnswerError):
    """401 (no valid token) or 403 (a valid token that may not do this): see
    :attr:`status_code`; :attr:`error_code` is the server's ``unauthorized`` or ``forbidden``.
    A 403 for a role below the one needed has both: :attr:`required_role` and :attr:`role`
    (``admin``, ``releaser``, ``reader``; ``""`` otherwise)."""

    code = "access_denied"

    def __init__(
        self,
        message: str,
        *,
        peer: str = "",
        status_code: int,
        body: str = "",
        error_code: str,
        required_role: str = "",
        role: str = "",
    ) -> None:
        super().__init__(message, peer=peer, status_code=status_code, body=body)
        self.error_code = error_code
        self.required_role = required_role
        self.role = role


_VALIDATION: dict[str, type[ValidationError]] = {
    "invalid": ValidationError,
    "invalid_area": GeoJSONError,
    "invalid_strategy": StrategyError,
    "invalid_bundle": BundleError,
}
_CONFLICT: dict[str, type[ConflictError]] = {
    "conflict": ConflictError,
    "invalid_transition": InvalidTransitionError,
    "concurrent_update": ConcurrentUpdateError,
}
_STORAGE: dict[str, type[StorageError]] = {"storage": StorageError, "schema": SchemaError}


def _rebuilt(cls: type[E], message: str, details: dict[str, Any]) -> E:
    """An instance of ``cls`` carrying the server's message and details as they are (the
    classes' own constructors would write a message of their own)."""
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.message = message
    error.details = details
    return error


def _problems(details: dict[str, Any]) -> list[tuple[str, str]]:
    found = details.get("problems")
    if not isinstance(found, list):
        return []
    return [
        (str(p.get("path", "")), str(p.get("message", ""))) for p in found if isinstance(p, dict)
    ]


def _error_shape(response: httpx.Response) -> tuple[str, str, dict[str, Any]] | None:
    """``(code, message, details)`` of an answer in the error shape, else None."""
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None
    code, message, details = error.get("code"), error.get("message"), error.get("details")
    if not isinstance(code, str) or not isinstance(message, str):
        return None
    return code, message, details if isinstance(details, dict) else {}


def error_from_answer(response: httpx.Response, peer: str) -> ReleaseCoordinatorError:
    """The exception for ``response``, an answer that is not a success (see the module's
    table)."""
    status = response.status_code
    text = response.text
    shape = _error_shape(response)
    if shape is None:
        reason = f"{status} {response.reason_phrase}".strip()
        if status in (502, 504):
            return BadGatewayError(
                f"{peer} answered {reason} (a proxy in front of it)", peer=peer, status=status
            )
        if status in (401, 403):
            code = "unauthorized" if status == 401 else "forbidden"
            why = "no valid token" if status == 401 else "the token may not do this"
            return AccessDeniedError(
                f"{peer} answered {reason}: {why}",
                peer=peer,
                status_code=status,
                body=text,
                error_code=code,
            )
        return PeerAnswerError(
            f"{peer} answered {reason}", peer=peer, status_code=status, body=text
        )
    code, message, details = shape
    if status in (401, 403):
        return AccessDeniedError(
            message,
            peer=peer,
            status_code=status,
            body=text,
            error_code=code,
            required_role=str(details.get("required_role", "")),
            role=str(details.get("role", "")),
        )
    if code in _VALIDATION and status in (400, 422):
        invalid = _rebuilt(_VALIDATION[code], message, details)
        invalid.problems = _problems(details)
        return invalid
    if status == 404 and code == "not_found":
        missing = _rebuilt(NotFoundError, message, details)
        missing.kind = str(details.get("kind", ""))
        missing.ident = details.get("id", "")
        return missing
    if status == 409:
        conflict = _rebuilt(_CONFLICT.get(code, ConflictError), message, details)
        if isinstance(conflict, InvalidTransitionError):
            conflict.machine = str(details.get("machine", ""))
            conflict.state = str(details.get("state", ""))
            conflict.event = str(details.get("event", ""))
        elif isinstance(conflict, ConcurrentUpdateError):
            conflict.kind = str(details.get("kind", ""))
            conflict.ident = details.get("id", "")
            expected = details.get("expected")
            conflict.expected = tuple(expected) if isinstance(expected, list) else ()
            conflict.actual = str(details.get("actual", ""))
        return conflict
    if code in _STORAGE and status == 503:
        return _rebuilt(_STORAGE[code], message, details)
    return PeerAnswerError(message, peer=peer, status_code=status, body=text)


def malformed(response: httpx.Response, peer: str, why: str) -> MalformedAnswerError:
    """A success whose body is not what the API documents."""
    return MalformedAnswerError(
        f"{peer} answered {response.status_code} with {why}",
        peer=peer,
        status_code=response.status_code,
        body=response.text,
    )
