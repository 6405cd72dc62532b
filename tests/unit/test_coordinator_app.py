"""coordinator_app through httpx.ASGITransport: every endpoint, every refusal, tokens, fuzzing."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from release_coordinator import (
    ConfigurationError,
    Coordinator,
    CoordinatorConfig,
    Event,
    EventKind,
    EventType,
    KitTask,
    MemoryStore,
    MemoryTransport,
    ReleaseState,
    RetryPolicy,
    TaskChange,
    TaskServiceKit,
    TaskState,
    __version__,
)
from release_coordinator.server.coordinator_app import coordinator_app

pytestmark = pytest.mark.anyio

RS = ReleaseState
TS = TaskState
OPS = {"Authorization": "Bearer op-token"}
PORTAL = {"Authorization": "Bearer portal-token"}
SEARCH = {"Authorization": "Bearer search-token"}
TEST_CONFIG = CoordinatorConfig(
    poll_interval=0.01,
    health_interval=0,
    claim_interval=0.05,
    retry=RetryPolicy(attempts=2, base_delay=0, max_delay=0),
)
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The answer is the JSON error shape with this status (and code)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "details"}
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["details"], dict)
    if code is not None:
        assert error["code"] == code
    return error  # type: ignore[no-any-return]


def problem_paths(error: dict[str, Any]) -> set[str]:
    return {p["path"] for p in error["details"]["problems"]}


class World:
    """A coordinator over in-memory adapters with two task services, served by the app."""

    def __init__(self, *, gate: asyncio.Event | None = None, **options: Any) -> None:
        self.transport = MemoryTransport(timeout=0.5)
        self.gate = gate

        async def stage(task: KitTask) -> None:
            if self.gate is not None:
                await self.gate.wait()

        self.kits = {name: TaskServiceKit(name, stage=stage) for name in ("portal", "search")}
        for name, kit in self.kits.items():
            self.transport.add(f"memory://{name}", kit)
        self.coordinator = Coordinator(MemoryStore(), self.transport, config=TEST_CONFIG)
        options.setdefault("tokens", {"ops": "op-token"})
        options.setdefault("callback_tokens", {"portal": "portal-token", "search": "search-token"})
        self.app = coordinator_app(self.coordinator, **options)
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://rc.test"
        )
        self.ids: dict[str, str] = {}

    async def register(self) -> None:
        for name in self.kits:
            response = await self.client.post(
                "/task-services", json={"name": name, "url": f"memory://{name}"}, headers=OPS
            )
            assert response.status_code == 201, response.text
            self.ids[name] = response.json()["id"]

    async def aclose(self) -> None:
        if self.gate is not None:
            self.gate.set()
        await self.client.aclose()
        await self.coordinator.close()
        for kit in self.kits.values():
            await kit.aclose()


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w = World()
    await w.register()
    try:
        yield w
    finally:
        await w.aclose()


@pytest.fixture
async def gated() -> AsyncIterator[World]:
    """Task services that stay ``running`` until the gate opens (for callbacks)."""
    w = World(gate=asyncio.Event())
    await w.register()
    try:
        yield w
    finally:
        await w.aclose()


async def until(check: Callable[[], Awaitable[bool]], tries: int = 500) -> None:
    for _ in range(tries):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


async def running_release(w: World) -> dict[str, Any]:
    release = (await w.client.post("/releases", json={"name": "r"}, headers=OPS)).json()

    async def tasks_running() -> bool:
        tasks = await w.coordinator.list_tasks(release["id"])
        return all(t.state is TS.RUNNING for t in tasks)

    await until(tasks_running)
    return release  # type: ignore[no-any-return]


# -- status, tokens ----------------------------------------------------------------------------


async def test_status_needs_no_token(world: World) -> None:
    response = await world.client.get("/status")
    assert response.status_code == 200
    assert response.json() == {
        "name": "release-coordinator",
        "version": __version__,
        "message": "ok",
    }


async def test_operator_endpoints_need_a_valid_token(world: World) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "op-token"},
        {"Authorization": "Basic b3A6dG9rZW4="},
        {"Authorization": "Bearer "},
    ):
        response = await world.client.get("/releases", headers=headers)
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
    response = await world.client.get("/releases", headers={"Authorization": "bearer op-token"})
    assert response.status_code == 200  # the scheme is case-insensitive (RFC 7235)


async def test_a_service_token_is_only_for_callbacks(world: World) -> None:
    for method, path in (("GET", "/releases"), ("POST", "/releases"), ("GET", "/events")):
        response = await world.client.request(method, path, headers=PORTAL, json={"name": "x"})
        assert_error(response, 403, "forbidden")
    assert await world.coordinator.list_releases() == []


async def test_a_verifier_names_the_author(world: World) -> None:
    seen: list[str] = []

    async def verify(token: str) -> str | None:
        seen.append(token)
        return "carol" if token == "from-the-idp" else None

    app = coordinator_app(world.coordinator, verifier=verify)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://rc.test"
    ) as client:
        ok = await client.post(
            "/releases", json={"name": "r"}, headers={"Authorization": "Bearer from-the-idp"}
        )
        assert ok.status_code == 201
        assert ok.json()["author"] == "carol"
        named = await client.post(
            "/releases",
            json={"name": "r", "author": "dan"},
            headers={"Authorization": "Bearer from-the-idp"},
        )
        assert named.json()["author"] == "dan"
        refused = await client.get("/releases", headers={"Authorization": "Bearer nope"})
        assert_error(refused, 401)
    assert seen == ["from-the-idp", "from-the-idp", "nope"]


async def test_named_tokens_name_the_author_and_plain_ones_do_not(world: World) -> None:
    created = await world.client.post("/releases", json={"name": "r"}, headers=OPS)
    assert created.json()["author"] == "ops"
    app = coordinator_app(world.coordinator, tokens=["plain"], verifier=lambda token: False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://rc.test"
    ) as client:
        plain = await client.post(
            "/releases", json={"name": "r"}, headers={"Authorization": "Bearer plain"}
        )
        assert plain.json()["author"] == ""
        assert_error(await client.get("/releases", headers=OPS), 401)


async def test_a_verifier_that_fails_is_503_and_the_token_is_not_logged(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    def verify(token: str) -> bool:
        raise RuntimeError(f"idp down while checking {token}")

    app = coordinator_app(world.coordinator, verifier=verify)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://rc.test"
    ) as client:
        response = await client.get("/releases", headers={"Authorization": "Bearer s3cret-xyz"})
    assert_error(response, 503, "unavailable")
    assert "s3cret-xyz" not in response.text
    assert "RuntimeError" in caplog.text
    assert "s3cret-xyz" not in caplog.text


async def test_token_configuration_is_checked() -> None:
    coordinator = Coordinator()
    with pytest.raises(ConfigurationError, match="operator tokens or a verifier"):
        coordinator_app(coordinator)
    with pytest.raises(ConfigurationError, match="collection"):
        coordinator_app(coordinator, tokens="op-token")
    for bad in ("", "two words", "caf\u00e9"):
        with pytest.raises(ConfigurationError) as caught:
            coordinator_app(coordinator, tokens=[bad])
        assert bad not in str(caught.value) or not bad
    with pytest.raises(ConfigurationError):
        coordinator_app(coordinator, tokens=["ok"], callback_tokens={"svc": "bad token"})
    with pytest.raises(ConfigurationError):
        coordinator_app(coordinator, tokens=["ok"], max_body=0)
    await coordinator.close()


async def test_anonymous_access_when_asked(world: World) -> None:
    app = coordinator_app(world.coordinator, allow_anonymous=True)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://rc.test"
    ) as client:
        created = await client.post("/releases", json={"name": "r"})
        assert created.status_code == 201
        assert created.json()["author"] == ""


# -- task services -----------------------------------------------------------------------------


async def test_task_services_register_list_get_update_enable_disable_delete(world: World) -> None:
    c = world.client
    portal = world.ids["portal"]
    listed = (await c.get("/task-services", headers=OPS)).json()
    assert [s["name"] for s in listed["items"]] == ["portal", "search"]
    assert listed["next_offset"] is None
    one = (await c.get(f"/task-services/{portal}", headers=OPS)).json()
    assert one["health"]["status"] == "ok"
    assert one["health"]["reported_name"] == "portal"

    renamed = await c.patch(f"/task-services/{portal}", json={"name": "portal-2"}, headers=OPS)
    assert renamed.status_code == 200
    assert renamed.json()["name"] == "portal-2"
    same = await c.patch(f"/task-services/{portal}", json={}, headers=OPS)
    assert same.json()["name"] == "portal-2"

    disabled = await c.post(f"/task-services/{portal}/disable", headers=OPS)
    assert disabled.json()["enabled"] is False
    only_enabled = (await c.get("/task-services?enabled=true", headers=OPS)).json()["items"]
    assert [s["name"] for s in only_enabled] == ["search"]
    only_disabled = (await c.get("/task-services?enabled=false", headers=OPS)).json()["items"]
    assert [s["name"] for s in only_disabled] == ["portal-2"]
    enabled = await c.post(f"/task-services/{portal}/enable", json={}, headers=OPS)
    assert enabled.json()["enabled"] is True

    checked = await c.post(f"/task-services/{portal}/health", headers=OPS)
    assert checked.status_code == 200
    assert checked.json()["health"]["last_checked_at"] is not None

    paged = (await c.get("/task-services?limit=1", headers=OPS)).json()
    assert len(paged["items"]) == 1
    assert paged["next_offset"] == 1
    rest = (await c.get("/task-services?limit=1&offset=1", headers=OPS)).json()
    assert rest["next_offset"] is None

    deleted = await c.delete(f"/task-services/{portal}", headers=OPS)
    assert deleted.status_code == 204
    assert_error(await c.get(f"/task-services/{portal}", headers=OPS), 404, "not_found")


async def test_task_service_refusals(world: World) -> None:
    c = world.client
    dup = await c.post(
        "/task-services", json={"name": "portal", "url": "memory://portal"}, headers=OPS
    )
    assert_error(dup, 409)
    silent = await c.post(
        "/task-services", json={"name": "ghost", "url": "memory://ghost"}, headers=OPS
    )
    assert "GET /status" in assert_error(silent, 422, "invalid")["message"]
    unchecked = await c.post(
        "/task-services",
        json={"name": "ghost", "url": "memory://ghost", "check": False, "enabled": False},
        headers=OPS,
    )
    assert unchecked.status_code == 201
    assert unchecked.json()["enabled"] is False
    bad = await c.post(
        "/task-services", json={"name": "", "url": 5, "enabled": "yes", "x": 1}, headers=OPS
    )
    assert problem_paths(assert_error(bad, 422)) == {"name", "url", "enabled", "x"}
    http_url = await c.post(
        "/task-services", json={"name": "web", "url": "https://example.org"}, headers=OPS
    )
    assert problem_paths(assert_error(http_url, 422)) == {"url"}
    assert_error(await c.patch("/task-services/TS_NONE", json={"name": "x"}, headers=OPS), 404)
    assert_error(await c.post("/task-services/TS_NONE/enable", headers=OPS), 404)
    assert_error(await c.delete("/task-services/TS_NONE", headers=OPS), 404)
    extra = await c.post(f"/task-services/{world.ids['portal']}/enable", json={"x": 1}, headers=OPS)
    assert problem_paths(assert_error(extra, 422)) == {"x"}
    assert_error(await c.get("/task-services?enabled=maybe", headers=OPS), 422)


async def test_a_service_in_use_cannot_be_deleted(gated: World) -> None:
    await running_release(gated)
    response = await gated.client.delete(f"/task-services/{gated.ids['portal']}", headers=OPS)
    assert_error(response, 409, "conflict")


# -- releases ------------------------------------------------------------------------------------


async def test_a_release_is_created_staged_published_and_run_again(world: World) -> None:
    c = world.client
    created = await c.post(
        "/releases",
        json={
            "name": "nightly",
            "description": "all\nof it",
            "studies": ["SD_1", "SD_2"],
            "tags": ["t1"],
            "is_major": True,
        },
        headers=OPS,
    )
    assert created.status_code == 201
    release = created.json()
    assert release["state"] == "waiting"
    assert release["studies"] == ["SD_1", "SD_2"]
    assert release["version"] == "0.0.1"
    await world.coordinator.wait(release["id"], [RS.STAGED], timeout=5)

    again = await c.post(f"/releases/{release['id']}/run-again", headers=OPS)
    assert_error(again, 409, "conflict")

    published = await c.post(f"/releases/{release['id']}/publish", headers=OPS)
    assert published.status_code == 200
    assert published.json()["state"] in ("publishing", "published")
    done = await world.coordinator.wait(release["id"], timeout=5)
    assert done.version == "1.0.0"
    again = await c.post(f"/releases/{release['id']}/run-again", json={}, headers=OPS)
    assert again.status_code == 201
    assert again.json()["cloned_from"] == release["id"]
    assert again.json()["tags"] == ["t1"]

    tasks = (await c.get(f"/releases/{release['id']}/tasks", headers=OPS)).json()["items"]
    assert {t["state"] for t in tasks} == {"published"}
    assert {t["task_service_id"] for t in tasks} == set(world.ids.values())
    same = (await c.get(f"/tasks?release_id={release['id']}", headers=OPS)).json()["items"]
    assert same == tasks
    task = tasks[0]
    assert (await c.get(f"/tasks/{task['id']}", headers=OPS)).json() == task
    nested = await c.get(f"/releases/{release['id']}/tasks/{task['id']}", headers=OPS)
    assert nested.json() == task
    other = await c.get(f"/releases/{again.json()['id']}/tasks/{task['id']}", headers=OPS)
    assert_error(other, 404, "not_found")
    states = await c.get(f"/releases/{release['id']}/tasks?state=staged", headers=OPS)
    assert states.json()["items"] == []


async def test_releases_list_with_filters_and_pages(world: World) -> None:
    c = world.client
    ids = []
    for i in range(5):
        body = {"name": f"r{i}", "tags": ["even"] if i % 2 == 0 else [], "author": f"a{i % 2}"}
        ids.append((await c.post("/releases", json=body, headers=OPS)).json()["id"])
    for release_id in ids:
        await world.coordinator.wait(release_id, [RS.STAGED], timeout=5)
    await c.post(f"/releases/{ids[0]}/cancel", json={"reason": "test"}, headers=OPS)
    await world.coordinator.wait(ids[0], timeout=5)

    def names(response: httpx.Response) -> list[str]:
        assert response.status_code == 200, response.text
        return [r["name"] for r in response.json()["items"]]

    assert names(await c.get("/releases", headers=OPS)) == ["r4", "r3", "r2", "r1", "r0"]
    first = await c.get("/releases?limit=2", headers=OPS)
    assert names(first) == ["r4", "r3"]
    assert first.json()["next_offset"] == 2
    last = await c.get("/releases?limit=2&offset=4", headers=OPS)
    assert names(last) == ["r0"]
    assert last.json()["next_offset"] is None
    assert names(await c.get("/releases?state=canceled", headers=OPS)) == ["r0"]
    assert names(await c.get("/releases?state=staged,canceled", headers=OPS)) == [
        "r4",
        "r3",
        "r2",
        "r1",
        "r0",
    ]
    assert names(await c.get("/releases?tag=even", headers=OPS)) == ["r4", "r2", "r0"]
    assert names(await c.get("/releases?tag=even&state=staged&limit=1&offset=1", headers=OPS)) == [
        "r2"
    ]
    assert names(await c.get("/releases?author=a1", headers=OPS)) == ["r3", "r1"]
    assert_error(await c.get("/releases?state=bogus", headers=OPS), 422, "invalid")
    assert_error(await c.get("/releases?limit=abc", headers=OPS), 400, "invalid")
    assert_error(await c.get("/releases?limit=0", headers=OPS), 422, "invalid")
    assert_error(await c.get("/releases?offset=-1", headers=OPS), 422, "invalid")
    assert_error(await c.get("/releases?limit=5000", headers=OPS), 422, "invalid")


async def test_a_release_is_updated_and_canceled(world: World) -> None:
    c = world.client
    release = (await c.post("/releases", json={"name": "r"}, headers=OPS)).json()
    path = f"/releases/{release['id']}"
    updated = await c.patch(
        path, json={"name": "r2", "description": "d", "tags": ["x"]}, headers=OPS
    )
    assert updated.status_code == 200
    assert (updated.json()["name"], updated.json()["tags"]) == ("r2", ["x"])
    assert (await c.patch(path, json={}, headers=OPS)).json()["name"] == "r2"
    assert (await c.get(path, headers=OPS)).json()["description"] == "d"
    bad = await c.patch(
        path, json={"name": " ", "tags": [1, ""], "state": "published"}, headers=OPS
    )
    assert problem_paths(assert_error(bad, 422)) == {"name", "tags[0]", "tags[1]", "state"}
    canceled = await c.post(f"{path}/cancel", json={"reason": "not today"}, headers=OPS)
    assert canceled.status_code == 200
    done = await world.coordinator.wait(release["id"], timeout=5)
    assert done.state is RS.CANCELED
    assert_error(await c.post(f"{path}/publish", headers=OPS), 409, "invalid_transition")
    again = await c.post(f"{path}/cancel", headers=OPS)
    assert again.json()["state"] == "canceled"  # idempotent


async def test_release_refusals(world: World) -> None:
    c = world.client
    bad = await c.post(
        "/releases",
        content=json.dumps(  # ASCII-escaped: a lone surrogate is valid JSON
            {
                "name": "",
                "studies": "SD_1",
                "tags": ["ok", "\ud800"],
                "is_major": 1,
                "description": 5,
                "author": "x" * 300,
            }
        ),
        headers=OPS,
    )
    error = assert_error(bad, 422, "invalid")
    assert problem_paths(error) == {
        "name",
        "studies",
        "tags[1]",
        "is_major",
        "description",
        "author",
    }
    assert_error(await c.post("/releases", json={"name": "a\x00b"}, headers=OPS), 422)
    assert_error(await c.post("/releases", content=b"[1]", headers=OPS), 400, "invalid")
    assert_error(await c.post("/releases", content=b"{nope", headers=OPS), 400, "invalid")
    assert_error(await c.post("/releases", content=b"", headers=OPS), 400, "invalid")
    assert_error(await c.get("/releases/RE_NONE", headers=OPS), 404, "not_found")
    for action in ("publish", "cancel", "run-again"):
        assert_error(await c.post(f"/releases/RE_NONE/{action}", headers=OPS), 404)
    assert_error(await c.patch("/releases/RE_NONE", json={"name": "x"}, headers=OPS), 404)
    assert_error(await c.get("/releases/RE_NONE/tasks", headers=OPS), 404)
    assert_error(await c.get("/tasks", headers=OPS), 400)
    assert_error(await c.get("/tasks/TA_NONE", headers=OPS), 404)
    assert await world.coordinator.list_releases() == []


async def test_publish_before_staged_is_409(gated: World) -> None:
    release = await running_release(gated)
    response = await gated.client.post(f"/releases/{release['id']}/publish", headers=OPS)
    assert "staged" in assert_error(response, 409, "invalid_transition")["message"]


# -- callbacks -----------------------------------------------------------------------------------


async def test_a_service_reports_its_own_tasks(gated: World) -> None:
    release = await running_release(gated)
    tasks = {t.service_id: t for t in await gated.coordinator.list_tasks(release["id"])}
    portal_task = tasks[gated.ids["portal"]]
    search_task = tasks[gated.ids["search"]]
    c = gated.client

    progress = await c.patch(
        f"/tasks/{portal_task.id}", json={"state": "running", "progress": "40%"}, headers=PORTAL
    )
    assert progress.status_code == 200
    assert progress.json()["progress"] == 40
    staged = await c.patch(
        f"/releases/{release['id']}/tasks/{portal_task.id}",
        json={"state": "staged", "progress": 100},
        headers=PORTAL,
    )
    assert staged.status_code == 200
    assert staged.json()["state"] == "staged"

    other = await c.patch(f"/tasks/{search_task.id}", json={"state": "staged"}, headers=PORTAL)
    assert_error(other, 403, "forbidden")
    assert (await gated.coordinator.get_task(search_task.id)).state is TS.RUNNING

    behind = await c.patch(f"/tasks/{portal_task.id}", json={"state": "pending"}, headers=PORTAL)
    assert_error(behind, 409, "invalid_transition")
    assert (await gated.coordinator.get_task(portal_task.id)).state is TS.STAGED

    by_operator = await c.patch(f"/tasks/{search_task.id}", json={"state": "staged"}, headers=OPS)
    assert by_operator.status_code == 200
    assert (await gated.coordinator.wait(release["id"], [RS.STAGED], timeout=5)).state is RS.STAGED


async def test_callback_refusals(gated: World) -> None:
    release = await running_release(gated)
    task = (await gated.coordinator.list_tasks(release["id"]))[0]
    c = gated.client
    assert_error(await c.patch(f"/tasks/{task.id}", json={"state": "staged"}), 401)
    assert_error(
        await c.patch(
            f"/tasks/{task.id}", json={"state": "staged"}, headers={"Authorization": "Bearer x"}
        ),
        401,
    )
    assert_error(await c.patch(f"/tasks/{task.id}", content=b"nope", headers=PORTAL), 400)
    assert_error(await c.patch(f"/tasks/{task.id}", json=["staged"], headers=PORTAL), 400)
    bad = await c.patch(
        f"/tasks/{task.id}", json={"state": "done", "progress": 101, "x": 1}, headers=OPS
    )
    assert problem_paths(assert_error(bad, 422, "invalid")) == {"state", "progress", "x"}
    assert_error(await c.patch("/tasks/TA_NONE", json={"state": "staged"}, headers=OPS), 404)
    wrong_release = await c.patch(
        f"/releases/RE_OTHER/tasks/{task.id}", json={"state": "staged"}, headers=OPS
    )
    assert_error(wrong_release, 404, "not_found")
    assert (await gated.coordinator.get_task(task.id)).state is TS.RUNNING


# -- events --------------------------------------------------------------------------------------


async def test_events_are_listed_with_filters(world: World) -> None:
    c = world.client
    release = (await c.post("/releases", json={"name": "r"}, headers=OPS)).json()
    await world.coordinator.wait(release["id"], [RS.STAGED], timeout=5)
    everything = (await c.get("/events?limit=1000", headers=OPS)).json()["items"]
    assert [e["id"] for e in everything] == sorted(e["id"] for e in everything)
    assert {"id", "at", "type", "kind", "message", "release_id", "task_id"} <= set(everything[0])
    of_release = (await c.get(f"/events?release_id={release['id']}", headers=OPS)).json()["items"]
    assert of_release
    assert all(e["release_id"] == release["id"] for e in of_release)
    actions = (await c.get("/events?kind=user_action", headers=OPS)).json()["items"]
    assert {e["kind"] for e in actions} == {"user_action"}
    assert len(actions) == 3  # two registrations, one release
    portal = world.ids["portal"]
    of_service = await c.get(f"/events?task_service_id={portal}&type=info", headers=OPS)
    assert all(e["task_service_id"] == portal for e in of_service.json()["items"])
    after = (await c.get(f"/events?after_id={everything[-2]['id']}", headers=OPS)).json()
    assert [e["id"] for e in after["items"]] == [everything[-1]["id"]]
    since = everything[-1]["at"]
    recent = (await c.get("/events", params={"since": since}, headers=OPS)).json()["items"]
    assert everything[-1]["id"] in {e["id"] for e in recent}
    naive = await c.get("/events", params={"since": "2000-01-01T00:00:00"}, headers=OPS)
    assert len(naive.json()["items"]) == len(everything)
    page = (await c.get("/events?limit=2&offset=1", headers=OPS)).json()
    assert [e["id"] for e in page["items"]] == [e["id"] for e in everything[1:3]]
    assert page["next_offset"] == 3
    assert_error(await c.get("/events?since=yesterday", headers=OPS), 400)
    assert_error(await c.get("/events?type=fatal", headers=OPS), 422)
    assert_error(await c.get("/events?after_id=x", headers=OPS), 400)
    assert_error(await c.get(f"/events?release_id={'x' * 300}", headers=OPS), 422)


# -- the HTTP edge ---------------------------------------------------------------------------------


async def test_unknown_paths_and_wrong_methods_are_json_errors(world: World) -> None:
    c = world.client
    assert_error(await c.get("/nowhere", headers=OPS), 404, "not_found")
    wrong = await c.put("/releases", headers=OPS)
    assert_error(wrong, 405, "method_not_allowed")
    assert set(wrong.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
    assert_error(await c.delete("/releases/RE_1", headers=OPS), 405)


async def test_bodies_over_the_limit_are_413(world: World) -> None:
    app = coordinator_app(world.coordinator, tokens=["op-token"], max_body=64)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://rc.test"
    ) as client:
        big = await client.post("/releases", json={"name": "x" * 100}, headers=OPS)
        assert_error(big, 413, "too_large")

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as read
            for _ in range(5):
                yield b" " * 20

        streamed = await client.post("/releases", content=chunks(), headers=OPS)
        assert_error(streamed, 413, "too_large")
        lying = await client.post(
            "/releases", content=b"{}", headers={**OPS, "Content-Length": "abc"}
        )
        assert lying.status_code == 400
    assert await world.coordinator.list_releases() == []


async def lifespan_of(app: Any, during: Callable[[], None]) -> list[str]:
    """Run the app's lifespan (startup, then ``during()``, then shutdown); the messages sent."""
    events = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        message = events.pop(0)
        if message["type"] == "lifespan.shutdown":
            during()
        return message

    async def send(message: Any) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    return sent


