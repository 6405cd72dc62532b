"""Several managers over one shared store: one at a time runs the background loop's rounds.

Over PostgreSQL (the shared store), each manager's loop takes or renews the lease
``LOOP_LEASE`` before a round; the others skip their rounds. A stopped manager gives the lease
up (another takes over at its next round); one that dies without a word loses it when it runs
out on the database's clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from release_coordinator.errors import ConfigurationError
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.ticks import LOOP_LEASE
from release_coordinator.storage.memory_rollout import MemoryRolloutStore

pytestmark = pytest.mark.anyio

INTERVAL = 0.05


class CountingManager(RolloutManager):
    """A manager that counts its ticks (the loop's rounds that did the periodic work)."""

    ticks = 0

    async def tick(self) -> None:
        self.ticks += 1
        await super().tick()


@pytest.fixture
async def stores(postgres_url: str) -> AsyncIterator[list[object]]:
    pytest.importorskip("psycopg")
    from release_coordinator.storage.sql import SQLRolloutStore
    from sql_support import postgres_schema

    with postgres_schema(postgres_url) as url:
        async with AsyncExitStack() as stack:
            opened = []
            for _ in range(3):  # three processes' stores: nothing shared but the database
                store = await SQLRolloutStore.connect(url)
                stack.push_async_callback(store.close)
                opened.append(store)
            yield opened


async def until(condition: object, seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.mark.postgres
async def test_one_manager_of_several_ticks_and_another_takes_over(
    stores: list[object], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="release_coordinator.rollout.manager")
    managers = [
        CountingManager(store, owner=f"m{i}", lease_seconds=1.0)  # type: ignore[arg-type]
        for i, store in enumerate(stores)
    ]
    for manager in managers:
        await manager.start_loops(interval=INTERVAL)
    try:
        await until(lambda: sum(m.holds_lease for m in managers) == 1)
        (leader,) = [m for m in managers if m.holds_lease]
        await until(lambda: leader.ticks >= 10)
        assert [m.ticks for m in managers if m is not leader] == [0, 0]
        assert f"{leader.owner} holds the lease of the background loop" in caplog.text

        # Stopped: the lease is given up, another manager takes over at its next round.
        await leader.stop_loops()
        assert not leader.holds_lease
        rest = [m for m in managers if m is not leader]
        await until(lambda: sum(m.holds_lease for m in rest) == 1, seconds=2.0)
        (second,) = [m for m in rest if m.holds_lease]
        before = second.ticks
        await until(lambda: second.ticks >= before + 5)

        # Dead without a word (its loop gone, the lease kept): the last one waits for the
        # lease to run out, then takes over.
        assert second._loop is not None
        second._loop.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second._loop.task
        (third,) = [m for m in rest if m is not second]
        assert third.ticks == 0
        await until(lambda: third.holds_lease, seconds=5.0)
        ticks_at_takeover = third.ticks
        await until(lambda: third.ticks >= ticks_at_takeover + 5)
        # Never two at once: while one holds the lease, the others' counts stand still.
        frozen = [m.ticks for m in managers if m is not third]
        await asyncio.sleep(10 * INTERVAL)
        assert [m.ticks for m in managers if m is not third] == frozen
    finally:
        for manager in managers:
            await manager.stop_loops()


async def test_a_store_of_one_process_needs_no_lease() -> None:
    store = MemoryRolloutStore()
    manager = CountingManager(store, owner="solo")
    async with manager.running(interval=INTERVAL):
        await until(lambda: manager.ticks >= 3)
    assert not manager.holds_lease
    assert await store.hold_lease(LOOP_LEASE, "someone-else", 30)  # never taken


def test_lease_seconds_must_be_positive() -> None:
    with pytest.raises(ConfigurationError, match="lease_seconds"):
        RolloutManager(lease_seconds=0)


@pytest.mark.postgres
async def test_a_lease_shorter_than_two_rounds_is_refused(stores: list[object]) -> None:
    manager = RolloutManager(stores[0], owner="quick", lease_seconds=1.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="at least twice the loop's interval"):
        await manager.start_loops(interval=0.6)
    assert not manager.is_running
