"""The fixtures of the storage contracts: ``store`` is every CoordinatorStore adapter (memory,
SQLite, PostgreSQL), for the contract files that test a part of the store each."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from release_coordinator import CoordinatorStore, MemoryStore


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CoordinatorStore]:
    adapter: CoordinatorStore
    if request.param == "memory":
        adapter = MemoryStore()
        yield adapter
        await adapter.close()
        return
    from release_coordinator.storage.sql import SQLStore

    if request.param == "sqlite":
        adapter = await SQLStore.connect(f"sqlite:///{tmp_path / 'store.db'}")
        yield adapter
        await adapter.close()
        return
    from sql_support import postgres_schema

    with postgres_schema(request.getfixturevalue("postgres_url")) as url:
        adapter = await SQLStore.connect(url)
        yield adapter
        await adapter.close()