async def test_the_lifespan_option_starts_and_closes_the_coordinator() -> None:
    for owned in (True, False):
        coordinator = Coordinator(config=TEST_CONFIG)
        app = coordinator_app(coordinator, allow_anonymous=True, lifespan=owned)
        started: list[bool] = []
        sent = await lifespan_of(app, lambda: started.append(bool(coordinator._background)))  # noqa: B023
        assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
        assert started == [owned]
        assert not coordinator._background
        await coordinator.close()


# -- fuzzing: no 5xx, and a refusal changes nothing ---------------------------------------------

_SETUP = Event(type=EventType.INFO, kind=EventKind.TRANSITION, message="test setup")


async def static_world() -> tuple[World, dict[str, str]]:
    """A world whose coordinator drives nothing (closed before anything was created), with a
    running release (running tasks) and a canceled one: nothing changes but what a request
    does."""
    w = World()
    await w.coordinator.close()
    await w.register()
    store = w.coordinator.store
    running = await w.coordinator.create_release("running", studies=["SD_1"])
    tasks = await w.coordinator.list_tasks(running.id)
    await store.transition_release(running.id, {RS.WAITING}, RS.INITIALIZING, _SETUP)
    steps = ((TS.WAITING, TS.INITIALIZED), (TS.INITIALIZED, TS.RUNNING))
    for source, dest in steps:
        await store.change_tasks(
            [TaskChange(t.id, frozenset({source}), dest, events=(_SETUP,)) for t in tasks]
        )
    await store.transition_release(running.id, {RS.INITIALIZING}, RS.RUNNING, _SETUP)
    canceled = await w.coordinator.create_release("canceled")
    await store.transition_release(canceled.id, {RS.WAITING}, RS.CANCELING, _SETUP)
    await store.change_tasks(
        [
            TaskChange(t.id, frozenset({TS.WAITING}), TS.CANCELED, events=(_SETUP,))
            for t in await w.coordinator.list_tasks(canceled.id)
        ]
    )
    await store.transition_release(canceled.id, {RS.CANCELING}, RS.CANCELED, _SETUP)
    ids = {
        "sid": w.ids["portal"],
        "rid": running.id,
        "tid": tasks[0].id,
        "done": canceled.id,
    }
    return w, ids


