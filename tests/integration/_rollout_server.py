"""A RolloutManager process over a shared database, for the process tests.

Run by ``tests/integration/test_rollout_processes.py`` as::

    python tests/integration/_rollout_server.py --db URL --port PORT

It serves :func:`~release_coordinator.server.rollout_app.rollout_app` with uvicorn on
127.0.0.1 over a :class:`~release_coordinator.storage.sql.SQLRolloutStore`; the operator token
is ``RC_TEST_TOKEN``. SIGTERM stops it (uvicorn's handler), the store is closed on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import os

import uvicorn

from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.server.rollout_app import rollout_app
from release_coordinator.storage.sql import SQLRolloutStore


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--refresh", type=float, default=0.2)
    options = parser.parse_args()
    store = await SQLRolloutStore.connect(options.db)
    try:
        manager = RolloutManager(store, lost_after=600, refresh=options.refresh)
        app = rollout_app(
            manager,
            operator_tokens=[os.environ["RC_TEST_TOKEN"]],
            lifespan=True,
            tick_interval=0.2,
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=options.port, log_level="warning")
        await uvicorn.Server(config).serve()
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
