"""One child of ``test_end_to_end.py``: a simulated edge agent polling its parent over HTTP.

Run as::

    python tests/integration/_e2e_leaf.py --parent URL --leaf-id ID --area GEOJSON [--failing]

A :class:`SimulatedLeaf` under ``HttpParent(URL)`` steps every ``--interval`` seconds (0.2):
poll, fetch the release offered, play its stages. A failing leaf serves a new version with
errors and slow answers, so the stage's metric conditions fail there; a healthy one makes no
errors at all (``error_rate=0``: its outcome does not depend on chance). Once its release ended
it prints its outcome as one JSON line on stdout and exits 0; at ``--deadline`` seconds without
an outcome it prints what it has and exits 3. A failed step (the parent away for a moment) is
logged on stderr and the leaf carries on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import zlib

from release_coordinator.errors import ReleaseCoordinatorError
from release_coordinator.rollout.kit import SimulatedLeaf
from release_coordinator.transports.http import HttpParent

log = logging.getLogger("e2e.leaf")


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parent", required=True, help="the parent's base URL")
    parser.add_argument("--leaf-id", required=True)
    parser.add_argument("--area", required=True, help="GeoJSON polygon")
    parser.add_argument("--failing", action="store_true")
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--deadline", type=float, default=60.0)
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s: %(message)s")
    give_up = time.monotonic() + options.deadline
    steps = errors = 0
    async with HttpParent(options.parent, timeout=5.0) as parent:
        leaf = SimulatedLeaf(
            parent,
            json.loads(options.area),
            leaf_id=options.leaf_id,
            failing=options.failing,
            error_rate=0.0,
            seed=zlib.crc32(options.leaf_id.encode()),
        )
        while not leaf.done and time.monotonic() < give_up:
            try:
                await leaf.step()
            except ReleaseCoordinatorError as error:
                errors += 1
                log.warning("%s: step failed: %s", options.leaf_id, error)
            steps += 1
            await asyncio.sleep(options.interval)
    print(
        json.dumps(
            {
                "id": leaf.id,
                "failing": leaf.failing,
                "release_id": leaf.release_id,
                "outcome": leaf.outcome,
                "stages": leaf.history,
                "steps": steps,
                "errors": errors,
            }
        ),
        flush=True,
    )
    if not leaf.done:
        print(f"{options.leaf_id}: no outcome within {options.deadline:g}s", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
