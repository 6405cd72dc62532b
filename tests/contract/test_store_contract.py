"""The storage contract, run against every CoordinatorStore adapter through one fixture.

Adapters join by adding a parameter to ``store``; the assertions never change.
"""

from __future__ import annotations

import asyncio

import attrs
import pytest

from release_coordinator import (
    ConcurrentUpdateError,
    ConflictError,
    CoordinatorStore,
    Event,
    EventFilter,
    EventKind,
    EventType,
    NotFoundError,
    Release,
    ReleaseNote,
    ReleaseState,
    ServiceHealth,
    StepEvent,
    Study,
    TaskChange,
    TaskService,
    TaskState,
)
from release_coordinator.coordinator.models import HealthStatus, utcnow

pytestmark = pytest.mark.anyio


def ev(message: str, **kw: object) -> Event:
    return Event(EventType.INFO, EventKind.TRANSITION, message, **kw)  # type: ignore[arg-type]


async def two_services(store: CoordinatorStore) -> list[TaskService]:
    return [
        await store.add_service(TaskService(f"TS_{i}", f"svc{i}", f"memory://svc{i}"), ev("add"))
        for i in range(2)
    ]


async def test_services(store: CoordinatorStore) -> None:
    a, b = await two_services(store)
    assert [s.id for s in await store.list_services()] == [a.id, b.id]
    with pytest.raises(ConflictError):
        await store.add_service(TaskService("TS_9", "svc0", "memory://other"), ev("dup"))
    with pytest.raises(ConflictError):
        await store.add_service(TaskService("TS_9", "other", "memory://svc1"), ev("dup"))
    disabled = await store.update_service(a.id, ev("off"), enabled=False)
    assert not disabled.enabled
    assert [s.id for s in await store.list_services(enabled=True)] == [b.id]
    with pytest.raises(ConflictError):
        await store.update_service(a.id, ev("rename"), name="svc1")
    renamed = await store.update_service(a.id, ev("rename"), name="fresh", url="memory://fresh")
    assert (renamed.name, renamed.url) == ("fresh", "memory://fresh")
    await store.add_service(TaskService("TS_7", "svc0", "memory://svc0"), ev("reuse old name"))
    health = ServiceHealth(HealthStatus.DOWN, 3, last_error="boom")
    assert (await store.record_health(b.id, health)).health == health
    with pytest.raises(NotFoundError):
        await store.get_service("TS_missing")


async def test_release_creation_assigns_unique_versions(store: CoordinatorStore) -> None:
    services = await two_services(store)
    drafts = [Release(f"RE_{i}", f"r{i}", "9.9.9") for i in range(20)]
    created = await asyncio.gather(
        *(store.create_release(d, [s.id for s in services], ev("new")) for d in drafts)
    )
    versions = [r.version for r, _ in created]
    assert len(set(versions)) == 20
    release, tasks = created[0]
    assert [t.state for t in tasks] == [TaskState.WAITING, TaskState.WAITING]
    assert await store.list_tasks(release.id) == tasks
    with pytest.raises(NotFoundError):
        await store.create_release(Release("RE_x", "x", "0.0.0"), ["TS_missing"], ev("new"))
    with pytest.raises(NotFoundError):
        await store.list_tasks("RE_missing")


async def test_release_transitions_compare_and_set(store: CoordinatorStore) -> None:
    release, _ = await store.create_release(Release("RE_1", "r", "0.0.0"), [], ev("new"))
    before = len(await store.list_events())
    moved = await store.transition_release(
        release.id, {ReleaseState.WAITING}, ReleaseState.STAGED, ev("staged", state="staged")
    )
    assert moved.state is ReleaseState.STAGED
    with pytest.raises(ConcurrentUpdateError) as info:
        await store.transition_release(
            release.id, {ReleaseState.WAITING}, ReleaseState.INITIALIZING, ev("nope")
        )
    assert info.value.actual == "staged"
    assert (await store.get_release(release.id)).state is ReleaseState.STAGED
    assert len(await store.list_events()) == before + 1  # the loser logged nothing
    await store.transition_release(
        release.id, {ReleaseState.STAGED}, ReleaseState.PUBLISHING, ev("p")
    )
    done = await store.transition_release(
        release.id, {ReleaseState.PUBLISHING}, ReleaseState.PUBLISHED, ev("done")
    )
    assert done.version == "0.1.0"  # promoted in the same step
    other, _ = await store.create_release(Release("RE_2", "r2", "0.0.0"), [], ev("new"))
    assert other.version == "0.1.1"
    failed = await store.transition_release(
        other.id, {ReleaseState.WAITING}, ReleaseState.CANCELING, ev("c"), failure="why"
    )
    assert failed.failure == "why"
    assert [r.id for r in await store.list_releases()] == ["RE_2", "RE_1"]
    assert [r.id for r in await store.list_releases(states={ReleaseState.PUBLISHED})] == ["RE_1"]
    assert [r.id for r in await store.list_releases(limit=1, offset=1)] == ["RE_1"]


