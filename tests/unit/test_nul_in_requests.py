"""A NUL character in a path or a query filter: the same answer over every store.

PostgreSQL refuses text that holds a NUL, so such a lookup was a 503 ``storage`` (with the
database's URL in its message) there, and a 404 or an empty page over memory and SQLite. The
HTTP layer answers it before any store: a path is 404 (nothing can be there), a text filter
422 with the parameter named."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from release_coordinator import Coordinator, MemoryStore
from release_coordinator.server.coordinator_app import coordinator_app

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemoryStore()
        return
    pytest.importorskip("psycopg")
    from release_coordinator.storage.sql import SQLStore
    from sql_support import postgres_schema

    with postgres_schema(request.getfixturevalue("postgres_url")) as url:
        opened = await SQLStore.connect(url)
        yield opened
        await opened.close()


async def test_a_nul_in_a_path_is_404_and_in_a_filter_422(store: Any) -> None:
    coordinator = Coordinator(store)
    app = coordinator_app(coordinator, allow_anonymous=True)
    transport = httpx.ASGITransport(app=app)
    # (closed before the store: a release's driver must not be left inside a transaction)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(coordinator.close)
        http = await stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://rc.test")
        )
        release = (await http.post("/releases", json={"name": "r", "studies": ["SD_1"]})).json()
        for path in ("/releases/%00", "/studies/%00", "/studies/SD%00/notes", "/notes/%00"):
            answer = await http.get(path)
            assert answer.status_code == 404, (path, answer.text)
            assert "NUL" in answer.json()["error"]["message"]
        for path, name in (
            ("/releases?study=%00", "study"),
            ("/releases?tag=x%00", "tag"),
            (f"/releases/{release['id']}/notes?study_id=%00", "study_id"),
            ("/events?release_id=%00", "release_id"),
        ):
            answer = await http.get(path)
            assert answer.status_code == 422, (path, answer.text)
            problems = answer.json()["error"]["details"]["problems"]
            assert problems == [{"path": name, "message": "must not hold a NUL character"}]
        assert (await http.get("/releases?study=SD_1")).json()["items"][0]["id"] == release["id"]
