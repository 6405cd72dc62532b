"""The storage interface of the Coordinator: domain-level, compare-and-set, async.

Every method's docstring is its contract: what it reads, what it changes, what it raises.
Adapters: :mod:`release_coordinator.storage.memory` (in-process, thread- and task-safe) and,
behind the ``[sql]`` extra, :mod:`release_coordinator.storage.sql`.

Rules every adapter keeps:

- A state change is a compare-and-set: it happens only if the stored state is still one of
  ``from_states``; otherwise :class:`~release_coordinator.errors.ConcurrentUpdateError` is raised
  (or returned, for batches) and nothing changes. A SQL store does it with
  ``UPDATE ... WHERE id = :id AND state IN (:from_states)``.
- A state change and its event are stored together or not at all, so every state change has its
  event in the log.
- Records handed out are immutable snapshots. Event ids grow with every append and become
  visible in that order (a reader following the log with ``after_id`` never skips one).
- "Oldest first" means creation order (adapters keep a sequence for it, not a timestamp).
- Unknown ids raise :class:`~release_coordinator.errors.NotFoundError`; failures underneath raise
  :class:`~release_coordinator.errors.StorageError`. Nothing else escapes.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import TypeVar

import attrs

from release_coordinator.coordinator.models import (
    Event,
    EventKind,
    EventType,
    PublishGates,
    Release,
    ReleaseNote,
    ServiceHealth,
    Study,
    Task,
    TaskService,
    new_ids,
    utcnow,
)
from release_coordinator.errors import ConcurrentUpdateError, ConflictError, NotFoundError
from release_coordinator.fsm.release import ReleaseState, TaskState
from release_coordinator.storage.webhook_base import WebhookStore
from release_coordinator.versions import Version

__all__ = [
    "CoordinatorStore",
    "EventFilter",
    "StepEvent",
    "TaskChange",
    "new_tasks",
    "studies_of",
    "study_of",
]


@attrs.frozen
class TaskChange:
    """One compare-and-set on a task: from any of ``from_states`` to ``to_state``.

    ``to_state=None`` keeps the state (a progress report). ``progress``/``message`` are written
    when not ``None``. ``events`` are appended with the change (one per state passed through).
    """

    task_id: str
    from_states: frozenset[TaskState]
    to_state: TaskState | None
    events: tuple[Event, ...] = ()
    progress: int | None = None
    message: str | None = None


def step_event(
    type: EventType,
    suffix: str,
    state: str | None,
    release_id: str | None,
    task_id: str,
    service_id: str,
    at: datetime,
    id: int = 0,
) -> Event:
    """The transition event of one step of a task: ``task <id> on <service><suffix>``."""
    return Event(
        type,
        EventKind.TRANSITION,
        f"task {task_id} on {service_id}{suffix}",
        release_id,
        task_id,
        service_id,
        state,
        at,
        id,
    )


@attrs.frozen
class StepEvent:
    """The event every task of a :meth:`CoordinatorStore.move_tasks` batch gets: a transition
    event ``task <task id> on <service id><suffix>`` of ``type``, dated ``at``, with the task's
    ids and ``state``. One value for the whole batch, so a store writes (or, in memory, keeps)
    the batch's events without an :class:`~release_coordinator.coordinator.models.Event` per
    task until they are read."""

    type: EventType
    suffix: str
    state: str | None
    release_id: str | None
    at: datetime

    def for_task(self, task: Task, id: int = 0) -> Event:
        """The event as logged for ``task`` (with ``id``, once it has one)."""
        return step_event(
            self.type,
            self.suffix,
            self.state,
            self.release_id,
            task.id,
            task.service_id,
            self.at,
            id,
        )


@attrs.frozen
class EventFilter:
    """Which events to list. Every field left ``None`` matches everything."""

    release_id: str | None = None
    task_id: str | None = None
    task_service_id: str | None = None
    types: Collection[EventType] | None = None
    kinds: Collection[EventKind] | None = None
    #: Only events with an id greater than this (to follow the log incrementally).
    after_id: int = 0
    since: datetime | None = None
    #: Only the events whose new ``state`` is one of these (transitions).
    states: Collection[str] | None = None

    def matches(self, event: Event) -> bool:
        return (
            event.id > self.after_id
            and (self.release_id is None or event.release_id == self.release_id)
            and (self.task_id is None or event.task_id == self.task_id)
            and (self.task_service_id is None or event.task_service_id == self.task_service_id)
            and (self.types is None or event.type in self.types)
            and (self.kinds is None or event.kind in self.kinds)
            and (self.states is None or event.state in self.states)
            and (self.since is None or event.at >= self.since)
        )


_ALL = EventFilter()

T = TypeVar("T")

#: How ``update_gates`` changes a release's gates: from the release as stored, the new gates
#: and their events, or None.
GatesChange = Callable[[Release], tuple[PublishGates, list[Event]] | None]


def new_tasks(release_id: str, service_ids: Sequence[str]) -> list[Task]:
    """The ``waiting`` tasks of a new release, one per service, with fresh ids (what every
    adapter's :meth:`CoordinatorStore.create_release` stores)."""
    now = utcnow()
    waiting = TaskState.WAITING
    return [
        # (id, release_id, service_id, state, progress, message, created, updated, progress_at)
        Task(task_id, release_id, sid, waiting, 0, "", now, now, now)
        for task_id, sid in zip(new_ids("TA", len(service_ids)), service_ids, strict=True)
    ]


def updated_service(
    current: TaskService, name: str | None, url: str | None, enabled: bool | None
) -> TaskService:
    """``current`` with the fields given (not ``None``) changed and ``updated_at`` now: what
    every adapter's :meth:`CoordinatorStore.update_service` stores."""
    return attrs.evolve(
        current,
        name=current.name if name is None else name,
        url=current.url if url is None else url,
        enabled=current.enabled if enabled is None else enabled,
        updated_at=utcnow(),
    )


def service_in_use(service_id: str, release_id: str) -> ConflictError:
    """Every adapter's refusal of :meth:`CoordinatorStore.remove_service` while the unfinished
    release ``release_id`` has a task on the service."""
    return ConflictError(
        f"task service {service_id!r} has a task in unfinished release "
        f"{release_id!r}; disable it or finish the release first",
        id=service_id,
        release_id=release_id,
    )


def study_of(study_id: str, releases: Sequence[Release]) -> Study:
    """The study ``study_id`` as ``releases`` (those that name it, newest first; at least one)
    tell it. Its last published release is the one published last, which has the highest
    version (every publication promotes the version above all held)."""
    newest, oldest = releases[0], releases[-1]
    published = [r for r in releases if r.state is ReleaseState.PUBLISHED]
    last = max(published, key=lambda r: Version.parse(r.version), default=None)
    return Study(
        study_id,
        oldest.created_at,
        tuple(r.id for r in releases),
        newest.id,
        newest.version,
        "" if last is None else last.id,
        "" if last is None else last.version,
        None if last is None else last.state_changed_at,
    )


def studies_of(releases: Sequence[Release]) -> list[Study]:
    """Every study ``releases`` (newest first) name, newest first: by the first release that
    named it, and in that release's order for the studies it named first."""
    named: dict[str, list[Release]] = {}
    for release in reversed(releases):  # oldest first: a study's first release comes first
        for study_id in dict.fromkeys(release.studies):
            named.setdefault(study_id, []).append(release)
    first = {sid: rs[0].id for sid, rs in named.items()}
    order = {r.id: i for i, r in enumerate(releases)}  # 0: the newest release
    ids = sorted(named, key=lambda sid: order[first[sid]])  # (stable: the release's order)
    return [study_of(sid, named[sid][::-1]) for sid in ids]


def page(items: list[T], limit: int | None, offset: int) -> list[T]:
    """``items`` from ``offset`` on, at most ``limit`` of them."""
    return items[offset : None if limit is None else offset + limit]


class CoordinatorStore(WebhookStore):
    """What the Coordinator keeps: task services, releases, tasks, events and leases, the
    release notes (studies are read from the releases), and the webhooks
    (:class:`~release_coordinator.storage.webhook_base.WebhookStore`)."""

    # -- task services -----------------------------------------------------------------------
    @abc.abstractmethod
    async def add_service(self, service: TaskService, event: Event) -> TaskService:
        """Store a new task service and ``event``.

        Raises ConflictError when the id, the name or the url is already registered.
        """

    @abc.abstractmethod
    async def get_service(self, service_id: str) -> TaskService:
        """The task service with this id; NotFoundError if none."""

    @abc.abstractmethod
    async def list_services(self, *, enabled: bool | None = None) -> list[TaskService]:
        """Every task service (only enabled/disabled ones when asked), oldest first."""

    @abc.abstractmethod
    async def update_service(
        self,
        service_id: str,
        event: Event,
        *,
        name: str | None = None,
        url: str | None = None,
        enabled: bool | None = None,
    ) -> TaskService:
        """Change the given fields and append ``event``; NotFoundError, ConflictError when the
        new name or url belongs to another service."""

    @abc.abstractmethod
    async def record_health(
        self, service_id: str, health: ServiceHealth, event: Event | None = None
    ) -> TaskService:
        """Replace the service's health (and append ``event`` if given); NotFoundError."""

    @abc.abstractmethod
    async def remove_service(self, service_id: str, event: Event) -> None:
        """Delete a task service and append ``event``.

        Raises NotFoundError, and ConflictError while a release that is not final has a task on
        it (disable it instead, or finish the release first).
        """

    # -- releases ----------------------------------------------------------------------------
    @abc.abstractmethod
    async def create_release(
        self, release: Release, service_ids: Sequence[str], event: Event
    ) -> tuple[Release, list[Task]]:
        """Store ``release`` with one ``waiting`` task per service id, and ``event``.

        The stored version replaces ``release.version``: it is computed with
        :func:`~release_coordinator.versions.next_release_version` over every version held,
        atomically, so that concurrent creations never share one. Task ids are generated.
        """

    @abc.abstractmethod
    async def get_release(self, release_id: str) -> Release:
        """The release with this id; NotFoundError if none."""

    @abc.abstractmethod
    async def list_releases(
        self,
        *,
        states: Collection[ReleaseState] | None = None,
        limit: int | None = None,
        offset: int = 0,
        study: str | None = None,
    ) -> list[Release]:
        """Releases, newest first, only those in ``states`` when given, and only those that
        name the study ``study`` when given."""

    @abc.abstractmethod
    async def transition_release(
        self,
        release_id: str,
        from_states: Collection[ReleaseState],
        to_state: ReleaseState,
        event: Event,
        *,
        failure: str | None = None,
        before: Sequence[Event] = (),
    ) -> Release:
        """Compare-and-set the release's state and append ``event``.

        Sets ``state_changed_at``; writes ``failure`` when given. Moving to ``published``
        promotes the version with :func:`~release_coordinator.versions.published_version`
        in the same atomic step. ``before`` are events appended just ahead of ``event``, in
        the same atomic step (a user's request and the change it made: both or neither).
        ConcurrentUpdateError if the state is not in ``from_states`` (then nothing is
        appended).
        """

    @abc.abstractmethod
    async def update_release(
        self,
        release_id: str,
        event: Event,
        *,
        name: str | None = None,
        description: str | None = None,
        tags: Sequence[str] | None = None,
        expect_states: Collection[ReleaseState] | None = None,
    ) -> Release:
        """Change descriptive fields (not the state) and append ``event``.

        With ``expect_states`` it is a compare-and-set on the state like a transition.
        """

    @abc.abstractmethod
    async def update_gates(self, release_id: str, change: GatesChange) -> Release:
        """Change the release's gates before publish atomically: ``change`` is called with
        the release as stored (under the store's lock or in the write's transaction) and
        answers the new gates with the events to append, or None for no change (nothing is
        written); what it raises is raised. NotFoundError for an unknown release."""

    # -- tasks -------------------------------------------------------------------------------
    @abc.abstractmethod
    async def get_task(self, task_id: str) -> Task:
        """The task with this id; NotFoundError if none."""

    @abc.abstractmethod
    async def list_tasks(self, release_id: str) -> list[Task]:
        """Every task of a release in creation order; NotFoundError for an unknown release."""

    @abc.abstractmethod
    async def change_tasks(
        self, changes: Sequence[TaskChange]
    ) -> list[Task | ConcurrentUpdateError]:
        """Apply several task compare-and-sets; each one on its own (one losing does not undo
        the others). Returns, in order, the new task or the ConcurrentUpdateError of a loser.
        NotFoundError (for the whole call, before any change) if a task id is unknown.
        ``progress_at`` is set when the state or the progress changes. A change with
        ``to_state=None`` whose progress equals the stored one changes and appends nothing."""

    async def change_task(self, change: TaskChange) -> Task:
        """One task compare-and-set; raises ConcurrentUpdateError when it loses."""
        (result,) = await self.change_tasks([change])
        if isinstance(result, ConcurrentUpdateError):
            raise result
        return result

    async def move_tasks(
        self,
        from_state: TaskState,
        to_state: TaskState,
        moves: Sequence[tuple[Task, int | None]],
        event: StepEvent,
        *,
        message: str | None = None,
    ) -> list[Task | ConcurrentUpdateError]:
        """Many tasks making the same move, each ``(task, progress)`` (``task`` as the caller
        read it; only its id and service id count): exactly :meth:`change_tasks` with
        ``TaskChange(task.id, frozenset({from_state}), to_state, (event.for_task(task),),
        progress, message)`` for each, in order (what this default does). The coordinator's
        fan-out records a phase's answers with it; an adapter may do it faster."""
        from_states = frozenset({from_state})
        return await self.change_tasks(
            [
                TaskChange(task.id, from_states, to_state, (event.for_task(task),), p, message)
                for task, p in moves
            ]
        )

    # -- events ------------------------------------------------------------------------------
    @abc.abstractmethod
    async def append_events(self, events: Sequence[Event]) -> list[Event]:
        """Append events; returns them with their ids (and nothing is ever changed later)."""

    @abc.abstractmethod
    async def last_event_id(self) -> int:
        """The id of the newest event (0 when the log is empty)."""

    @abc.abstractmethod
    async def list_events(
        self, filter: EventFilter = _ALL, *, limit: int | None = None, offset: int = 0
    ) -> list[Event]:
        """Events that match ``filter``, oldest first."""

    # -- release notes and studies -----------------------------------------------------------
    @abc.abstractmethod
    async def add_note(self, note: ReleaseNote, event: Event) -> ReleaseNote:
        """Store a new note and append ``event``, together.

        NotFoundError for an unknown release, ConflictError when the id is taken. (That the
        study is one of the release's is the Coordinator's check: a release's studies never
        change.)
        """

    @abc.abstractmethod
    async def get_note(self, note_id: str) -> ReleaseNote:
        """The note with this id; NotFoundError if none."""

    @abc.abstractmethod
    async def list_notes(
        self,
        *,
        release_id: str | None = None,
        study_id: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ReleaseNote]:
        """Notes, oldest first: only the release's, the study's (``study_id``), or both, when
        given. An unknown release or study has none (no NotFoundError)."""

    @abc.abstractmethod
    async def update_note(self, note_id: str, event: Event, *, text: str) -> ReleaseNote:
        """Replace the note's text, set ``updated_at`` and append ``event``; NotFoundError."""

    @abc.abstractmethod
    async def delete_note(self, note_id: str, event: Event) -> None:
        """Delete the note and append ``event``; NotFoundError."""

    async def get_study(self, study_id: str) -> Study:
        """The study with this id, read from the releases that name it (:func:`study_of`);
        NotFoundError when no release names it. This default reads
        ``list_releases(study=...)``; an adapter may do it faster."""
        releases = await self.list_releases(study=study_id)
        if not releases:
            raise NotFoundError("study", study_id)
        return study_of(study_id, releases)

    async def list_studies(self, *, limit: int | None = None, offset: int = 0) -> list[Study]:
        """Every study some release names, newest first (:func:`studies_of`). This default
        reads every release; an adapter may do it faster."""
        return page(studies_of(await self.list_releases()), limit, offset)

    # -- leases ------------------------------------------------------------------------------
    @abc.abstractmethod
    async def claim_releases(
        self, owner: str, lease_seconds: float, *, limit: int = 100
    ) -> list[Release]:
        """Claim unfinished releases for ``owner`` to drive.

        Returns up to ``limit`` non-final releases whose lease is free, expired, or already
        ``owner``'s, oldest first, and leases them to ``owner`` for ``lease_seconds`` (from the
        store's clock). A release is claimed by at most one owner at a time.
        """

    @abc.abstractmethod
    async def claim_release(self, release_id: str, owner: str, lease_seconds: float) -> bool:
        """Lease one release to ``owner`` if it is not final and its lease is free, expired or
        ``owner``'s already; True when ``owner`` holds it afterwards. NotFoundError."""

    @abc.abstractmethod
    async def renew_lease(self, release_id: str, owner: str, lease_seconds: float) -> bool:
        """Extend ``owner``'s lease on a release; False if ``owner`` no longer holds it or the
        release is final (there is nothing left to drive)."""

    @abc.abstractmethod
    async def drop_lease(self, release_id: str, owner: str) -> None:
        """Give up ``owner``'s lease on a release (no-op if it does not hold it)."""

    async def close(self) -> None:
        """Release connections and files. Idempotent."""