async def snapshot(coordinator: Coordinator) -> tuple[Any, ...]:
    releases = await coordinator.list_releases()
    tasks = [t for r in releases for t in await coordinator.list_tasks(r.id)]
    return (
        await coordinator.list_services(),
        releases,
        tasks,
        await coordinator.events(),
        await coordinator.list_webhooks(),
    )


LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
TEXTS = st.sampled_from(["", " ", "x", "memory://portal", "memory://ghost", "\ud800", "a\x00"])
LISTS = st.lists(TEXTS, max_size=3) | VALUES
FLAGS = st.booleans() | LEAVES
STATES = st.sampled_from(["pending", "running", "staged", "published", "failed", "x"])
PROGRESS = st.sampled_from([0, 50, 100, 101, -1, "40%", "x%"])


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # ASCII-escaped: lone surrogates travel


def bodies(fields: dict[str, Any], base: dict[str, Any] | None = None) -> st.SearchStrategy[bytes]:
    """Mostly ``base`` with at most one field changed; else JSON objects of these optional
    fields, any JSON, or junk bytes."""
    objects = st.fixed_dictionaries({}, optional={**fields, "extra": VALUES})
    one_change = st.one_of(
        st.just({}), *(st.fixed_dictionaries({k: v | LEAVES}) for k, v in fields.items())
    )
    changed = one_change.map(lambda o: dumps({**(base or {}), **o}))
    others = objects.map(dumps) | VALUES.map(dumps) | st.binary(max_size=48) | st.just(b"")
    return changed | changed | others