async def test_racing_task_writers_never_both_win(store: CoordinatorStore) -> None:
    services = await two_services(store)
    _, tasks = await store.create_release(
        Release("RE_1", "r", "0.0.0"), [s.id for s in services], ev("new")
    )
    task = tasks[0]
    changes = [
        TaskChange(task.id, frozenset({TaskState.WAITING}), to, events=(ev(str(to)),))
        for to in (TaskState.INITIALIZED, TaskState.REJECTED)
    ]
    results = await asyncio.gather(*(store.change_task(c) for c in changes), return_exceptions=True)
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, ConcurrentUpdateError)]
    assert len(winners) == 1
    assert len(losers) == 1
    assert (await store.get_task(task.id)).state is winners[0].state  # type: ignore[union-attr]
    assert len(await store.list_events(EventFilter(kinds={EventKind.TRANSITION}))) == 4


async def test_batch_changes_are_independent(store: CoordinatorStore) -> None:
    services = await two_services(store)
    _, (t1, t2) = await store.create_release(
        Release("RE_1", "r", "0.0.0"), [s.id for s in services], ev("new")
    )
    results = await store.change_tasks(
        [
            TaskChange(t1.id, frozenset({TaskState.WAITING}), TaskState.INITIALIZED, progress=5),
            TaskChange(t2.id, frozenset({TaskState.RUNNING}), TaskState.STAGED),
        ]
    )
    assert results[0].state is TaskState.INITIALIZED  # type: ignore[union-attr]
    assert results[0].progress == 5  # type: ignore[union-attr]
    assert isinstance(results[1], ConcurrentUpdateError)
    assert (await store.get_task(t2.id)).state is TaskState.WAITING
    same = await store.change_tasks(
        [
            TaskChange(
                t1.id,
                frozenset({TaskState.INITIALIZED}),
                None,
                progress=5,
                events=(ev("nothing new"),),
            ),
        ]
    )
    assert same[0] == await store.get_task(t1.id)
    assert not [e for e in await store.list_events() if e.message == "nothing new"]
    with pytest.raises(NotFoundError):
        await store.change_tasks([TaskChange("TA_x", frozenset({TaskState.WAITING}), None)])


async def test_events_are_append_only_and_filtered(store: CoordinatorStore) -> None:
    stored = await store.append_events(
        [
            ev("a", release_id="R1", task_id="T1", task_service_id="S1"),
            Event(EventType.ERROR, EventKind.REQUEST_ERROR, "b", release_id="R1"),
            ev("c", release_id="R2"),
        ]
    )
    ids = [e.id for e in stored]
    assert ids == sorted(ids)
    assert len(set(ids)) == 3
    assert await store.last_event_id() == ids[-1]
    assert [e.message for e in await store.list_events(EventFilter(release_id="R1"))] == ["a", "b"]
    assert [e.message for e in await store.list_events(EventFilter(task_id="T1"))] == ["a"]
    assert [e.message for e in await store.list_events(EventFilter(task_service_id="S1"))] == ["a"]
    errors = await store.list_events(EventFilter(types={EventType.ERROR}))
    assert [e.message for e in errors] == ["b"]
    after = await store.list_events(EventFilter(after_id=ids[0]))
    assert [e.message for e in after] == ["b", "c"]
    assert [e.message for e in await store.list_events(limit=1, offset=1)] == ["b"]


async def test_leases(store: CoordinatorStore) -> None:
    for i in range(3):
        await store.create_release(Release(f"RE_{i}", "r", "0.0.0"), [], ev("new"))
    mine = await store.claim_releases("A", 30)
    assert [r.id for r in mine] == ["RE_0", "RE_1", "RE_2"]
    assert await store.claim_releases("B", 30) == []
    assert not await store.claim_release("RE_0", "B", 30)
    assert await store.claim_release("RE_0", "A", 30)
    assert await store.renew_lease("RE_0", "A", 30)
    assert not await store.renew_lease("RE_0", "B", 30)
    await store.drop_lease("RE_0", "B")  # not B's: no effect
    assert not await store.claim_release("RE_0", "B", 30)
    await store.drop_lease("RE_0", "A")
    assert await store.claim_release("RE_0", "B", 30)
    assert await store.claim_release("RE_1", "A", 0.05)
    await asyncio.sleep(0.1)  # A's short lease runs out
    assert [r.id for r in await store.claim_releases("B", 30)] == ["RE_0", "RE_1"]
    with pytest.raises(NotFoundError):
        await store.claim_release("RE_missing", "A", 30)


