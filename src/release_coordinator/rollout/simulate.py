"""Simulated edge nodes and fleets: leaf agents that play a strategy with synthetic metrics.

A :class:`SimulatedLeaf` behaves like the protocol's edge agent: it polls its parent, fetches a
release, runs its stages in order (serving synthetic traffic split by the stage's variants),
reports each stage's summary, waits on ``WaitForSignal`` stages until the parent says they end,
and follows the strategy's end actions to a roll-out or a roll-back. A leaf in a *failure
region* serves the new version with a high error rate and slow answers, so the stage's
conditions fail there.

:func:`simulate` runs a whole fleet in real time in one event loop: a top
:class:`~release_coordinator.rollout.manager.RolloutManager`, :class:`Relay` managers per region
(one or more levels of them), and :class:`SimulatedLeaf` leaves with small square areas spread
over the regions, each stepping every poll interval as its own asyncio task. It starts a
rollout at the top, prints progress per region, and returns the outcome per region
(:class:`FleetResult`). :class:`FleetConfig` describes the fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
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
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from release_coordinator.errors import ConfigurationError, ReleaseCoordinatorError
from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus
from release_coordinator.rollout.geo import Area
from release_coordinator.rollout.manager import RolloutManager, RolloutReport
from release_coordinator.rollout.models import ReleaseBundle
from release_coordinator.rollout.policies import GlobalIncremental, Policy
from release_coordinator.rollout.relay import Relay
from release_coordinator.rollout.results import (
    ResultReport,
    StageReport,
    StageSummary,
    TimesSummary,
    end_conditions_met,
    evaluate,
    to_original,
)
from release_coordinator.rollout.strategy import (
    Stage,
    StageType,
    Strategy,
    format_duration,
    parse_strategy,
)
from release_coordinator.transports.base import ParentLink
from release_coordinator.transports.memory import InProcessParent

__all__ = [
    "DEFAULT_BBOX",
    "Fleet",
    "FleetConfig",
    "FleetLeaf",
    "FleetResult",
    "Region",
    "RegionOutcome",
    "SimulatedLeaf",
    "grid_regions",
    "simulate",
    "two_stage_strategy",
]

log = logging.getLogger(__name__)


_PROXY_TIMES = TimesSummary(22.0, 6.6, 77.0)


@functools.lru_cache(maxsize=32)
def _parsed(text: str) -> Strategy:
    """A strategy document parsed once per process: a real node parses it on its own CPU, a
    simulated fleet shares one (a :class:`Strategy` is immutable)."""
    return parse_strategy(text)


class SimulatedLeaf:
    """One simulated edge node below ``parent``; call :meth:`step` once per poll interval.

    ``failing`` makes the new version misbehave on this node (errors at ``failing_error_rate``
    and slow answers); ``error_rate`` is the per-call error rate of a healthy version.
    ``calls_per_step`` is the traffic served between two steps. The time spent in a stage (what
    ``minDuration`` end conditions compare with) is measured on ``clock`` (seconds, e.g.
    ``time.monotonic``) when one is given, so ``minDuration`` means wall-clock time; without a
    clock each step stands for ``step_seconds``.
    """

    def __init__(
        self,
        parent: ParentLink,
        area: dict[str, Any],
        *,
        leaf_id: str = "",
        failing: bool = False,
        calls_per_step: int = 50,
        step_seconds: float = 1.0,
        clock: Callable[[], float] | None = None,
        error_rate: float = 0.001,
        failing_error_rate: float = 0.3,
        seed: int | None = None,
    ) -> None:
        self.parent = parent
        self.area = area
        self.id = leaf_id
        self.failing = failing
        self.calls_per_step = calls_per_step
        self.step_seconds = step_seconds
        self.clock = clock
        self.error_rate = error_rate
        self.failing_error_rate = failing_error_rate
        self.rng = random.Random(seed)
        self.release_id = ""
        self.strategy: Strategy | None = None
        self.stage: Stage | None = None
        self.waiting = False
        self.elapsed = 0.0
        self.entered_at = 0.0
        self._share_new = 0.0
        self.calls = [0, 0]
        self.errors = [0, 0]
        self.outcome = ""  # "rolled_out" | "rolled_back" once the release ended
        self.history: list[str] = []

    @property
    def done(self) -> bool:
        return bool(self.outcome)

    async def step(self) -> None:
        """One agent iteration: poll, and move the current release on by one step."""
        answer = await self.parent.poll(self.id, self.area, 0)
        self.id = answer.id
        if self.strategy is None or self.done:
            if answer.new_release and answer.new_release != self.release_id:
                await self._start(answer.new_release)
            return
        await self._play()

    async def _start(self, release_id: str) -> None:
        self.release_id = release_id
        self.strategy = _parsed(await self.parent.get_release(self.id, release_id))
        await self.parent.get_functions(release_id)
        self.outcome = ""
        self._enter(self.strategy.first_stage)

    def _enter(self, stage: Stage) -> None:
        self.stage = stage
        self.waiting = False
        self.elapsed = 0.0
        self.entered_at = self.clock() if self.clock is not None else 0.0
        self.calls = [0, 0]
        self.errors = [0, 0]
        self.history.append(stage.name)
        self._share_new = (
            next((v.traffic_percentage for v in stage.variants if v.name == "new_version"), 0) / 100
        )

    def _serve(self) -> None:
        # Each call goes to the new version with the stage's share and fails with its version's
        # error rate (counted, not looped over one by one: a fleet has many leaves).
        random = self.rng.random
        share_new = self._share_new
        new = sum(1 for _ in range(self.calls_per_step) if random() < share_new)
        old = self.calls_per_step - new
        new_rate = self.failing_error_rate if self.failing else self.error_rate
        self.calls[0] += old
        self.calls[1] += new
        if self.error_rate > 0:
            rate = self.error_rate
            self.errors[0] += sum(1 for _ in range(old) if random() < rate)
        if new_rate > 0:
            self.errors[1] += sum(1 for _ in range(new) if random() < new_rate)
        if self.clock is not None:
            self.elapsed = self.clock() - self.entered_at
        else:
            self.elapsed += self.step_seconds

    def _summary(self) -> StageSummary:
        random = self.rng.random
        f1 = round(20 + random() * 5, 3)
        f2 = round((60 if self.failing else 18) + random() * 5, 3)
        (calls1, calls2), (errors1, errors2) = self.calls, self.errors
        return StageSummary(
            _PROXY_TIMES,
            TimesSummary(f1, f1 * 0.3, f1 * 3.5),
            TimesSummary(f2, f2 * 0.3, f2 * 3.5),
            errors1 / calls1 if calls1 else 0.0,
            errors2 / calls2 if calls2 else 0.0,
            calls1,
            calls2,
        )

    async def _report(
        self, status: StageStatus, next_stage: str, summary: StageSummary | None = None
    ) -> None:
        assert self.stage is not None
        report = ResultReport(
            self.id,
            self.release_id,
            (StageReport(self.stage.name, status, next_stage, summary or self._summary()),),
        )
        await self.parent.submit_result(to_original(report))

    async def _play(self) -> None:
        stage = self.stage
        assert stage is not None
        assert self.strategy is not None
        if self.waiting:
            answer = await self.parent.end_stage(self.id, self.release_id, stage.name)
            if answer.action == "rollback":
                await self._finish(StageStatus.FAILURE, "rollback")
            elif answer.end_stage:
                await self._end_stage(success=True)
            return
        self._serve()
        summary = self._summary()
        healthy = evaluate(stage, summary)
        if not healthy and sum(self.calls) >= 20:
            await self._end_stage(success=False)
            return
        if not end_conditions_met(stage, summary, timedelta(seconds=self.elapsed)):
            return
        if stage.type is StageType.WAIT_FOR_SIGNAL:
            await self._report(StageStatus.SUCCESS_WAITING, "", summary)
            self.waiting = True
        else:
            await self._end_stage(success=True)

    async def _end_stage(self, *, success: bool) -> None:
        assert self.stage is not None
        assert self.strategy is not None
        action = self.stage.end_action.next_stage(success)
        status = StageStatus.COMPLETED if success else StageStatus.FAILURE
        if action is None:  # rollout or rollback
            final = (
                self.stage.end_action.on_success if success else self.stage.end_action.on_failure
            )
            await self._finish(status, "", outcome=final)
            return
        await self._report(status, action)
        self._enter(self.strategy.stage(action))

    async def _finish(self, status: StageStatus, next_stage: str, *, outcome: str = "") -> None:
        await self._report(status, next_stage)
        outcome = outcome or next_stage
        self.outcome = "rolled_out" if outcome == "rollout" else "rolled_back"
        self.stage = None


# ------------------------------------------------------------------------------------ fleets

#: The default map of :class:`FleetConfig` (west, south, east, north): Europe, roughly.
DEFAULT_BBOX: tuple[float, float, float, float] = (-10.0, 35.0, 30.0, 60.0)

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


def _to_area(value: Area | Mapping[str, Any]) -> Area:
    return value if isinstance(value, Area) else Area.from_geojson(value, path="area")


def _to_optional_area(value: Area | Mapping[str, Any] | None) -> Area | None:
    return None if value is None else _to_area(value)


@attrs.frozen
class Region:
    """A named area of the simulated map (GeoJSON or :class:`Area`)."""

    name: str
    area: Area = attrs.field(converter=_to_area)


def _to_regions(value: Iterable[Region]) -> tuple[Region, ...]:
    return tuple(value)


def _to_failing(
    value: Iterable[str | Area | Mapping[str, Any]],
) -> tuple[str | Area, ...]:
    if isinstance(value, str):
        value = (value,)
    return tuple(item if isinstance(item, str) else _to_area(item) for item in value)


def grid_regions(
    count: int, bbox: tuple[float, float, float, float] = DEFAULT_BBOX
) -> tuple[Region, ...]:
    """``count`` rectangular regions ``r1``, ``r2`` ... laid out in a grid over ``bbox``
    (west, south, east, north), row by row from the north-west corner."""
    if count < 1:
        raise ConfigurationError(f"a grid needs at least one region, not {count!r}")
    west, south, east, north = bbox
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    width, height = (east - west) / columns, (north - south) / rows
    regions = []
    for i in range(count):
        row, column = divmod(i, columns)
        x0, y1 = west + column * width, north - row * height
        cell = box(x0, y1 - height, x0 + width, y1)
        regions.append(Region(f"r{i + 1}", Area.from_geometry(cell, path=f"region r{i + 1}")))
    return tuple(regions)


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
    that has a failing leaf; every other leaf is expected to roll out.

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
        for name in ("poll_interval", "time_scale", "progress_every", "lost_after", "deadline"):
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
            unknown = [f for f in self.failing if isinstance(f, str) and f not in known]
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


@attrs.frozen
class RegionOutcome:
    """How the rollout ended in one region (counts of leaves).

    ``failing`` leaves serve a failing new version; ``expected_back`` leaves are expected to
    roll back (see :class:`FleetConfig`), the others to roll out. ``unexpected`` counts the
    leaves that ended otherwise than expected, unfinished ones included.
    """

    name: str
    leaves: int
    failing: int
    expected_back: int
    rolled_out: int
    rolled_back: int
    unfinished: int
    unexpected: int

    @property
    def as_expected(self) -> bool:
        return self.unexpected == 0


@attrs.frozen
class FleetResult:
    """What :func:`simulate` saw.

    ``wall_seconds``: wall-clock time from the rollout's start until every leaf finished (or
    until the deadline: then ``finished`` is false). ``top_seconds``: until the top manager saw
    every one of its children finish the release (None if it did not within a few intervals
    after the leaves). ``report`` is the top manager's report; ``errors`` counts the protocol
    errors the nodes met (and logged) on the way.
    """

    regions: tuple[RegionOutcome, ...]
    wall_seconds: float
    finished: bool
    top_seconds: float | None
    report: RolloutReport
    errors: int = 0

    @property
    def as_expected(self) -> bool:
        """Every leaf finished as expected: failing regions rolled back, the others out."""
        return self.finished and all(region.as_expected for region in self.regions)

    def region(self, name: str) -> RegionOutcome:
        for region in self.regions:
            if region.name == name:
                return region
        raise KeyError(name)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _split_area(area: Area, parts: int, *, vertical: bool) -> list[Area]:
    """``area`` cut into ``parts`` strips of its bounding box (pieces that are not polygons,
    which odd shapes may give, fall back to the whole area)."""
    if parts <= 1:
        return [area]
    x0, y0, x1, y1 = area.bounds
    pieces = []
    for k in range(parts):
        if vertical:
            cell = box(x0 + (x1 - x0) * k / parts, y0, x0 + (x1 - x0) * (k + 1) / parts, y1)
        else:
            cell = box(x0, y0 + (y1 - y0) * k / parts, x1, y0 + (y1 - y0) * (k + 1) / parts)
        piece = area.geometry.intersection(cell)
        try:
            if not isinstance(piece, Polygon | MultiPolygon):
                raise ConfigurationError("not a polygon")
            pieces.append(Area.from_geometry(piece))
        except ReleaseCoordinatorError:
            pieces.append(area)
    return pieces


def _square(lon: float, lat: float, size: float) -> dict[str, Any]:
    x0, y0, x1, y1 = (round(v, 6) for v in (lon, lat, lon + size, lat + size))
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {"type": "Polygon", "coordinates": [ring]}


def _squares_in(area: Area, count: int, rng: random.Random) -> list[tuple[float, float, float]]:
    """``count`` small squares (lon, lat, size) at random places inside ``area``."""
    geometry = area.geometry
    shapely.prepare(geometry)
    x0, y0, x1, y1 = area.bounds
    size = min(0.4 * math.sqrt(float(geometry.area) / max(count, 1)), (x1 - x0) / 4, (y1 - y0) / 4)
    size = max(size, 1e-4)
    squares = []
    for _ in range(count):
        for _attempt in range(50):
            lon, lat = rng.uniform(x0, x1 - size), rng.uniform(y0, y1 - size)
            if geometry.contains(box(lon, lat, lon + size, lat + size)):
                squares.append((lon, lat, size))
                break
        else:  # a thin or odd shape: a tiny square at a point surely inside it
            point = geometry.representative_point()
            tiny = size / 100
            squares.append((float(point.x) - tiny / 2, float(point.y) - tiny / 2, tiny))
    return squares


@attrs.define
class FleetLeaf:
    """A leaf of a :class:`Fleet`: its agent, its region, the child of the top manager it is
    below (``unit``; the leaf itself with two levels) and the outcome expected of it."""

    agent: SimulatedLeaf
    region: str
    unit: str
    expected: str = "rolled_out"


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
        self.rng = random.Random(config.seed)
        self._failing_names = {f for f in config.failing if isinstance(f, str)}
        self._failing_areas = [f for f in config.failing if isinstance(f, Area)]
        for region, count in zip(
            self.regions, _split(config.leaves, len(self.regions)), strict=True
        ):
            if not count:
                continue
            if config.levels == 2:
                self._place(region, region.area, self.top, count, None, region.name)
                continue
            parts = _split_area(region.area, config.relays_per_region, vertical=True)
            for k, (part, share) in enumerate(zip(parts, _split(count, len(parts)), strict=True)):
                if share:
                    relay_id = f"{region.name}.{k + 1}"
                    self._relays(region, part, self.top, relay_id, share, 1, relay_id)
        failing_units = {leaf.unit for leaf in self.leaves if leaf.agent.failing}
        for leaf in self.leaves:
            if leaf.unit in failing_units:
                leaf.expected = "rolled_back"
        self.done = 0
        self.finished_at: float | None = None
        self.errors = 0
        self.crash: BaseException | None = None
        self._all_done = asyncio.Event()
        self._ran = False

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
        parts = _split_area(area, self.config.fanout, vertical=layer % 2 == 0)
        for k, (part, share) in enumerate(zip(parts, _split(count, len(parts)), strict=True)):
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
        for j, (lon, lat, size) in enumerate(_squares_in(area, count, self.rng)):
            leaf_id = f"{prefix}-{j + 1}"
            failing = region.name in self._failing_names or any(
                bool(a.geometry.intersects(box(lon, lat, lon + size, lat + size)))
                for a in self._failing_areas
            )
            agent = SimulatedLeaf(
                link,
                _square(lon, lat, size),
                leaf_id=leaf_id,
                failing=failing,
                calls_per_step=config.calls_per_step,
                clock=self.clock,
                error_rate=config.error_rate,
                seed=self.rng.randrange(2**32),
            )
            self.leaves.append(FleetLeaf(agent, region.name, unit or leaf_id))

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

    def _leaf_action(self, leaf: SimulatedLeaf) -> Callable[[], Awaitable[None]]:
        counted = False

        async def step() -> None:
            nonlocal counted
            await leaf.step()
            if leaf.done and not counted:
                counted = True
                self.done += 1
                if self.done == len(self.leaves):
                    self.finished_at = asyncio.get_running_loop().time()
                    self._all_done.set()

        return step

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
        say = (lambda text: print(text, file=out, flush=True)) if out is not None else _quiet
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
            loop.create_task(self._every(rng.uniform(0, self.interval), self._leaf_action(x.agent)))
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
                    self._progress(say, now - started)
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
        self._progress(say, wall)
        result = FleetResult(
            self._outcomes(),
            wall,
            finished,
            top_seconds,
            await self.top.report(rollout.id),
            self.errors,
        )
        self._table(say, result)
        return result

    def _progress(self, say: Callable[[str], None], seconds: float) -> None:
        names = self.strategy.stage_names
        tallies: dict[str, dict[str, int]] = {r.name: {} for r in self.regions}
        for leaf in self.leaves:
            tally = tallies[leaf.region]
            agent = leaf.agent
            if agent.outcome:
                key = agent.outcome
            elif agent.stage is not None:
                key = agent.stage.name
                if agent.waiting:
                    tally[key + "/waiting"] = tally.get(key + "/waiting", 0) + 1
            else:
                key = "idle"
            tally[key] = tally.get(key, 0) + 1
        width = max(len(r.name) for r in self.regions)
        for region in self.regions:
            tally = tallies[region.name]
            parts = [f"idle {tally.get('idle', 0)}"]
            for name in names:
                waiting = tally.get(name + "/waiting", 0)
                parts.append(
                    f"{name} {tally.get(name, 0)}" + (f" ({waiting} waiting)" if waiting else "")
                )
            parts.append(f"rolled out {tally.get('rolled_out', 0)}")
            parts.append(f"rolled back {tally.get('rolled_back', 0)}")
            say(f"{seconds:7.1f}s  {region.name:<{width}}  " + ", ".join(parts))

    def _outcomes(self) -> tuple[RegionOutcome, ...]:
        outcomes = []
        for region in self.regions:
            leaves = [leaf for leaf in self.leaves if leaf.region == region.name]
            outcomes.append(
                RegionOutcome(
                    name=region.name,
                    leaves=len(leaves),
                    failing=sum(1 for leaf in leaves if leaf.agent.failing),
                    expected_back=sum(1 for leaf in leaves if leaf.expected == "rolled_back"),
                    rolled_out=sum(1 for leaf in leaves if leaf.agent.outcome == "rolled_out"),
                    rolled_back=sum(1 for leaf in leaves if leaf.agent.outcome == "rolled_back"),
                    unfinished=sum(1 for leaf in leaves if not leaf.agent.outcome),
                    unexpected=sum(1 for leaf in leaves if leaf.agent.outcome != leaf.expected),
                )
            )
        return tuple(outcomes)

    def _table(self, say: Callable[[str], None], result: FleetResult) -> None:
        width = max(6, *(len(r.name) for r in result.regions))
        say("")
        say(
            f"{'region':<{width}}  {'leaves':>6}  {'failing':>7}  {'rolled out':>10}  "
            f"{'rolled back':>11}  {'unfinished':>10}  as expected"
        )
        rows = [*result.regions]
        total = RegionOutcome(
            "all",
            *(
                sum(getattr(r, f) for r in rows)
                for f in (
                    "leaves",
                    "failing",
                    "expected_back",
                    "rolled_out",
                    "rolled_back",
                    "unfinished",
                    "unexpected",
                )
            ),
        )
        for row in (*rows, total):
            say(
                f"{row.name:<{width}}  {row.leaves:>6}  {row.failing:>7}  {row.rolled_out:>10}  "
                f"{row.rolled_back:>11}  {row.unfinished:>10}  "
                + ("yes" if row.as_expected else f"no ({row.unexpected} unexpected)")
            )
        say("")
        if result.finished:
            say(f"every leaf finished {result.wall_seconds:.1f}s after the rollout started")
        else:
            say(f"deadline: {total.unfinished} leaves unfinished after {result.wall_seconds:.1f}s")
        report = result.report
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(report.statuses.items()))
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(report.outcomes.items()))
        seen = (
            f" after {result.top_seconds:.1f}s" if result.top_seconds is not None else " (not yet)"
        )
        say(f"the top manager{seen}: {statuses or 'nothing'}; {outcomes or 'no outcome'}")
        if result.errors:
            say(f"{result.errors} protocol errors on the way (logged at DEBUG)")


def _quiet(_: str) -> None:
    return None


async def simulate(config: FleetConfig | None = None, *, out: TextIO | None = None) -> FleetResult:
    """Run the simulated fleet ``config`` describes in real time, in this event loop.

    Builds the tree (a top manager, relays per region, leaves spread inside the regions), runs
    every node as an asyncio task stepping every poll interval, starts the rollout at the top
    once every node registered, and runs until every leaf finished or the deadline. Progress
    lines (per region: leaves idle, in each stage, waiting, rolled out, rolled back) go to
    ``out`` every ``progress_every`` seconds, then a table of the outcome per region.
    """
    return await Fleet(config or FleetConfig()).run(out)
