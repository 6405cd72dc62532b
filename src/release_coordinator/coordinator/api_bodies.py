"""The Coordinator operator API's bodies, declared once as msgspec Structs.

The request bodies (a task service to register or change, a release to create or change, a
cancel request, an action's empty object, a task service's callback) and the answers (status,
task services, releases, tasks, events, and their pages): their JSON shape and every rule JSON
Schema can state, the source of the API's OpenAPI schemas. The app decodes request bodies
through them (see :mod:`release_coordinator.schemas`); its answers have their shape.

Rules JSON Schema cannot state stay in code and are named in the fields' descriptions: text is
*printable* (``str.isprintable``, tabs and line ends allowed in a multi-line field; the
patterns only refuse control characters) and a name or URL is *not blank*; a Struct's
:attr:`~ReleaseCreate.NOT_BLANK` and :attr:`~ReleaseCreate.MULTILINE` name its fields those
rules apply to. A callback's ``progress`` may be a string such as ``"42%"``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Generic, TypeVar

import msgspec

from release_coordinator.coordinator.bodies import Progress, ReportedState
from release_coordinator.coordinator.models import EventKind, EventType, HealthStatus
from release_coordinator.coordinator.notes import MAX_NOTE
from release_coordinator.coordinator.publish_gates import MAX_APPROVALS, MAX_CHECKS
from release_coordinator.fsm.release import ReleaseState, TaskState
from release_coordinator.schemas import (
    MAX_PAGE,
    MAX_REASON,
    MAX_TEXT,
    MULTILINE_PATTERN,
    PRINTABLE_PATTERN,
)

__all__ = [
    "ANSWERS",
    "MAX_DESCRIPTION",
    "MAX_ITEMS",
    "MAX_NOTE",
    "MAX_PAGE",
    "MAX_REASON",
    "MAX_URL",
    "NAMES",
    "REQUESTS",
    "CancelRequest",
    "EmptyObject",
    "EventAnswer",
    "EventPage",
    "NoteAnswer",
    "NoteCreate",
    "NotePage",
    "NoteUpdate",
    "ReleaseAnswer",
    "ReleaseCreate",
    "ReleasePage",
    "ReleaseUpdate",
    "RequestBody",
    "ServiceHealthAnswer",
    "StatusAnswer",
    "StudyAnswer",
    "StudyPage",
    "TaskAnswer",
    "TaskCallback",
    "TaskPage",
    "TaskServiceAnswer",
    "TaskServiceCreate",
    "TaskServicePage",
    "TaskServiceUpdate",
]

#: Longest release description accepted.
MAX_DESCRIPTION = 10_000
#: Longest task-service URL accepted.
MAX_URL = 2048
#: Most studies or tags of one release.
MAX_ITEMS = 10_000

_NOT_BLANK = "Printable text that is not blank."

#: Printable text, possibly empty.
Printable = Annotated[str, msgspec.Meta(max_length=MAX_TEXT, pattern=PRINTABLE_PATTERN)]
#: Printable text that is not blank (a name).
Name = Annotated[
    str,
    msgspec.Meta(
        min_length=1, max_length=MAX_TEXT, pattern=PRINTABLE_PATTERN, description=_NOT_BLANK
    ),
]
#: A task service's base URL.
Url = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=MAX_URL,
        pattern=PRINTABLE_PATTERN,
        description="The service's base URL (http, https, or memory:// in process): "
        + _NOT_BLANK.lower(),
    ),
]
#: A release's description: printable text over several lines.
Description = Annotated[
    str,
    msgspec.Meta(max_length=MAX_DESCRIPTION, pattern=MULTILINE_PATTERN, description="Printable."),
]
#: Study ids or tags: non-empty printable strings.
Texts = Annotated[
    list[
        Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT, pattern=PRINTABLE_PATTERN)]
    ],
    msgspec.Meta(max_length=MAX_ITEMS),
]
#: A release note's Markdown text: printable over several lines, not blank.
NoteText = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=MAX_NOTE,
        pattern=MULTILINE_PATTERN,
        description="Markdown: printable text over several lines, not blank.",
    ),
]
Percent = Annotated[int, msgspec.Meta(ge=0, le=100)]
#: An ISO 8601 time, with its zone.
Stamp = Annotated[datetime, msgspec.Meta(extra_json_schema={"format": "date-time"})]


# -- requests -------------------------------------------------------------------------------------


class RequestBody(msgspec.Struct, forbid_unknown_fields=True):
    """A request body of the operator API (no other field allowed)."""

    #: The fields that must not be blank, and those whose text may span several lines.
    NOT_BLANK: ClassVar[frozenset[str]] = frozenset()
    MULTILINE: ClassVar[frozenset[str]] = frozenset()


class TaskServiceCreate(RequestBody):
    """``POST /task-services``: a task service to register."""

    NOT_BLANK = frozenset({"name", "url"})

    name: Name
    url: Url
    enabled: bool | None = None
    check: (
        Annotated[
            bool,
            msgspec.Meta(
                description="Ask its GET /status first (422 if it does not answer; default true)."
            ),
        ]
        | None
    ) = None

    documented_defaults: ClassVar[dict[str, object]] = {"enabled": True, "check": True}


class TaskServiceUpdate(RequestBody):
    """The fields to change (none: nothing changes)."""

    NOT_BLANK = frozenset({"name", "url"})

    name: Name | None = None
    url: Url | None = None


class ReleaseCreate(RequestBody):
    """``POST /releases``: a release over every enabled task service."""

    NOT_BLANK = frozenset({"name"})
    MULTILINE = frozenset({"description"})

    name: Name
    description: Description | None = None
    studies: Texts | None = None
    tags: Texts | None = None
    author: (
        Annotated[
            Printable, msgspec.Meta(description="Left out: the name of the operator's token.")
        ]
        | None
    ) = None
    is_major: bool | None = None
    auto_publish: bool | None = None
    required_approvals: (
        Annotated[
            int,
            msgspec.Meta(
                ge=0,
                le=MAX_APPROVALS,
                description="Approvals by distinct admins it needs before it may leave staged"
                " (POST /releases/{id}/approve).",
            ),
        ]
        | None
    ) = None
    checks: (
        Annotated[
            list[Annotated[str, msgspec.Meta(min_length=1, max_length=128)]],
            msgspec.Meta(
                max_length=MAX_CHECKS,
                description="Webhook ids asked, once it is staged, whether it may be published"
                " (each must answer pass; 422 for an unknown one).",
            ),
        ]
        | None
    ) = None
    publish_at: (
        Annotated[
            Stamp,
            msgspec.Meta(
                description="Published then (by itself, once its other gates are open), not"
                " before. A time with its zone (422 otherwise)."
            ),
        ]
        | None
    ) = None

    documented_defaults: ClassVar[dict[str, object]] = {
        "is_major": False,
        "auto_publish": False,
        "required_approvals": 0,
        "checks": [],
    }


class ReleaseUpdate(RequestBody):
    """The fields to change (none: nothing changes)."""

    NOT_BLANK = frozenset({"name"})
    MULTILINE = frozenset({"description"})

    name: Name | None = None
    description: Description | None = None
    tags: Texts | None = None


class CancelRequest(RequestBody):
    """``POST /releases/{id}/cancel``'s body (optional)."""

    reason: (
        Annotated[str, msgspec.Meta(max_length=MAX_REASON, pattern=PRINTABLE_PATTERN)] | None
    ) = None


