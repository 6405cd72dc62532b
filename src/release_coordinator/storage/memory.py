"""The in-memory Coordinator store: a real adapter for embedding and for users' own tests.

Everything lives in dictionaries guarded by one :class:`threading.Lock`, so the store is safe
to share between threads and between asyncio tasks (no method awaits while holding the lock).
It keeps nothing across processes: use :mod:`release_coordinator.storage.sql` for that.
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from collections.abc import Collection, Iterable, Sequence

import attrs

from release_coordinator.errors import ConcurrentUpdateError, ConflictError, NotFoundError
from release_coordinator.fsm.release import ReleaseState, TaskState
from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus
from release_coordinator.models import (
    Event,
    Release,
    ServiceHealth,
    Task,
    TaskService,
    utcnow,
)
from release_coordinator.rollout.models import (
    Child,
    ChildRelease,
    ReleaseBundle,
    Rollout,
    RolloutState,
)
from release_coordinator.storage.base import (
    _ALL,
    BarrierRecord,
    CoordinatorStore,
    EventFilter,
    RolloutStore,
    StepEvent,
    TaskChange,
    last_of_each,
    new_tasks,
)
from release_coordinator.versions import Version, next_release_version, published_version

__all__ = ["MemoryRolloutStore", "MemoryStore"]

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


class MemoryStore(CoordinatorStore):
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
            updated = attrs.evolve(
                current,
                name=current.name if name is None else name,
                url=current.url if url is None else url,
                enabled=current.enabled if enabled is None else enabled,
                updated_at=utcnow(),
            )
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
                    raise ConflictError(
                        f"task service {service_id!r} has a task in unfinished release "
                        f"{task.release_id!r}; disable it or finish the release first",
                        id=service_id,
                        release_id=task.release_id,
                    )
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
    ) -> list[Release]:
        with self._lock:
            found = [r for r in self._releases.values() if states is None or r.state in states]
        found.reverse()  # dicts keep insertion order: newest first
        end = None if limit is None else offset + limit
        return found[offset:end]

    async def transition_release(
        self,
        release_id: str,
        from_states: Collection[ReleaseState],
        to_state: ReleaseState,
        event: Event,
        *,
        failure: str | None = None,
    ) -> Release:
        with self._lock:
            current = self._release(release_id)
            if current.state not in from_states:
                raise ConcurrentUpdateError("release", release_id, from_states, current.state)
            now = utcnow()
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
                raise ConcurrentUpdateError("release", release_id, expect_states, current.state)
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
                    append(ConcurrentUpdateError("task", task_id, change.from_states, old_state))
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
                    append(ConcurrentUpdateError("task", task_id, [from_state], old_state))
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
        end = None if limit is None else offset + limit
        return found[offset:end]

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


class MemoryRolloutStore(RolloutStore):
    """A :class:`RolloutStore` in process memory, built for fleets.

    A targeted child that has not fetched the rollout costs one entry in its offer list (an
    int); its Todo record is materialized only when it is first changed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rollouts: dict[str, Rollout] = {}
        self._bundles: dict[str, ReleaseBundle] = {}
        self._seq = itertools.count(1)
        self._children: dict[str, Child] = {}
        self._seen: dict[str, float] = {}
        # Per child: sort keys of the rollouts targeting it, ascending = offered first.
        self._offers: dict[str, list[int]] = {}
        self._key_to_rollout: dict[int, str] = {}
        self._targeted: dict[str, dict[str, None]] = {}  # rollout -> children (ordered set)
        self._state: dict[tuple[str, str], ChildRelease] = {}
        self._barriers: dict[tuple[str, str], BarrierRecord] = {}
        self._change = 0
        self._child_change: dict[str, int] = {}  # child -> number of its last save
        self._tokens: dict[str, str] = {}  # child -> digest of its token

    @staticmethod
    def _sort_key(rollout: Rollout) -> int:
        # Higher priority first, then creation order, in one int (cheap to keep per child).
        return ((2**31 - rollout.priority) << 32) | rollout.seq

    def _rollout(self, rollout_id: str) -> Rollout:
        try:
            return self._rollouts[rollout_id]
        except KeyError:
            raise NotFoundError("release", rollout_id) from None

    # -- rollouts ----------------------------------------------------------------------------
    async def add_rollout(self, rollout: Rollout, bundle: ReleaseBundle) -> Rollout:
        with self._lock:
            if rollout.id in self._rollouts:
                raise ConflictError(f"release {rollout.id!r} exists", id=rollout.id)
            stored = attrs.evolve(rollout, seq=next(self._seq))
            self._rollouts[stored.id] = stored
            self._bundles[stored.id] = bundle
            self._targeted[stored.id] = {}
            self._key_to_rollout[self._sort_key(stored)] = stored.id
            return stored

    async def get_rollout(self, rollout_id: str) -> Rollout:
        with self._lock:
            return self._rollout(rollout_id)

    async def get_bundle(self, rollout_id: str) -> ReleaseBundle:
        with self._lock:
            self._rollout(rollout_id)
            return self._bundles[rollout_id]

    async def list_rollouts(
        self, *, states: Collection[RolloutState] | None = None
    ) -> list[Rollout]:
        with self._lock:
            found = [r for r in self._rollouts.values() if states is None or r.state in states]
        return sorted(found, key=self._sort_key)

    async def set_rollout_state(
        self,
        rollout_id: str,
        from_states: Collection[RolloutState],
        to_state: RolloutState,
        *,
        reason: str | None = None,
    ) -> Rollout:
        with self._lock:
            current = self._rollout(rollout_id)
            if current.state not in from_states:
                raise ConcurrentUpdateError("rollout", rollout_id, from_states, current.state)
            updated = attrs.evolve(
                current, state=to_state, reason=current.reason if reason is None else reason
            )
            self._rollouts[rollout_id] = updated
            return updated

    # -- children ----------------------------------------------------------------------------
    async def save_child(self, child: Child) -> None:
        await self.save_children([child])

    async def save_children(self, children: Sequence[Child]) -> None:
        with self._lock:
            for child in last_of_each(children):
                self._children[child.id] = child
                self._offers.setdefault(child.id, [])
                self._change += 1
                self._child_change.pop(child.id, None)  # (keeps the dict in change order)
                self._child_change[child.id] = self._change

    async def children_since(self, change: int) -> tuple[list[Child], int]:
        with self._lock:
            found = [self._children[c] for c, n in self._child_change.items() if n > change]
            return found, self._change

    async def get_child(self, child_id: str) -> Child:
        with self._lock:
            try:
                return self._children[child_id]
            except KeyError:
                raise NotFoundError("child", child_id) from None

    async def get_children(self, child_ids: Iterable[str]) -> dict[str, Child]:
        with self._lock:
            children = self._children
            return {c: children[c] for c in child_ids if c in children}

    async def list_children(self) -> list[Child]:
        with self._lock:
            return list(self._children.values())

    async def touch_child(self, child_id: str, seen_at: float) -> None:
        # No lock: one dict read and one store (a racing touch may keep the older of two
        # simultaneous times, which a poll moments later corrects).
        if seen_at > self._seen.get(child_id, -1e300) and child_id in self._children:
            self._seen[child_id] = seen_at

    async def last_seen(self, child_ids: Iterable[str]) -> dict[str, float]:
        seen = self._seen
        return {c: seen[c] for c in child_ids if c in seen}

    # -- targeting and offers ----------------------------------------------------------------
    async def target(self, rollout_id: str, child_ids: Iterable[str]) -> list[str]:
        added: list[str] = []
        with self._lock:
            rollout = self._rollout(rollout_id)
            key = self._sort_key(rollout)
            targeted = self._targeted[rollout_id]
            for child_id in child_ids:
                if child_id in targeted or child_id not in self._children:
                    continue
                targeted[child_id] = None
                bisect.insort(self._offers[child_id], key)
                added.append(child_id)
        return added

    async def withdraw(self, rollout_id: str, child_ids: Iterable[str]) -> list[str]:
        removed: list[str] = []
        with self._lock:
            rollout = self._rollout(rollout_id)
            key = self._sort_key(rollout)
            targeted = self._targeted[rollout_id]
            for child_id in child_ids:
                state = self._state.get((rollout_id, child_id))
                if child_id not in targeted or (
                    state is not None and state.status is not ReleaseStatus.TODO
                ):
                    continue
                del targeted[child_id]
                self._state.pop((rollout_id, child_id), None)
                offers = self._offers[child_id]
                offers.pop(bisect.bisect_left(offers, key))
                removed.append(child_id)
        return removed

    async def targeted(self, rollout_id: str) -> list[str]:
        with self._lock:
            self._rollout(rollout_id)
            return list(self._targeted[rollout_id])

    async def first_offer(self, child_id: str) -> str:
        offers = self._offers.get(child_id)
        if not offers:
            return ""
        for key in offers:  # usually the first one is it
            rollout_id = self._key_to_rollout[key]
            if self._rollouts[rollout_id].state is not RolloutState.ACTIVE:
                continue
            state = self._state.get((rollout_id, child_id))
            if state is None or state.status is ReleaseStatus.TODO:
                return rollout_id
            if state.status is ReleaseStatus.DOING and not state.acknowledged:
                return rollout_id
        return ""

    # -- per-child state ---------------------------------------------------------------------
    def _child_release(self, rollout_id: str, child_id: str) -> ChildRelease:
        state = self._state.get((rollout_id, child_id))
        if state is not None:
            return state
        self._rollout(rollout_id)
        if child_id not in self._targeted[rollout_id]:
            raise NotFoundError("release for child", f"{rollout_id}/{child_id}")
        stages = self._bundles[rollout_id].strategy.stage_names
        return ChildRelease.todo(rollout_id, child_id, stages)

    async def child_release(self, rollout_id: str, child_id: str) -> ChildRelease:
        with self._lock:
            return self._child_release(rollout_id, child_id)

    async def child_releases(self, rollout_id: str) -> list[ChildRelease]:
        with self._lock:
            self._rollout(rollout_id)
            return [self._child_release(rollout_id, c) for c in self._targeted[rollout_id]]

    async def put_child_release(self, expected: ChildRelease, new: ChildRelease) -> ChildRelease:
        with self._lock:
            current = self._child_release(expected.rollout_id, expected.child_id)
            if current != expected:
                raise ConcurrentUpdateError(
                    "child release",
                    f"{expected.rollout_id}/{expected.child_id}",
                    [expected.status.wire_name],
                    current.status.wire_name,
                )
            self._state[(new.rollout_id, new.child_id)] = new
            return new

    # -- counts, barriers ----------------------------------------------------------------------
    async def status_counts(
        self, rollout_id: str
    ) -> dict[tuple[ReleaseStatus, tuple[StageStatus, ...]], int]:
        counts: dict[tuple[ReleaseStatus, tuple[StageStatus, ...]], int] = {}
        with self._lock:
            self._rollout(rollout_id)
            todo = (
                ReleaseStatus.TODO,
                tuple(StageStatus.PENDING for _ in self._stage_names(rollout_id)),
            )
            for child_id in self._targeted[rollout_id]:
                state = self._state.get((rollout_id, child_id))
                key = (
                    todo
                    if state is None
                    else (state.status, tuple(s.status for s in state.stages.values()))
                )
                counts[key] = counts.get(key, 0) + 1
        return counts

    def _stage_names(self, rollout_id: str) -> tuple[str, ...]:
        return self._bundles[rollout_id].strategy.stage_names

    async def waiting(self, rollout_id: str, stage_name: str) -> list[str]:
        found: list[tuple[float, str]] = []
        with self._lock:
            self._rollout(rollout_id)
            for (rid, child_id), state in self._state.items():
                stage = state.stages.get(stage_name) if rid == rollout_id else None
                if stage is not None and stage.status is StageStatus.SUCCESS_WAITING:
                    found.append((stage.changed_at, child_id))
        return [child_id for _, child_id in sorted(found)]

    async def barrier(self, rollout_id: str, stage_name: str) -> BarrierRecord:
        with self._lock:
            self._rollout(rollout_id)
            return self._barriers.get((rollout_id, stage_name), BarrierRecord())

    async def mark_barrier(
        self,
        rollout_id: str,
        stage_name: str,
        *,
        open: bool = False,
        waiting_since: float | None = None,
    ) -> BarrierRecord:
        with self._lock:
            self._rollout(rollout_id)
            old = self._barriers.get((rollout_id, stage_name), BarrierRecord())
            new = BarrierRecord(
                old.open or open,
                old.waiting_since if old.waiting_since is not None else waiting_since,
            )
            self._barriers[(rollout_id, stage_name)] = new
            return new

    # -- child tokens ------------------------------------------------------------------------
    async def child_token(self, child_id: str) -> str | None:
        return self._tokens.get(child_id)  # (one dict read: no lock needed)

    async def add_child_token(self, child_id: str, digest: str) -> bool:
        with self._lock:
            if child_id in self._tokens:
                return False
            self._tokens[child_id] = digest
            return True

    async def drop_child_token(self, child_id: str) -> bool:
        with self._lock:
            return self._tokens.pop(child_id, None) is not None

    async def children_with_tokens(self, child_ids: Iterable[str]) -> set[str]:
        with self._lock:
            return {c for c in child_ids if c in self._tokens}
