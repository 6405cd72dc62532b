"""Simulated fleets: a tree of rollout managers over :class:`SimulatedLeaf` leaves, run in
real time in one event loop.

:func:`simulate` runs a whole fleet: a top
:class:`~release_coordinator.rollout.manager.RolloutManager`, :class:`Relay` managers per region
(one or more levels of them), and :class:`SimulatedLeaf` leaves (the simulated edge nodes of
:mod:`~release_coordinator.rollout.kit`) with small square areas spread over the regions
(:mod:`~release_coordinator.rollout.fleet_map`), each stepping every poll interval as its own
asyncio task. It starts a rollout at the top, prints progress per region, and returns the
outcome per region (:class:`FleetResult`, :mod:`~release_coordinator.rollout.fleet_report`).
:class:`FleetConfig` describes the fleet; :class:`Fleet` builds its nodes and runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import random
import time
import zipfile
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any, TextIO

import attrs
from shapely.geometry import box

from release_coordinator.errors import ConfigurationError, NotFoundError, ReleaseCoordinatorError
from release_coordinator.fsm.rollout import ReleaseStatus
from release_coordinator.rollout.fleet_map import (
    DEFAULT_BBOX,
    Region,
    grid_regions,
    split,
    split_area,
    square,
    squares_in,
    to_area,
)
from release_coordinator.rollout.fleet_report import (
    FleetLeaf,
    FleetResult,
    print_progress,
    print_table,
    quiet,
    region_outcomes,
)
from release_coordinator.rollout.geo import Area
from release_coordinator.rollout.kit import SimulatedLeaf
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.models import ReleaseBundle, RolloutState
from release_coordinator.rollout.policies import GlobalIncremental, Policy
from release_coordinator.rollout.relay import Relay
from release_coordinator.rollout.strategy import format_duration, parse_strategy
from release_coordinator.transports.memory import InProcessParent

__all__ = ["Fleet", "FleetConfig", "simulate", "two_stage_strategy"]

log = logging.getLogger(__name__)


_STRATEGY = """\
id: "{release_id}"
name: fleet-simulation
type: minor
functions:
  - name: f
    base_version: {{path: fns/f_v1, env: python}}
    new_version: {{path: fns/f_v2, env: python}}
stages:
  - name: canary
    type: WaitForSignal
    func_name: f
    variants:
      - {{name: base_version, trafficPercentage: 90}}
      - {{name: new_version, trafficPercentage: 10}}
    metrics_conditions:
      - {{name: errorRate, threshold: "<=0.05"}}
      - {{name: responseTime, threshold: "<40", compareWith: Median}}
    end_conditions: [{{name: minDuration, threshold: {duration}}}]
    end_action: {{onSuccess: half, onFailure: rollback}}
  - name: half
    type: WaitForSignal
    func_name: f
    variants:
      - {{name: base_version, trafficPercentage: 50}}
      - {{name: new_version, trafficPercentage: 50}}
    metrics_conditions:
      - {{name: errorRate, threshold: "<=0.05"}}
      - {{name: responseTime, threshold: "<40", compareWith: Median}}
    end_conditions: [{{name: minDuration, threshold: {duration}}}]
    end_action: {{onSuccess: rollout, onFailure: rollback}}
