"""The SQL store answers like the memory store: one random sequence of operations, run
against the memory store, a SQLite store (and a PostgreSQL store when one is reachable),
returns the same thing from every one of them.

Ids and times that a store makes up itself (task ids, ``updated_at``...) are normalised away:
tasks are named by their release and position, events by their position in the log. What
the caller gave (release ids, versions computed from them, event times) must come back equal.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from release_coordinator import (
    ConcurrentUpdateError,
    CoordinatorStore,
    Event,
    EventFilter,
    EventKind,
    EventType,
    MemoryStore,
    Release,
    ReleaseCoordinatorError,
    ReleaseState,
    ServiceHealth,
    TaskChange,
    TaskService,
    TaskState,
)
from release_coordinator.coordinator.models import HealthStatus
from release_coordinator.storage.sql import SQLStore

SERVICE_IDS = [f"TS_{i}" for i in range(4)]
RELEASE_IDS = [f"RE_{i}" for i in range(6)]
NAMES = ["a", "b", "c", "d", "e"]
OWNERS = ["A", "B"]
T0 = datetime(2026, 1, 1, tzinfo=UTC)

# From-states: a few at random, or every state (so that the compare-and-set often wins).
release_states = st.frozensets(st.sampled_from(list(ReleaseState)), max_size=4) | st.just(
    frozenset(ReleaseState)
)
task_states = st.frozensets(st.sampled_from(list(TaskState)), max_size=4) | st.just(
    frozenset(TaskState)
)
texts = st.sampled_from(["", "x", "why", "über"])
moments = st.integers(0, 10_000).map(lambda s: T0 + timedelta(seconds=s, microseconds=s * 7))


@st.composite
def events(draw: st.DrawFn) -> Event:
    return Event(
        draw(st.sampled_from(list(EventType))),
        draw(st.sampled_from(list(EventKind))),
        draw(texts),
        release_id=draw(st.none() | st.sampled_from(RELEASE_IDS)),
        task_service_id=draw(st.none() | st.sampled_from(SERVICE_IDS)),
        state=draw(st.none() | st.sampled_from([s.value for s in TaskState])),
        at=draw(moments),
    )


# A task is named by (release, position); a release not created (or a position past its
# tasks) names none, and so does "missing", drawn about once in ten.
task_refs = st.integers(0, 9).flatmap(
    lambda n: (
        st.just(("missing", 0))
        if n == 0
        else st.tuples(st.sampled_from(RELEASE_IDS[:2]), st.integers(0, 1))
    )
)


@st.composite
def change_specs(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "ref": draw(task_refs),
        "from_states": draw(task_states),
        "to_state": draw(st.none() | st.sampled_from(list(TaskState))),
        "progress": draw(st.none() | st.integers(0, 2)),
        "message": draw(st.none() | texts),
        "events": draw(st.lists(events(), max_size=2)),
    }


Outcome = tuple[Any, ...]


class StoreEquivalence(RuleBasedStateMachine):
    """Every rule runs on every store and compares the normalised outcomes."""

    postgres_url: ClassVar[str | None] = None

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.folder = Path(tempfile.mkdtemp(prefix="rc-equiv-"))
        self._schema: AbstractContextManager[str] | None = None
        self.stores: dict[str, CoordinatorStore] = {"memory": MemoryStore()}
        self.stores["sqlite"] = self.run(SQLStore.connect(f"sqlite:///{self.folder / 's.db'}"))
        if self.postgres_url is not None:
            from sql_support import postgres_schema

            self._schema = postgres_schema(self.postgres_url)
            url = self._schema.__enter__()
            self.stores["postgres"] = self.run(SQLStore.connect(url))
        #: per store: task id -> "RE_x#i", release -> its task ids, the event ids in order
        self.labels: dict[str, dict[str, str]] = {name: {} for name in self.stores}
        self.task_ids: dict[str, dict[str, list[str]]] = {name: {} for name in self.stores}
        self.event_ids: dict[str, list[int]] = {name: [] for name in self.stores}

    def run(self, awaitable: Awaitable[Any]) -> Any:
        async def wrapped() -> Any:
            return await awaitable

        return self.loop.run_until_complete(wrapped())

    def teardown(self) -> None:
        for store in self.stores.values():
            self.run(store.close())
        self.loop.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        if self._schema is not None:
            self._schema.__exit__(None, None, None)

    # -- normalising -------------------------------------------------------------------------
    def norm(self, name: str, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return [self.norm(name, v) for v in value]
        if isinstance(value, ConcurrentUpdateError):
            return ("ConcurrentUpdateError", value.kind, value.actual)
        if isinstance(value, TaskService):
            return attrs.evolve(value, created_at=T0, updated_at=T0)
        if isinstance(value, Release):
            return attrs.evolve(value, updated_at=T0, state_changed_at=T0)
        if isinstance(value, Event):
            rank = self.event_ids[name].index(value.id) + 1 if value.id else 0
            task = self.labels[name].get(value.task_id or "", value.task_id)
            return attrs.evolve(value, id=rank, task_id=task)
        if hasattr(value, "progress_at"):  # a Task
            return (
                self.labels[name][value.id],
                value.release_id,
                value.service_id,
                value.state,
                value.progress,
                value.message,
                value.progress_at == value.updated_at,
            )
        return value

    def sync_events(self) -> None:
        for name, store in self.stores.items():
            known = self.event_ids[name]
            after = known[-1] if known else 0
            known.extend(e.id for e in self.run(store.list_events(EventFilter(after_id=after))))

    def same(self, op: Callable[[str, CoordinatorStore], Awaitable[Any]]) -> dict[str, Any]:
        """Run ``op`` on every store; assert the normalised outcomes agree; return raw ones."""
        raw: dict[str, Any] = {}
        outcomes: dict[str, Outcome] = {}
        for name, store in self.stores.items():
            try:
                raw[name] = self.run(op(name, store))
            except ReleaseCoordinatorError as error:
                raw[name] = error
                outcomes[name] = ("raises", type(error).__name__, getattr(error, "actual", None))
        self.sync_events()
        for name, value in raw.items():
            if name not in outcomes:
                outcomes[name] = ("returns", self.norm(name, value))
        expected = outcomes["memory"]
        for name, outcome in outcomes.items():
            assert outcome == expected, f"{name} differs from memory:\n{outcome}\n!=\n{expected}"
        return raw

    def task_id(self, name: str, ref: tuple[str, int]) -> str:
        release_id, index = ref
        ids = self.task_ids[name].get(release_id, [])
        return ids[index] if index < len(ids) else f"TA_missing_{release_id}_{index}"

    # -- a start: services and releases with tasks -------------------------------------------
    @initialize(
        services=st.integers(1, 4),
        releases=st.lists(st.tuples(st.integers(1, 4), st.booleans()), min_size=1, max_size=3),
    )
    def start(self, services: int, releases: list[tuple[int, bool]]) -> None:
        for i in range(services):
            self.add_service(SERVICE_IDS[i], NAMES[i], NAMES[i], True, Event(
                EventType.INFO, EventKind.USER_ACTION, f"add {i}", at=T0
            ))  # fmt: skip
        for i, (width, major) in enumerate(releases):
            sids = SERVICE_IDS[: min(width, services)]
            event = Event(EventType.INFO, EventKind.USER_ACTION, f"create {i}", at=T0)
            self.create_release(RELEASE_IDS[i], sids, major, ["SD_1"], event)

    # -- task services -----------------------------------------------------------------------
    @rule(
        sid=st.sampled_from(SERVICE_IDS),
        name=st.sampled_from(NAMES),
        url=st.sampled_from(NAMES),
        enabled=st.booleans(),
        event=events(),
    )
    def add_service(self, sid: str, name: str, url: str, enabled: bool, event: Event) -> None:
        service = TaskService(sid, name, f"memory://{url}", enabled=enabled, created_at=T0)
        self.same(lambda _, s: s.add_service(service, event))

    @rule(
        sid=st.sampled_from(SERVICE_IDS),
        name=st.none() | st.sampled_from(NAMES),
        url=st.none() | st.sampled_from(NAMES),
        enabled=st.none() | st.booleans(),
        event=events(),
    )
    def update_service(
        self, sid: str, name: str | None, url: str | None, enabled: bool | None, event: Event
    ) -> None:
        address = None if url is None else f"memory://{url}"
        self.same(
            lambda _, s: s.update_service(sid, event, name=name, url=address, enabled=enabled)
        )

    @rule(
        sid=st.sampled_from(SERVICE_IDS),
        status=st.sampled_from(list(HealthStatus)),
        failures=st.integers(0, 5),
        checked=st.none() | moments,
        event=st.none() | events(),
    )
    def record_health(
        self,
        sid: str,
        status: HealthStatus,
        failures: int,
        checked: datetime | None,
        event: Event | None,
    ) -> None:
        health = ServiceHealth(status, failures, checked, "boom", "n", "1.0", "msg")
        self.same(lambda _, s: s.record_health(sid, health, event))

    @rule(sid=st.sampled_from(SERVICE_IDS), event=events())
    def remove_service(self, sid: str, event: Event) -> None:
        self.same(lambda _, s: s.remove_service(sid, event))

    @rule(sid=st.sampled_from([*SERVICE_IDS, "TS_missing"]))
    def get_service(self, sid: str) -> None:
        self.same(lambda _, s: s.get_service(sid))

    @rule(enabled=st.none() | st.booleans())
    def list_services(self, enabled: bool | None) -> None:
        self.same(lambda _, s: s.list_services(enabled=enabled))

    # -- releases ----------------------------------------------------------------------------
    @rule(
        rid=st.sampled_from(RELEASE_IDS),
        sids=st.lists(st.sampled_from(SERVICE_IDS), max_size=4) | st.just(["TS_0", "TS_missing"]),
        is_major=st.booleans(),
        studies=st.lists(st.sampled_from(["SD_1", "SD_2"]), max_size=2),
        event=events(),
    )
    def create_release(
        self, rid: str, sids: list[str], is_major: bool, studies: list[str], event: Event
    ) -> None:
        draft = Release(
            rid, f"release {rid}", "7.7.7", is_major=is_major, studies=tuple(studies),
            created_at=T0, tags=("t",),
        )  # fmt: skip

        async def create(name: str, store: CoordinatorStore) -> Any:
            release, tasks = await store.create_release(draft, sids, event)
            self.task_ids[name][rid] = [t.id for t in tasks]
            for i, task in enumerate(tasks):
                self.labels[name][task.id] = f"{rid}#{i}"
            return release, tasks

        self.same(create)

    @rule(rid=st.sampled_from([*RELEASE_IDS, "RE_missing"]))
    def get_release(self, rid: str) -> None:
        self.same(lambda _, s: s.get_release(rid))

    @rule(
        states=st.none() | release_states,
        limit=st.none() | st.integers(0, 4),
        offset=st.integers(0, 3),
    )
    def list_releases(
        self, states: frozenset[ReleaseState] | None, limit: int | None, offset: int
    ) -> None:
        self.same(lambda _, s: s.list_releases(states=states, limit=limit, offset=offset))

    @rule(
        rid=st.sampled_from([*RELEASE_IDS, "RE_missing"]),
        from_states=release_states,
        to_state=st.sampled_from(list(ReleaseState)),
        failure=st.none() | texts,
        event=events(),
    )
    def transition_release(
        self,
        rid: str,
        from_states: frozenset[ReleaseState],
        to_state: ReleaseState,
        failure: str | None,
        event: Event,
    ) -> None:
        self.same(
            lambda _, s: s.transition_release(rid, from_states, to_state, event, failure=failure)
        )

    @rule(
        rid=st.sampled_from([*RELEASE_IDS, "RE_missing"]),
        name=st.none() | st.sampled_from(NAMES),
        description=st.none() | texts,
        tags=st.none() | st.lists(st.sampled_from(["x", "y"]), max_size=2),
        expect=st.none() | release_states,
        event=events(),
    )
    def update_release(
        self,
        rid: str,
        name: str | None,
        description: str | None,
        tags: list[str] | None,
        expect: frozenset[ReleaseState] | None,
        event: Event,
    ) -> None:
        self.same(
            lambda _, s: s.update_release(
                rid, event, name=name, description=description, tags=tags, expect_states=expect
            )
        )

    # -- tasks -------------------------------------------------------------------------------
    @rule(ref=task_refs)
    def get_task(self, ref: tuple[str, int]) -> None:
        self.same(lambda name, s: s.get_task(self.task_id(name, ref)))

    @rule(rid=st.sampled_from([*RELEASE_IDS, "RE_missing"]))
    def list_tasks(self, rid: str) -> None:
        self.same(lambda _, s: s.list_tasks(rid))

    @rule(specs=st.lists(change_specs(), max_size=4))
    def change_tasks(self, specs: list[dict[str, Any]]) -> None:
        def changes(name: str) -> list[TaskChange]:
            built = []
            for spec in specs:
                task_id = self.task_id(name, spec["ref"])
                built.append(
                    TaskChange(
                        task_id,
                        spec["from_states"],
                        spec["to_state"],
                        events=tuple(attrs.evolve(e, task_id=task_id) for e in spec["events"]),
                        progress=spec["progress"],
                        message=spec["message"],
                    )
                )
            return built

        self.same(lambda name, s: s.change_tasks(changes(name)))

    @rule(
        moves=st.lists(
            st.tuples(task_refs, st.sampled_from(list(TaskState)), st.none() | st.integers(0, 2)),
            min_size=1,
            max_size=3,
        ),
        event=events(),
    )
    def move_tasks(
        self, moves: list[tuple[tuple[str, int], TaskState, int | None]], event: Event
    ) -> None:
        """Moves that win (from any state): the common case of the coordinator."""
        every = frozenset(TaskState)

        def changes(name: str) -> list[TaskChange]:
            return [
                TaskChange(self.task_id(name, ref), every, to, events=(event,), progress=progress)
                for ref, to, progress in moves
            ]

        self.same(lambda name, s: s.change_tasks(changes(name)))

    @rule(
        ref=task_refs,
        progress=st.integers(0, 2),
        message=st.none() | texts,
        event=events(),
    )
    def report_progress(
        self, ref: tuple[str, int], progress: int, message: str | None, event: Event
    ) -> None:
        """A progress report: changes (and logs) only when the figure is new."""

        def change(name: str) -> TaskChange:
            task_id = self.task_id(name, ref)
            every = frozenset(TaskState)
            return TaskChange(task_id, every, None, (event,), progress=progress, message=message)

        self.same(lambda name, s: s.change_tasks([change(name)]))

    # -- events ------------------------------------------------------------------------------
    @rule(batch=st.lists(events(), max_size=3))
    def append_events(self, batch: list[Event]) -> None:
        self.same(lambda _, s: s.append_events(batch))

    @rule(
        release_id=st.none() | st.sampled_from(RELEASE_IDS),
        task_ref=st.none() | task_refs,
        service_id=st.none() | st.sampled_from(SERVICE_IDS),
        types=st.none() | st.frozensets(st.sampled_from(list(EventType))),
        kinds=st.none() | st.frozensets(st.sampled_from(list(EventKind)), max_size=3),
        after=st.integers(0, 40),
        since=st.none() | moments,
        limit=st.none() | st.integers(0, 5),
        offset=st.integers(0, 3),
    )
    def list_events(
        self,
        release_id: str | None,
        task_ref: tuple[str, int] | None,
        service_id: str | None,
        types: frozenset[EventType] | None,
        kinds: frozenset[EventKind] | None,
        after: int,
        since: datetime | None,
        limit: int | None,
        offset: int,
    ) -> None:
        def listing(name: str, store: CoordinatorStore) -> Awaitable[list[Event]]:
            ids = self.event_ids[name]
            after_id = 0 if after == 0 else ids[after - 1] if after <= len(ids) else 10**9
            task_id = None if task_ref is None else self.task_id(name, task_ref)
            flt = EventFilter(release_id, task_id, service_id, types, kinds, after_id, since)
            return store.list_events(flt, limit=limit, offset=offset)

        self.same(listing)

    @invariant()
    def last_event_ids_agree(self) -> None:
        self.same(lambda name, s: _rank(self.event_ids[name], s))

    # -- leases ------------------------------------------------------------------------------
    @rule(owner=st.sampled_from(OWNERS), limit=st.integers(0, 4))
    def claim_releases(self, owner: str, limit: int) -> None:
        self.same(lambda _, s: s.claim_releases(owner, 30, limit=limit))

    @rule(rid=st.sampled_from([*RELEASE_IDS, "RE_missing"]), owner=st.sampled_from(OWNERS))
    def claim_release(self, rid: str, owner: str) -> None:
        self.same(lambda _, s: s.claim_release(rid, owner, 30))

    @rule(rid=st.sampled_from(RELEASE_IDS), owner=st.sampled_from(OWNERS))
    def renew_lease(self, rid: str, owner: str) -> None:
        # A final release has no lease to renew: every store answers False (the contract).
        self.same(lambda _, s: s.renew_lease(rid, owner, 30))

    @rule(rid=st.sampled_from([*RELEASE_IDS, "RE_missing"]), owner=st.sampled_from(OWNERS))
    def drop_lease(self, rid: str, owner: str) -> None:
        self.same(lambda _, s: s.drop_lease(rid, owner))


async def _rank(ids: list[int], store: CoordinatorStore) -> int:
    """The position of the store's last event id in its log (0 for an empty log)."""
    last = await store.last_event_id()
    return ids.index(last) + 1 if last else 0


SETTINGS = settings(
    max_examples=25,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_memory_and_sqlite_answer_alike() -> None:
    run_state_machine_as_test(StoreEquivalence, settings=SETTINGS)


@pytest.mark.postgres
def test_memory_sqlite_and_postgres_answer_alike(postgres_url: str) -> None:
    machine = type("WithPostgres", (StoreEquivalence,), {"postgres_url": postgres_url})
    run_state_machine_as_test(machine, settings=settings(SETTINGS, max_examples=10))
