"""Shared fixtures.

PostgreSQL: tests marked ``postgres`` get a URL from ``RC_POSTGRES_URL`` (default: the local
server, ``postgresql://postgres@127.0.0.1:5432/test``). Without a reachable server they skip
with the reason, except under CI (``CI=true``), where they fail: CI must not go green without
having run them.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

POSTGRES_URL = os.environ.get("RC_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _postgres_reachable(host: str = "127.0.0.1", port: int = 5432) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    if not _postgres_reachable():
        message = f"PostgreSQL is not reachable at {POSTGRES_URL}"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: PostgreSQL tests must run, not skip)")
        pytest.skip(message)
    return POSTGRES_URL


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def rollout_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """Every RolloutStore adapter: memory, SQLite (a file), PostgreSQL (a schema of its own)."""
    from release_coordinator.storage.memory_rollout import MemoryRolloutStore

    if request.param == "memory":
        yield MemoryRolloutStore()
        return
    from release_coordinator.storage.sql import SQLRolloutStore

    if request.param == "sqlite":
        store = await SQLRolloutStore.connect(f"sqlite:///{tmp_path / 'rollout.db'}")
        yield store
        await store.close()
        return
    from sql_support import postgres_schema

    with postgres_schema(request.getfixturevalue("postgres_url")) as url:
        store = await SQLRolloutStore.connect(url)
        yield store
        await store.close()
