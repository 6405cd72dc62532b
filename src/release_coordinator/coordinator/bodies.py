"""The task-service protocol's bodies, declared once as msgspec Structs.

Their JSON shape and rules, the source of their JSON Schema; the decoders of
:mod:`release_coordinator.coordinator.wire` convert through them (see
:mod:`release_coordinator.schemas`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from release_coordinator.schemas import OptionalText, Text

__all__ = [
    "MAX_STUDIES",
    "ActionName",
    "Progress",
    "ReportedState",
    "ServiceStatusBody",
    "TaskAnswerBody",
    "TaskCallbackBody",
    "TaskRequestBody",
]

MAX_STUDIES = 10_000

ActionName = Literal["initialize", "start", "get_status", "publish", "cancel"]
ReportedState = Literal[
    "pending", "running", "staged", "publishing", "published", "failed", "canceled", "rejected"
]
Progress = Annotated[int, msgspec.Meta(ge=0, le=100, description="A percentage, 0..100.")]


class TaskRequestBody(msgspec.Struct):
    """``POST {base_url}/tasks``'s body (fields other than these are ignored)."""

    action: ActionName
    task_id: Text
    release_id: Text
    studies: Annotated[list[OptionalText], msgspec.Meta(max_length=MAX_STUDIES)] = []


class TaskAnswerBody(msgspec.Struct):
    """A task service's 200 answer (``progress`` may also be a string like ``"42%"``, and
    ``date_submitted`` anything false for none: the decoder accepts those too)."""

    task_id: Text
    release_id: Text
    state: ReportedState
    progress: Progress = 0
    name: OptionalText | None = None
    date_submitted: str | None = None


class TaskCallbackBody(msgspec.Struct, forbid_unknown_fields=True):
    """A task service's callback body (``progress`` may also be a string like ``"42%"``);
    ``task_id`` and ``release_id`` are tolerated, and ignored."""

    state: ReportedState
    progress: Progress | None = None
    task_id: Any = None
    release_id: Any = None


class ServiceStatusBody(msgspec.Struct):
    """``GET {base_url}/status``'s answer."""

    name: Text
    message: OptionalText | None = None
    version: OptionalText | None = None
