"""The records of release_coordinator: immutable attrs values.

Stores hand out snapshots; a change is made by asking the store (which compares and sets) and
getting a new snapshot back, never by mutating a record in place.
"""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime
from enum import StrEnum

import attrs

from release_coordinator.fsm.release import ReleaseState, TaskState

__all__ = [
    "NO_GATES",
    "Approval",
    "CheckResult",
    "Event",
    "EventKind",
    "EventType",
    "HealthStatus",
    "PublishGates",
    "Release",
    "ReleaseNote",
    "ServiceHealth",
    "Study",
    "Task",
    "TaskService",
    "new_id",
    "new_ids",
    "publish_gate",
    "utcnow",
]

#: RFC 4648 base32 mapped onto Crockford's alphabet (no I, L, O, U: nothing to misread).
_CROCKFORD = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
)


def new_id(prefix: str) -> str:
    """A fresh random id like ``RE_3K9QF2AZ`` (40 random bits after the prefix)."""
    return prefix + "_" + base64.b32encode(secrets.token_bytes(5)).translate(_CROCKFORD).decode()


def new_ids(prefix: str, count: int) -> list[str]:
    """``count`` fresh random ids, each like :func:`new_id`'s, drawn at once."""
    # Every 5 random bytes encode to 8 characters on their own, so one encoding of 5 * count
    # bytes is count independent ids.
    text = base64.b32encode(secrets.token_bytes(5 * count)).translate(_CROCKFORD).decode()
    head = prefix + "_"
    return [head + text[i : i + 8] for i in range(0, 8 * count, 8)]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the only kind of time records hold)."""
    return datetime.now(UTC)


class HealthStatus(StrEnum):
    UNKNOWN = "unknown"
    OK = "ok"
    DOWN = "down"


@attrs.frozen
class ServiceHealth:
    """What the periodic health checks know of a task service."""

    status: HealthStatus = HealthStatus.UNKNOWN
    consecutive_failures: int = 0
    last_checked_at: datetime | None = None
    last_error: str = ""
    #: ``name``/``version``/``message`` of the last healthy ``GET /status`` answer.
    reported_name: str = ""
    reported_version: str = ""
    message: str = ""


@attrs.frozen
class TaskService:
    """A consumer of release data that implements the task-service protocol.

    ``url`` is the base URL of an HTTP service (``https://search.example.org/release``) or the
    address of an in-process service in a :class:`~release_coordinator.transports.memory.
    MemoryTransport` (``memory://search``).
    """

    id: str
    name: str
    url: str
    enabled: bool = True
    health: ServiceHealth = ServiceHealth()
    created_at: datetime = attrs.field(factory=utcnow)
    updated_at: datetime = attrs.field(factory=utcnow)


@attrs.frozen
class Approval:
    """One operator's approval of a release."""

    by: str
    at: datetime = attrs.field(factory=utcnow)


@attrs.frozen
class CheckResult:
    """What a check answered for a release: ``pass``, ``fail`` (with its message), or
    ``error`` (it could not be asked: the message says why)."""

    webhook_id: str
    result: str
    message: str = ""
    at: datetime = attrs.field(factory=utcnow)


@attrs.frozen
class PublishGates:
    """A release's gates before publish (see the module) and how far they are."""

    required_approvals: int = 0
    checks: tuple[str, ...] = ()
    publish_at: datetime | None = None
    approvals: tuple[Approval, ...] = ()
    results: tuple[CheckResult, ...] = ()
    #: How many times the checks were asked again (an answer to an earlier round is dropped).
    checks_round: int = 0

    @property
    def configured(self) -> bool:
        return bool(self.required_approvals or self.checks or self.publish_at)

    def result_of(self, webhook_id: str) -> CheckResult | None:
        return next((r for r in self.results if r.webhook_id == webhook_id), None)

    def fresh(self) -> PublishGates:
        """The same gates, with no approval or result yet (a release run again)."""
        return attrs.evolve(self, approvals=(), results=())


NO_GATES = PublishGates()


@attrs.frozen
class Release:
    """One data release, driven through every enabled task service together.

    ``failure`` is empty unless the release is being (or was) canceled because something failed;
    then it says what, and the release ends ``failed`` rather than ``canceled``.
    """

    id: str
    name: str
    version: str
    state: ReleaseState = ReleaseState.WAITING
    description: str = ""
    studies: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    author: str = ""
    is_major: bool = False
    auto_publish: bool = False
    failure: str = ""
    cloned_from: str = ""
    created_at: datetime = attrs.field(factory=utcnow)
    updated_at: datetime = attrs.field(factory=utcnow)
    #: When the release entered its current state: the clock of the whole-release time limit.
    state_changed_at: datetime = attrs.field(factory=utcnow)
    #: What it waits for in ``staged`` besides its tasks (coordinator.publish_gates).
    gates: PublishGates = NO_GATES

    @property
    def is_final(self) -> bool:
        return self.state in _RELEASE_FINAL


_RELEASE_FINAL = frozenset({ReleaseState.PUBLISHED, ReleaseState.CANCELED, ReleaseState.FAILED})


def publish_gate(release: Release, now: datetime) -> str | None:
    """Why ``release`` may not be published at ``now`` (its first closed gate), or None."""
    gates = release.gates
    missing = gates.required_approvals - len(gates.approvals)
    if missing > 0:
        got = len(gates.approvals)
        return f"it needs {missing} more approval(s) ({got} of {gates.required_approvals})"
    for webhook_id in gates.checks:
        result = gates.result_of(webhook_id)
        if result is None:
            return f"check {webhook_id} has not answered yet"
        if result.result == "fail":
            why = f": {result.message}" if result.message else ""
            return f"check {webhook_id} failed{why}"
        if result.result != "pass":
            return f"check {webhook_id} could not be asked ({result.message}); asked again soon"
    if gates.publish_at is not None and now < gates.publish_at:
        return f"it is scheduled for {gates.publish_at.isoformat()}"
    return None


@attrs.frozen
class Task:
    """One release on one task service.

    ``message`` says why a task failed or was rejected. ``progress_at`` is the time of the last
    progress (a state change or a new progress figure): the clock of the phase time limit.
    """

    id: str
    release_id: str
    service_id: str
    state: TaskState = TaskState.WAITING
    progress: int = 0
    message: str = ""
    created_at: datetime = attrs.field(factory=utcnow)
    updated_at: datetime = attrs.field(factory=utcnow)
    progress_at: datetime = attrs.field(factory=utcnow)

    @property
    def is_finished(self) -> bool:
        """Canceled, failed or rejected: nothing more is ever sent to it."""
        return self.state in _TASK_FINISHED


_TASK_FINISHED = frozenset({TaskState.CANCELED, TaskState.FAILED, TaskState.REJECTED})


@attrs.frozen
class ReleaseNote:
    """A note on a release, in Markdown: what changed in it, for the people who use the data.

    ``study_id`` is empty for a note on the release as a whole, else one of the release's
    studies (the note says what the release changed in that study). ``author`` is whoever
    wrote it (the operator's token name over HTTP, unless the request names one).
    """

    id: str
    release_id: str
    text: str
    study_id: str = ""
    author: str = ""
    created_at: datetime = attrs.field(factory=utcnow)
    updated_at: datetime = attrs.field(factory=utcnow)


@attrs.frozen
class Study:
    """A study as the releases know it: it exists from the first release that names it.

    Read from the releases (never stored on its own, so it cannot disagree with them):
    ``release_ids`` are the releases that name it, newest first; ``latest_version`` is the
    newest one's version; ``last_published_*`` is about the newest *published* one (empty,
    and ``None``, while none is). ``created_at`` is when the first release naming it was made.
    """

    id: str
    created_at: datetime
    release_ids: tuple[str, ...] = ()
    latest_release_id: str = ""
    latest_version: str = ""
    last_published_release_id: str = ""
    last_published_version: str = ""
    last_published_at: datetime | None = None


class EventType(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class EventKind(StrEnum):
    """What an event is about (the protocol's ``type`` says how bad it is)."""

    TRANSITION = "transition"
    REQUEST_ERROR = "request_error"
    USER_ACTION = "user_action"
    HEALTH = "health"
    PROGRESS = "progress"
    #: A release note was added, edited or deleted.
    NOTE = "note"


@attrs.frozen
class Event:
    """One entry of the append-only event log.

    ``id`` is assigned by the store when the event is appended (0 before that) and grows with
    every append. ``state`` is the new state for a transition event.
    """

    type: EventType
    kind: EventKind
    message: str
    release_id: str | None = None
    task_id: str | None = None
    task_service_id: str | None = None
    state: str | None = None
    at: datetime = attrs.field(factory=utcnow)
    id: int = 0
