"""What a simulated fleet's run yields: the outcome expected of each leaf (:class:`FleetLeaf`),
the outcome per region (:class:`RegionOutcome`) and overall (:class:`FleetResult`), and the
lines :func:`~release_coordinator.rollout.simulate.simulate` prints (progress, the table)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import attrs

from release_coordinator.rollout.fleet_map import Region
from release_coordinator.rollout.kit import SimulatedLeaf
from release_coordinator.rollout.reports import RolloutReport

__all__ = ["FleetLeaf", "FleetResult", "RegionOutcome"]


@attrs.define
class FleetLeaf:
    """A leaf of a :class:`~release_coordinator.rollout.simulate.Fleet`: its agent, its region,
    the child of the top manager it is below (``unit``; the leaf itself with two levels) and the
    outcome expected of it.

    ``never_offered`` is set when the release was aborted above the leaf before the leaf was
    offered it (its relay rolled back at the first failure below it): the leaf never ran the new
    version, it kept the old one, and it is finished. That is a roll-back's effect, so it meets
    an ``expected`` roll-back; it never meets an expected roll-out.
    """

    agent: SimulatedLeaf
    region: str
    unit: str
    expected: str = "rolled_out"
    never_offered: bool = False

    @property
    def outcome(self) -> str:
        """``rolled_out``, ``rolled_back`` (the agent's own), ``never_offered``, or ``""``."""
        return self.agent.outcome or ("never_offered" if self.never_offered else "")

    @property
    def as_expected(self) -> bool:
        outcome = self.outcome
        if outcome == "never_offered":
            return self.expected == "rolled_back"
        return outcome == self.expected


@attrs.frozen
class RegionOutcome:
    """How the rollout ended in one region (counts of leaves).

    ``failing`` leaves serve a failing new version; ``expected_back`` leaves are expected to
    roll back (see :class:`FleetConfig`), the others to roll out. ``never_offered`` leaves
    kept the old version because the release was aborted above them before they were offered it
    (see :class:`FleetLeaf`). ``unexpected`` counts the leaves that ended otherwise than
    expected, unfinished ones included.
    """

    name: str
    leaves: int
    failing: int
    expected_back: int
    rolled_out: int
    rolled_back: int
    unfinished: int
    unexpected: int
    never_offered: int = 0

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


def print_progress(
    say: Callable[[str], None],
    regions: Sequence[Region],
    leaves: Iterable[FleetLeaf],
    stage_names: Sequence[str],
    seconds: float,
) -> None:
    """One progress line per region: its leaves idle, in each stage (and waiting on it),
    rolled out and rolled back, ``seconds`` after the rollout started."""
    tallies: dict[str, dict[str, int]] = {r.name: {} for r in regions}
    for leaf in leaves:
        tally = tallies[leaf.region]
        agent = leaf.agent
        if leaf.outcome:
            key = leaf.outcome
        elif agent.stage is not None:
            key = agent.stage.name
            if agent.waiting:
                tally[key + "/waiting"] = tally.get(key + "/waiting", 0) + 1
        else:
            key = "idle"
        tally[key] = tally.get(key, 0) + 1
    width = max(len(r.name) for r in regions)
    for region in regions:
        tally = tallies[region.name]
        parts = [f"idle {tally.get('idle', 0)}"]
        for name in stage_names:
            waiting = tally.get(name + "/waiting", 0)
            parts.append(
                f"{name} {tally.get(name, 0)}" + (f" ({waiting} waiting)" if waiting else "")
            )
        parts.append(f"rolled out {tally.get('rolled_out', 0)}")
        parts.append(f"rolled back {tally.get('rolled_back', 0)}")
        if tally.get("never_offered"):
            parts.append(f"never offered {tally['never_offered']}")
        say(f"{seconds:7.1f}s  {region.name:<{width}}  " + ", ".join(parts))


def region_outcomes(
    regions: Sequence[Region], leaves: Sequence[FleetLeaf]
) -> tuple[RegionOutcome, ...]:
    """The outcome in each region, from its leaves."""
    outcomes = []
    for region in regions:
        inside = [leaf for leaf in leaves if leaf.region == region.name]
        outcomes.append(
            RegionOutcome(
                name=region.name,
                leaves=len(inside),
                failing=sum(1 for leaf in inside if leaf.agent.failing),
                expected_back=sum(1 for leaf in inside if leaf.expected == "rolled_back"),
                rolled_out=sum(1 for leaf in inside if leaf.agent.outcome == "rolled_out"),
                rolled_back=sum(1 for leaf in inside if leaf.agent.outcome == "rolled_back"),
                unfinished=sum(1 for leaf in inside if not leaf.outcome),
                unexpected=sum(1 for leaf in inside if not leaf.as_expected),
                never_offered=sum(1 for leaf in inside if leaf.never_offered),
            )
        )
    return tuple(outcomes)


def print_table(say: Callable[[str], None], result: FleetResult) -> None:
    """The table of the outcome per region (and overall), and what the top manager saw."""
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
                "never_offered",
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
    if total.never_offered:
        say(
            f"{total.never_offered} leaves were never offered the release: it was aborted above "
            "them first, so they kept the old version"
        )
    if result.finished:
        say(f"every leaf finished {result.wall_seconds:.1f}s after the rollout started")
    else:
        say(f"deadline: {total.unfinished} leaves unfinished after {result.wall_seconds:.1f}s")
    report = result.report
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(report.statuses.items()))
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(report.outcomes.items()))
    seen = f" after {result.top_seconds:.1f}s" if result.top_seconds is not None else " (not yet)"
    say(f"the top manager{seen}: {statuses or 'nothing'}; {outcomes or 'no outcome'}")
    if result.errors:
        say(f"{result.errors} protocol errors on the way (logged at DEBUG)")


def quiet(_: str) -> None:
    """Print nothing (no ``out`` was given)."""
    return None
