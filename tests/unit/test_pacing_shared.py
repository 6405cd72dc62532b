"""Pacing over a shared store (PostgreSQL): two manager processes (two stores on one database,
one clock) serve one fleet; a rate-limited rollout is offered only by the one that ticks, so the
fleet sees one rate, and windows hold in both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.pacing import Pacing, Window
from release_coordinator.rollout.policies import GlobalIncremental

from .test_pacing import at
from .test_rollout_manager import EUROPE, Clock, bundle, finish, square

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture
async def managers(
    postgres_url: str,
) -> AsyncIterator[tuple[Clock, RolloutManager, RolloutManager]]:
    pytest.importorskip("psycopg")
    from release_coordinator.storage.sql import SQLRolloutStore
    from sql_support import postgres_schema

    clock = Clock()
    clock.now = at(0, 1)
    with postgres_schema(postgres_url) as url:
        async with AsyncExitStack() as stack:
            found = []
            for name in ("a", "b"):
                store = await SQLRolloutStore.connect(url)
                stack.push_async_callback(store.close)
                found.append(
                    RolloutManager(store, lost_after=3600, clock=clock, owner=name, refresh=0)
                )
            yield clock, found[0], found[1]


CHILDREN = {f"c{i}": square(1 + i, 42 + i % 5) for i in range(8)}


async def test_one_rate_for_the_fleet_and_windows_in_every_process(
    managers: tuple[Clock, RolloutManager, RolloutManager],
) -> None:
    clock, a, b = managers
    for i, (child, area) in enumerate(CHILDREN.items()):
        await (a if i % 2 else b).poll(child, area, 0)
    policy = GlobalIncremental(quorum=0.01, pacing=Pacing(max_per_minute=3))
    await b.create_rollout(bundle(), EUROPE, policy=policy)
    assert await a.store.targeted("42") == []  # b does not tick: it offers nothing
    await a.tick()
    offered = sorted(await a.store.targeted("42"))
    assert len(offered) == 3
    for child in offered:  # results reach b; b admits nothing (a's minute is spent anyway)
        await finish(b, child, "42")
    await b.poll("late", square(9, 49), 0)
    await a.tick()
    assert len(await a.store.targeted("42")) == 3
    clock.now += 60
    await a.tick()
    assert len(await a.store.targeted("42")) == 6

    # A window holds in both processes: b offers nothing outside it, even unlimited.
    closed = GlobalIncremental(pacing=Pacing(windows=(Window(120, 3600.0),)))  # 02:00-03:00
    await b.create_rollout(bundle("43"), EUROPE, policy=closed)
    await b.poll("later", square(8, 48), 0)
    await a.tick()
    assert await a.store.targeted("43") == []
    assert (await b.poll("later", square(8, 48), 0)).next_poll == 30  # (42 reaches it, open)
    clock.now = at(0, 2)
    await a.tick()
    assert len(await b.store.targeted("43")) == len(CHILDREN) + 2
