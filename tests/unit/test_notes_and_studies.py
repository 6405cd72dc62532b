"""Release notes and studies (issue #13, items 1 and 2): through the library and over HTTP.

The stores' side is in tests/contract/test_store_contract.py (memory, SQLite, PostgreSQL);
:func:`exercise_notes_and_studies` provokes every documented answer of the notes' and studies'
operations for tests/unit/test_openapi.py's coverage check.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from release_coordinator import (
    Coordinator,
    EventKind,
    MemoryStore,
    NotFoundError,
    ReleaseState,
    ValidationError,
)
from release_coordinator.coordinator.notes import MAX_NOTE
from release_coordinator.server.coordinator_app import coordinator_app

pytestmark = pytest.mark.anyio

RS = ReleaseState
OPS = {"Authorization": "Bearer op-token"}
SETUP_STEPS = ((RS.WAITING, RS.STAGED), (RS.STAGED, RS.PUBLISHING), (RS.PUBLISHING, RS.PUBLISHED))


async def publish_now(coordinator: Coordinator, release_id: str) -> None:
    """Move a release (with no task service) straight to ``published`` in the store."""
    from release_coordinator import Event, EventType

    for source, dest in SETUP_STEPS:
        setup = Event(EventType.INFO, EventKind.TRANSITION, "setup", release_id=release_id)
        await coordinator.store.transition_release(release_id, {source}, dest, setup)


@pytest.fixture
async def coordinator() -> AsyncIterator[Coordinator]:
    c = Coordinator(MemoryStore())  # never started: nothing is driven but what a test does
    try:
        yield c
    finally:
        await c.close()


# -- the library ----------------------------------------------------------------------------------


async def test_notes_through_the_library(coordinator: Coordinator) -> None:
    release = await coordinator.create_release("r1", studies=["SD_1", "SD_2"])
    whole = await coordinator.add_note(release.id, "# Release 1\n\n- new *data*", author="ann")
    on_study = await coordinator.add_note(
        release.id, "SD_1 gained 20 participants", study_id="SD_1"
    )
    assert whole.id.startswith("NO_")
    assert (whole.release_id, whole.study_id, whole.author) == (release.id, "", "ann")
    assert on_study.study_id == "SD_1"
    assert await coordinator.list_notes(release_id=release.id) == [whole, on_study]
    assert await coordinator.list_notes(study_id="SD_1") == [on_study]
    assert await coordinator.list_notes(release_id=release.id, study_id="") == [whole]
    assert await coordinator.list_notes(release_id=release.id, study_id="SD_9") == []

    edited = await coordinator.edit_note(whole.id, "# Release 1, corrected", editor="bob")
    assert (edited.text, edited.author, edited.created_at) == (
        "# Release 1, corrected",
        "ann",
        whole.created_at,
    )
    assert await coordinator.get_note(whole.id) == edited
    await coordinator.delete_note(on_study.id, by="bob")
    assert await coordinator.list_notes() == [edited]

    logged = await coordinator.events(kinds={EventKind.NOTE})
    assert [e.message for e in logged] == [
        f"note {whole.id} added to release {release.id} by ann",
        f"note {on_study.id} added to release {release.id} on study SD_1",
        f"note {whole.id} edited by bob",
        f"note {on_study.id} deleted by bob",
    ]
    assert {e.release_id for e in logged} == {release.id}


async def test_bad_notes_are_refused_and_change_nothing(coordinator: Coordinator) -> None:
    release = await coordinator.create_release("r1", studies=["SD_1"])
    note = await coordinator.add_note(release.id, "fine")
    before = await coordinator.events()
    refusals: list[tuple[Awaitable[object], type[Exception], set[str]]] = [
        (coordinator.add_note(release.id, "  \n"), ValidationError, {"text"}),
        (coordinator.add_note(release.id, "x" * (MAX_NOTE + 1)), ValidationError, {"text"}),
        (coordinator.add_note(release.id, "bell\x07"), ValidationError, {"text"}),
        (coordinator.add_note(release.id, "t", study_id="SD_2"), ValidationError, {"study_id"}),
        (coordinator.add_note(release.id, "", author="a\x00"), ValidationError, {"text", "author"}),
        (coordinator.add_note("RE_nope", "t"), NotFoundError, set()),
        (coordinator.edit_note(note.id, " "), ValidationError, {"text"}),
        (coordinator.edit_note("NO_nope", "t"), NotFoundError, set()),
        (coordinator.delete_note("NO_nope"), NotFoundError, set()),
        (coordinator.list_notes(release_id="RE_nope"), NotFoundError, set()),
        (coordinator.list_notes(study_id="SD_nope"), NotFoundError, set()),
        (coordinator.get_study("SD_nope"), NotFoundError, set()),
    ]
    for call, error, paths in refusals:
        with pytest.raises(error) as info:
            await call
        if isinstance(info.value, ValidationError):
            assert {path for path, _ in info.value.problems} == paths
    assert await coordinator.list_notes() == [note]
    assert await coordinator.events() == before
    # a multi-line Markdown text with tabs is fine, and so is the longest one
    await coordinator.add_note(release.id, "a\tb\r\n\n```\ncode\n```")
    await coordinator.add_note(release.id, "x" * MAX_NOTE)


async def test_studies_through_the_library(coordinator: Coordinator) -> None:
    assert await coordinator.list_studies() == []
    first = await coordinator.create_release("r1", studies=["SD_1"])
    second = await coordinator.create_release("r2", studies=["SD_1", "SD_2"])
    await coordinator.create_release("r3")
    assert [r.id for r in await coordinator.list_releases(study="SD_1")] == [second.id, first.id]
    assert [r.id for r in await coordinator.list_releases(study="SD_2")] == [second.id]
    assert [s.id for s in await coordinator.list_studies()] == ["SD_2", "SD_1"]
    study = await coordinator.get_study("SD_1")
    assert study.release_ids == (second.id, first.id)
    assert (study.latest_release_id, study.latest_version) == (second.id, second.version)
    assert (study.last_published_release_id, study.last_published_version) == ("", "")
    assert study.last_published_at is None
    assert study.created_at == first.created_at
    await publish_now(coordinator, first.id)
    published = await coordinator.get_release(first.id)
    study = await coordinator.get_study("SD_1")
    assert (study.last_published_release_id, study.last_published_version) == (
        first.id,
        published.version,
    )
    assert study.last_published_at == published.state_changed_at
    assert study.latest_release_id == second.id  # still the newest release
    assert (await coordinator.get_study("SD_2")).last_published_release_id == ""


# -- over HTTP ------------------------------------------------------------------------------------


@pytest.fixture
async def http(coordinator: Coordinator) -> AsyncIterator[httpx.AsyncClient]:
    app = coordinator_app(coordinator, tokens={"ops": "op-token"})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://rc.test", headers=OPS
    ) as client:
        yield client


def problems(response: httpx.Response) -> set[str]:
    assert response.status_code == 422, response.text
    return {p["path"] for p in response.json()["error"]["details"]["problems"]}


async def test_notes_over_http(coordinator: Coordinator, http: httpx.AsyncClient) -> None:
    release = await coordinator.create_release("r1", studies=["SD_1"])
    base = f"/releases/{release.id}/notes"
    made = await http.post(base, json={"text": "# Notes\n\n- one"})
    assert made.status_code == 201, made.text
    note = made.json()
    assert set(note) == {
        "id",
        "release_id",
        "study_id",
        "author",
        "text",
        "created_at",
        "updated_at",
    }
    assert (note["author"], note["study_id"], note["release_id"]) == ("ops", "", release.id)
    named = await http.post(base, json={"text": "t", "study_id": "SD_1", "author": "Dana"})
    assert named.json()["author"] == "Dana"

    listed = (await http.get(base)).json()
    assert [n["id"] for n in listed["items"]] == [note["id"], named.json()["id"]]
    assert listed["next_offset"] is None
    paged = (await http.get(base, params={"limit": 1})).json()
    assert (len(paged["items"]), paged["next_offset"]) == (1, 1)
    only_study = (await http.get(base, params={"study_id": "SD_1"})).json()["items"]
    assert [n["id"] for n in only_study] == [named.json()["id"]]
    whole = (await http.get(base, params={"study_id": ""})).json()["items"]
    assert [n["id"] for n in whole] == [note["id"]]

    one = f"/notes/{note['id']}"
    assert (await http.get(one)).json() == note
    edited = await http.patch(one, json={"text": "# Notes\n\n- one, corrected"})
    assert edited.status_code == 200, edited.text
    assert edited.json()["text"] == "# Notes\n\n- one, corrected"
    assert edited.json()["author"] == "ops"
    assert (await http.delete(one)).status_code == 204
    assert (await http.get(one)).status_code == 404
    assert (await http.delete(one)).status_code == 404
    kinds = (await http.get("/events", params={"kind": "note"})).json()["items"]
    assert [e["message"].split()[2] for e in kinds] == ["added", "added", "edited", "deleted"]
    assert kinds[-1]["message"].endswith("by ops")


async def test_bad_note_requests_are_refused_and_change_nothing(
    coordinator: Coordinator, http: httpx.AsyncClient
) -> None:
    release = await coordinator.create_release("r1", studies=["SD_1"])
    base = f"/releases/{release.id}/notes"
    kept = (await http.post(base, json={"text": "kept"})).json()
    before = (await coordinator.list_notes(), await coordinator.events())
    assert problems(await http.post(base, json={})) == {"text"}
    assert problems(await http.post(base, json={"text": " "})) == {"text"}
    assert problems(await http.post(base, json={"text": "x" * (MAX_NOTE + 1)})) == {"text"}
    assert problems(await http.post(base, json={"text": "a\x00", "author": 5})) == {
        "text",
        "author",
    }
    assert problems(await http.post(base, json={"text": "t", "extra": 1})) == {"extra"}
    assert problems(await http.post(base, json={"text": "t", "study_id": "SD_2"})) == {"study_id"}
    assert (await http.post(base, content=b"{")).status_code == 400
    assert (await http.post("/releases/RE_nope/notes", json={"text": "t"})).status_code == 404
    one = f"/notes/{kept['id']}"
    assert problems(await http.patch(one, json={"text": ""})) == {"text"}
    assert problems(await http.patch(one, json={"study_id": "SD_1"})) == {"study_id", "text"}
    assert (await http.patch("/notes/NO_nope", json={"text": "t"})).status_code == 404
    assert (await http.get("/releases/RE_nope/notes")).status_code == 404
    assert (await http.get(base, params={"limit": 0})).status_code == 422
    assert (
        await http.post(base, json={"text": "t"}, headers={"Authorization": ""})
    ).status_code == 401
    assert (await coordinator.list_notes(), await coordinator.events()) == before


async def test_studies_over_http(coordinator: Coordinator, http: httpx.AsyncClient) -> None:
    assert (await http.get("/studies")).json()["items"] == []
    first = await coordinator.create_release("r1", studies=["SD_1"])
    second = await coordinator.create_release("r2", studies=["SD_1", "SD_2"])
    await coordinator.create_release("r3", studies=["SD_3"])
    await publish_now(coordinator, first.id)
    studies = (await http.get("/studies")).json()
    assert [s["id"] for s in studies["items"]] == ["SD_3", "SD_2", "SD_1"]
    page = (await http.get("/studies", params={"limit": 2, "offset": 1})).json()
    assert ([s["id"] for s in page["items"]], page["next_offset"]) == (["SD_2", "SD_1"], None)
    study = (await http.get("/studies/SD_1")).json()
    published = await coordinator.get_release(first.id)
    assert study == {
        "id": "SD_1",
        "created_at": first.created_at.isoformat(),
        "release_ids": [second.id, first.id],
        "latest_release_id": second.id,
        "latest_version": second.version,
        "last_published_release_id": first.id,
        "last_published_version": published.version,
        "last_published_at": published.state_changed_at.isoformat(),
    }
    assert (await http.get("/studies/SD_9")).status_code == 404
    assert (await http.get("/studies/SD_9/notes")).status_code == 404
    by_study = (await http.get("/releases", params={"study": "SD_1"})).json()["items"]
    assert [r["id"] for r in by_study] == [second.id, first.id]
    both = {"study": "SD_1", "state": "published"}
    assert [r["id"] for r in (await http.get("/releases", params=both)).json()["items"]] == [
        first.id
    ]
    tagged = {"study": "SD_1", "tag": "none"}
    assert (await http.get("/releases", params=tagged)).json()["items"] == []
    assert (await http.get("/releases", params={"study": "SD_9"})).json()["items"] == []
    await http.post(f"/releases/{second.id}/notes", json={"text": "n1", "study_id": "SD_2"})
    await http.post(f"/releases/{second.id}/notes", json={"text": "n2"})
    notes = (await http.get("/studies/SD_2/notes")).json()["items"]
    assert [n["text"] for n in notes] == ["n1"]
    assert (await http.get("/studies/SD_1/notes")).json()["items"] == []


# -- the schema step ------------------------------------------------------------------------------


async def test_a_version_4_database_gains_the_notes_table(tmp_path: Path) -> None:
    from release_coordinator.errors import SchemaError
    from release_coordinator.storage.sql import SQLStore, upgrade
    from release_coordinator.storage.sql.schema import SCHEMA_VERSION

    url = f"sqlite:///{tmp_path / 'rc.db'}"
    store = await SQLStore.connect(url)
    coordinator = Coordinator(store)
    kept = await coordinator.create_release("before the notes", studies=["SD_1"])
    await coordinator.close()
    await store.close()
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'rc.db'}")
    async with engine.begin() as conn:
        await conn.execute(sa.text("DROP TABLE rc_notes"))
        await conn.execute(sa.text("UPDATE rc_schema_version SET version = 4"))
    await engine.dispose()
    with pytest.raises(SchemaError, match="schema version 4"):
        await SQLStore.connect(url)
    assert await upgrade(url) == (4, SCHEMA_VERSION)  # (and any step after 5)
    store = await SQLStore.connect(url)
    try:
        coordinator = Coordinator(store)
        note = await coordinator.add_note(kept.id, "after the upgrade", study_id="SD_1")
        assert await coordinator.list_notes(study_id="SD_1") == [note]
        assert (await coordinator.get_study("SD_1")).release_ids == (kept.id,)
        await coordinator.close()
    finally:
        await store.close()


# -- every documented answer (called by test_openapi.py's coverage test) --------------------------

Call = Callable[..., Awaitable[httpx.Response]]


async def exercise_notes_and_studies(
    c: Call, small: Call, release_id: str, study_id: str
) -> dict[str, str]:
    """Provoke every documented status of the notes' and studies' operations but the token
    refusals (``c``: a checking client with an operator token; ``small``: one whose app takes
    16 bytes of body at most). ``release_id`` names ``study_id``. Returns ids for the token
    refusals: a note that exists, and the study."""
    notes = "/releases/{release_id}/notes"
    here = f"/releases/{release_id}/notes"
    made = await c("POST", notes, 201, path=here, json={"text": "# n\n\n- a", "study_id": study_id})
    note_id = made.json()["id"]
    await c("POST", notes, 201, path=here, json={"text": "spare", "author": "x"})
    await c("POST", notes, 400, path=here, content=b"[")
    await c("POST", notes, 422, path=here, json={"text": " "}, accepted=False)
    await c(
        "POST", notes, 422, path=here, json={"text": "t", "study_id": "SD_none"}, accepted=False
    )
    await c("POST", notes, 404, path="/releases/RE_nope/notes", json={"text": "t"})
    await small("POST", notes, 413, path=here, json={"text": "x" * 20})
    await c("GET", notes, 200, path=here, params={"study_id": study_id, "limit": 1})
    await c("GET", notes, 400, path=here, params={"limit": "x"})
    await c("GET", notes, 404, path="/releases/RE_nope/notes")
    await c("GET", notes, 422, path=here, params={"offset": -1})
    one = "/notes/{note_id}"
    await c("GET", one, 200, path=f"/notes/{note_id}")
    await c("GET", one, 404, path="/notes/NO_nope")
    await c("PATCH", one, 200, path=f"/notes/{note_id}", json={"text": "# n\n\n- b"})
    await c("PATCH", one, 400, path=f"/notes/{note_id}", content=b"nope")
    await c("PATCH", one, 422, path=f"/notes/{note_id}", json={"text": 1}, accepted=False)
    await c("PATCH", one, 404, path="/notes/NO_nope", json={"text": "t"})
    await small("PATCH", one, 413, path=f"/notes/{note_id}", json={"text": "y" * 20})
    spare = (await c("POST", notes, 201, path=here, json={"text": "gone soon"})).json()["id"]
    await c("DELETE", one, 204, path=f"/notes/{spare}")
    await c("DELETE", one, 404, path=f"/notes/{spare}")
    await c("GET", "/studies", 200, params={"limit": 1})
    await c("GET", "/studies", 400, params={"offset": "x"})
    await c("GET", "/studies", 422, params={"limit": 5000})
    await c("GET", "/studies/{study_id}", 200, path=f"/studies/{study_id}")
    await c("GET", "/studies/{study_id}", 404, path="/studies/SD_nope")
    of_study = "/studies/{study_id}/notes"
    await c("GET", of_study, 200, path=f"/studies/{study_id}/notes")
    await c("GET", of_study, 400, path=f"/studies/{study_id}/notes", params={"limit": "1.5"})
    await c("GET", of_study, 404, path="/studies/SD_nope/notes")
    await c("GET", of_study, 422, path=f"/studies/{study_id}/notes", params={"limit": 0})
    await c("GET", "/releases", 200, params={"study": study_id})
    return {"note_id": note_id, "study_id": study_id}


# -- the Client -----------------------------------------------------------------------------------


async def test_the_client_speaks_notes_and_studies(coordinator: Coordinator) -> None:
    from release_coordinator import Client

    app = coordinator_app(coordinator, tokens={"ops": "op-token"})
    release = await coordinator.create_release("r1", studies=["SD_1"])
    transport = httpx.ASGITransport(app=app)
    async with Client("http://rc.test", token="op-token", transport=transport) as client:
        note = await client.add_note(release.id, "# one", study_id="SD_1")
        assert note["author"] == "ops"
        whole = await client.add_note(release.id, "two", author="Dana")
        assert await client.get_note(note["id"]) == note
        listed = await client.list_notes(release.id, study_id="")
        assert [n["id"] for n in listed["items"]] == [whole["id"]]
        edited = await client.edit_note(note["id"], "# one, corrected")
        assert edited["text"] == "# one, corrected"
        on_study = await client.list_study_notes("SD_1", limit=5)
        assert [n["id"] for n in on_study["items"]] == [note["id"]]
        await client.delete_note(whole["id"])
        with pytest.raises(NotFoundError):
            await client.get_note(whole["id"])
        with pytest.raises(ValidationError):
            await client.add_note(release.id, " ")
        assert [s["id"] for s in (await client.list_studies())["items"]] == ["SD_1"]
        assert (await client.get_study("SD_1"))["release_ids"] == [release.id]
        by_study = await client.list_releases(study="SD_1")
        assert [r["id"] for r in by_study["items"]] == [release.id]


# -- the commands ---------------------------------------------------------------------------------


async def test_the_notes_and_studies_commands(coordinator: Coordinator, tmp_path: Path) -> None:
    import argparse
    import io
    import json

    from release_coordinator import Client
    from release_coordinator.client.commands import add_client_commands
    from release_coordinator.client.render import Output
    from release_coordinator.errors import ConfigurationError

    parser = argparse.ArgumentParser()
    add_client_commands(parser.add_subparsers(dest="command"))
    app = coordinator_app(coordinator, tokens={"ops": "op-token"})
    release = await coordinator.create_release("r1", studies=["SD_1"])
    transport = httpx.ASGITransport(app=app)

    async with Client("http://rc.test", token="op-token", transport=transport) as client:

        async def run(*argv: str, json_mode: bool = False) -> str:
            args = parser.parse_args(list(argv))
            stream = io.StringIO()
            out = Output(json_mode=json_mode, use_rich=False, stream=stream)
            assert await args.handler(client, args, out) == 0
            return stream.getvalue()

        said = await run("notes", "add", release.id, "# Big news\n\nmore", "--study", "SD_1")
        note_id = said.split()[1]
        assert said == f"note {note_id} added (release {release.id} on study SD_1)\n"
        markdown = tmp_path / "note.md"
        markdown.write_text("## From a file\n", encoding="utf-8")
        filed = json.loads(
            await run("notes", "add", release.id, "--file", str(markdown), json_mode=True)
        )
        assert filed["text"] == "## From a file\n"
        listed = await run("notes", "list", release.id)
        assert "# Big news" in listed
        assert "## From a file" in listed
        assert filed["id"] not in await run("notes", "list", "--study", "SD_1")
        shown = await run("notes", "show", note_id)
        assert shown.endswith("# Big news\n\nmore\n")
        assert "edited" in await run("notes", "edit", note_id, "# Bigger news")
        assert (await coordinator.get_note(note_id)).text == "# Bigger news"
        assert await run("notes", "delete", filed["id"]) == f"deleted note {filed['id']}\n"
        assert "SD_1" in await run("studies", "list")
        study = await run("studies", "show", "SD_1")
        assert release.id in study
        assert "# Bigger news" in study
        assert release.id in await run("releases", "list", "--study", "SD_1")
        assert release.id not in await run("releases", "list", "--study", "SD_2")
        for argv in (("notes", "add", release.id), ("notes", "list")):
            with pytest.raises(ConfigurationError):
                await run(*argv)
