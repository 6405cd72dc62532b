"""The task-service protocol's messages, and their strict encoding and decoding.

Both transports and the task-service kit go through these functions, so an in-process service
sees exactly what an HTTP one would. Decoders take untrusted, already JSON-decoded values and
raise :class:`~release_coordinator.errors.ValidationError` listing every problem by its path.

Each body is declared once as a msgspec Struct (in :mod:`release_coordinator.coordinator.bodies`:
its JSON shape and rules, the source of its JSON Schema); a decoder converts through it, and
only when msgspec refuses a value does the full path below run, to accept what the protocol
tolerates beyond the Struct (``"42%"`` progress, an integral float) or to list every problem
(see :mod:`release_coordinator.schemas`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, get_args

import attrs

from release_coordinator.coordinator.bodies import (
    MAX_STUDIES,
    ActionName,
    ReportedState,
    ServiceStatusBody,
    TaskAnswerBody,
    TaskCallbackBody,
    TaskRequestBody,
)
from release_coordinator.errors import Problem, ValidationError
from release_coordinator.problems import short
from release_coordinator.schemas import MAX_TEXT, BodyConverter

__all__ = [
    "MAX_TEXT",
    "REPORTED_STATES",
    "ServiceStatus",
    "TaskAction",
    "TaskAnswer",
    "TaskRequest",
    "TaskStateReport",
    "decode_answer",
    "decode_callback",
    "decode_request",
    "decode_status",
    "parse_progress",
]


class TaskAction(StrEnum):
    INITIALIZE = "initialize"
    START = "start"
    GET_STATUS = "get_status"
    PUBLISH = "publish"
    CANCEL = "cancel"


_ACTIONS = {action.value: action for action in TaskAction}
_ACTION_VALUES = {action: action.value for action in TaskAction}

#: The states a task service may report.
REPORTED_STATES = frozenset(
    {"pending", "running", "staged", "publishing", "published", "failed", "canceled", "rejected"}
)


assert set(get_args(ReportedState)) == REPORTED_STATES
assert set(get_args(ActionName)) == {action.value for action in TaskAction}

_REQUEST = BodyConverter(TaskRequestBody)
_ANSWER = BodyConverter(TaskAnswerBody)
_CALLBACK = BodyConverter(TaskCallbackBody)
_STATUS = BodyConverter(ServiceStatusBody)


_PERCENT = re.compile(r"^\s*(\d{1,3})\s*%?\s*$")


def parse_progress(value: object, path: str, problems: list[Problem]) -> int:
    """``progress`` is an int 0..100 or a string like ``"42%"``; anything else is a problem."""
    if isinstance(value, bool):
        problems.append((path, "must be an integer 0..100 or a string like '42%'"))
        return 0
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and (match := _PERCENT.match(value)):
        number = int(match.group(1))
    else:
        problems.append((path, "must be an integer 0..100 or a string like '42%'"))
        return 0
    if not 0 <= number <= 100:
        problems.append((path, f"{number} is outside 0..100"))
        return 0
    return number


def _text(
    body: Mapping[str, Any], key: str, problems: list[Problem], *, required: bool = True
) -> str:
    value = body.get(key)
    if value is None:
        if required:
            problems.append((key, "is required"))
        return ""
    if not isinstance(value, str):
        problems.append((key, f"must be a string, not {type(value).__name__}"))
        return ""
    if len(value) > MAX_TEXT:
        problems.append((key, f"is longer than {MAX_TEXT} characters"))
        return ""
    if required and not value:
        problems.append((key, "must not be empty"))
    return value


def _mapping(body: object, what: str) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise ValidationError(f"invalid {what}", [("", "must be a JSON object")])
    return body


@attrs.frozen
class TaskRequest:
    """``POST {base_url}/tasks``: an action for one task."""

    action: TaskAction
    task_id: str
    release_id: str
    studies: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            # (a plain str, without the cost of Enum.value)
            "action": _ACTION_VALUES.get(self.action) or self.action.value,
            "task_id": self.task_id,
            "release_id": self.release_id,
            "studies": list(self.studies),
        }


def decode_request(body: object) -> TaskRequest:
    """A request body as a task service receives it."""
    # (msgspec would take any sequence of studies; the protocol's is a JSON list)
    studies_given = body.get("studies", []) if isinstance(body, Mapping) else None
    if type(studies_given) is list and (fast := _REQUEST.convert(body)) is not None:
        return TaskRequest(
            _ACTIONS[fast.action], fast.task_id, fast.release_id, tuple(fast.studies)
        )
    data = _mapping(body, "task request")
    problems: list[Problem] = []
    raw_action = data.get("action")
    action = _ACTIONS.get(raw_action) if isinstance(raw_action, str) else None
    if action is None:
        problems.append(
            ("action", f"must be one of {', '.join(TaskAction)}; got {short(raw_action)}")
        )
        action = TaskAction.GET_STATUS
    task_id = _text(data, "task_id", problems)
    release_id = _text(data, "release_id", problems)
    studies_raw = data.get("studies", [])
    studies: list[str] = []
    if not isinstance(studies_raw, list):
        problems.append(("studies", "must be a list of strings"))
    elif len(studies_raw) > MAX_STUDIES:
        problems.append(("studies", f"has more than {MAX_STUDIES} entries"))
    else:
        for i, study in enumerate(studies_raw):
            if not isinstance(study, str) or len(study) > MAX_TEXT:
                problems.append((f"studies[{i}]", "must be a string of at most 256 characters"))
            else:
                studies.append(study)
    if problems:
        raise ValidationError("invalid task request", problems)
    return TaskRequest(action, task_id, release_id, tuple(studies))


@attrs.frozen
class TaskAnswer:
    """A task service's 200 answer: the state it holds for the task."""

    task_id: str
    release_id: str
    state: str
    progress: int = 0
    name: str = ""
    date_submitted: str = ""

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "task_id": self.task_id,
            "release_id": self.release_id,
            "state": self.state,
            "progress": self.progress,
        }
        if self.name:
            body["name"] = self.name
        if self.date_submitted:
            body["date_submitted"] = self.date_submitted
        return body


