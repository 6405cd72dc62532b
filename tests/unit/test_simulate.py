"""The fleet simulator (``simulate``, ``release-coordinator simulate``), the leaves' wall-clock
stage time, and what the simulator needed from the manager and the relay: stage counters
instead of scans, and a subtree that rolls back as a whole once a stage failed below."""

from __future__ import annotations

import io
import re
import time

import pytest

from release_coordinator.cli import main
from release_coordinator.errors import ConfigurationError, InvalidTransitionError
from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus
from release_coordinator.rollout.fleet_map import DEFAULT_BBOX, Region, grid_regions
from release_coordinator.rollout.fleet_report import FleetLeaf, region_outcomes
from release_coordinator.rollout.geo import Area
from release_coordinator.rollout.kit import SimulatedLeaf
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.models import RolloutState
from release_coordinator.rollout.relay import Relay
from release_coordinator.rollout.simulate import Fleet, FleetConfig, simulate, two_stage_strategy
from release_coordinator.transports.memory import InProcessParent

from .test_rollout_manager import Clock, bundle, fetched, result, square

pytestmark = pytest.mark.anyio

FAST = {"poll_interval": 0.02, "stage_seconds": 0.05, "progress_every": 0.1}


# -- the simulator -------------------------------------------------------------------------------


async def test_a_small_fleet_rolls_out_everywhere() -> None:
    out = io.StringIO()
    result = await simulate(FleetConfig(grid=2, leaves=20, **FAST), out=out)
    assert result.finished
    assert result.as_expected
    assert [(r.name, r.leaves, r.rolled_out, r.rolled_back) for r in result.regions] == [
        ("r1", 10, 10, 0),
        ("r2", 10, 10, 0),
    ]
    assert result.errors == 0
    assert result.report.outcomes == {"rolled_out": 2}  # the two relays, for their subtrees
    text = out.getvalue()
    assert "rollout 'fleet-1' started" in text
    assert "as expected" in text
    assert "every leaf finished" in text


async def test_a_failing_region_rolls_back_and_the_other_rolls_out() -> None:
    out = io.StringIO()
    result = await simulate(FleetConfig(grid=2, leaves=20, failing=("r2",), **FAST), out=out)
    assert result.as_expected
    r1, r2 = result.regions
    assert (r1.rolled_out, r1.rolled_back, r1.failing) == (10, 0, 0)
    assert (r2.rolled_out, r2.failing, r2.expected_back) == (0, 10, 10)
    # Leaves that had not fetched the release when the first failure rolled r2 back are never
    # offered it (see test_leaves_that_come_back_after_their_relay_aborted_were_never_offered).
    assert r2.rolled_back + r2.never_offered == 10
    assert r2.rolled_back >= 1
    assert result.report.statuses == {"Done": 1, "Failed": 1}
    assert result.report.outcomes == {"rolled_out": 1, "rolled_back": 1}
    lines = out.getvalue().splitlines()
    assert any(line.startswith("r2 ") and line.endswith("yes") for line in lines)


async def test_a_failure_area_rolls_back_the_whole_subtree_it_touches() -> None:
    # Only a corner of r1 fails, but r1 has one relay: the relay reports the stage failed
    # upward and rolls back every leaf below it, the healthy ones included. A leaf that had not
    # fetched the release when the relay aborted it (the first failing leaf fails at its first
    # step, so under load some may not have) is never offered it: it kept the old version.
    corner = square(-10, 35, 10)  # r1 is (-10, 35)-(10, 60) in a grid of 2
    config = FleetConfig(grid=2, leaves=40, failing=(corner,), seed=3, **FAST)
    out = io.StringIO()
    result = await simulate(config, out=out)
    r1, r2 = result.regions
    assert 0 < r1.failing < r1.leaves
    assert r1.expected_back == r1.leaves == r1.rolled_back + r1.never_offered
    assert r1.rolled_back >= r1.failing  # every failing leaf ran the release and rolled back
    assert r2.rolled_out == r2.leaves
    assert r2.never_offered == 0
    assert result.as_expected
    assert ("never offered" in out.getvalue()) == bool(r1.never_offered)


