"""Fan-out benchmark: releases to `published` across N in-memory task services.

Each service is a TaskServiceKit behind a MemoryTransport that answers every request after a
fixed latency L. A release needs five sequential round trips (initialize, start, get_status
-> staged, publish, get_status -> published), so the lower bound of its wall time is 5 * L:
a coordinator that fans out concurrently stays close to it at any N; one that talks to the
services one after another needs N times as long.

    python benchmarks/coordinator_fanout.py [--latency 0.02] [--sizes 10 100 1000] [--repeat 3]
                                           [--webhook]

Prints, for each N, the best wall time of --repeat runs and its ratio to the lower bound.
Target (issue 2): ratio <= 1.3 at N = 1000. With ``--webhook`` each N is also run with one
webhook subscription to every event, delivered during the release by a WebhookDispatcher
(a round every 50 ms) to a receiver in its own process on 127.0.0.1, the two kinds of run
alternating; the ratio of those runs, and how long after the publish the last event was
acknowledged, are printed beside (target, issue 13: ratio <= 1.3 at N = 1000 with it).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import socket
import subprocess
import sys
import time

import httpx

from release_coordinator import (
    Coordinator,
    CoordinatorConfig,
    MemoryTransport,
    ReleaseState,
    TaskServiceKit,
    WebhookDispatcher,
)

ROUND_TRIPS = 5  # initialize, start, get_status (staged), publish, get_status (published)


#: The receiver of the webhook runs: answers 204 to every delivery.
RECEIVER = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

async def hook(request):
    await request.body()
    return Response(status_code=204)

app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def start_receiver() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)])
    url = f"http://127.0.0.1:{port}/hook"
    for _ in range(200):
        try:
            httpx.get(url.replace("/hook", "/"), timeout=1)
            return process, url
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("the webhook receiver did not start")


async def one_release(
    n: int, latency: float, webhook_url: str | None = None
) -> tuple[float, int, float | None]:
    """Wall time of one release, its events, and (with ``webhook_url``) how long after the
    publish the webhook's last event was acknowledged."""
    transport = MemoryTransport(record=False)
    coordinator = Coordinator(
        transport=transport, config=CoordinatorConfig(poll_interval=latency, health_interval=0)
    )
    # (its client made before the clock starts, as a server makes it once)
    client = httpx.AsyncClient(timeout=10.0, follow_redirects=False)
    dispatcher = WebhookDispatcher(coordinator.store, client=client, interval=0.05)
    drained: float | None = None
    async with coordinator, client:
        for i in range(n):
            url = transport.add(f"memory://svc-{i}", TaskServiceKit(f"svc-{i}"), latency=latency)
            await coordinator.register_service(f"svc-{i}", url, check=False)
        if webhook_url is not None:
            webhook = await coordinator.add_webhook(webhook_url)
            dispatcher.start()
        gc.collect()
        started = time.perf_counter()
        release = await coordinator.create_release("bench", auto_publish=True)
        release = await coordinator.wait(release.id, timeout=600)
        elapsed = time.perf_counter() - started
        assert release.state is ReleaseState.PUBLISHED, release
        requests = len(await coordinator.events(release_id=release.id))
        if webhook_url is not None:
            last = await coordinator.store.last_event_id()
            while (await coordinator.get_webhook(webhook.id)).cursor < last:
                dispatcher.wake()
                await asyncio.sleep(0.005)
            drained = time.perf_counter() - started - elapsed
            state = await coordinator.get_webhook(webhook.id)
            assert state.failures == 0, state
            await dispatcher.aclose()
    return elapsed, requests, drained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per answer (0.02)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--repeat", type=int, default=3, help="runs per size; best is kept")
    parser.add_argument(
        "--webhook", action="store_true", help="also run each N with one webhook subscription"
    )
    args = parser.parse_args()
    bound = ROUND_TRIPS * args.latency
    print(f"latency L = {args.latency * 1000:.0f} ms; lower bound = {ROUND_TRIPS} round trips "
          f"x L = {bound * 1000:.0f} ms")
    if not args.webhook:
        print(f"{'N':>6} {'wall ms':>9} {'ratio':>7} {'events':>8}")
        for n in args.sizes:
            runs = [asyncio.run(one_release(n, args.latency)) for _ in range(args.repeat)]
            best = min(r[0] for r in runs)
            print(f"{n:>6} {best * 1000:>9.1f} {best / bound:>7.2f} {runs[0][1]:>8}")
        return
    receiver, url = start_receiver()
    try:
        print(
            f"{'N':>6} {'wall ms':>9} {'ratio':>7} {'+webhook ms':>12} {'ratio':>7} "
            f"{'events':>8} {'acked after publish ms':>23}"
        )
        for n in args.sizes:
            plain, hooked = [], []
            for _ in range(args.repeat):  # alternating: the machine's noise hits both alike
                plain.append(asyncio.run(one_release(n, args.latency)))
                hooked.append(asyncio.run(one_release(n, args.latency, url)))
            best = min(r[0] for r in plain)
            best_hooked = min(hooked, key=lambda r: r[0])
            drained = best_hooked[2] or 0.0
            print(
                f"{n:>6} {best * 1000:>9.1f} {best / bound:>7.2f} "
                f"{best_hooked[0] * 1000:>12.1f} {best_hooked[0] / bound:>7.2f} "
                f"{plain[0][1]:>8} {drained * 1000:>23.1f}"
            )
    finally:
        receiver.kill()
        receiver.wait()


if __name__ == "__main__":
    main()