def _state(data: Mapping[str, Any], problems: list[Problem]) -> str:
    state = data.get("state")
    if not isinstance(state, str) or state not in REPORTED_STATES:
        problems.append(("state", f"must be one of {', '.join(sorted(REPORTED_STATES))}"))
        return ""
    return str(state)


def decode_answer(body: object) -> TaskAnswer:
    """A task service's answer body as the coordinator receives it."""
    if (fast := _ANSWER.convert(body)) is not None:
        return TaskAnswer(
            fast.task_id,
            fast.release_id,
            fast.state,
            fast.progress,
            fast.name or "",
            fast.date_submitted or "",
        )
    data = _mapping(body, "task answer")
    problems: list[Problem] = []
    task_id = _text(data, "task_id", problems)
    release_id = _text(data, "release_id", problems)
    state = _state(data, problems)
    progress = parse_progress(data.get("progress", 0), "progress", problems)
    name = _text(data, "name", problems, required=False)
    submitted = data.get("date_submitted") or ""
    if not isinstance(submitted, str):
        problems.append(("date_submitted", "must be a string"))
        submitted = ""
    if problems:
        raise ValidationError("invalid task answer", problems)
    return TaskAnswer(task_id, release_id, state, progress, name, submitted)


@attrs.frozen
class TaskStateReport:
    """A task service's callback (``PATCH /tasks/{id}``): ``{"state", "progress"}``."""

    state: str
    progress: int | None = None


def decode_callback(body: object) -> TaskStateReport:
    """A callback body; ``progress`` may be left out."""
    if (fast := _CALLBACK.convert(body)) is not None:
        return TaskStateReport(fast.state, fast.progress)
    data = _mapping(body, "task callback")
    problems: list[Problem] = []
    state = _state(data, problems)
    progress = None
    if data.get("progress") is not None:
        progress = parse_progress(data["progress"], "progress", problems)
    unknown = sorted(set(data) - {"state", "progress", "task_id", "release_id"})
    problems.extend((key, "is not a field of a task callback") for key in unknown)
    if problems:
        raise ValidationError("invalid task callback", problems)
    return TaskStateReport(state, progress)


@attrs.frozen
class ServiceStatus:
    """``GET {base_url}/status``: who the service is."""

    name: str
    message: str = ""
    version: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "message": self.message, "version": self.version}


def decode_status(body: object) -> ServiceStatus:
    """A status answer body as the coordinator receives it."""
    if (fast := _STATUS.convert(body)) is not None:
        return ServiceStatus(fast.name, fast.message or "", fast.version or "")
    data = _mapping(body, "status answer")
    problems: list[Problem] = []
    name = _text(data, "name", problems)
    message = _text(data, "message", problems, required=False)
    version = _text(data, "version", problems, required=False)
    if problems:
        raise ValidationError("invalid status answer", problems)
    return ServiceStatus(name, message, version)
