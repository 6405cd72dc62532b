"""Stages that wait for an operator's approval (a policy's ``approvals``), and the what-if of a
draft rollout on the registered fleet; over every store adapter."""

from __future__ import annotations

import pytest

from release_coordinator.errors import ConflictError, InvalidTransitionError, NotFoundError
from release_coordinator.rollout.approving import StageApproval
from release_coordinator.rollout.events import RolloutEventKind
from release_coordinator.rollout.geo import Area
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.models import ReleaseBundle, RolloutState
from release_coordinator.rollout.policies import (
    GlobalIncremental,
    LocationSequential,
    Waves,
    parse_policy,
    policy_json,
)
from release_coordinator.rollout.sync import SyncRolloutManager
from release_coordinator.rollout.what_if import WhatIf
from release_coordinator.storage.rollout_base import RolloutStore

from .test_rollout_manager import (
    EUROPE,
    INSIDE,
    OUTSIDE,
    STRATEGY,
    Clock,
    archive,
    bundle,
    fetched,
    result,
    square,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def manager(clock: Clock, rollout_store: RolloutStore) -> RolloutManager:
    """A manager over every store adapter (memory, SQLite, PostgreSQL)."""
    return RolloutManager(rollout_store, lost_after=30, clock=clock)


def approving(*stages: str) -> GlobalIncremental:
    return GlobalIncremental(approvals=stages)


def test_approvals_in_the_policy_json() -> None:
    policy = parse_policy({"type": "waves", "approvals": ["ab-50", "ab-50", "canary-10"]})
    assert isinstance(policy, Waves)
    assert policy.approvals == ("ab-50", "canary-10")  # once each, in order
    assert parse_policy(policy_json(policy)) == policy
    assert "approvals" not in policy_json(GlobalIncremental())  # shown only when set
    for bad in ("ab-50", [""], [3], ["x"] * 101):
        with pytest.raises(Exception, match="approvals"):
            parse_policy({"approvals": bad})


async def test_a_policy_naming_stages_that_cannot_wait_is_refused(manager: RolloutManager) -> None:
    with pytest.raises(Exception, match=r"approvals\[0\].*not a stage"):
        await manager.create_rollout(bundle(), EUROPE, policy=approving("nope"))
    ab_first = ReleaseBundle.from_parts(
        STRATEGY.replace("type: WaitForSignal", "type: A/B"), archive()
    )
    with pytest.raises(Exception, match="not a WaitForSignal stage"):
        await manager.create_rollout(ab_first, EUROPE, policy=approving("ab-50"))
    assert await manager.list_rollouts() == []  # nothing stored


async def test_the_barrier_before_a_stage_waits_for_its_approval(manager: RolloutManager) -> None:
    await manager.create_rollout(bundle(), EUROPE, policy=approving("ab-50"))
    assert await manager.approvals("42") == (StageApproval("ab-50", False),)
    one, two = await fetched(manager, INSIDE, square(6, 46))
    for child in (one, two):
        await manager.submit_result(result(child, "canary-10", 2))  # both wait: ready
    await manager.tick()
    for child in (one, two):
        assert not (await manager.end_stage(child, "42", "canary-10")).end_stage
    assert not (await manager.barrier("42", "canary-10")).open
    with pytest.raises(InvalidTransitionError, match="needs an operator's approval"):
        await manager.promote("42", "canary-10")
    failing = result(one, "canary-10", 5, "ab-50")  # fails, naming the waiting stage next
    with pytest.raises(InvalidTransitionError, match="waits for an operator's approval"):
        await manager.submit_result(failing)
    assert (await manager.store.child_release("42", one)).stages[
        "ab-50"
    ].status.wire_name == "Pending"
    with pytest.raises(InvalidTransitionError, match="does not ask"):
        await manager.approve("42", "canary-10", actor="alice")
    with pytest.raises(NotFoundError):
        await manager.approve("42", "nope", actor="alice")
    with pytest.raises(NotFoundError):
        await manager.approve("nope", "ab-50", actor="alice")

    await manager.approve("42", "ab-50", actor="alice")
    assert await manager.approvals("42") == (StageApproval("ab-50", True),)
    assert (await manager.barrier("42", "canary-10")).open
    for child in (one, two):
        assert (await manager.end_stage(child, "42", "canary-10")).end_stage
    await manager.approve("42", "ab-50", actor="bob")  # again: nothing changes, nothing logged
    events = await manager.list_events(rollout_id="42")
    approved = [e for e in events if e.kind is RolloutEventKind.USER_ACTION and e.stage == "ab-50"]
    assert [(e.actor, e.message) for e in approved] == [
        ("alice", "stage 'ab-50' approved by alice")
    ]


async def test_a_rollout_whose_first_stage_waits_is_offered_once_approved(
    manager: RolloutManager,
) -> None:
    await manager.create_rollout(bundle(), EUROPE, policy=approving("canary-10"), start=False)
    await manager.approve("42", "canary-10", actor="alice")  # a draft may be approved already
    await manager.create_rollout(bundle("43"), EUROPE, policy=approving("canary-10"))
    answer = await manager.poll("c1", INSIDE, 0)
    assert answer.new_release == ""  # 43 waits for approval, 42 is a draft
    await manager.start("42")
    assert (await manager.poll("c1", INSIDE, 0)).new_release == "42"
    await manager.approve("43", "canary-10")
    assert "c1" in await manager.store.targeted("43")


async def test_approving_a_final_or_gated_rollout_is_a_conflict(manager: RolloutManager) -> None:
    await manager.create_rollout(bundle(), EUROPE, policy=approving("ab-50"))
    await manager.abort("42")
    with pytest.raises(InvalidTransitionError, match="over"):
        await manager.approve("42", "ab-50")
    await manager.create_rollout(bundle("43"), EUROPE, policy=approving("ab-50"), gated=True)
    with pytest.raises(InvalidTransitionError, match="parent"):
        await manager.approve("43", "ab-50")


# -- what-if --------------------------------------------------------------------------------------


async def test_what_if_lists_the_children_a_draft_would_reach(manager: RolloutManager) -> None:
    for i in range(5):
        await manager.poll(f"c{i}", square(1 + 3 * i, 45), 2 if i == 3 else 0)
    await manager.poll("far", OUTSIDE, 0)
    west = square(0, 40, 6)
    policy = LocationSequential(groups=(Area.from_geojson(west),))
    await manager.create_rollout(bundle(), EUROPE, policy=policy, start=False)
    seen = await manager.what_if("42")
    assert isinstance(seen, WhatIf)
    assert (seen.eligible, seen.relays) == (5, 1)
    assert [(a.name, a.count) for a in seen.areas] == [("groups[0]", 2), ("outside every group", 3)]
    assert seen.areas[1].relays == ("c3",)
    assert set(seen.children) == {f"c{i}" for i in range(5)}
    assert await manager.store.targeted("42") == []  # nothing was offered

    await manager.create_rollout(
        bundle("43"), EUROPE, policy=Waves(sizes=(0.2, 0.6, 1.0)), start=False
    )
    waves = await manager.what_if("43", limit=2)
    assert [(w.name, w.count) for w in waves.waves] == [
        ("waves[0]", 1),
        ("waves[1]", 2),
        ("waves[2]", 2),
    ]
    assert all(len(w.children) <= 2 for w in waves.waves)
    assert sum(w.count for w in waves.waves) == 5

    await manager.start("42")
    with pytest.raises(ConflictError, match="not a draft"):
        await manager.what_if("42")
    with pytest.raises(NotFoundError):
        await manager.what_if("nope")
    assert (await manager.get_rollout("43")).state is RolloutState.DRAFT


def test_the_blocking_facade_approves_and_previews() -> None:
    with SyncRolloutManager() as manager:
        manager.poll("c1", INSIDE, 0)
        manager.create_rollout(bundle(), EUROPE, policy=approving("canary-10"), start=False)
        assert manager.what_if("42").eligible == 1
        manager.approve("42", "canary-10", actor="alice")
        assert manager.approvals("42") == (StageApproval("canary-10", True),)