class EmptyObject(RequestBody):
    """An empty object (or an empty body): the action takes no field. (Its OpenAPI component
    is the one both APIs share, not generated from it.)"""


class NoteCreate(RequestBody):
    """``POST /releases/{id}/notes``: a note on the release, or on one of its studies."""

    NOT_BLANK = frozenset({"text"})
    MULTILINE = frozenset({"text"})

    text: NoteText
    study_id: (
        Annotated[
            Printable,
            msgspec.Meta(
                description="One of the release's studies (422 otherwise); left out or empty:"
                " a note on the release as a whole."
            ),
        ]
        | None
    ) = None
    author: (
        Annotated[
            Printable, msgspec.Meta(description="Left out: the name of the operator's token.")
        ]
        | None
    ) = None


class NoteUpdate(RequestBody):
    """``PATCH /notes/{id}``: the note's new text (its author and study stay)."""

    NOT_BLANK = frozenset({"text"})
    MULTILINE = frozenset({"text"})

    text: NoteText


class TaskCallback(msgspec.Struct, forbid_unknown_fields=True):
    """A task service's report; an impossible transition is a 409 and changes nothing.
    (Decoded by :func:`~release_coordinator.coordinator.wire.decode_callback`.)"""

    state: ReportedState
    progress: (
        Annotated[
            Progress | Annotated[str, msgspec.Meta(pattern="^\\s*[0-9]{1,3}\\s*%?\\s*$")],
            msgspec.Meta(description="0..100, or a string such as ``42%``."),
        ]
        | None
    ) = None
    task_id: Annotated[Any, msgspec.Meta(description="Ignored (the path names the task).")] = None
    release_id: Annotated[Any, msgspec.Meta(description="Ignored (the path names the task).")] = (
        None
    )


# -- answers: every field always present, nothing else ---------------------------------------------


class _Answer(msgspec.Struct, forbid_unknown_fields=True):
    pass


class StatusAnswer(_Answer):
    """``GET /status``: the coordinator is up."""

    name: str
    version: str
    message: str


class ServiceHealthAnswer(_Answer):
    """What the health checks know of a task service."""

    status: HealthStatus
    consecutive_failures: Annotated[int, msgspec.Meta(ge=0)]
    last_checked_at: Stamp | None
    last_error: str
    reported_name: str
    reported_version: str
    message: str


class TaskServiceAnswer(_Answer):
    """A task service."""

    id: str
    name: str
    url: str
    enabled: bool
    health: ServiceHealthAnswer
    created_at: Stamp
    updated_at: Stamp


