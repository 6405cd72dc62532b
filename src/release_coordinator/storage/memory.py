"""The in-memory Coordinator store: a real adapter for embedding and for users' own tests.

Everything lives in dictionaries guarded by one :class:`threading.Lock`, so the store is safe
to share between threads and between asyncio tasks (no method awaits while holding the lock).
It keeps nothing across processes: use :mod:`release_coordinator.storage.sql` for that.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Sequence

import attrs

from release_coordinator.coordinator.models import (
    Event,
    Release,
    ReleaseNote,
    ServiceHealth,
    Task,
    TaskService,
    publish_gate,
    utcnow,
)
from release_coordinator.errors import ConcurrentUpdateError, ConflictError, NotFoundError
from release_coordinator.fsm.release import ReleaseState, TaskState
from release_coordinator.storage.base import (
    _ALL,
    CoordinatorStore,
    EventFilter,
    GatesChange,
    StepEvent,
    TaskChange,
    new_tasks,
    page,
    service_in_use,
    updated_service,
)
from release_coordinator.storage.memory_webhooks import MemoryWebhooks
from release_coordinator.versions import Version, next_release_version, published_version

__all__ = ["MemoryStore"]

_FINAL = frozenset({ReleaseState.PUBLISHED, ReleaseState.CANCELED, ReleaseState.FAILED})


def _with_id(e: Event, event_id: int) -> Event:
    # The constructor, not attrs.evolve: every event of the log passes here.
    return Event(
        e.type,
        e.kind,
        e.message,
        e.release_id,
        e.task_id,
        e.task_service_id,
        e.state,
        e.at,
        event_id,
    )


class MemoryStore(MemoryWebhooks, CoordinatorStore):
    """A :class:`CoordinatorStore` in process memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._services: dict[str, TaskService] = {}
        self._by_name: dict[str, str] = {}
        self._by_url: dict[str, str] = {}
        self._releases: dict[str, Release] = {}
        self._tasks: dict[str, Task] = {}
        self._tasks_by_release: dict[str, list[str]] = {}
        # The log. An event's id is its position (1..n); one appended with a change is kept as
        # the caller made it (immutable, so nothing is copied on the write path) and gets its
        # id when it is first read (see _stamped); one of a move_tasks batch is kept as its
        # StepEvent and the moved task, and made when first read.
        self._events: list[Event | tuple[StepEvent, Task]] = []
        self._versions: set[str] = set()
        self._top_version = "0.0.0"
        self._leases: dict[str, tuple[str, float]] = {}
        self._notes: dict[str, ReleaseNote] = {}  # in creation order
        self._init_webhooks()

    # -- helpers (call with the lock held) ---------------------------------------------------
    def _append(self, event: Event | None) -> Event | None:
        if event is None:
            return None
        stored = _with_id(event, len(self._events) + 1)
        self._events.append(stored)
        return stored

    def _stamped(self, index: int) -> Event:
        """The event at ``index`` of the log, with its id (given now if it has none yet)."""
        entry = self._events[index]
        if isinstance(entry, tuple):
            step, task = entry
            event = self._events[index] = step.for_task(task, index + 1)
        elif entry.id != index + 1:
            event = self._events[index] = _with_id(entry, index + 1)
        else:
            event = entry
        return event

    def _service(self, service_id: str) -> TaskService:
        try:
            return self._services[service_id]
        except KeyError:
            raise NotFoundError("task service", service_id) from None

    def _release(self, release_id: str) -> Release:
        try:
            return self._releases[release_id]
        except KeyError:
            raise NotFoundError("release", release_id) from None

    def _hold_version(self, version: str) -> None:
        self._versions.add(version)
        if Version.parse(version) > Version.parse(self._top_version):
            self._top_version = version

    def _clash(self, service_id: str, name: str, url: str) -> None:
        for index, value, what in ((self._by_name, name, "named"), (self._by_url, url, "at")):
            other = index.get(value)
            if other is not None and other != service_id:
                raise ConflictError(f"a task service {what} {value!r} exists", id=other)

    def _index(self, service: TaskService, old: TaskService | None = None) -> None:
        if old is not None:
            del self._by_name[old.name], self._by_url[old.url]
        self._by_name[service.name] = self._by_url[service.url] = service.id

    # -- task services -------------------------------------------------------------------------
    async def add_service(self, service: TaskService, event: Event) -> TaskService:
        with self._lock:
            if service.id in self._services:
                raise ConflictError(f"task service {service.id!r} exists", id=service.id)
            self._clash(service.id, service.name, service.url)
            self._services[service.id] = service
            self._index(service)
            self._append(event)
            return service

    async def get_service(self, service_id: str) -> TaskService:
        with self._lock:
            return self._service(service_id)

    async def list_services(self, *, enabled: bool | None = None) -> list[TaskService]:
        with self._lock:
            return [s for s in self._services.values() if enabled is None or s.enabled == enabled]

    async def update_service(
        self,
        service_id: str,
        event: Event,
        *,
        name: str | None = None,
        url: str | None = None,
        enabled: bool | None = None,
    ) -> TaskService:
        with self._lock:
            current = self._service(service_id)
            updated = updated_service(current, name, url, enabled)
            self._clash(service_id, updated.name, updated.url)
            self._services[service_id] = updated
            self._index(updated, current)
            self._append(event)
            return updated

    async def record_health(
        self, service_id: str, health: ServiceHealth, event: Event | None = None
    ) -> TaskService:
        with self._lock:
            updated = attrs.evolve(self._service(service_id), health=health)
            self._services[service_id] = updated
            self._append(event)
            return updated

    async def remove_service(self, service_id: str, event: Event) -> None:
        with self._lock:
            self._service(service_id)
            for task in self._tasks.values():
                if task.service_id == service_id and (
                    self._releases[task.release_id].state not in _FINAL
                ):
                    raise service_in_use(service_id, task.release_id)
            old = self._services.pop(service_id)
            del self._by_name[old.name], self._by_url[old.url]
            self._append(event)

    # -- releases ----------------------------------------------------------------------------
    async def create_release(
        self, release: Release, service_ids: Sequence[str], event: Event
    ) -> tuple[Release, list[Task]]:
        with self._lock:
            if release.id in self._releases:
                raise ConflictError(f"release {release.id!r} exists", id=release.id)
            services = self._services
            for service_id in service_ids:
                if service_id not in services:
                    raise NotFoundError("task service", service_id)
            version = next_release_version([self._top_version])
            stored = attrs.evolve(release, version=version)
            tasks = new_tasks(release.id, service_ids)
            self._releases[stored.id] = stored
            self._hold_version(version)
            self._tasks_by_release[stored.id] = [t.id for t in tasks]
            for task in tasks:
                self._tasks[task.id] = task
            self._append(event)
            return stored, tasks

    async def get_release(self, release_id: str) -> Release:
        with self._lock:
            return self._release(release_id)

    async def list_releases(
        self,
        *,
        states: Collection[ReleaseState] | None = None,
        limit: int | None = None,
        offset: int = 0,
        study: str | None = None,
    ) -> list[Release]:
        with self._lock:
            found = [
                r
                for r in self._releases.values()
                if (states is None or r.state in states) and (study is None or study in r.studies)
            ]
        found.reverse()  # dicts keep insertion order: newest first
        return page(found, limit, offset)

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
        with self._lock:
            current = self._release(release_id)
            if current.state not in from_states:
                raise ConcurrentUpdateError("release", release_id, from_states, current.state.value)
            now = utcnow()
            if to_state is ReleaseState.PUBLISHING and publish_gate(current, now) is not None:
                # a gate closed since the caller looked (checks asked again): judged anew
                raise ConcurrentUpdateError(
                    "release", release_id, from_states, f"{current.state.value}, gated"
                )
            version = current.version
            if to_state is ReleaseState.PUBLISHED:
                version = published_version([self._top_version], major=current.is_major)
                self._hold_version(version)
            updated = attrs.evolve(
                current,
                state=to_state,
                version=version,
                failure=current.failure if failure is None else failure,
                updated_at=now,
                state_changed_at=now,
            )
            self._releases[release_id] = updated
            for earlier in before:
                self._append(earlier)
            self._append(event)
            return updated

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
        with self._lock:
            current = self._release(release_id)
            if expect_states is not None and current.state not in expect_states:
                raise ConcurrentUpdateError(
                    "release", release_id, expect_states, current.state.value
                )
            updated = attrs.evolve(
                current,
                name=current.name if name is None else name,
                description=current.description if description is None else description,
                tags=current.tags if tags is None else tuple(tags),
                updated_at=utcnow(),
            )
            self._releases[release_id] = updated
            self._append(event)
            return updated

    async def update_gates(self, release_id: str, change: GatesChange) -> Release:
        with self._lock:
            current = self._release(release_id)
            changed = change(current)
            if changed is None:
                return current
            gates, events = changed
            updated = attrs.evolve(current, gates=gates, updated_at=utcnow())
            self._releases[release_id] = updated
            for event in events:
                self._append(event)
            return updated

    # -- tasks -------------------------------------------------------------------------------
    async def get_task(self, task_id: str) -> Task:
        with self._lock:
            try:
                return self._tasks[task_id]
            except KeyError:
                raise NotFoundError("task", task_id) from None

    async def list_tasks(self, release_id: str) -> list[Task]:
        with self._lock:
            self._release(release_id)
            return [self._tasks[t] for t in self._tasks_by_release[release_id]]

    async def change_tasks(
        self, changes: Sequence[TaskChange]
    ) -> list[Task | ConcurrentUpdateError]:
        results: list[Task | ConcurrentUpdateError] = []
        append = results.append
        with self._lock:
            tasks = self._tasks
            for change in changes:
                if change.task_id not in tasks:
                    raise NotFoundError("task", change.task_id)
            now = utcnow()
            log = self._events.append
            for change in changes:
                task_id = change.task_id
                current = tasks[task_id]
                old_state = current.state
                if old_state not in change.from_states:
                    append(
                        ConcurrentUpdateError("task", task_id, change.from_states, old_state.value)
                    )
                    continue
                to_state = change.to_state
                state = old_state if to_state is None else to_state
                old_progress = current.progress
                progress = old_progress if change.progress is None else change.progress
                moved = state != old_state or progress != old_progress
                if to_state is None and not moved:
                    append(current)  # a report that changes nothing records nothing
                    continue
                updated = tasks[task_id] = Task(
                    current.id,
                    current.release_id,
                    current.service_id,
                    state,
                    progress,
                    current.message if change.message is None else change.message,
                    current.created_at,
                    now,
                    now if moved else current.progress_at,
                )
                for event in change.events:  # ids are given when first read (see _stamped)
                    if event is not None:
                        log(event)
                append(updated)
        return results

    async def move_tasks(
        self,
        from_state: TaskState,
        to_state: TaskState,
        moves: Sequence[tuple[Task, int | None]],
        event: StepEvent,
        *,
        message: str | None = None,
    ) -> list[Task | ConcurrentUpdateError]:
        # change_tasks for this one kind of change, without a TaskChange per task.
        if to_state is None:  # (not a move: the general way)
            return await super().move_tasks(from_state, to_state, moves, event, message=message)
        results: list[Task | ConcurrentUpdateError] = []
        append = results.append
        with self._lock:
            tasks = self._tasks
            for task, _ in moves:
                if task.id not in tasks:
                    raise NotFoundError("task", task.id)
            now = utcnow()
            log = self._events.append
            new_state = to_state != from_state  # (the state of every task that moves)
            for task, new_progress in moves:
                task_id = task.id
                current = tasks[task_id]
                old_state = current.state
                if old_state != from_state:
                    append(ConcurrentUpdateError("task", task_id, [from_state], old_state.value))
                    continue
                old_progress = current.progress
                progress = old_progress if new_progress is None else new_progress
                moved = new_state or progress != old_progress
                updated = tasks[task_id] = Task(
                    current.id,
                    current.release_id,
                    current.service_id,
                    to_state,
                    progress,
                    current.message if message is None else message,
                    current.created_at,
                    now,
                    now if moved else current.progress_at,
                )
                log((event, updated))  # the event is made when first read (see _stamped)
                append(updated)
        return results

    # -- events ------------------------------------------------------------------------------
    async def append_events(self, events: Sequence[Event]) -> list[Event]:
        with self._lock:
            return [e for e in map(self._append, events) if e is not None]

    async def last_event_id(self) -> int:
        with self._lock:
            return len(self._events)

    async def list_events(
        self, filter: EventFilter = _ALL, *, limit: int | None = None, offset: int = 0
    ) -> list[Event]:
        with self._lock:
            positions = range(len(self._events))
            if filter.after_id:
                # ids are 1..n in list order, so the tail after an id is a slice
                positions = positions[filter.after_id :]
            stamped = self._stamped
            found = [e for e in map(stamped, positions) if filter.matches(e)]
        return page(found, limit, offset)

    # -- release notes -----------------------------------------------------------------------
    def _note(self, note_id: str) -> ReleaseNote:
        try:
            return self._notes[note_id]
        except KeyError:
            raise NotFoundError("note", note_id) from None

    async def add_note(self, note: ReleaseNote, event: Event) -> ReleaseNote:
        with self._lock:
            self._release(note.release_id)
            if note.id in self._notes:
                raise ConflictError(f"note {note.id!r} exists", id=note.id)
            self._notes[note.id] = note
            self._append(event)
            return note

    async def get_note(self, note_id: str) -> ReleaseNote:
        with self._lock:
            return self._note(note_id)

    async def list_notes(
        self,
        *,
        release_id: str | None = None,
        study_id: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ReleaseNote]:
        with self._lock:
            found = [
                n
                for n in self._notes.values()
                if (release_id is None or n.release_id == release_id)
                and (study_id is None or n.study_id == study_id)
            ]
        return page(found, limit, offset)

    async def update_note(self, note_id: str, event: Event, *, text: str) -> ReleaseNote:
        with self._lock:
            updated = attrs.evolve(self._note(note_id), text=text, updated_at=utcnow())
            self._notes[note_id] = updated
            self._append(event)
            return updated

    async def delete_note(self, note_id: str, event: Event) -> None:
        with self._lock:
            self._note(note_id)
            del self._notes[note_id]
            self._append(event)

    # -- leases ------------------------------------------------------------------------------
    async def claim_releases(
        self, owner: str, lease_seconds: float, *, limit: int = 100
    ) -> list[Release]:
        now = time.monotonic()
        claimed: list[Release] = []
        with self._lock:
            for release in self._releases.values():
                if len(claimed) >= limit:
                    break
                if release.state in _FINAL:
                    continue  # nothing to drive (its lease, if any, is dropped by its holder)
                holder = self._leases.get(release.id)
                if holder is None or holder[0] == owner or holder[1] <= now:
                    self._leases[release.id] = (owner, now + lease_seconds)
                    claimed.append(release)
        return claimed

    async def claim_release(self, release_id: str, owner: str, lease_seconds: float) -> bool:
        now = time.monotonic()
        with self._lock:
            release = self._release(release_id)
            if release.state in _FINAL:
                return False
            holder = self._leases.get(release_id)
            if holder is not None and holder[0] != owner and holder[1] > now:
                return False
            self._leases[release_id] = (owner, now + lease_seconds)
            return True

    async def renew_lease(self, release_id: str, owner: str, lease_seconds: float) -> bool:
        now = time.monotonic()
        with self._lock:
            holder = self._leases.get(release_id)
            if holder is None or holder[0] != owner or self._release(release_id).state in _FINAL:
                return False
            self._leases[release_id] = (owner, now + lease_seconds)
            return True

    async def drop_lease(self, release_id: str, owner: str) -> None:
        with self._lock:
            holder = self._leases.get(release_id)
            if holder is not None and holder[0] == owner:
                del self._leases[release_id]
