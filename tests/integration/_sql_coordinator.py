"""One coordinator process for the SQL process tests.

    python tests/integration/_sql_coordinator.py --db URL --owner NAME [--lease S] [--timeout S]

Drives every unfinished release of the database (over HTTP, with the bearer token
``RC_TEST_TOKEN`` and the User-Agent ``rc-test/NAME``) and exits 0 once none is left
unfinished, 1 after ``--timeout`` seconds. Prints ``started`` once its coordinator runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from release_coordinator import (
    Coordinator,
    CoordinatorConfig,
    HttpTransport,
    ReleaseState,
    RetryPolicy,
)
from release_coordinator.storage.sql import SQLStore

FINAL = (ReleaseState.PUBLISHED, ReleaseState.CANCELED, ReleaseState.FAILED)
ACTIVE = [s for s in ReleaseState if s not in FINAL]


async def run(db: str, owner: str, lease: float, limit: float) -> int:
    store = await SQLStore.connect(db, create=False)
    transport = HttpTransport(
        token=os.environ.get("RC_TEST_TOKEN") or None, timeout=5.0, user_agent=f"rc-test/{owner}"
    )
    config = CoordinatorConfig(
        poll_interval=0.1,
        retry=RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.2),
        health_interval=0,
        lease_seconds=lease,
        claim_interval=0.2,
    )
    try:
        async with Coordinator(store, transport, config=config, owner=owner):
            print("started", flush=True)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + limit
            while loop.time() < deadline:
                if not await store.list_releases(states=ACTIVE, limit=1):
                    return 0
                await asyncio.sleep(0.1)
            return 1
    finally:
        await transport.aclose()
        await store.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--owner", required=True)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=25.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return asyncio.run(run(args.db, args.owner, args.lease, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
