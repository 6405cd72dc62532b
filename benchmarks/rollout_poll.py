"""Poll benchmark: RolloutManager.poll in process, with a large fleet and many rollouts.

Registers --children children (small squares spread over a map) against --rollouts active
rollouts with polygon targets (in-memory store), then measures steady-state polls of random
children with their unchanged areas: polls per second on one core, p50/p99 latency per poll,
and memory per registered child (growth of the process's resident memory, which includes what
GEOS allocates for the geometries and tracemalloc cannot see).

    python benchmarks/rollout_poll.py [--children 100000] [--rollouts 1000] [--polls 200000]

Targets (issue 3): >= 50,000 polls/s, p99 <= 1 ms, <= 2 KB per registered child.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import time
from typing import Any

from bench_bundle import STRATEGY, archive, square

from release_coordinator import ReleaseBundle, RolloutManager

WEST, SOUTH, EAST, NORTH = -10.0, 35.0, 30.0, 60.0


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def random_square(rng: random.Random, size: float) -> dict[str, Any]:
    return square(rng.uniform(WEST, EAST - size), rng.uniform(SOUTH, NORTH - size), size)


async def run(children: int, rollouts: int, polls: int, seed: int) -> None:
    rng = random.Random(seed)
    manager = RolloutManager(lost_after=3600)
    functions = archive()
    started = time.perf_counter()
    for i in range(rollouts):
        bundle = ReleaseBundle.from_parts(STRATEGY.format(id=f"r{i}"), functions)
        target = random_square(rng, rng.uniform(0.5, 2.0))
        await manager.create_rollout(bundle, target, priority=i % 3)
    print(f"{rollouts} rollouts created in {time.perf_counter() - started:.2f} s")

    areas = [random_square(rng, 0.05) for _ in range(children)]
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    ids = []
    offered = 0
    for area in areas:
        answer = await manager.poll("", area, 0)
        ids.append(answer.id)
        offered += bool(answer.new_release)
    took = time.perf_counter() - started
    gc.collect()
    per_child = (rss_bytes() - before) / children
    print(f"{children} children registered in {took:.2f} s ({children / took:,.0f}/s); "
          f"{offered} have a release waiting")

    order = [rng.randrange(children) for _ in range(polls)]
    latencies = []
    clock = time.perf_counter_ns
    poll = manager.poll
    gc.disable()
    started = time.perf_counter()
    for i in order:
        t0 = clock()
        await poll(ids[i], areas[i], 0)
        latencies.append(clock() - t0)
    took = time.perf_counter() - started
    gc.enable()
    latencies.sort()
    p50 = latencies[len(latencies) // 2] / 1000
    p99 = latencies[int(len(latencies) * 0.99)] / 1000
    print()
    print(f"polls/s (one core)          {polls / took:>12,.0f}    target >= 50,000")
    print(f"p50 per poll                {p50:>12.1f} us")
    print(f"p99 per poll                {p99:>12.1f} us   target <= 1000 us")
    print(f"mean per poll               {statistics.fmean(latencies) / 1000:>12.1f} us")
    print(f"memory per registered child {per_child:>12,.0f} B    target <= 2048 B "
          "(resident memory growth while registering)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=100_000)
    parser.add_argument("--rollouts", type=int, default=1_000)
    parser.add_argument("--polls", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(run(args.children, args.rollouts, args.polls, args.seed))


if __name__ == "__main__":
    main()
