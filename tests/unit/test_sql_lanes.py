"""The two lanes into one SQL database: a control writer never waits for the fleet's queue."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("aiosqlite")

from release_coordinator.coordinator.events import new_event
from release_coordinator.coordinator.models import EventKind, TaskService
from release_coordinator.storage.sql import SQLRolloutStore, SQLStore
from release_coordinator.storage.sql.lanes import Lane, LaneLock

pytestmark = pytest.mark.anyio


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def _queue(
    lock: LaneLock, order: list[str], *names: tuple[str, Lane]
) -> list[asyncio.Task[None]]:
    async def hold(name: str, lane: Lane) -> None:
        async with lock.hold(lane):
            order.append(name)
            await asyncio.sleep(0)

    tasks = []
    for name, lane in names:
        tasks.append(asyncio.create_task(hold(name, lane)))
        await _settle()  # (each arrives after the one before)
    return tasks


async def test_control_waiters_go_before_the_fleet_queue_and_each_lane_keeps_its_order() -> None:
    lock = LaneLock()
    order: list[str] = []
    async with lock.hold(Lane.FLEET):
        tasks = await _queue(
            lock,
            order,
            ("f1", Lane.FLEET),
            ("f2", Lane.FLEET),
            ("c1", Lane.CONTROL),
            ("f3", Lane.FLEET),
            ("c2", Lane.CONTROL),
        )
        assert (lock.waiting(Lane.CONTROL), lock.waiting(Lane.FLEET)) == (2, 3)
    await asyncio.gather(*tasks)
    assert order == ["c1", "c2", "f1", "f2", "f3"]
    assert not lock.locked


async def test_a_free_lock_is_taken_at_once_but_not_past_waiters() -> None:
    lock = LaneLock()
    async with lock.hold(Lane.CONTROL):
        assert lock.locked
    assert not lock.locked
    order: list[str] = []
    async with lock.hold(Lane.CONTROL):
        tasks = await _queue(lock, order, ("c", Lane.CONTROL), ("f", Lane.FLEET))
    # Released: the control waiter has the lock; a new fleet holder queues behind "f".
    tasks += await _queue(lock, order, ("f-late", Lane.FLEET))
    await asyncio.gather(*tasks)
    assert order == ["c", "f", "f-late"]


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    lock = LaneLock()
    order: list[str] = []
    async with lock.hold(Lane.FLEET):
        tasks = await _queue(lock, order, ("c", Lane.CONTROL), ("f", Lane.FLEET))
        tasks[0].cancel()
        await _settle()
        assert lock.waiting(Lane.CONTROL) == 0
    await asyncio.gather(*tasks, return_exceptions=True)
    assert order == ["f"]
    assert not lock.locked


async def test_a_waiter_cancelled_as_the_lock_reaches_it_passes_it_on() -> None:
    lock = LaneLock()
    order: list[str] = []
    holder = lock.hold(Lane.FLEET)
    await holder.__aenter__()
    tasks = await _queue(lock, order, ("c", Lane.CONTROL), ("f", Lane.FLEET))
    await holder.__aexit__(None, None, None)  # handed to "c", which has not run yet...
    tasks[0].cancel()  # ... and is cancelled before it does
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert order == ["f"]
    assert not lock.locked


async def test_a_control_write_on_sqlite_waits_for_the_writer_not_for_the_fleet_queue(
    tmp_path: Path,
) -> None:
    store = await SQLStore.connect(f"sqlite:///{tmp_path / 'lanes.db'}")
    rollouts = SQLRolloutStore.over(store)
    done: list[str] = []
    try:
        release = asyncio.Event()

        async def fleet_write(name: str) -> None:
            async with store._write(Lane.FLEET):
                if name == "holder":
                    await release.wait()
            done.append(name)

        holder = asyncio.create_task(fleet_write("holder"))
        await _settle()
        queued = [asyncio.create_task(fleet_write(f"fleet-{i}")) for i in range(20)]
        await _settle()
        # An operator's write (a task service added) arrives behind the fleet's queue.
        service = TaskService(id="TS_1", name="portal", url="http://127.0.0.1:1/x")

        async def control_write() -> None:
            await store.add_service(service, new_event(EventKind.USER_ACTION, "added"))
            done.append("service")

        added = asyncio.create_task(control_write())
        await _settle()
        # A control read waits for nobody: a file database's readers pass the writers.
        assert await asyncio.wait_for(store.list_services(), 5) == []
        release.set()
        await asyncio.wait_for(asyncio.gather(holder, added, *queued), 10)
        assert done[:2] == ["holder", "service"], done
        assert sorted(done[2:]) == sorted(f"fleet-{i}" for i in range(20))
        assert [s.id for s in await store.list_services()] == ["TS_1"]
        assert await rollouts.list_rollouts() == []
    finally:
        await store.close()


async def test_an_in_memory_database_shares_its_one_connection_between_the_lanes() -> None:
    store = await SQLStore.connect("sqlite://")
    try:
        assert store._engines[Lane.CONTROL] is store._engines[Lane.FLEET]
    finally:
        await store.close()


async def test_a_file_database_has_connections_of_its_own_for_each_lane(tmp_path: Path) -> None:
    store = await SQLStore.connect(f"sqlite:///{tmp_path / 'two.db'}")
    try:
        assert store._engines[Lane.CONTROL] is not store._engines[Lane.FLEET]
    finally:
        await store.close()
