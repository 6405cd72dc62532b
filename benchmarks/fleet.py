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

Target (issue 10): wall time / ideal <= 1.2.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time

from release_coordinator.rollout.simulate import Fleet, FleetConfig


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
    return 0 if result.as_expected else 1


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
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
