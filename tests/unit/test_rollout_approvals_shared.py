"""Stage approvals over a shared store (PostgreSQL): two manager processes (two stores on one
database); an approval given through one holds and releases the children of the other."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from release_coordinator.rollout.approving import StageApproval
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.policies import GlobalIncremental

from .test_rollout_manager import EUROPE, INSIDE, Clock, bundle, result, square

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture
async def managers(postgres_url: str) -> AsyncIterator[tuple[RolloutManager, RolloutManager]]:
    pytest.importorskip("psycopg")
    from release_coordinator.storage.sql import SQLRolloutStore
    from sql_support import postgres_schema

    clock = Clock()
    with postgres_schema(postgres_url) as url:
        async with AsyncExitStack() as stack:
            found = []
            for name in ("a", "b"):
                store = await SQLRolloutStore.connect(url)
                stack.push_async_callback(store.close)
                found.append(RolloutManager(store, lost_after=3600, clock=clock, owner=name))
            yield found[0], found[1]


async def test_an_approval_given_in_one_process_holds_in_the_other(
    managers: tuple[RolloutManager, RolloutManager],
) -> None:
    a, b = managers
    await a.create_rollout(bundle(), EUROPE, policy=GlobalIncremental(approvals=("ab-50",)))
    children = []
    for i, manager in enumerate((a, b)):
        answer = await manager.poll(f"c{i}", INSIDE if i == 0 else square(6, 46), 0)
        assert answer.new_release == "42"
        await manager.get_release(answer.id, "42")
        children.append(answer.id)
    for manager, child in zip((a, b), children, strict=True):
        await manager.submit_result(result(child, "canary-10", 2))
        assert not (await manager.end_stage(child, "42", "canary-10")).end_stage
    await a.approve("42", "ab-50", actor="alice")
    assert await b.approvals("42") == (StageApproval("ab-50", True),)
    for manager, child in zip((b, a), children, strict=True):  # each asks the other process
        assert (await manager.end_stage(child, "42", "canary-10")).end_stage
    await b.approve("42", "ab-50", actor="bob")  # again, elsewhere: nothing logged
    events = await a.list_events(rollout_id="42", stage="ab-50")
    assert [e.actor for e in events] == ["alice"]
