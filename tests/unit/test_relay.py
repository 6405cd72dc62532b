"""A three-level tree in one process: a manager, relays below it, simulated leaves below them."""

from __future__ import annotations

import pytest

from release_coordinator.errors import ConfigurationError
from release_coordinator.fsm.rollout import ReleaseStatus
from release_coordinator.rollout.geo import Area
from release_coordinator.rollout.kit import SimulatedLeaf
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.relay import Relay
from release_coordinator.transports.memory import InProcessParent

from .test_rollout_manager import bundle, square

pytestmark = pytest.mark.anyio

WEST = square(0, 40, 10)  # region of relay "west"
EAST = square(10, 40, 10)  # region of relay "east"


class Tree:
    def __init__(self, *, failing_east: bool = False, leaves: int = 4) -> None:
        self.top = RolloutManager(lost_after=1e9)
        self.relays: dict[str, Relay] = {}
        self.leaves: dict[str, list[SimulatedLeaf]] = {}
        for name, region in (("west", WEST), ("east", EAST)):
            relay = Relay(RolloutManager(lost_after=1e9), InProcessParent(self.top), relay_id=name)
            self.relays[name] = relay
            lon0 = region["coordinates"][0][0][0]
            self.leaves[name] = [
                SimulatedLeaf(
                    InProcessParent(relay.manager),
                    square(lon0 + 1 + 2 * i, 42, 1),
                    failing=failing_east and name == "east",
                    calls_per_step=40,
                    seed=i,
                )
                for i in range(leaves)
            ]

    async def run(self, steps: int = 60) -> None:
        for _ in range(steps):
            for leaves in self.leaves.values():
                for leaf in leaves:
                    await leaf.step()
            for relay in self.relays.values():
                await relay.sync()
                await relay.manager.tick()
            await self.top.tick()
            if all(leaf.done for leaves in self.leaves.values() for leaf in leaves):
                # one more round so the relays report the end upward
                for relay in self.relays.values():
                    await relay.sync()
                return

    def outcomes(self, region: str) -> set[str]:
        return {leaf.outcome for leaf in self.leaves[region]}


async def test_a_release_rolls_out_through_two_levels_of_relays() -> None:
    tree = Tree()
    for leaves in tree.leaves.values():  # the leaves register first, then the relays poll
        for leaf in leaves:
            await leaf.step()
    for relay in tree.relays.values():
        await relay.sync()
    top_children = {c.id: c for c in await tree.top.children()}
    assert set(top_children) == {"west", "east"}
    assert top_children["west"].number_of_children == 4
    assert top_children["west"].area == Area.union(
        Area.from_geojson(leaf.area) for leaf in tree.leaves["west"]
    )

    await tree.top.create_rollout(bundle(), square(0, 40, 20))
    await tree.run()
    assert tree.outcomes("west") == {"rolled_out"}
    assert tree.outcomes("east") == {"rolled_out"}
    for leaves in tree.leaves.values():
        assert all(leaf.history == ["canary-10", "ab-50"] for leaf in leaves)
    report = await tree.top.report("42")
    assert report.statuses == {"Done": 2}
    assert report.outcomes == {"rolled_out": 2}
    canary = report.stages[0].aggregate
    assert canary is not None
    west_calls = sum(
        (c.stages["canary-10"].summary.total_calls)  # type: ignore[attr-defined]
        for c in await tree.relays["west"].manager.store.child_releases("42")
    )
    assert canary.total_calls >= west_calls  # the top sees the subtrees' calls


async def test_a_failing_region_rolls_back_and_the_other_goes_on() -> None:
    tree = Tree(failing_east=True)
    await tree.top.create_rollout(bundle(), square(0, 40, 20))
    await tree.run()
    assert tree.outcomes("west") == {"rolled_out"}
    assert tree.outcomes("east") == {"rolled_back"}
    top = {c.child_id: c for c in await tree.top.store.child_releases("42")}
    assert top["west"].status is ReleaseStatus.DONE
    assert top["east"].status is ReleaseStatus.FAILED
    assert top["east"].outcome.value == "rolled_back"