def test_a_leaf_never_offered_meets_only_an_expected_roll_back() -> None:
    leaves = []
    for expected, outcome, never_offered in (
        ("rolled_back", "", True),  # kept the old version: what a roll-back leaves
        ("rolled_out", "", True),  # should have rolled out: unexpected
        ("rolled_back", "rolled_back", False),
        ("rolled_out", "", False),  # unfinished
    ):
        agent = SimulatedLeaf(InProcessParent(RolloutManager()), square(0, 0, 1))
        agent.outcome = outcome
        leaves.append(FleetLeaf(agent, "r", "u", expected, never_offered))
    assert [leaf.as_expected for leaf in leaves] == [True, False, True, False]
    (region,) = region_outcomes([Region("r", Area.from_geojson(square(0, 0, 1)))], leaves)
    assert (region.never_offered, region.unfinished, region.unexpected) == (2, 1, 2)
    assert not region.as_expected


async def test_two_levels_and_four_levels() -> None:
    flat = await simulate(FleetConfig(grid=2, leaves=8, levels=2, failing=("r1",), **FAST))
    assert flat.as_expected
    assert flat.report.outcomes == {"rolled_back": 4, "rolled_out": 4}  # the leaves themselves
    deep = Fleet(FleetConfig(grid=2, leaves=16, levels=4, relays_per_region=2, fanout=2, **FAST))
    assert len(deep.relays) == 2 * 2 + 2 * 2 * 2
    result = await deep.run()
    assert result.as_expected
    assert result.report.outcomes == {"rolled_out": 4}
    with pytest.raises(ConfigurationError, match="runs once"):
        await deep.run()


async def test_explicit_regions_target_and_time_scale() -> None:
    regions = (
        Region("north", square(0, 50, 10)),
        Region("south", Area.from_geojson(square(0, 40, 10))),
    )
    config = FleetConfig(
        regions=regions,
        leaves=6,
        target=square(0, 40, 10),  # only the south
        failing=("north",),
        time_scale=2.0,
        poll_interval=0.04,
        stage_seconds=0.1,
        deadline=3.0,
    )
    result = await simulate(config)
    north, south = result.regions
    assert south.rolled_out == 3
    assert north.unfinished == 3  # never targeted: not as expected, and the deadline said so
    assert not result.finished
    assert not result.as_expected


def test_fleet_config_refuses_nonsense() -> None:
    for bad in (
        {"leaves": 0},
        {"levels": 1},
        {"poll_interval": 0},
        {"time_scale": -1.0},
        {"error_rate": 2.0},
        {"stage_seconds": -1.0},
        {"bbox": (10.0, 0.0, 0.0, 10.0)},
        {"failing": ("nowhere",)},
        {"regions": (Region("a", square(0, 0)), Region("a", square(2, 0)))},
    ):
        with pytest.raises(ConfigurationError):
            FleetConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="r1, r2, r3"):
        FleetConfig(grid=3, failing="r9")


def test_grid_regions_cover_the_box_and_the_default_strategy_parses() -> None:
    regions = grid_regions(5)
    assert [r.name for r in regions] == ["r1", "r2", "r3", "r4", "r5"]
    assert Area.union(r.area for r in regions).bounds[:2] == DEFAULT_BBOX[:2]
    strategy = FleetConfig(stage_seconds=0.25).bundle().strategy
    assert strategy.stage_names == ("canary", "half")
    assert [s.min_duration.total_seconds() for s in strategy.stages] == [0.25, 0.25]
    assert "threshold: 3s" in two_stage_strategy()