ACTION = bodies({})
SERVICE = {"name": TEXTS, "url": TEXTS}
RELEASE = {"name": TEXTS, "description": TEXTS, "tags": LISTS}
CALLBACK = bodies({"state": STATES, "progress": PROGRESS}, {"state": "staged", "progress": 100})
ENDPOINTS = {
    "register_service": (
        "POST",
        "/task-services",
        bodies(
            {**SERVICE, "enabled": FLAGS, "check": FLAGS},
            {"name": "new", "url": "memory://ghost", "check": False},
        ),
    ),
    "update_service": ("PATCH", "/task-services/{sid}", bodies(SERVICE, {"name": "renamed"})),
    "enable_service": ("POST", "/task-services/{sid}/enable", ACTION),
    "disable_service": ("POST", "/task-services/{sid}/disable", ACTION),
    "check_service": ("POST", "/task-services/{sid}/health", ACTION),
    "create_release": (
        "POST",
        "/releases",
        bodies(
            {
                **RELEASE,
                "studies": LISTS,
                "author": TEXTS,
                "is_major": FLAGS,
                "auto_publish": FLAGS,
            },
            {"name": "r", "studies": ["SD_1"], "tags": ["t"]},
        ),
    ),
    "update_release": ("PATCH", "/releases/{rid}", bodies(RELEASE, {"name": "r2"})),
    "publish": ("POST", "/releases/{rid}/publish", ACTION),
    "cancel": ("POST", "/releases/{rid}/cancel", bodies({"reason": TEXTS}, {"reason": "r"})),
    "run_again": ("POST", "/releases/{done}/run-again", ACTION),
    "callback": ("PATCH", "/tasks/{tid}", CALLBACK),
    "callback_in_release": ("PATCH", "/releases/{rid}/tasks/{tid}", CALLBACK),
}