async def test_an_abort_at_the_top_rolls_back_every_leaf() -> None:
    tree = Tree()
    await tree.top.create_rollout(bundle(), square(0, 40, 20))
    await tree.run(steps=2)  # the relays adopted the release, the leaves fetched it
    assert all(leaf.history == ["canary-10"] for leaf in tree.leaves["west"])
    await tree.top.abort("42", reason="operator")
    await tree.run()
    for region in ("west", "east"):
        assert tree.outcomes(region) == {"rolled_back"}


async def test_relays_only_offer_inside_the_parent_target() -> None:
    tree = Tree()
    await tree.top.create_rollout(bundle(), square(0, 40, 4))  # the two western-most leaves
    await tree.run()
    west = tree.leaves["west"]
    assert [leaf.outcome for leaf in west] == ["rolled_out", "rolled_out", "", ""]
    assert all(leaf.outcome == "" for leaf in tree.leaves["east"])


async def test_a_region_with_failing_leaves_rolls_back_as_a_whole() -> None:
    """One relay over healthy and failing leaves is one child to the top: a failure below on a
    stage that rolls back fails the region at once, before its barrier opens, so that no leaf
    goes on to roll out while the top counts the region rolled back."""
    tree = Tree()
    for i, leaf in enumerate(tree.leaves["west"]):
        leaf.failing = i % 2 == 1  # two of the four fail the canary
    await tree.top.create_rollout(bundle(), square(0, 40, 20))
    await tree.run()
    assert tree.outcomes("west") == {"rolled_back"}
    assert tree.outcomes("east") == {"rolled_out"}
    top = {c.child_id: c for c in await tree.top.store.child_releases("42")}
    assert (top["west"].status, top["west"].outcome.value) == (ReleaseStatus.FAILED, "rolled_back")
    assert top["east"].status is ReleaseStatus.DONE
    local = await tree.relays["west"].manager.store.child_releases("42")
    assert all(c.outcome.value == "rolled_back" for c in local), local


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_relay_counts_every_node_below_it_lost_or_not() -> None:
    """``number_of_children`` upward is the size of the subtree: a child that went quiet (lost)
    and the nodes below it still count."""
    top = RolloutManager(lost_after=1e9)
    clock = Clock()
    local = RolloutManager(lost_after=10.0, clock=clock)
    relay = Relay(local, InProcessParent(top), relay_id="west")
    await local.poll("sub-relay", square(1, 41), 3)  # a relay of its own, 3 nodes below it
    await local.poll("leaf", square(3, 41), 0)
    await relay.sync()
    assert (await top.store.get_child("west")).number_of_children == 5
    clock.now += 60.0  # both children went quiet: lost, yet still below the relay
    assert await local.live_children() == []
    await relay.sync()
    assert (await top.store.get_child("west")).number_of_children == 5


async def test_a_relay_with_an_area_of_its_own_reports_it_whatever_its_children() -> None:
    top = RolloutManager(lost_after=1e9)
    local = RolloutManager(lost_after=1e9)
    own = Area.from_geojson(WEST)
    relay = Relay(local, InProcessParent(top), relay_id="west", area=own, own_area=True)
    await local.poll("leaf", square(1, 41), 0)
    await relay.sync()
    assert (await top.store.get_child("west")).area == own
    fallback = Relay(RolloutManager(), InProcessParent(top), relay_id="east", area=own)
    await fallback.manager.poll("leaf", square(11, 41), 0)
    await fallback.sync()  # without own_area, the union of its children's areas
    assert (await top.store.get_child("east")).area == Area.from_geojson(square(11, 41))


def test_own_area_needs_an_area() -> None:
    with pytest.raises(ConfigurationError, match="own_area"):
        Relay(RolloutManager(), InProcessParent(RolloutManager()), own_area=True)


async def test_a_relay_registers_under_the_id_the_parent_gives() -> None:
    top = RolloutManager(lost_after=1e9)
    relay = Relay(RolloutManager(), InProcessParent(top), area=Area.from_geojson(WEST))
    await relay.sync()
    assert relay.id
    assert [c.id for c in await top.children()] == [relay.id]
