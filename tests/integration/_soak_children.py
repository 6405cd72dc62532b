"""The children of ``test_soak.py``: many simulated edge agents in ONE asyncio process,
polling their parent over HTTP.

Run as::

    python tests/integration/_soak_children.py --parent URL --children 500 --interval 4 \\
        --stop FILE --out FILE [--failing-every 10] [--seed 1]

Child ``i`` is a :class:`SimulatedLeaf` under its own ``HttpParent(URL)``; the children share
``--clients`` httpx clients, each with a bounded pool (``--connections``). Child ``i``'s id is
``leaf-<i>`` and its area a small square of its own on a grid of 25 columns (longitude
``i % 25``, latitude ``30 + i // 25``). Every ``--failing-every``-th child serves a failing new
version (it rolls back at its first stage).
Each child steps every ``--interval`` seconds (+-20%, starting at a random moment of the first
interval): poll, fetch what is offered, play its stages against the wall clock. A step that
fails (the parent refused or did not answer) is counted and the child carries on.

Every answer's status is counted (an httpx response hook), and every 5xx kept (method, path,
status, body). Once ``--stop`` exists, every child stops and the summary is written to
``--out`` as JSON: the counts, the errors, and per child its outcome for every release it
finished (with when it fetched and ended it, in seconds since the process started) and where it
is in the current one.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from release_coordinator.errors import ReleaseCoordinatorError
from release_coordinator.rollout.kit import SimulatedLeaf
from release_coordinator.transports.http import HttpParent

log = logging.getLogger("soak.children")

COLUMNS = 25


def area_of(i: int) -> dict[str, Any]:
    lon, lat, size = float(i % COLUMNS), 30.0 + i // COLUMNS, 0.8
    ring = [[lon, lat], [lon + size, lat], [lon + size, lat + size], [lon, lat + size], [lon, lat]]
    return {"type": "Polygon", "coordinates": [ring]}


class Child:
    """One leaf and what it went through."""

    def __init__(self, leaf: SimulatedLeaf, t0: float) -> None:
        self.leaf = leaf
        self.t0 = t0
        self.outcomes: dict[str, dict[str, Any]] = {}
        self.started: dict[str, float] = {}  # release id -> seconds since t0 when fetched
        self.steps = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self._mark = 0  # where the current release's stages start in leaf.history

    def note(self) -> None:
        leaf = self.leaf
        now = round(time.monotonic() - self.t0, 1)
        if leaf.release_id and leaf.release_id not in self.started:
            self.started[leaf.release_id] = now
        # (A leaf done with a release whose fetch failed holds the new release's id with the
        # last one's outcome, and no stage of it: SimulatedLeaf._start. That is no outcome.)
        if (
            leaf.done
            and leaf.release_id
            and leaf.release_id not in self.outcomes
            and len(leaf.history) > self._mark
        ):
            self.outcomes[leaf.release_id] = {
                "outcome": leaf.outcome,
                "stages": leaf.history[self._mark :],
                "started": self.started[leaf.release_id],
                "ended": now,
            }
            self._mark = len(leaf.history)

    def to_json(self) -> dict[str, Any]:
        leaf = self.leaf
        return {
            "failing": leaf.failing,
            "outcomes": self.outcomes,
            "current": "" if leaf.done else leaf.release_id,
            "current_started": "" if leaf.done else self.started.get(leaf.release_id, ""),
            "stage": leaf.stage.name if leaf.stage is not None else "",
            "waiting": leaf.waiting,
            "steps": self.steps,
            "errors": dict(self.errors),
        }


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parent", required=True)
    parser.add_argument("--children", type=int, default=500)
    parser.add_argument("--interval", type=float, default=4.0)
    parser.add_argument("--failing-every", type=int, default=10)
    parser.add_argument("--stop", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clients", type=int, default=20, help="httpx clients (pools)")
    parser.add_argument("--connections", type=int, default=8, help="per client")
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s: %(message)s")
    statuses: collections.Counter[str] = collections.Counter()
    server_errors: list[str] = []
    samples: list[str] = []

    async def on_response(response: httpx.Response) -> None:
        statuses[str(response.status_code)] += 1
        if response.status_code >= 500:
            await response.aread()
            server_errors.append(
                f"{response.request.method} {response.request.url.path} "
                f"{response.status_code} {response.text[:300]}"
            )

    # httpcore imports sniffio, when it is there, on every request; where it is not, each of
    # those imports searches sys.path again (a quarter of this process's time). None in
    # sys.modules makes the import fail at once, and httpcore falls back to asyncio, which
    # this process runs.
    sys.modules.setdefault("sniffio", None)  # type: ignore[assignment]
    # Idle connections are dropped before uvicorn's keep-alive time-out (5 s) could close them
    # under a request being sent on them.
    limits = httpx.Limits(
        max_connections=options.connections,
        max_keepalive_connections=options.connections,
        keepalive_expiry=2.0,
    )
    # Several small pools, not one big one: httpcore's pool does work proportional to its
    # connections and queued requests on every request, which made one pool of 50 for 500
    # children the bottleneck of this process (the children stepped at a third of their pace).
    clients = [
        httpx.AsyncClient(
            timeout=httpx.Timeout(10.0, pool=30.0),
            limits=limits,
            event_hooks={"response": [on_response]},
        )
        for _ in range(options.clients)
    ]
    rng = random.Random(options.seed)
    t0 = time.monotonic()
    children = []
    for i in range(options.children):
        failing = (
            options.failing_every > 0 and i % options.failing_every == options.failing_every - 1
        )
        leaf = SimulatedLeaf(
            HttpParent(options.parent, client=clients[i % len(clients)]),
            area_of(i),
            leaf_id=f"leaf-{i:03d}",
            failing=failing,
            error_rate=0.0,  # a healthy child's outcome does not depend on chance
            clock=time.monotonic,  # minDuration is wall-clock time
            seed=options.seed * 100_000 + i,
        )
        children.append(Child(leaf, t0))
    stop = asyncio.Event()

    async def run(child: Child) -> None:
        await asyncio.sleep(rng.uniform(0, options.interval))
        while not stop.is_set():
            try:
                await child.leaf.step()
            except ReleaseCoordinatorError as error:
                child.errors[type(error).__name__] += 1
                if len(samples) < 50:
                    samples.append(f"{child.leaf.id}: {type(error).__name__}: {error}")
            child.steps += 1
            child.note()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), options.interval * rng.uniform(0.8, 1.2))

    loop = asyncio.get_running_loop()
    runners = [loop.create_task(run(child)) for child in children]
    print(f"{len(children)} children polling {options.parent}", file=sys.stderr, flush=True)
    while not options.stop.exists():  # noqa: ASYNC110 - a file written by another process
        await asyncio.sleep(0.5)
    stop.set()
    await asyncio.wait(runners, timeout=15.0)
    for runner in runners:
        runner.cancel()
    await asyncio.gather(*runners, return_exceptions=True)
    for client in clients:
        await client.aclose()
    errors: collections.Counter[str] = collections.Counter()
    for child in children:
        errors.update(child.errors)
    summary = {
        "statuses": dict(statuses),
        "server_errors": server_errors[:100],
        "server_error_count": len(server_errors),
        "errors": dict(errors),
        "error_samples": samples,
        "children": {child.leaf.id: child.to_json() for child in children},
    }
    options.out.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
