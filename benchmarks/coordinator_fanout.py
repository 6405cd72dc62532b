"""Fan-out benchmark: releases to `published` across N in-memory task services.

Each service is a TaskServiceKit behind a MemoryTransport that answers every request after a
fixed latency L. A release needs five sequential round trips (initialize, start, get_status
-> staged, publish, get_status -> published), so the lower bound of its wall time is 5 * L:
a coordinator that fans out concurrently stays close to it at any N; one that talks to the
services one after another needs N times as long.

    python benchmarks/coordinator_fanout.py [--latency 0.02] [--sizes 10 100 1000] [--repeat 3]

Prints, for each N, the best wall time of --repeat runs and its ratio to the lower bound.
Target (issue 2): ratio <= 1.3 at N = 1000.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time

from release_coordinator import (
    Coordinator,
    CoordinatorConfig,
    MemoryTransport,
    ReleaseState,
    TaskServiceKit,
)

ROUND_TRIPS = 5  # initialize, start, get_status (staged), publish, get_status (published)


async def one_release(n: int, latency: float) -> tuple[float, int]:
    transport = MemoryTransport(record=False)
    coordinator = Coordinator(
        transport=transport, config=CoordinatorConfig(poll_interval=latency, health_interval=0)
    )
    async with coordinator:
        for i in range(n):
            url = transport.add(f"memory://svc-{i}", TaskServiceKit(f"svc-{i}"), latency=latency)
            await coordinator.register_service(f"svc-{i}", url, check=False)
        gc.collect()
        started = time.perf_counter()
        release = await coordinator.create_release("bench", auto_publish=True)
        release = await coordinator.wait(release.id, timeout=600)
        elapsed = time.perf_counter() - started
        assert release.state is ReleaseState.PUBLISHED, release
        requests = len(await coordinator.events(release_id=release.id))
    return elapsed, requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per answer (0.02)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--repeat", type=int, default=3, help="runs per size; best is kept")
    args = parser.parse_args()
    bound = ROUND_TRIPS * args.latency
    print(f"latency L = {args.latency * 1000:.0f} ms; lower bound = {ROUND_TRIPS} round trips "
          f"x L = {bound * 1000:.0f} ms")
    print(f"{'N':>6} {'wall ms':>9} {'ratio':>7} {'events':>8}")
    for n in args.sizes:
        runs = [asyncio.run(one_release(n, args.latency)) for _ in range(args.repeat)]
        best = min(r[0] for r in runs)
        print(f"{n:>6} {best * 1000:>9.1f} {best / bound:>7.2f} {runs[0][1]:>8}")


if __name__ == "__main__":
    main()