def fuzz(method: str, path: str, body_strategy: st.SearchStrategy[bytes]) -> Any:
    """A test that sends any body of ``body_strategy``: never a 5xx, and a refusal changes
    nothing (services, releases, tasks, events)."""

    @FUZZ
    @given(
        body=body_strategy,
        token=st.sampled_from([OPS, OPS, OPS, PORTAL, {}]),
        unknown_id=st.sampled_from([False, False, False, True]),
    )
    async def test(
        anyio_backend: str, body: bytes, token: dict[str, str], unknown_id: bool
    ) -> None:
        w, ids = await static_world()
        try:
            if unknown_id:
                ids = dict.fromkeys(ids, "NO_SUCH_ID")
            before = await snapshot(w.coordinator)
            response = await w.client.request(
                method, path.format(**ids), content=body, headers=token
            )
            assert response.status_code < 500, response.text
            if response.status_code >= 300:
                assert response.status_code in (400, 401, 403, 404, 409, 413, 422)
                assert_error(response, response.status_code)
                assert await snapshot(w.coordinator) == before
        finally:
            with contextlib.suppress(Exception):
                await w.aclose()

    return test


for _name, (_method, _path, _bodies) in ENDPOINTS.items():
    globals()[f"test_fuzz_{_name}"] = fuzz(_method, _path, _bodies)