async def test_a_final_release_has_no_lease_to_renew(store: CoordinatorStore) -> None:
    release, _ = await store.create_release(Release("RE_1", "r", "0.0.0"), [], ev("new"))
    assert await store.claim_release(release.id, "A", 30)
    await store.transition_release(
        release.id, {ReleaseState.WAITING}, ReleaseState.STAGED, ev("staged")
    )
    await store.transition_release(
        release.id, {ReleaseState.STAGED}, ReleaseState.CANCELING, ev("c")
    )
    await store.transition_release(
        release.id, {ReleaseState.CANCELING}, ReleaseState.CANCELED, ev("done")
    )
    assert not await store.renew_lease(release.id, "A", 30)
    assert not await store.claim_release(release.id, "A", 30)


async def test_move_tasks_is_change_tasks_for_one_move(store: CoordinatorStore) -> None:
    # The same story on two releases: one told with move_tasks, the other with the
    # change_tasks it stands for; they must end alike (an adapter may override move_tasks).
    services = [
        await store.add_service(TaskService(f"TS_{i}", f"svc{i}", f"memory://svc{i}"), ev("add"))
        for i in range(3)
    ]
    ids = [s.id for s in services]
    _, moved = await store.create_release(Release("RE_m", "m", "0.0.0"), ids, ev("new"))
    _, changed = await store.create_release(Release("RE_c", "c", "0.0.0"), ids, ev("new"))
    for tasks in (moved, changed):  # the third task is elsewhere: its compare-and-set loses
        await store.change_task(
            TaskChange(tasks[2].id, frozenset({TaskState.WAITING}), TaskState.REJECTED)
        )
    w, i = TaskState.WAITING, TaskState.INITIALIZED

    at = utcnow()
    step = StepEvent(EventType.INFO, " is in", "initialized", None, at)
    moves = list(zip(moved, (5, None, 7), strict=True))

    before = await store.last_event_id()
    by_move = await store.move_tasks(w, i, moves, step, message="why")
    middle = await store.last_event_id()
    by_change = await store.change_tasks(
        [
            TaskChange(t.id, frozenset({w}), i, (step.for_task(t),), p, "why")
            for t, p in zip(changed, (5, None, 7), strict=True)
        ]
    )

    def outcome(result: object) -> object:
        if isinstance(result, ConcurrentUpdateError):
            return ("lost", result.expected, result.actual)
        return (result.state, result.progress, result.message)  # type: ignore[attr-defined]

    assert [outcome(r) for r in by_move] == [outcome(r) for r in by_change]
    assert outcome(by_move[0]) == (i, 5, "why")
    assert outcome(by_move[1]) == (i, 0, "why")
    assert outcome(by_move[2]) == ("lost", ("waiting",), "rejected")
    assert [await store.get_task(t.id) for t in moved[:2]] == by_move[:2]
    logged = await store.list_events(EventFilter(after_id=before))
    by_moves = [e for e in logged if e.id <= middle]
    by_changes = [e for e in logged if e.id > middle]
    assert [
        (e.type, e.kind, e.message, e.release_id, e.task_id, e.task_service_id, e.state)
        for e in by_moves
    ] == [
        (
            EventType.INFO,
            EventKind.TRANSITION,
            f"task {t.id} on {t.service_id} is in",
            None,
            t.id,
            t.service_id,
            "initialized",
        )
        for t in moved[:2]
    ]
    assert [e.message for e in by_changes] == [
        f"task {t.id} on {t.service_id} is in" for t in changed[:2]
    ]
    with pytest.raises(NotFoundError):  # for the whole call, before any change
        await store.move_tasks(
            i, TaskState.RUNNING, [(moved[0], 1), (attrs.evolve(moved[0], id="TA_x"), 1)], step
        )
    assert (await store.get_task(moved[0].id)).state is i
    assert len(await store.list_events(EventFilter(after_id=before))) == 4  # nothing more logged


# -- release notes and studies ------------------------------------------------------------------


def note(
    note_id: str, release_id: str, study_id: str = "", text: str = "*new* data"
) -> ReleaseNote:
    return ReleaseNote(note_id, release_id, text, study_id, "alice")