def test_cli_simulate(capsys) -> None:  # type: ignore[no-untyped-def]
    args = ["simulate", "--regions", "2", "--leaves", "6", "--poll-interval", "0.02"]
    assert main([*args, "--stage-seconds", "0.05", "--fail", "r1", "--progress-every", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "region  leaves  failing  rolled out  rolled back  unfinished  as expected" in out
    assert re.search(r"^r1 +3 +3 +0 +3 +0  yes$", out, re.MULTILINE)
    assert "outcome as expected" in out
    assert main(["simulate", "--fail", "r7"]) == 2
    assert "unknown failing region" in capsys.readouterr().err


# -- the leaf's stage clock ----------------------------------------------------------------------


async def test_min_duration_is_measured_on_the_leaf_clock() -> None:
    clock = Clock()
    top = RolloutManager(lost_after=1e9)
    leaf = SimulatedLeaf(InProcessParent(top), square(1, 41), clock=clock, error_rate=0.0, seed=1)
    await leaf.step()
    await top.create_rollout(FleetConfig(stage_seconds=30).bundle(), square(0, 40, 10))
    await leaf.step()  # fetches: the canary starts at clock 1000
    for _ in range(50):  # however many steps: the clock did not move
        await leaf.step()
    assert not leaf.waiting
    clock.now += 29.9
    await leaf.step()
    assert not leaf.waiting
    clock.now += 0.1
    await leaf.step()
    assert leaf.waiting
    assert leaf.elapsed == pytest.approx(30.0)


async def test_without_a_clock_each_step_stands_for_step_seconds() -> None:
    top = RolloutManager(lost_after=1e9)
    leaf = SimulatedLeaf(InProcessParent(top), square(1, 41), step_seconds=10, error_rate=0.0)
    await leaf.step()
    await top.create_rollout(FleetConfig(stage_seconds=30).bundle(), square(0, 40, 10))
    await leaf.step()
    started = time.monotonic()
    for _ in range(3):
        await leaf.step()
    assert leaf.waiting
    assert leaf.elapsed == 30.0
    assert time.monotonic() - started < 5


# -- the manager's stage counters ----------------------------------------------------------------


async def test_stage_counts_follow_every_change() -> None:
    clock = Clock()
    manager = RolloutManager(lost_after=30, clock=clock)
    await manager.create_rollout(bundle(), square(0, 40, 20))
    a, b, c = await fetched(manager, square(1, 41), square(3, 41), square(5, 41))
    todo = (await manager.poll("", square(7, 41), 0)).id  # targeted, never fetches
    counts = await manager.stage_counts("42", "canary-10")
    assert (counts.taking_part, counts.ready_count, counts.waiting, counts.final) == (4, 0, 0, 0)
    await manager.submit_result(result(a, "canary-10", 2))
    await manager.submit_result(result(b, "canary-10", 5, "rollback"))
    counts = await manager.stage_counts("42", "canary-10")
    assert (counts.taking_part, counts.ready_count, counts.waiting) == (3, 1, 1)
    assert (counts.final, counts.completed, counts.ready, counts.open) == (1, 0, False, False)
    barrier = await manager.barrier("42", "canary-10")
    assert [w.child_id for w in barrier.waiting] == [a]
    assert (barrier.taking_part, barrier.ready_count) == (3, 1)

    # c and the Todo child go quiet: lost, they no longer take part; the barrier opens.
    clock.now += 20
    await manager.poll(a, square(1, 41), 0)
    clock.now += 20
    await manager.poll(a, square(1, 41), 0)
    counts = await manager.stage_counts("42", "canary-10")
    assert (counts.taking_part, counts.ready_count, counts.ready) == (1, 1, True)
    assert (await manager.end_stage(a, "42", "canary-10")).end_stage
    counts = await manager.stage_counts("42", "canary-10")
    assert (counts.open, counts.waiting, counts.ready_count) == (True, 0, 1)
    # c comes back: taking part again, and still not ready.
    await manager.poll(c, square(5, 41), 0)
    counts = await manager.stage_counts("42", "canary-10")
    assert (counts.taking_part, counts.ready_count) == (2, 1)

    await manager.submit_result(result(a, "canary-10", 4, "ab-50"))
    counts = await manager.stage_counts("42", "canary-10")
    assert (counts.final, counts.completed) == (2, 1)
    assert (await manager.stage_counts("42", "ab-50")).taking_part == 2  # a and c
    await manager.poll(todo, square(7, 41), 0)  # live again
    assert (await manager.stage_counts("42", "ab-50")).taking_part == 3
    await manager.abort("42")  # the Todo child is withdrawn
    assert (await manager.stage_counts("42", "ab-50")).taking_part == 2


async def test_counters_are_rebuilt_from_the_store_after_a_restart() -> None:
    manager = RolloutManager(lost_after=1e9)
    await manager.create_rollout(bundle(), square(0, 40, 20))
    a, b = await fetched(manager, square(1, 41), square(3, 41))
    await manager.submit_result(result(a, "canary-10", 2))
    restarted = RolloutManager(manager.store, lost_after=1e9)
    await restarted.load()
    for child in (a, b):
        await restarted.poll(child, square(1 if child == a else 3, 41), 0)
    counts = await restarted.stage_counts("42", "canary-10")
    assert (counts.taking_part, counts.ready_count, counts.waiting) == (2, 1, 1)
    await restarted.submit_result(result(b, "canary-10", 2))
    assert (await restarted.end_stage(a, "42", "canary-10")).end_stage
    records = {r.child_id: r for r in await restarted.store.child_releases("42")}
    assert {r.stages["canary-10"].status for r in records.values()} == {StageStatus.SHOULD_END}


async def test_a_stage_cannot_name_itself_as_the_next_one() -> None:
    manager = RolloutManager()
    await manager.create_rollout(bundle(), square(0, 40, 20))
    (a,) = await fetched(manager, square(1, 41))
    with pytest.raises(InvalidTransitionError):
        await manager.submit_result(result(a, "ab-50", 6, "ab-50"))
    state = await manager.store.child_release("42", a)
    assert state.stages["ab-50"].status is StageStatus.PENDING


# -- the relay ---------------------------------------------------------------------------------


async def test_a_relay_rolls_its_subtree_back_when_a_stage_failed_below() -> None:
    top = RolloutManager(lost_after=1e9)
    relay = Relay(RolloutManager(lost_after=1e9), InProcessParent(top), relay_id="west")
    leaves = [
        SimulatedLeaf(InProcessParent(relay.manager), square(1 + 2 * i, 42), failing=i == 0, seed=i)
        for i in range(3)
    ]
    # The failing leaf fails the canary (a WaitForSignal stage that rolls back): the relay fails
    # it upward at once, and the healthy leaves waiting at its barrier are told to roll back.
    await top.create_rollout(FleetConfig(stage_seconds=0).bundle(), square(0, 40, 20))
    for _ in range(60):
        for leaf in leaves:
            await leaf.step()
        await relay.sync()
        await relay.manager.tick()
        await top.tick()
    assert [leaf.outcome for leaf in leaves] == ["rolled_back"] * 3
    assert leaves[1].history == ["canary"]
    (upward,) = await top.store.child_releases("fleet-1")
    assert upward.status is ReleaseStatus.FAILED
    assert upward.outcome.value == "rolled_back"
    local = await relay.manager.get_rollout("fleet-1")
    assert "failed below" in local.reason


async def test_leaves_that_come_back_after_their_relay_aborted_were_never_offered() -> None:
    # Three healthy leaves of r1 are away (they do not poll) until r1's relay has aborted the
    # release at the first failure below it: they are never offered it and keep the old version.
    corner = square(-10, 35, 10)
    fleet = Fleet(FleetConfig(grid=2, leaves=40, failing=(corner,), seed=3, **FAST))
    (relay,) = [r for r in fleet.relays if r.id.startswith("r1")]
    away = [x.agent for x in fleet.leaves if x.region == "r1" and not x.agent.failing][:3]

    def away_until_aborted(agent: SimulatedLeaf) -> None:
        step = agent.step

        async def later() -> None:
            rollouts = await relay.manager.list_rollouts(states={RolloutState.ABORTED})
            if rollouts or not fleet._rollout_id:
                await step()  # registering before the rollout, and back after the abort

        agent.step = later  # type: ignore[method-assign]

    for agent in away:
        away_until_aborted(agent)
    out = io.StringIO()
    result = await fleet.run(out)
    r1 = result.region("r1")
    assert r1.never_offered == 3
    assert r1.rolled_back == r1.leaves - 3
    assert all(agent.release_id == "" for agent in away)
    assert result.as_expected
    assert "3 leaves were never offered the release" in out.getvalue()
