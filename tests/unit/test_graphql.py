"""The read-only GraphQL API (server.graphql): through the library and over HTTP (service_app at
``/graphql``, and graphql_app in a host's app), the same records as the REST API, auth and
roles as the REST API's, paging, limits, refusals that are never a 500, no secret shown, one
query over SQLite, and the OpenAPI document's ``/graphql``."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.applications import Starlette
from starlette.routing import Route

from release_coordinator import (
    ConfigurationError,
    Coordinator,
    MemoryRolloutStore,
    MemoryStore,
    RolloutManager,
)
from release_coordinator.server.child_tokens import ChildTokens
from release_coordinator.server.graphql import (
    GRAPHQL_PATH,
    execute_graphql,
    graphql_app,
    graphql_schema,
)
from release_coordinator.server.openapi import combined_openapi
from release_coordinator.server.roles import READER_ROUTES, OperatorToken, Role, required_role
from release_coordinator.server.service_app import service_app
from release_coordinator.transports.http import HttpTransport

from .test_notes_and_studies import publish_now
from .test_rollout_manager import EUROPE, INSIDE, bundle, fetched, result, square

pytestmark = pytest.mark.anyio

ADMIN = "gql-admin-token-0123456789"
RELEASER = "gql-releaser-token-0123456789"
READER = "gql-reader-token-0123456789"
CALLBACK = "gql-portal-callback-0123456789"
TOKENS = {
    "ada": ADMIN,
    "rita": OperatorToken(RELEASER, "releaser"),
    "reed": OperatorToken(READER, Role.READER),
}
BY_ROLE = {Role.ADMIN: ADMIN, Role.RELEASER: RELEASER, Role.READER: READER}
PASSWORD = "s3cret-pass"
SECRET_URL = f"https://svc:{PASSWORD}@127.0.0.1:9/release"
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class World:
    """A coordinator that drives nothing (never started) with two task services (one URL with
    a password), three releases (one published), a note; a manager with a rollout reaching two
    children, one of which reported its first stage."""

    def __init__(self, coordinator: Coordinator, manager: RolloutManager) -> None:
        self.coordinator = coordinator
        self.manager = manager
        self.ids: dict[str, str] = {}

    async def fill(self) -> World:
        c = self.coordinator
        portal = await c.register_service("portal", SECRET_URL, check=False)
        await c.register_service("search", "http://127.0.0.1:9/search", check=False)
        old = await c.create_release("old", studies=["SD_1"], tags=["t1"], author="ann")
        await publish_now(c, old.id)
        first = await c.create_release("first", studies=["SD_1"], tags=["t1"], author="ann")
        second = await c.create_release("second", studies=["SD_1", "SD_2"], author="bob")
        note = await c.add_note(first.id, "# What changed", study_id="SD_1", author="ann")
        await c.update_service(portal.id, url=SECRET_URL.replace("/release", "/r2"))
        await self.manager.create_rollout(bundle(), EUROPE, name="checkout")
        a, _b = await fetched(self.manager, INSIDE, square(6, 46))
        await self.manager.submit_result(result(a, "canary-10", 2))
        self.ids = {
            "portal": portal.id,
            "old": old.id,
            "first": first.id,
            "second": second.id,
            "note": note.id,
            "child": a,
        }
        return self


@pytest.fixture
async def world() -> AsyncIterator[World]:
    coordinator = Coordinator(MemoryStore(), HttpTransport())
    await coordinator.close()  # drives nothing: the records stay as made
    try:
        yield await World(coordinator, RolloutManager(MemoryRolloutStore())).fill()
    finally:
        await coordinator.close()


def served(w: World, **options: Any) -> Starlette:
    options.setdefault("operator_tokens", TOKENS)
    return service_app(
        w.coordinator,
        w.manager,
        callback_tokens={"portal": CALLBACK},
        lifespan=False,
        access_log=False,
        **options,
    )


@pytest.fixture
async def http(world: World) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=served(world))
    async with httpx.AsyncClient(transport=transport, base_url="http://rc.test") as client:
        yield client


async def query(w: World, text: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """``text`` through the library; it must answer without errors."""
    answer = await execute_graphql(w.coordinator, w.manager, text, variables)
    assert "errors" not in answer, answer
    data: dict[str, Any] = answer["data"]
    return data


async def errors_of(w: World, text: str) -> list[dict[str, Any]]:
    answer = await execute_graphql(w.coordinator, w.manager, text)
    assert answer.get("errors"), answer
    found: list[dict[str, Any]] = answer["errors"]
    return found


async def post(
    client: httpx.AsyncClient, text: str, token: str = READER, **body: Any
) -> httpx.Response:
    return await client.post(GRAPHQL_PATH, json={"query": text, **body}, headers=bearer(token))


def selection(record: dict[str, Any]) -> str:
    """A selection of every field of a REST record (its objects' fields too; JSON scalars as
    they are)."""
    scalars_of_json = {
        "target",
        "policy",
        "area",
        "stages",
        "statuses",
        "outcomes",
        "counts",
        "gates",
    }
    parts = []
    for key, value in record.items():
        if isinstance(value, dict) and key not in scalars_of_json:
            parts.append(f"{key} {{ {selection(value)} }}")
        else:
            parts.append(key)
    return " ".join(parts)


# -- the same records as the REST API ---------------------------------------------------------

LISTINGS = [
    ("releases", "/releases"),
    ("task_services", "/task-services"),
    ("events", "/events"),
    ("studies", "/studies"),
    ("rollouts", "/rollouts"),
    ("children", "/children"),
]


@pytest.mark.parametrize(("field", "path"), LISTINGS)
async def test_every_listing_answers_the_rest_apis_records(
    world: World, http: httpx.AsyncClient, field: str, path: str
) -> None:
    rest = await http.get(path, params={"limit": 3}, headers=bearer(READER))
    assert rest.status_code == 200, rest.text
    page = rest.json()
    assert page["items"], page
    items = f"items {{ {selection(page['items'][0])} }}"
    text = f"{{ {field}(limit: 3) {{ {items} limit offset next_offset }} }}"
    assert (await query(world, text))[field] == page
    over_http = await post(http, text)
    assert over_http.status_code == 200, over_http.text
    assert over_http.json() == {"data": {field: page}}


@pytest.mark.parametrize(
    ("field", "path", "key"),
    [
        ("release", "/releases/{}", "first"),
        ("task_service", "/task-services/{}", "portal"),
        ("note", "/notes/{}", "note"),
        ("study", "/studies/{}", "SD_1"),
    ],
)
async def test_one_record_is_the_rest_apis(
    world: World, http: httpx.AsyncClient, field: str, path: str, key: str
) -> None:
    ident = world.ids.get(key, key)
    rest = (await http.get(path.format(ident), headers=bearer(READER))).json()
    text = f'{{ {field}(id: "{ident}") {{ {selection(rest)} }} }}'
    assert (await query(world, text))[field] == rest


async def test_a_rollout_its_bundle_status_and_children_are_the_rest_apis(
    world: World, http: httpx.AsyncClient
) -> None:
    one = (await http.get("/rollouts/42", headers=bearer(READER))).json()
    status = (await http.get("/rollouts/42/status", headers=bearer(READER))).json()
    children = (await http.get("/rollouts/42/children", headers=bearer(READER))).json()
    bundle_fields = "strategy { id name type stages { name type } functions }"
    bundle_fields += " archive { filename sha256 size files }"
    text = f"""{{ rollout(id: "42") {{
        {selection({k: v for k, v in one.items() if k != "bundle"})}
        bundle {{ {bundle_fields} }}
        status {{ children statuses outcomes lost stages {{ name counts aggregate judgement }}
          approvals {{ stage approved }} }}
        children {{ items {{ {selection(children["items"][0])} }} next_offset }}
        release {{ id }}
    }} }}"""
    got = (await query(world, text))["rollout"]
    assert got["bundle"] == one["bundle"]
    assert {
        k: v for k, v in got.items() if k not in ("bundle", "status", "children", "release")
    } == {k: v for k, v in one.items() if k != "bundle"}
    assert got["status"] == {k: v for k, v in status.items() if k != "rollout"}
    assert got["status"]["statuses"] == {"Doing": 2}
    assert got["children"]["items"] == children["items"]
    assert got["release"] is None  # it waits for no data release
    waiting = await query(
        world,
        '{ rollout(id: "42") { children(status: "Doing", limit: 1) {'
        " items { child_id } next_offset } } }",
    )
    assert waiting["rollout"]["children"]["next_offset"] == 1


async def test_a_release_with_its_tasks_notes_and_events(world: World) -> None:
    text = """query($id: ID!) { release(id: $id) {
        name
        tasks { items { state task_service { name } release { name } } }
        notes { items { text author release { name } } }
        events(limit: 1) { items { release_id release { name } } next_offset }
    } }"""
    got = (await query(world, text, {"id": world.ids["first"]}))["release"]
    assert got["name"] == "first"
    assert sorted(t["task_service"]["name"] for t in got["tasks"]["items"]) == ["portal", "search"]
    assert {t["release"]["name"] for t in got["tasks"]["items"]} == {"first"}
    assert got["notes"]["items"] == [
        {"text": "# What changed", "author": "ann", "release": {"name": "first"}}
    ]
    assert len(got["events"]["items"]) == 1
    assert got["events"]["next_offset"] == 1
    assert {e["release_id"] for e in got["events"]["items"]} == {world.ids["first"]}
    tasks = await query(
        world, f'{{ tasks(release_id: "{world.ids["first"]}") {{ items {{ id }} }} }}'
    )
    one = tasks["tasks"]["items"][0]["id"]
    assert (await query(world, f'{{ task(id: "{one}") {{ id release_id }} }}'))["task"] == {
        "id": one,
        "release_id": world.ids["first"],
    }


async def test_a_study_its_releases_latest_and_last_published(world: World) -> None:
    text = """{ study(id: "SD_1") {
        release_ids
        releases(limit: 2) { items { name } next_offset }
        latest_release { name }
        last_published_release { name state }
        notes { items { text } }
    } }"""
    got = (await query(world, text))["study"]
    assert len(got["release_ids"]) == 3
    assert len(got["releases"]["items"]) == 2
    assert got["releases"]["next_offset"] == 2
    assert got["latest_release"] == {"name": "second"}
    assert got["last_published_release"] == {"name": "old", "state": "published"}
    assert got["notes"]["items"] == [{"text": "# What changed"}]
    none = await query(world, '{ study(id: "SD_2") { last_published_release { name } } }')
    assert none["study"]["last_published_release"] is None


# -- paging and filters --------------------------------------------------------------------------


async def test_paging_walks_every_release_once(world: World) -> None:
    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page = (
            await query(
                world,
                "query($o: Int!) { releases(limit: 2, offset: $o) { items { id } next_offset } }",
                {"o": offset},
            )
        )["releases"]
        seen += [r["id"] for r in page["items"]]
        offset = page["next_offset"]
    assert sorted(seen) == sorted(world.ids[k] for k in ("old", "first", "second"))
    assert len(seen) == 3


@pytest.mark.parametrize(
    ("arguments", "names"),
    [
        ('state: ["published"]', {"old"}),
        ('state: ["waiting"]', {"first", "second"}),
        ('study: "SD_2"', {"second"}),
        ('tag: "t1"', {"old", "first"}),
        ('author: "ann", state: ["waiting"]', {"first"}),
        ('tag: "t1", limit: 1, offset: 1', None),  # one of the two
    ],
)
async def test_release_filters_are_the_rest_apis(
    world: World, http: httpx.AsyncClient, arguments: str, names: set[str] | None
) -> None:
    got = await query(world, f"{{ releases({arguments}) {{ items {{ name }} next_offset }} }}")
    items = {r["name"] for r in got["releases"]["items"]}
    if names is None:
        assert len(items) == 1
        assert items <= {"old", "first"}
        assert got["releases"]["next_offset"] is None
    else:
        assert items == names
    params: dict[str, Any] = {}
    for part in arguments.split(", "):
        key, _, value = part.partition(": ")
        params[key] = json.loads(value)
    rest = await http.get("/releases", params=params, headers=bearer(READER))
    assert {r["name"] for r in rest.json()["items"]} == items


async def test_event_filters(world: World) -> None:
    every = await query(world, "{ events(limit: 1000) { items { id type kind release_id } } }")
    ids = [e["id"] for e in every["events"]["items"]]
    assert ids == sorted(ids)
    after = await query(world, f"{{ events(after_id: {ids[2]}) {{ items {{ id }} }} }}")
    assert [e["id"] for e in after["events"]["items"]] == ids[3:]
    first = world.ids["first"]
    mine = await query(world, f'{{ events(release_id: "{first}") {{ items {{ release_id }} }} }}')
    assert {e["release_id"] for e in mine["events"]["items"]} == {first}
    kinds = {e["kind"] for e in every["events"]["items"]}
    some = sorted(kinds)[0]
    only = await query(world, f'{{ events(kind: ["{some}"]) {{ items {{ kind }} }} }}')
    assert {e["kind"] for e in only["events"]["items"]} == {some}
    later = await query(world, '{ events(since: "2999-01-01T00:00:00") { items { id } } }')
    assert later["events"]["items"] == []


@pytest.mark.parametrize(
    ("text", "path", "problem"),
    [
        ("{ releases(limit: 0) { items { id } } }", "limit", "must be within 1..1000"),
        ("{ releases(limit: 1001) { items { id } } }", "limit", "must be within 1..1000"),
        ("{ releases(offset: -1) { items { id } } }", "offset", "must be within"),
        ('{ releases(state: ["bogus"]) { items { id } } }', "state", "'bogus' is not one of"),
        ('{ events(type: ["nope"]) { items { id } } }', "type", "'nope' is not one of"),
        ("{ events(after_id: -5) { items { id } } }", "after_id", "must be at least 0"),
        ('{ events(since: "yesterday") { items { id } } }', "since", "ISO 8601"),
        ('{ rollouts(state: ["x"]) { items { id } } }', "state", "'x' is not one of"),
        ('{ releases(tag: "a\\u0000b") { items { id } } }', "tag", "NUL"),
        ('{ releases(author: "' + "a" * 300 + '") { items { id } } }', "author", "longer than"),
    ],
)
async def test_bad_arguments_are_invalid_errors_naming_them(
    world: World, text: str, path: str, problem: str
) -> None:
    (error,) = await errors_of(world, text)
    assert error["extensions"]["code"] == "invalid"
    (found,) = error["extensions"]["details"]["problems"]
    assert found["path"] == path
    assert problem in found["message"]


async def test_unknown_ids_are_not_found_errors_beside_the_data(world: World) -> None:
    answer = await execute_graphql(
        world.coordinator,
        world.manager,
        '{ release(id: "nope") { id } rollout(id: "nope") { id } studies { items { id } } }',
    )
    assert answer["data"]["release"] is None
    assert answer["data"]["rollout"] is None
    assert {s["id"] for s in answer["data"]["studies"]["items"]} == {"SD_1", "SD_2"}
    codes = {tuple(e["path"]): e["extensions"] for e in answer["errors"]}
    assert codes[("release",)] == {
        "code": "not_found",
        "details": {"kind": "release", "id": "nope"},
    }
    assert codes[("rollout",)]["code"] == "not_found"


async def test_without_a_manager_rollouts_are_an_error_and_releases_answer(world: World) -> None:
    answer = await execute_graphql(
        world.coordinator, None, "{ rollouts { items { id } } releases { items { id } } }"
    )
    assert answer["data"]["rollouts"] is None
    assert len(answer["data"]["releases"]["items"]) == 3
    assert "no RolloutManager" in answer["errors"][0]["message"]


# -- never a secret ----------------------------------------------------------------------------


async def test_no_password_is_ever_shown(world: World, http: httpx.AsyncClient) -> None:
    text = """{
        task_services { items { url health { last_error message } } }
        releases { items { tasks { items { task_service { url } } } } }
        events(limit: 1000) { items { message } }
    }"""
    library = json.dumps(await query(world, text))
    answer = await post(http, text)
    assert answer.status_code == 200
    for shown in (library, answer.text):
        assert PASSWORD not in shown
        assert "https://svc:***@127.0.0.1:9/r2" in shown
        assert "https://svc:***@127.0.0.1:9/release" in shown  # the event of its registration
    for token in (ADMIN, RELEASER, READER, CALLBACK):
        assert token not in answer.text


# -- over HTTP: auth and roles -------------------------------------------------------------------


@pytest.mark.parametrize("role", list(Role))
async def test_every_role_may_query_by_get_and_post(http: httpx.AsyncClient, role: Role) -> None:
    text = "{ releases(limit: 1) { items { name } } }"
    by_post = await post(http, text, BY_ROLE[role])
    by_get = await http.get(GRAPHQL_PATH, params={"query": text}, headers=bearer(BY_ROLE[role]))
    for answer in (by_post, by_get):
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("application/json")
        assert len(answer.json()["data"]["releases"]["items"]) == 1


def test_a_graphql_query_needs_the_reader_role_whatever_its_method() -> None:
    assert ("POST", GRAPHQL_PATH) in READER_ROUTES
    assert required_role("POST", GRAPHQL_PATH) is Role.READER
    assert required_role("GET", GRAPHQL_PATH) is Role.READER
    assert required_role("POST", "/graphql/other") is Role.ADMIN


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_no_valid_token_is_the_rest_apis_401(http: httpx.AsyncClient, method: str) -> None:
    rest = await http.get("/releases")
    for headers in ({}, bearer("not-a-token-0123456789"), {"Authorization": "Basic x"}):
        answer = await http.request(
            method, GRAPHQL_PATH, params={"query": "{ __typename }"}, json={}, headers=headers
        )
        assert answer.status_code == 401, answer.text
        assert answer.json() == rest.json()
        assert answer.headers["www-authenticate"] == "Bearer"


async def test_task_service_and_child_tokens_are_refused(
    world: World, http: httpx.AsyncClient
) -> None:
    child_token = await ChildTokens(world.manager.store).issue(world.ids["child"])
    assert child_token is not None
    for token, who in ((CALLBACK, "task-service"), (child_token, "child")):
        answer = await post(http, "{ releases { items { id } } }", token)
        assert answer.status_code == 403, answer.text
        error = answer.json()["error"]
        assert error["code"] == "forbidden"
        assert f"a {who} token may not use the GraphQL API" == error["message"]
        assert token not in answer.text


async def test_a_verifier_admits_a_reader_and_anonymous_apps_admit_all(world: World) -> None:
    async def verify(token: str) -> tuple[str, str] | None:
        return ("vic", "reader") if token == "vic-token-0123456789" else None

    app = served(world, operator_tokens=(), verifier=verify)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await post(c, "{ __typename }", "vic-token-0123456789")).status_code == 200
        assert (await post(c, "{ __typename }", "someone-else-0123456789")).status_code == 401
    anonymous = served(world, operator_tokens=(), allow_anonymous=True)
    transport = httpx.ASGITransport(app=anonymous)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        answer = await c.post(GRAPHQL_PATH, json={"query": "{ __typename }"})
        assert answer.json() == {"data": {"__typename": "Query"}}


# -- over HTTP: refusals ---------------------------------------------------------------------


async def test_http_refusals_are_the_rest_apis_error_bodies(world: World) -> None:
    app = served(world, max_body=200)
    headers = {**bearer(READER), "Content-Type": "application/json"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        cases = [
            (await c.put(GRAPHQL_PATH, headers=headers), 405, "method_not_allowed"),
            (await c.delete(GRAPHQL_PATH, headers=headers), 405, "method_not_allowed"),
            (await c.post(GRAPHQL_PATH, content=b"{", headers=headers), 400, "invalid"),
            (await c.post(GRAPHQL_PATH, content=b"[]", headers=headers), 400, "invalid"),
            (await c.post(GRAPHQL_PATH, content=b"{}", headers=headers), 400, "invalid"),
            (await c.post(GRAPHQL_PATH, content=b'{"query": 3}', headers=headers), 400, "invalid"),
            (
                await c.post(GRAPHQL_PATH, content=b"[" * 100_000, headers=headers),
                413,
                "too_large",
            ),
            (
                await c.post(
                    GRAPHQL_PATH,
                    content=b"query={__typename}",
                    headers={**bearer(READER), "Content-Type": "application/x-www-form-urlencoded"},
                ),
                415,
                "unsupported_media_type",
            ),
            (
                await c.get(GRAPHQL_PATH, headers={**bearer(READER), "Accept": "text/html"}),
                400,
                "invalid",
            ),
            (await c.get(GRAPHQL_PATH, headers=bearer(READER)), 400, "invalid"),
            (
                await c.get(
                    GRAPHQL_PATH,
                    params={"query": "{ __typename }", "variables": "[" * 3000},
                    headers=bearer(READER),
                ),
                400,
                "invalid",
            ),
            (
                await c.get(
                    GRAPHQL_PATH,
                    params={"query": "{ __typename }", "variables": "[1]"},
                    headers=bearer(READER),
                ),
                400,
                "invalid",
            ),
        ]
    for answer, status, code in cases:
        assert answer.status_code == status, (status, answer.text)
        assert answer.headers["content-type"] == "application/json"
        body = answer.json()
        assert set(body) == {"error"}
        assert set(body["error"]) == {"code", "message", "details"}
        if code is not None:
            assert body["error"]["code"] == code
    assert cases[0][0].headers["allow"] == "GET, POST"


@pytest.mark.parametrize(
    "text",
    [
        "{ releases { ",
        "{ nothing_here }",
        "{ releases { items { no_such_field } } }",
        "mutation { publish }",
        "subscription { events }",
        "{ release(id: true) { id } }",
        "{ release { id } }",
        "query A { __typename } query A { __typename }",
        "{ releases(limit: 99999999999) { items { id } } }",  # not a 32-bit Int
    ],
)
async def test_a_query_that_does_not_validate_is_a_graphql_error(
    http: httpx.AsyncClient, text: str
) -> None:
    answer = await post(http, text)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["data"] is None
    assert body["errors"][0]["message"]


async def test_there_is_nothing_to_mutate() -> None:
    schema = graphql_schema()
    assert schema.as_str().count("type Query") == 1
    assert "type Mutation" not in schema.as_str()
    assert "type Subscription" not in schema.as_str()


# -- limits ------------------------------------------------------------------------------------


def nested(levels: int) -> str:
    """A query nesting ``2 + 3 * levels`` fields: releases, then each release's tasks' release,
    ``levels`` times."""
    inner = "id"
    for _ in range(levels):
        inner = f"tasks {{ items {{ release {{ {inner} }} }} }}"
    return f"{{ releases {{ items {{ {inner} }} }} }}"


async def test_depth_aliases_tokens_and_items_are_limited(world: World) -> None:
    for _ in range(2):  # refused again when its text is in the parse and validation caches
        deep = await errors_of(world, nested(3))  # 2 + 3 * 3 fields deep
        assert "exceeds maximum operation depth" in deep[0]["message"]
    assert "errors" not in await execute_graphql(world.coordinator, world.manager, nested(2))
    aliases = " ".join(f"a{i}: __typename" for i in range(40))
    assert "aliases" in (await errors_of(world, f"{{ {aliases} }}"))[0]["message"]
    many = "{ " + "__typename " * 3000 + "}"
    assert "token" in (await errors_of(world, many))[0]["message"].lower()
    braces = "{" * 5000  # graphql-core's parser is recursive: refused before it nests
    assert await errors_of(world, braces)
    answer = await execute_graphql(
        world.coordinator,
        world.manager,
        "{ a: releases(limit: 3) { items { id } } b: releases(limit: 3) { items { id } } }",
        max_items=4,
    )
    assert len(answer["data"]["a"]["items"]) == 3
    assert answer["data"]["b"] is None
    assert answer["errors"][0]["extensions"]["code"] == "too_large"


async def test_a_read_that_would_list_too_much_is_refused_before_it_is_made(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = []
    events = world.coordinator.events

    async def counted(**filters: Any) -> Any:
        await asyncio.sleep(0)  # as a SQL store's read: the other releases' resolvers run
        reads.append(filters["release_id"])
        return await events(**filters)

    monkeypatch.setattr(world.coordinator, "events", counted)
    text = "{ releases(limit: 5) { items { name events(limit: 1000) { items { id } } } } }"
    answer = await execute_graphql(world.coordinator, world.manager, text, max_items=2000)
    listed = [r["events"] for r in answer["data"]["releases"]["items"]]
    # the releases (3, reserved 5), one release's events (reserved 1000, read while the
    # others ask); the next release's 1000 would pass 2000: refused without reading them,
    # and so the third's
    assert sum(page is not None for page in listed) == 1
    assert len(reads) == 1
    assert {e["extensions"]["code"] for e in answer["errors"]} == {"too_large"}
    assert len(answer["errors"]) == 2
    small = "{ releases(limit: 5) { items { name events(limit: 10) { items { id } } } } }"
    assert "errors" not in await execute_graphql(world.coordinator, world.manager, small)


@FUZZ
@given(
    text=st.text(max_size=200),
    variables=st.one_of(
        st.none(), st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5))
    ),
)
async def test_no_query_is_a_500(world: World, text: str, variables: Any) -> None:
    app = served(world)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        for candidate in (text, "{ releases { items { " + text + " } } }"):
            answer = await c.post(
                GRAPHQL_PATH,
                json={"query": candidate, "variables": variables},
                headers=bearer(READER),
            )
            assert answer.status_code in (200, 400), answer.text
            body = answer.json()
            assert "data" in body or "error" in body


async def test_a_bug_in_a_resolver_is_internal_and_logged(
    world: World, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(**_: Any) -> Any:
        raise RuntimeError("the secret inner detail")

    monkeypatch.setattr(world.coordinator, "list_studies", broken)
    with caplog.at_level(logging.ERROR, logger="release_coordinator.server.graphql"):
        answer = await execute_graphql(
            world.coordinator,
            world.manager,
            "{ studies { items { id } } rollouts { items { id } } }",
        )
    assert answer["data"]["studies"] is None
    assert len(answer["data"]["rollouts"]["items"]) == 1
    (error,) = answer["errors"]
    assert error["message"] == "internal error: RuntimeError"
    assert error["extensions"] == {"code": "internal"}
    assert "the secret inner detail" in caplog.text  # logged, not answered
    assert "the secret inner detail" not in json.dumps(answer)


# -- reads once ----------------------------------------------------------------------------------


async def test_what_a_query_names_many_times_is_read_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: dict[str, int] = {"list_services": 0, "get_release": 0}
    coordinator = world.coordinator
    for name in calls:
        original = getattr(coordinator, name)

        def counting(*args: Any, _original: Any = original, _name: str = name, **kw: Any) -> Any:
            calls[_name] += 1
            return _original(*args, **kw)

        monkeypatch.setattr(coordinator, name, counting)
    text = """{ releases { items {
        tasks { items { task_service { name } release { name } } }
        events { items { release { name } } }
    } } }"""
    got = await query(world, text)
    services = [
        t["task_service"]["name"] for r in got["releases"]["items"] for t in r["tasks"]["items"]
    ]
    assert len(services) == 6  # three releases, two tasks each
    assert calls["list_services"] == 1  # the registry, once for every task
    assert calls["get_release"] == 3  # each release once, for its tasks and its events


# -- SQLite, a host's app, the OpenAPI document, without the extra ----------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The URLs of a coordinator's and a manager's SQL stores: SQLite files, or PostgreSQL
    (a schema of its own, both stores in it)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'rc.db'}", f"sqlite:///{tmp_path / 'rollouts.db'}"
        return
    from sql_support import postgres_schema

    with postgres_schema(request.getfixturevalue("postgres_url")) as url:
        yield url, url


async def test_a_query_over_sql(database: tuple[str, str]) -> None:
    from release_coordinator.storage.sql import SQLRolloutStore, SQLStore

    store = await SQLStore.connect(database[0])
    rollouts = await SQLRolloutStore.connect(database[1])
    coordinator = Coordinator(store, HttpTransport())
    await coordinator.close()
    try:
        w = await World(coordinator, RolloutManager(rollouts)).fill()
        text = """{
            releases(state: ["waiting"]) { items { name tasks { items { task_service { url } } } } }
            study(id: "SD_1") { last_published_release { name } }
            rollout(id: "42") { status { statuses } } }"""
        got = await query(w, text)
        assert {r["name"] for r in got["releases"]["items"]} == {"first", "second"}
        urls = {
            t["task_service"]["url"] for r in got["releases"]["items"] for t in r["tasks"]["items"]
        }
        assert "https://svc:***@127.0.0.1:9/r2" in urls
        assert got["study"]["last_published_release"] == {"name": "old"}
        assert got["rollout"]["status"]["statuses"] == {"Doing": 2}
    finally:
        await coordinator.close()
        await rollouts.close()
        await store.close()


async def test_graphql_app_in_a_hosts_app(world: World) -> None:
    host = Starlette(
        routes=[Route("/api/graphql", graphql_app(world.coordinator, operator_tokens=[ADMIN]))]
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=host), base_url="http://t") as c:
        answer = await c.post(
            "/api/graphql", json={"query": "{ releases { items { id } } }"}, headers=bearer(ADMIN)
        )
        assert answer.status_code == 200
        assert len(answer.json()["data"]["releases"]["items"]) == 3
        assert (await c.post("/api/graphql", json={"query": "{ __typename }"})).status_code == 401
    with pytest.raises(ConfigurationError, match="needs operator tokens"):
        graphql_app(world.coordinator)
    with pytest.raises(ConfigurationError, match="max_body"):
        graphql_app(world.coordinator, allow_anonymous=True, max_body=0)
    with pytest.raises(ConfigurationError, match="max_depth"):
        graphql_schema(max_depth=0)


async def test_the_served_document_lists_graphql_and_its_answers_match(
    http: httpx.AsyncClient,
) -> None:
    document = (await http.get("/openapi.json")).json()
    validate_openapi(document)
    assert document == combined_openapi(graphql=True)
    assert GRAPHQL_PATH not in combined_openapi()["paths"]
    item = document["paths"][GRAPHQL_PATH]
    assert set(item) == {"get", "post"}
    for operation in item.values():
        assert operation["x-required-role"] == "reader"
        assert {"200", "400", "401", "403"} <= set(operation["responses"])
    registry: Registry[Any] = Registry().with_resource(
        "urn:openapi", Resource.from_contents(document, default_specification=DRAFT202012)
    )

    def check(answer: httpx.Response, method: str) -> None:
        responses = item[method]["responses"]
        assert str(answer.status_code) in responses, answer.status_code
        pointer = f"/paths/~1graphql/{method}/responses/{answer.status_code}"
        if "$ref" in responses[str(answer.status_code)]:
            pointer = responses[str(answer.status_code)]["$ref"][1:]
        schema = {"$ref": f"urn:openapi#{pointer}/content/application~1json/schema"}
        Draft202012Validator(schema, registry=registry).validate(answer.json())

    json_body = {**bearer(READER), "content-type": "application/json"}
    check(await post(http, "{ releases { items { id } } }"), "post")
    check(await post(http, '{ release(id: "nope") { id } }'), "post")
    check(await http.post(GRAPHQL_PATH, json={"query": "{ __typename }"}), "post")
    check(await post(http, "{ __typename }", CALLBACK), "post")
    check(await http.post(GRAPHQL_PATH, content=b"{", headers=json_body), "post")
    check(await http.post(GRAPHQL_PATH, content=b"x", headers=bearer(READER)), "post")
    query_string = {"query": "{ __typename }"}
    check(await http.get(GRAPHQL_PATH, params=query_string, headers=bearer(READER)), "get")
    check(await http.get(GRAPHQL_PATH, headers={**bearer(READER), "accept": "text/html"}), "get")


async def test_serve_without_graphql(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    app = served(world, graphql=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await post(c, "{ __typename }")).status_code == 404
        assert GRAPHQL_PATH not in (await c.get("/openapi.json")).json()["paths"]
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "strawberry" else real(name, *a),
    )
    with pytest.raises(ConfigurationError, match=r"release-coordinator\[graphql\]"):
        served(world, graphql=True)
    app = served(world)  # not installed: simply absent
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await post(c, "{ __typename }")).status_code == 404


def test_the_package_and_serve_import_without_strawberry() -> None:
    code = (
        "import sys; sys.modules['strawberry'] = None; "
        "import release_coordinator, release_coordinator.server.service_app as s; "
        "from release_coordinator.server.openapi import combined_openapi; "
        "combined_openapi(graphql=True); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
    plain = "import sys, release_coordinator; print('strawberry' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", plain], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_a_field_the_rest_api_gains_is_left_out_until_the_type_has_it(world: World) -> None:
    from release_coordinator.server.coordinator_json import release_json
    from release_coordinator.server.graphql_context import made
    from release_coordinator.server.graphql_types import ReleaseNode

    release = await world.coordinator.get_release(world.ids["first"])
    node = made(ReleaseNode, {**release_json(release), "added_later": 1}, record=release)
    assert node.name == "first"
    assert not hasattr(node, "added_later")