async def test_notes_are_stored_listed_edited_and_deleted(store: CoordinatorStore) -> None:
    await store.create_release(
        Release("RE_1", "r1", "0.0.0", studies=("SD_1", "SD_2")), [], ev("n")
    )
    await store.create_release(Release("RE_2", "r2", "0.0.0", studies=("SD_2",)), [], ev("n"))
    before = await store.last_event_id()
    made = [
        await store.add_note(note("NO_1", "RE_1"), ev("note 1")),
        await store.add_note(note("NO_2", "RE_1", "SD_1", "a\n\n- b"), ev("note 2")),
        await store.add_note(note("NO_3", "RE_2", "SD_2"), ev("note 3")),
        await store.add_note(note("NO_4", "RE_1", "SD_2"), ev("note 4")),
    ]
    assert await store.get_note("NO_2") == made[1]
    assert [n.id for n in await store.list_notes()] == ["NO_1", "NO_2", "NO_3", "NO_4"]
    assert [n.id for n in await store.list_notes(release_id="RE_1")] == ["NO_1", "NO_2", "NO_4"]
    assert [n.id for n in await store.list_notes(study_id="SD_2")] == ["NO_3", "NO_4"]
    assert [n.id for n in await store.list_notes(release_id="RE_1", study_id="")] == ["NO_1"]
    assert [n.id for n in await store.list_notes(release_id="RE_1", limit=1, offset=1)] == ["NO_2"]
    assert await store.list_notes(release_id="RE_missing") == []
    with pytest.raises(NotFoundError):
        await store.add_note(note("NO_5", "RE_missing"), ev("lost"))
    with pytest.raises(ConflictError):
        await store.add_note(note("NO_1", "RE_2"), ev("dup"))
    edited = await store.update_note("NO_2", ev("edit"), text="# changed")
    assert (edited.text, edited.author, edited.created_at) == (
        "# changed",
        "alice",
        made[1].created_at,
    )
    assert edited.updated_at >= made[1].updated_at
    assert await store.get_note("NO_2") == edited
    await store.delete_note("NO_1", ev("delete"))
    with pytest.raises(NotFoundError):
        await store.get_note("NO_1")
    for missing in (
        store.update_note("NO_1", ev("x"), text="t"),
        store.delete_note("NO_1", ev("x")),
    ):
        with pytest.raises(NotFoundError):
            await missing
    logged = await store.list_events(EventFilter(after_id=before))
    assert [e.message for e in logged] == ["note 1", "note 2", "note 3", "note 4", "edit", "delete"]


async def test_studies_are_read_from_the_releases(store: CoordinatorStore) -> None:
    assert await store.list_studies() == []
    with pytest.raises(NotFoundError):
        await store.get_study("SD_1")
    one, _ = await store.create_release(
        Release("RE_1", "r1", "0.0.0", studies=("SD_1", "SD_2")), [], ev("n")
    )
    two, _ = await store.create_release(
        Release("RE_2", "r2", "0.0.0", studies=("SD_2", "SD_3", "SD_2")), [], ev("n")
    )
    three, _ = await store.create_release(Release("RE_3", "r3", "0.0.0"), [], ev("n"))
    assert [r.id for r in await store.list_releases(study="SD_2")] == ["RE_2", "RE_1"]
    assert [r.id for r in await store.list_releases(study="SD_1")] == ["RE_1"]
    assert await store.list_releases(study="SD_9") == []
    assert await store.list_releases(study="SD") == []  # whole ids only
    assert [r.id for r in await store.list_releases(study="SD_2", limit=1, offset=1)] == ["RE_1"]
    waiting = {ReleaseState.WAITING}
    assert [r.id for r in await store.list_releases(study="SD_2", states=waiting)] == [
        "RE_2",
        "RE_1",
    ]
    assert [s.id for s in await store.list_studies()] == ["SD_3", "SD_1", "SD_2"]
    assert [s.id for s in await store.list_studies(limit=1, offset=1)] == ["SD_1"]
    study = await store.get_study("SD_2")
    assert study == Study(
        "SD_2", one.created_at, ("RE_2", "RE_1"), "RE_2", two.version, "", "", None
    )
    # publishing the older one, then the newer: the last published is the newer
    for release in (one, two):
        for source, dest in (
            (ReleaseState.WAITING, ReleaseState.STAGED),
            (ReleaseState.STAGED, ReleaseState.PUBLISHING),
            (ReleaseState.PUBLISHING, ReleaseState.PUBLISHED),
        ):
            await store.transition_release(release.id, {source}, dest, ev("move"))
        published = await store.get_release(release.id)
        study = await store.get_study("SD_2")
        assert (
            study.last_published_release_id,
            study.last_published_version,
            study.last_published_at,
        ) == (published.id, published.version, published.state_changed_at)
        assert study.latest_version == (await store.get_release("RE_2")).version
    assert (await store.get_study("SD_1")).last_published_release_id == "RE_1"
    assert three.studies == ()