rollback: {{action: {{function: base_version}}}}
"""


def two_stage_strategy(stage_seconds: float = 3.0, *, release_id: str = "fleet-1") -> str:
    """The strategy :func:`simulate` plays unless told otherwise (YAML text).

    Two ``WaitForSignal`` stages: ``canary`` (10% of the calls on the new version), then
    ``half`` (50%). Each lasts at least ``stage_seconds`` (``minDuration``) and holds while the
    new version's error rate stays at or below 5% and its median response time below 40 ms; a
    failing stage rolls back, the end of ``half`` rolls out.
    """
    if not stage_seconds >= 0:
        raise ConfigurationError(f"stage_seconds must be >= 0, not {stage_seconds!r}")
    duration = format_duration(timedelta(seconds=stage_seconds))
    return _STRATEGY.format(release_id=release_id, duration=duration)


def _to_optional_area(value: Area | Mapping[str, Any] | None) -> Area | None:
    return None if value is None else to_area(value)


def _to_regions(value: Iterable[Region]) -> tuple[Region, ...]:
    return tuple(value)


def _to_failing(
    value: Iterable[str | Area | Mapping[str, Any]],
) -> tuple[str | Area, ...]:
    if isinstance(value, str):
        value = (value,)
    return tuple(item if isinstance(item, str) else to_area(item) for item in value)


@attrs.frozen(kw_only=True)
class FleetConfig:
    """A simulated fleet for :func:`simulate`.

    The map: ``regions`` (names and areas), or, when none are given, a grid of ``grid``
    regions over ``bbox`` (west, south, east, north; see :func:`grid_regions`). ``leaves``
    leaves are shared out evenly over the regions, each with a small square area inside its
    region. ``levels`` is the depth of the tree: 2 puts the leaves right below the top manager;
    3 puts ``relays_per_region`` relays in each region between them (the region split into
    strips, one per relay); every further level splits each relay into ``fanout`` relays.

    Leaves inside a ``failing`` region (a region's name, or any area) serve a new version that
    fails its stage's conditions. A relay rolls its whole subtree back once a stage failed
    below it, so the leaves expected to roll back are those below a child of the top manager
    that has a failing leaf; every other leaf is expected to roll out. Leaves inside a ``slow``
    region serve a new version ``slow_factor`` times as slow as the old one, which the stages'
    conditions let through: under a top ``policy`` whose canary ``judgement`` judges latency
    tighter than that factor, the top manager rolls their units back (scope ``child``), or
    everyone (scope ``rollout``).

    The rollout plays ``strategy`` (YAML; the release id is its ``id``; by default
    :func:`two_stage_strategy` with ``stage_seconds``), over ``target`` (default: every
    region), under ``policy`` at the top and ``relay_policy`` in the relays. Every node steps
    every ``poll_interval`` seconds (leaves and relays from a random offset, drawn from
    ``seed`` like everything else random). Times (``poll_interval``, the strategy's
    ``minDuration``, ``lost_after``, ``deadline``) are simulated seconds; ``time_scale``
    simulated seconds pass per wall-clock second (2.0 runs twice as fast). A healthy version
    fails a call with probability ``error_rate``; each leaf serves ``calls_per_step`` calls per
    step. ``lost_after`` defaults to ``max(30 * poll_interval, 10)``; ``deadline`` (since the
    rollout started) to ``max(60, 60 * poll_interval + 3 * the stages' minDuration)``.
    ``progress_every`` is the wall-clock cadence of progress lines.
    """

    regions: tuple[Region, ...] = attrs.field(default=(), converter=_to_regions)
    grid: int = 4
    bbox: tuple[float, float, float, float] = DEFAULT_BBOX
    leaves: int = 200
    levels: int = 3
    relays_per_region: int = 1
    fanout: int = 2
    poll_interval: float = 1.0
    stage_seconds: float = 3.0
    strategy: str | None = None
    failing: tuple[str | Area, ...] = attrs.field(default=(), converter=_to_failing)
    slow: tuple[str | Area, ...] = attrs.field(default=(), converter=_to_failing)
    slow_factor: float = 1.2
    policy: Policy = attrs.field(factory=GlobalIncremental)
    relay_policy: Policy = attrs.field(factory=GlobalIncremental)
    target: Area | None = attrs.field(default=None, converter=_to_optional_area)
    seed: int = 0
    time_scale: float = 1.0
    calls_per_step: int = 50
    error_rate: float = 0.0
    lost_after: float | None = None
    deadline: float | None = None
    progress_every: float = 1.0

    def __attrs_post_init__(self) -> None:
        problems = []
        for name, low in (
            ("grid", 1),
            ("leaves", 1),
            ("levels", 2),
            ("relays_per_region", 1),
            ("fanout", 1),
            ("calls_per_step", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                problems.append(f"{name} must be an integer >= {low}, not {value!r}")
        for name in (
            "poll_interval",
            "time_scale",
            "progress_every",
            "lost_after",
            "deadline",
            "slow_factor",
        ):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and 0 < value < math.inf):
                problems.append(f"{name} must be a positive number, not {value!r}")
        if not (isinstance(self.stage_seconds, int | float) and 0 <= self.stage_seconds < 1e9):
            problems.append(f"stage_seconds must be >= 0, not {self.stage_seconds!r}")
        if not 0 <= self.error_rate <= 1:
            problems.append(f"error_rate must be within [0, 1], not {self.error_rate!r}")
        west, south, east, north = self.bbox
        if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
            problems.append(f"bbox must be (west, south, east, north) in range, not {self.bbox}")
        names = [region.name for region in self.regions]
        if any(not name for name in names) or len(set(names)) != len(names):
            problems.append("region names must be unique and not empty")
        if not problems:
            known = {region.name for region in self.region_list()}
            unknown = [
                f for f in (*self.failing, *self.slow) if isinstance(f, str) and f not in known
            ]
            if unknown:
                problems.append(
                    f"unknown failing region(s) {', '.join(map(repr, unknown))}; the regions "
                    f"are {', '.join(sorted(known, key=_natural))}"
                )
        if problems:
            raise ConfigurationError("invalid fleet: " + "; ".join(problems), problems=problems)

    def region_list(self) -> tuple[Region, ...]:
        """The regions: ``regions``, or the grid."""
        return self.regions or grid_regions(self.grid, self.bbox)

    def strategy_text(self) -> str:
        """The strategy the rollout plays."""
        return (
            self.strategy if self.strategy is not None else two_stage_strategy(self.stage_seconds)
        )

    def bundle(self) -> ReleaseBundle:
        """The release: the strategy, and a function archive with every folder it names."""
        text = self.strategy_text()
        strategy = parse_strategy(text)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for path in strategy.version_paths():
                archive.writestr(f"{path}/fn.py", f"def handler(request):\n    return {path!r}\n")
        return ReleaseBundle.from_parts(text, buffer.getvalue())


def _natural(name: str) -> tuple[int, str]:
    digits = "".join(c for c in name if c.isdigit())
    return (int(digits) if digits else 0, name)


class Fleet:
    """The nodes of a simulated fleet, built from ``config`` (nothing runs yet): ``top`` (the
    top manager), ``relays`` (parents before children) and ``leaves``. :meth:`run` runs them
    once; :func:`simulate` is ``Fleet(config).run(out)``."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.regions = config.region_list()
        scale = config.time_scale
        self.clock: Callable[[], float] = lambda: time.monotonic() * scale
        self.interval = config.poll_interval / scale  # wall-clock seconds
        self.lost_after = config.lost_after or max(30 * config.poll_interval, 10.0)
        self.bundle = config.bundle()
        self.strategy = self.bundle.strategy
        self.top = RolloutManager(lost_after=self.lost_after, clock=self.clock)
        self.relays: list[Relay] = []
        self.leaves: list[FleetLeaf] = []
        self._parents: dict[int, RolloutManager] = {}  # id(leaf) -> the manager it polls
        self._rollout_id = ""
        self.rng = random.Random(config.seed)
        self._failing_names = {f for f in config.failing if isinstance(f, str)}
        self._failing_areas = [f for f in config.failing if isinstance(f, Area)]
        self._slow_names = {f for f in config.slow if isinstance(f, str)}
        self._slow_areas = [f for f in config.slow if isinstance(f, Area)]
        for region, count in zip(
            self.regions, split(config.leaves, len(self.regions)), strict=True
        ):
            if not count:
                continue
            if config.levels == 2:
                self._place(region, region.area, self.top, count, None, region.name)
                continue
            parts = split_area(region.area, config.relays_per_region, vertical=True)
            for k, (part, share) in enumerate(zip(parts, split(count, len(parts)), strict=True)):
                if share:
                    relay_id = f"{region.name}.{k + 1}"
                    self._relays(region, part, self.top, relay_id, share, 1, relay_id)
        failing_units = {leaf.unit for leaf in self.leaves if leaf.agent.failing}
        for leaf in self.leaves:
            if leaf.unit in failing_units:
                leaf.expected = "rolled_back"
        self._expect_judged()
        self.done = 0
        self.finished_at: float | None = None
        self.errors = 0
        self.crash: BaseException | None = None
        self._all_done = asyncio.Event()
        self._ran = False

    def _expect_judged(self) -> None:
        """Slow leaves roll back when the top manager's judgement sees their latency."""
        judgement = self.config.policy.judgement
        if judgement is None or judgement.latency_threshold is None:
            return
        if self.config.slow_factor <= 1 + judgement.latency_threshold:
            return
        slow_units = {leaf.unit for leaf in self.leaves if leaf.agent.slower}
        for leaf in self.leaves:
            if slow_units and (judgement.scope == "rollout" or leaf.unit in slow_units):
                leaf.expected = "rolled_back"

    def _relays(
        self,
        region: Region,
        area: Area,
        parent: RolloutManager,
        relay_id: str,
        count: int,
        layer: int,
        unit: str,
    ) -> None:
        relay = Relay(
            RolloutManager(lost_after=self.lost_after, clock=self.clock),
            InProcessParent(parent),
            relay_id=relay_id,
            area=area,
            policy=self.config.relay_policy,
            interval=self.interval,
        )
        self.relays.append(relay)
        if layer >= self.config.levels - 2:
            self._place(region, area, relay.manager, count, unit, relay_id)
            return
        parts = split_area(area, self.config.fanout, vertical=layer % 2 == 0)
        for k, (part, share) in enumerate(zip(parts, split(count, len(parts)), strict=True)):
            if share:
                sub_id = f"{relay_id}.{k + 1}"
                self._relays(region, part, relay.manager, sub_id, share, layer + 1, unit)

    def _place(
        self,
        region: Region,
        area: Area,
        parent: RolloutManager,
        count: int,
        unit: str | None,
        prefix: str,
    ) -> None:
        config = self.config
        link = InProcessParent(parent)
        for j, (lon, lat, size) in enumerate(squares_in(area, count, self.rng)):
            leaf_id = f"{prefix}-{j + 1}"
            cell = box(lon, lat, lon + size, lat + size)
            failing = region.name in self._failing_names or any(
                bool(a.geometry.intersects(cell)) for a in self._failing_areas
            )
            slow = region.name in self._slow_names or any(
                bool(a.geometry.intersects(cell)) for a in self._slow_areas
            )
            agent = SimulatedLeaf(
                link,
                square(lon, lat, size),
                leaf_id=leaf_id,
                failing=failing,
                calls_per_step=config.calls_per_step,
                clock=self.clock,
                error_rate=config.error_rate,
                seed=self.rng.randrange(2**32),
                slower=config.slow_factor if slow else 0.0,
            )
            leaf = FleetLeaf(agent, region.name, unit or leaf_id)
            self.leaves.append(leaf)
            self._parents[id(leaf)] = parent

    # -- running -----------------------------------------------------------------------------
    async def _every(self, delay: float, action: Callable[[], Awaitable[None]]) -> None:
        """Run ``action`` every interval (on a fixed grid from ``delay``), like a node does."""
        loop = asyncio.get_running_loop()
        interval = self.interval
        next_at = loop.time() + delay
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            try:
                await action()
            except ReleaseCoordinatorError as error:  # the node logs it and tries again
                self.errors += 1
                log.debug("simulated node: %s", error)
            except Exception as error:  # a bug: stop the simulation and say so
                self.crash = error
                self._all_done.set()
                raise
            next_at += interval
            now = loop.time()
            if next_at < now - interval:  # far behind: drop the missed steps
                next_at = now

    def _leaf_action(self, leaf: FleetLeaf) -> Callable[[], Awaitable[None]]:
        counted = False
        agent = leaf.agent
        parent = self._parents[id(leaf)]

        async def step() -> None:
            nonlocal counted
            await agent.step()
            if not agent.release_id and self._rollout_id and not counted:
                leaf.never_offered = await self._aborted_at(parent)
            if leaf.outcome and not counted:
                counted = True
                self.done += 1
                if self.done == len(self.leaves):
                    self.finished_at = asyncio.get_running_loop().time()
                    self._all_done.set()

        return step

    async def _aborted_at(self, manager: RolloutManager) -> bool:
        """Whether ``manager`` aborted the fleet's rollout (a leaf below it that was not offered
        it by then never will be: it keeps the old version)."""
        try:
            rollout = await manager.get_rollout(self._rollout_id)
        except NotFoundError:  # not adopted by that relay (yet, or not targeted)
            return False
        return rollout.state is RolloutState.ABORTED

    @staticmethod
    def _relay_action(relay: Relay) -> Callable[[], Awaitable[None]]:
        async def round_() -> None:
            await relay.sync()
            await relay.manager.tick()

        return round_

    async def _registered(self) -> bool:
        """Wait until the top manager sees every node of the tree (at most a few intervals)."""
        loop = asyncio.get_running_loop()
        nodes = len(self.relays) + len(self.leaves)
        give_up = loop.time() + 20 * self.interval + 10.0
        while loop.time() < give_up:
            children = await self.top.children()
            if sum(1 + c.number_of_children for c in children) >= nodes:
                return True
            await asyncio.sleep(self.interval / 4)
        return False

    async def _top_settled(self, rollout_id: str) -> bool:
        report = await self.top.report(rollout_id)
        return bool(report.children) and all(
            c.status in (ReleaseStatus.DONE, ReleaseStatus.FAILED) for c in report.children
        )

    async def run(self, out: TextIO | None = None) -> FleetResult:
        """Run the fleet until every leaf finished or the deadline (see :func:`simulate`)."""
        if self._ran:
            raise ConfigurationError("a fleet runs once; build another")
        self._ran = True
        config = self.config
        loop = asyncio.get_running_loop()
        say = (lambda text: print(text, file=out, flush=True)) if out is not None else quiet
        stages = ", ".join(
            f"{s.name} ({s.type.value}, minDuration {format_duration(s.min_duration)})"
            for s in self.strategy.stages
        )
        failing = sum(1 for leaf in self.leaves if leaf.agent.failing)
        say(
            f"fleet: {len(self.leaves)} leaves in {len(self.regions)} regions, "
            f"{len(self.relays)} relays, {config.levels} levels; poll interval "
            f"{config.poll_interval:g}s; {failing} failing leaves"
            + (f" (in {', '.join(map(str, config.failing))})" if config.failing else "")
        )
        say(f"strategy {self.strategy.name!r}: {stages}")
        rng = self.rng
        tasks = [
            loop.create_task(self._every(rng.uniform(0, self.interval), self._leaf_action(x)))
            for x in self.leaves
        ]
        tasks += [
            loop.create_task(self._every(rng.uniform(0, self.interval), self._relay_action(r)))
            for r in self.relays
        ]
        tasks.append(loop.create_task(self._every(0.0, self.top.tick)))
        top_seconds: float | None = None
        try:
            if not await self._registered():
                say("warning: not every node registered in time; starting anyway")
            target = config.target or Area.union(region.area for region in self.regions)
            rollout = await self.top.create_rollout(self.bundle, target, policy=config.policy)
            self._rollout_id = rollout.id
            started = loop.time()
            say(f"rollout {rollout.id!r} started at the top manager")
            deadline = config.deadline or max(
                60.0,
                60 * config.poll_interval
                + 3 * sum(s.min_duration.total_seconds() for s in self.strategy.stages),
            )
            end = started + deadline / config.time_scale
            next_progress = started + config.progress_every
            while not self._all_done.is_set() and loop.time() < end:
                timeout = max(0.0, min(next_progress, end) - loop.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._all_done.wait(), timeout)
                now = loop.time()
                if now >= next_progress and not self._all_done.is_set():
                    print_progress(
                        say, self.regions, self.leaves, self.strategy.stage_names, now - started
                    )
                    while next_progress <= now:  # a slow moment skips lines, not repeats them
                        next_progress += config.progress_every
            if self.crash is not None:
                raise self.crash
            finished = self.done == len(self.leaves)
            wall = (self.finished_at if finished and self.finished_at else loop.time()) - started
            if finished:
                settle_until = loop.time() + 5 * self.interval + 1.0
                while loop.time() < settle_until:
                    if await self._top_settled(rollout.id):
                        top_seconds = loop.time() - started
                        break
                    await asyncio.sleep(self.interval / 8)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        print_progress(say, self.regions, self.leaves, self.strategy.stage_names, wall)
        result = FleetResult(
            region_outcomes(self.regions, self.leaves),
            wall,
            finished,
            top_seconds,
            await self.top.report(rollout.id),
            self.errors,
        )
        print_table(say, result)
        return result


async def simulate(config: FleetConfig | None = None, *, out: TextIO | None = None) -> FleetResult:
    """Run the simulated fleet ``config`` describes in real time, in this event loop.

    Builds the tree (a top manager, relays per region, leaves spread inside the regions), runs
    every node as an asyncio task stepping every poll interval, starts the rollout at the top
    once every node registered, and runs until every leaf finished or the deadline. Progress
    lines (per region: leaves idle, in each stage, waiting, rolled out, rolled back) go to
    ``out`` every ``progress_every`` seconds, then a table of the outcome per region.
    """
    return await Fleet(config or FleetConfig()).run(out)
