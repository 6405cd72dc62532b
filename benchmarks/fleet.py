"""Fleet benchmark: a three-level tree (a top manager, relays, leaves) runs a rollout to the end.

Builds a fleet of --leaves SimulatedLeaf leaves below --regions relays (one per region of a
grid over Europe) below one top RolloutManager, all in one process and one event loop, every
node stepping every --poll-interval seconds from a random offset. The rollout plays two
WaitForSignal stages, each with a minDuration of --stage-seconds, and the run ends when every
leaf rolled out. Prints the wall time from the rollout's start, the ideal, and their ratio.

The ideal is the stages' minimum durations plus the poll intervals the protocol needs, one per
hand-off between two nodes that poll independently (a hand-off waits up to one interval for
the receiver's next step):

- to reach the leaves: each relay level polls its parent and adopts the release, then each
  leaf polls its relay and fetches it: (relay levels + 1) intervals;
- per WaitForSignal stage, after its minDuration: the leaf notices that minDuration passed at
  its next step and reports SuccessWaiting (1), each relay level reports SuccessWaiting upward
  at its next round (relay levels; the top opens its barrier on the last report), each relay
  level sees ShouldEnd at its next round (relay levels), the leaf sees it at its next step and
  moves on (1): 2 * (relay levels + 1) intervals.

    ideal = sum(minDuration) + (R + 1) * P + S * 2 * (R + 1) * P

with R relay levels, S WaitForSignal stages and P the poll interval: 2 * 5 + 2 + 8 = 20 s with
the defaults. A lower bound is printed too: between two fixed pollers a round trip costs exactly
one interval, so with exact timers the worst case is sum(minDuration) + (2 * S + 2) * P.

    python benchmarks/fleet.py [--leaves 10000] [--regions 10] [--stage-seconds 5]
                               [--poll-interval 1] [--seed 1] [--quiet] [--no-gc-freeze]
                               [--judge [--slow-region r3] [--slow-factor 1.2]]

Target (issue 10): wall time / ideal <= 1.2.

With --judge (issue 12), one region's new version is --slow-factor times as slow as the old
one (20% slower by default), which the stages' own conditions (median < 40 ms) let through;
the top manager's policy carries a canary judgement by child (each relay: one region) with a
latency threshold of 10% and an error-rate test at 99% confidence. The run prints the
manager's verdicts per stage and region: that region is rolled back by the judgement, the
others roll out (exit status 0 when every leaf ended so).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time

from release_coordinator.rollout.fleet_report import FleetResult
from release_coordinator.rollout.judgement import Judgement
from release_coordinator.rollout.policies import GlobalIncremental
from release_coordinator.rollout.simulate import Fleet, FleetConfig

#: The --judge policy's judgement: each child of the top manager (a region's relay) on its
#: own; 10% slower medians fail; error rates at 99% confidence; 1000 calls of each version.
JUDGEMENT = Judgement(scope="child", latency_threshold=0.1, confidence=0.99, min_calls=1000)


async def run(args: argparse.Namespace) -> int:
    config = FleetConfig(
        grid=args.regions,
        leaves=args.leaves,
        levels=3,
        relays_per_region=1,
        poll_interval=args.poll_interval,
        stage_seconds=args.stage_seconds,
        seed=args.seed,
        progress_every=args.progress_every,
        **(judged(args) if args.judge else {}),
    )
    stages = 2
    relay_levels = config.levels - 2
    p, d = args.poll_interval, args.stage_seconds
    ideal = stages * d + (relay_levels + 1) * p + stages * 2 * (relay_levels + 1) * p
    bound = stages * d + (2 * stages + 2) * p
    started = time.perf_counter()
    fleet = Fleet(config)
    built = time.perf_counter() - started
    if not args.no_gc_freeze:
        # The tree is long-lived: keep the cyclic collector from scanning it again and again
        # (as a long-running manager process would; --no-gc-freeze to see the difference).
        gc.collect()
        gc.freeze()
    result = await fleet.run(None if args.quiet else sys.stdout)
    total = time.perf_counter() - started
    ratio = result.wall_seconds / ideal
    print()
    print(
        f"leaves {args.leaves}, relays {args.regions}, levels 3, two WaitForSignal stages of "
        f"minDuration {d:g} s, poll interval {p:g} s"
    )
    print(
        f"ideal = S*D + (R+1)*P + S*2*(R+1)*P = {stages}*{d:g} + {relay_levels + 1}*{p:g} + "
        f"{stages}*{2 * (relay_levels + 1)}*{p:g} = {ideal:.1f} s   (S stages, R relay levels)"
    )
    print(f"wall time, rollout start -> every leaf done   {result.wall_seconds:8.2f} s")
    if result.top_seconds is not None:
        print(f"wall time, rollout start -> top sees it all  {result.top_seconds:8.2f} s")
    print(f"ratio wall / ideal                            {ratio:8.3f}   target <= 1.2")
    lower = f"ratio wall / lower bound S*D + (2S+2)*P = {bound:.0f} s"
    print(f"{lower} {result.wall_seconds / bound:8.3f}")
    print(
        f"whole run (building {built:.1f} s, registering, settling) {total:6.2f} s; "
        f"gc.freeze after building: {not args.no_gc_freeze}"
    )
    print(f"outcome as expected: {result.as_expected}; protocol errors: {result.errors}")
    if args.judge:
        print_verdicts(result, args)
    return 0 if result.as_expected else 1


def judged(args: argparse.Namespace) -> dict[str, object]:
    """The --judge fleet: one slow region, a judging top policy.

    The healthy error rate stays 0: a leaf judges its own stage's ``errorRate <= 5%`` on its
    few calls, so one unlucky error fails a leaf and its relay rolls its whole region back
    (the absolute per-leaf condition the manager's judgement, over a region's calls, avoids).
    """
    return {
        "slow": (args.slow_region,),
        "slow_factor": args.slow_factor,
        "policy": GlobalIncremental(judgement=JUDGEMENT),
    }


def print_verdicts(result: FleetResult, args: argparse.Namespace) -> None:
    print()
    print(
        f"canary judgement at the top (by child, latency threshold "
        f"{JUDGEMENT.latency_threshold:.0%}, confidence {JUDGEMENT.confidence:g}, min calls "
        f"{JUDGEMENT.min_calls}); region {args.slow_region} new version "
        f"{args.slow_factor:g}x as slow"
    )
    for row in result.report.stages:
        judgement = row.judgement
        if judgement is None:
            print(f"  stage {row.name}: no summaries")
            continue
        verdict = judgement.verdict
        print(
            f"  stage {row.name}: by unit {dict(judgement.units)}; over all "
            f"{verdict.verdict.value} ({verdict.reason})"
        )
        for child_id, reason in judgement.failing:
            print(f"    {child_id}: fail: {reason}")
    for region in result.regions:
        print(
            f"  region {region.name:>4}: rolled out {region.rolled_out:5d}, rolled back "
            f"{region.rolled_back:5d}, never offered {region.never_offered:5d}"
        )
    slow = result.region(args.slow_region)
    others = [r for r in result.regions if r.name != args.slow_region]
    back = slow.rolled_out == 0 and slow.unfinished == 0
    out = all(r.rolled_out == r.leaves for r in others)
    print(
        f"slow region {args.slow_region} rolled back: {back}; every other region rolled out: {out}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=10_000)
    parser.add_argument("--regions", type=int, default=10, help="regions, one relay each")
    parser.add_argument("--stage-seconds", type=float, default=5.0)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--progress-every", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quiet", action="store_true", help="no progress lines or table")
    parser.add_argument("--no-gc-freeze", action="store_true", help="leave the tree to the GC")
    parser.add_argument(
        "--judge", action="store_true", help="one slow region; the top manager judges canaries"
    )
    parser.add_argument("--slow-region", default="r3", help="with --judge: the slow region")
    parser.add_argument("--slow-factor", type=float, default=1.2, help="with --judge: its slowness")
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