class ApprovalAnswer(_Answer):
    """One admin's approval."""

    by: str
    at: Stamp


class CheckResultAnswer(_Answer):
    """What a check answered: `pass`, `fail`, or `error` (it could not be asked)."""

    webhook_id: str
    result: Annotated[str, msgspec.Meta(pattern="^(pass|fail|error)$")]
    message: str
    at: Stamp


class GatesAnswer(_Answer):
    """A release's gates before publish and how far they are."""

    required_approvals: int
    checks: list[str]
    publish_at: Stamp | None
    approvals: list[ApprovalAnswer]
    results: list[CheckResultAnswer]
    checks_round: Annotated[
        int, msgspec.Meta(ge=0, description="How many times its checks were asked again.")
    ]


class ReleaseAnswer(_Answer):
    """A release."""

    id: str
    name: str
    version: Annotated[str, msgspec.Meta(description="A semantic version.")]
    state: ReleaseState
    description: str
    studies: list[str]
    tags: list[str]
    author: str
    is_major: bool
    auto_publish: bool
    failure: Annotated[str, msgspec.Meta(description="Why it failed (empty otherwise).")]
    cloned_from: Annotated[str, msgspec.Meta(description="The release it runs again.")]
    created_at: Stamp
    updated_at: Stamp
    state_changed_at: Stamp
    gates: GatesAnswer
    publish_gate: Annotated[
        str | None,
        msgspec.Meta(description="Why it may not be published now (null: nothing holds it)."),
    ]


class TaskAnswer(_Answer):
    """One release on one task service."""

    id: str
    release_id: str
    task_service_id: str
    state: TaskState
    progress: Percent
    message: str
    created_at: Stamp
    updated_at: Stamp
    progress_at: Stamp


class EventAnswer(_Answer):
    """An event of the log."""

    id: Annotated[int, msgspec.Meta(ge=1)]
    at: Stamp
    type: EventType
    kind: EventKind
    message: str
    release_id: str | None
    task_id: str | None
    task_service_id: str | None
    state: Annotated[str | None, msgspec.Meta(description="The new state, for a transition.")]


class NoteAnswer(_Answer):
    """A release note."""

    id: str
    release_id: str
    study_id: Annotated[str, msgspec.Meta(description="Empty: a note on the whole release.")]
    author: str
    text: Annotated[str, msgspec.Meta(description="Markdown.")]
    created_at: Stamp
    updated_at: Stamp


class StudyAnswer(_Answer):
    """A study, as the releases that name it tell it."""

    id: str
    created_at: Annotated[Stamp, msgspec.Meta(description="When its first release was made.")]
    release_ids: Annotated[list[str], msgspec.Meta(description="Its releases, newest first.")]
    latest_release_id: str
    latest_version: Annotated[str, msgspec.Meta(description="Its newest release's version.")]
    last_published_release_id: Annotated[
        str, msgspec.Meta(description="Its release published last (empty: none yet).")
    ]
    last_published_version: str
    last_published_at: Stamp | None


T = TypeVar("T")


class _Page(_Answer, Generic[T]):
    items: list[T]
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE)]
    offset: Annotated[int, msgspec.Meta(ge=0)]
    next_offset: Annotated[int, msgspec.Meta(ge=0)] | None


class TaskServicePage(_Page[TaskServiceAnswer]):
    """A page of task services; ``next_offset`` is null on the last page."""


class ReleasePage(_Page[ReleaseAnswer]):
    """A page of releases; ``next_offset`` is null on the last page."""


class TaskPage(_Page[TaskAnswer]):
    """A page of tasks; ``next_offset`` is null on the last page."""


class EventPage(_Page[EventAnswer]):
    """A page of events; ``next_offset`` is null on the last page."""


class NotePage(_Page[NoteAnswer]):
    """A page of release notes, oldest first; ``next_offset`` is null on the last page."""


class StudyPage(_Page[StudyAnswer]):
    """A page of studies, newest first; ``next_offset`` is null on the last page."""


REQUESTS: tuple[type[msgspec.Struct], ...] = (
    TaskServiceCreate,
    TaskServiceUpdate,
    ReleaseCreate,
    ReleaseUpdate,
    CancelRequest,
    TaskCallback,
    NoteCreate,
    NoteUpdate,
)
ANSWERS: tuple[type[msgspec.Struct], ...] = (
    StatusAnswer,
    TaskServicePage,
    ReleasePage,
    TaskPage,
    EventPage,
    NotePage,
    StudyPage,
)
#: The OpenAPI components' names of the answers' Structs.
NAMES = {
    "StatusAnswer": "Status",
    "ServiceHealthAnswer": "ServiceHealth",
    "TaskServiceAnswer": "TaskService",
    "ReleaseAnswer": "Release",
    "TaskAnswer": "Task",
    "EventAnswer": "Event",
    "NoteAnswer": "ReleaseNote",
    "StudyAnswer": "Study",
}
