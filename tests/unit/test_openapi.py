"""The OpenAPI documents agree with the apps, not merely load.

- each document is valid OpenAPI 3.1 (``openapi-spec-validator``), every schema is valid JSON
  Schema 2020-12 and every ``$ref`` resolves;
- the routes each app registers (paths and methods) are exactly the documented operations;
- real answers of the apps, for a representative request of every operation (its successes
  and its refusals), have a documented status, content type and headers, and their bodies
  validate against the documented schema; the JSON bodies the apps accepted validate against
  the documented request schema. Every documented operation is exercised, with every
  refusal status it documents but the few that need a failing store (503).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.routing import Route

from release_coordinator import (
    Coordinator,
    ReleaseState,
    RolloutManager,
    TaskChange,
    TaskServiceKit,
    TaskState,
    __version__,
)
from release_coordinator.coordinator.wire import MAX_TEXT
from release_coordinator.errors import StorageError
from release_coordinator.rollout import results
from release_coordinator.rollout.models import RolloutState
from release_coordinator.server import coordinator_app as coordinator_module
from release_coordinator.server import openapi_parts as openapi
from release_coordinator.server.coordinator_app import coordinator_app
from release_coordinator.server.openapi import (
    OPENAPI_PATH,
    combined_openapi,
    coordinator_openapi,
    rollout_openapi,
)
from release_coordinator.server.rollout_app import rollout_app

from .test_coordinator_app import _SETUP, OPS, PORTAL, SEARCH, World, static_world
from .test_notes_and_studies import exercise_notes_and_studies
from .test_publish_gates import exercise_gates
from .test_rollout_app import Node, as_json, multipart, strategy
from .test_rollout_manager import EUROPE, INSIDE, OUTSIDE, result, square
from .test_webhooks import exercise_webhooks

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
DOCUMENTS: dict[str, Callable[[], dict[str, Any]]] = {
    "coordinator": coordinator_openapi,
    "rollout": rollout_openapi,
    "combined": combined_openapi,
}


# -- the document as a whole ------------------------------------------------------------------


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(path, METHOD, operation)`` of every documented operation."""
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method.upper(), item[method]


def walk(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """Every ``(pointer, value)`` of a JSON value, depth first."""
    yield where, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{where}/{str(key).replace('~', '~0').replace('/', '~1')}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{where}/{i}")


def resolve(document: dict[str, Any], pointer: str) -> Any:
    node: Any = document
    for part in pointer.lstrip("/").split("/"):
        key = part.replace("~1", "/").replace("~0", "~")
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node


def schemas_in(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema the document holds: components, parameters, bodies, answers, headers."""
    for name, schema in document["components"]["schemas"].items():
        yield f"/components/schemas/{name}", schema
    for pointer, node in walk(document):
        if pointer.startswith("/components/schemas/"):
            continue
        if pointer.endswith("/schema") and isinstance(node, dict):
            yield pointer, node


@pytest.mark.parametrize("name", list(DOCUMENTS))
def test_the_document_is_valid_openapi_3_1(name: str) -> None:
    document = DOCUMENTS[name]()
    validate_openapi(document)
    assert document["openapi"] == "3.1.0"
    assert document["info"]["version"] == __version__
    assert json.loads(json.dumps(document, allow_nan=False)) == document  # strict JSON


@pytest.mark.parametrize("name", list(DOCUMENTS))
def test_every_schema_is_json_schema_2020_12_and_every_ref_resolves(name: str) -> None:
    document = DOCUMENTS[name]()
    count = 0
    for _, schema in schemas_in(document):
        Draft202012Validator.check_schema(schema)
        count += 1
    assert count > 50
    refs = [(p, n["$ref"]) for p, n in walk(document) if isinstance(n, dict) and "$ref" in n]
    assert refs
    for pointer, ref in refs:
        assert ref.startswith("#/components/"), (pointer, ref)
        resolve(document, ref[1:])  # KeyError if it names nothing


@pytest.mark.parametrize("name", list(DOCUMENTS))
def test_every_component_is_used_and_operation_ids_are_unique(name: str) -> None:
    document = DOCUMENTS[name]()
    used = {n["$ref"] for _, n in walk(document) if isinstance(n, dict) and "$ref" in n}
    for section in ("schemas", "responses", "parameters"):
        for entry in document["components"][section]:
            if entry in ("Error", "Problem"):  # the generic error shape; Problem is used by it
                continue
            assert f"#/components/{section}/{entry}" in used, f"{section}.{entry} is never used"
    ids = [op["operationId"] for _, _, op in operations(document)]
    assert len(ids) == len(set(ids))
    schemes = set(document["components"]["securitySchemes"])
    for _, _, op in operations(document):
        for requirement in op.get("security", document["security"]):
            assert set(requirement) <= schemes


def test_every_operation_documents_its_answers() -> None:
    for path, method, op in operations(combined_openapi()):
        statuses = set(op["responses"])
        assert any(s.startswith("2") for s in statuses), (path, method)
        if op.get("security") == []:  # no token: no refusal but the router's
            continue
        assert {"401", "403"} & statuses, (path, method)
        if "requestBody" in op:
            assert {"400", "413"} <= statuses, (path, method)
        if "{" in path:
            assert "404" in statuses, (path, method)
        if any(p.get("$ref", "").endswith(("/limit", "/offset")) for p in op.get("parameters", [])):
            assert {"400", "422"} <= statuses, (path, method)


def test_a_document_is_a_new_value_every_time() -> None:
    first = coordinator_openapi()
    first["paths"].clear()
    first["components"]["schemas"]["Release"]["properties"].clear()
    second = coordinator_openapi()
    assert second["paths"]
    assert second["components"]["schemas"]["Release"]["properties"]
    assert coordinator_openapi("9.9.9")["info"]["version"] == "9.9.9"


def test_the_limits_are_the_apps() -> None:
    assert openapi._MAX_DESCRIPTION == coordinator_module.MAX_DESCRIPTION
    assert openapi._MAX_URL == coordinator_module.MAX_URL
    assert openapi._MAX_ITEMS == coordinator_module.MAX_ITEMS
    assert openapi._MAX_SUMMARIES == results.MAX_SUMMARIES
    assert MAX_TEXT == 256


def test_the_combined_document_holds_both() -> None:
    coordinator, rollout = coordinator_openapi(), rollout_openapi()
    combined = combined_openapi()
    assert set(combined["paths"]) == set(coordinator["paths"]) | set(rollout["paths"])
    for document in (coordinator, rollout):
        for path, item in document["paths"].items():
            if path != OPENAPI_PATH:
                assert combined["paths"][path] == item
        for section, entries in document["components"].items():
            for name, entry in entries.items():
                assert combined["components"][section][name] == entry
    prefixed = combined_openapi(coordinator_prefix="/rc", rollout_prefix="/edge")
    validate_openapi(prefixed)
    assert "/rc/releases" in prefixed["paths"]
    assert "/edge/poll" in prefixed["paths"]
    assert OPENAPI_PATH in prefixed["paths"]
    for bad in ("rc", "/rc/"):
        with pytest.raises(ValueError, match="prefix"):
            combined_openapi(coordinator_prefix=bad)
    shared = combined_openapi(coordinator_prefix="/api", rollout_prefix="/api")
    assert len(shared["paths"]) == len(combined["paths"])  # their paths never clash


# -- the routes ---------------------------------------------------------------------------------

_CONVERTOR = re.compile(r"\{(\w+):\w+\}")


def app_operations(app: Any) -> set[tuple[str, str]]:
    """``(path, METHOD)`` of every route of a Starlette app (HEAD, which Starlette adds to
    every GET, left out)."""
    found = set()
    for route in app.routes:
        assert isinstance(route, Route), route
        path = _CONVERTOR.sub(r"{\1}", route.path)
        for method in route.methods or ():
            if method != "HEAD":
                found.add((path, method))
    return found


def documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, method, _ in operations(document)}


def test_the_coordinator_routes_are_the_documented_ones() -> None:
    app = coordinator_app(Coordinator(), allow_anonymous=True)
    assert app_operations(app) == documented(coordinator_openapi())


def test_the_rollout_routes_are_the_documented_ones() -> None:
    app = rollout_app(RolloutManager(), allow_anonymous=True)
    assert app_operations(app) == documented(rollout_openapi())


def test_path_parameters_are_the_routes() -> None:
    document = combined_openapi()
    for path, _, op in operations(document):
        names = set(re.findall(r"\{(\w+)\}", path))
        item = document["paths"][path]
        params = [*item.get("parameters", []), *op.get("parameters", [])]
        resolved = [resolve(document, p["$ref"][1:]) if "$ref" in p else p for p in params]
        assert {p["name"] for p in resolved if p["in"] == "path"} == names, path


# -- answers against the document ---------------------------------------------------------------


class Checker:
    """Checks answers (and accepted request bodies) against a document, and counts which
    operations answered which statuses."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource("urn:openapi", resource)
        self.seen: dict[tuple[str, str], set[int]] = {}
        self._validators: dict[str, Draft202012Validator] = {}

    def validator(self, pointer: str) -> Draft202012Validator:
        if pointer not in self._validators:
            self._validators[pointer] = Draft202012Validator(
                {"$ref": f"urn:openapi#{pointer}"},
                registry=self.registry,
                format_checker=Draft202012Validator.FORMAT_CHECKER,
            )
        return self._validators[pointer]

    def operation(self, path: str, method: str) -> tuple[str, dict[str, Any]]:
        pointer = f"/paths/{path.replace('~', '~0').replace('/', '~1')}/{method.lower()}"
        return pointer, resolve(self.document, pointer)

    def errors(self, pointer: str, value: Any) -> list[str]:
        found = self.validator(pointer).iter_errors(value)
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in found]

    def check(self, response: httpx.Response, path: str, method: str) -> None:
        """``response`` is a documented answer of the operation ``method path``."""
        pointer, op = self.operation(path, method)
        status = str(response.status_code)
        assert status in op["responses"], (
            f"{method} {path} answered {status}, documented: {sorted(op['responses'])};"
            f" {response.text[:300]}"
        )
        answer = op["responses"][status]
        where = f"{pointer}/responses/{status}"
        if "$ref" in answer:
            where = answer["$ref"][1:]
            answer = resolve(self.document, where)
        for header in answer.get("headers", {}):
            assert header.lower() in response.headers, (method, path, status, header)
            value = response.headers[header.lower()]
            assert not self.errors(f"{where}/headers/{header}/schema", value), (header, value)
        content = answer.get("content")
        if content is None:
            assert response.content == b"", (method, path, status)
        else:
            media = response.headers["content-type"].partition(";")[0].strip()
            assert media in content, (method, path, status, media, list(content))
            if media == "application/json":
                escaped = media.replace("/", "~1")
                problems = self.errors(f"{where}/content/{escaped}/schema", response.json())
                assert not problems, (method, path, status, problems, response.text[:500])
        self.seen.setdefault((path, method), set()).add(response.status_code)

    def check_request(self, path: str, method: str, body: Any, media: str = "") -> None:
        """``body`` (that the app accepted) validates against the documented request body."""
        pointer, _ = self.operation(path, method)
        media = media or "application/json"
        escaped = media.replace("/", "~1")
        problems = self.errors(f"{pointer}/requestBody/content/{escaped}/schema", body)
        assert not problems, (method, path, problems)

    def assert_covered(self, exempt: dict[tuple[str, str, int], str]) -> None:
        """Every operation answered every status it documents at least once, but those of
        ``exempt`` (``(path, METHOD, status)``: why it cannot be provoked here)."""
        missing = []
        for path, method, op in operations(self.document):
            seen = self.seen.get((path, method), set())
            for status in sorted(int(s) for s in op["responses"]):
                if status not in seen and (path, method, status) not in exempt:
                    missing.append(f"{method} {path} {status}")
        assert missing == [], "never answered: " + ", ".join(missing)
        stale = [key for key in exempt if key[2] in self.seen.get(key[:2], set())]
        assert stale == [], f"exempt, yet answered: {stale}"


async def refuse_tokens(
    client: Client,
    broken: Client,
    document: dict[str, Any],
    ids: dict[str, str],
    other: dict[str, str],
) -> None:
    """Every operation that needs an operator token answers 401 without one, 403 to the
    token of a service or child (``other``), and 503 when the token verifier fails."""
    for path, method, op in operations(document):
        if op.get("security", document["security"]) != [{"operatorToken": []}]:
            continue
        concrete = path.format(**ids)
        await client(method, path, 401, path=concrete, headers={"Authorization": ""})
        await client(method, path, 403, path=concrete, headers=other)
        await broken(method, path, 503, path=concrete, headers=OPS)


class Client:
    """An httpx client of one app whose every answer goes through a Checker."""

    def __init__(self, app: Any, checker: Checker, headers: dict[str, str] | None = None):
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api.test", headers=headers
        )
        self.checker = checker

    async def __call__(
        self,
        method: str,
        template: str,
        status: int,
        *,
        path: str | None = None,
        accepted: bool = True,
        **options: Any,
    ) -> httpx.Response:
        response = await self.http.request(method, path or template, **options)
        assert response.status_code == status, (method, path or template, response.text[:500])
        self.checker.check(response, template, method)
        if 200 <= status < 300 and accepted and "json" in options:
            self.checker.check_request(template, method, options["json"])
        return response

    async def aclose(self) -> None:
        await self.http.aclose()


async def advance(world: World, release_id: str, to: ReleaseState) -> None:
    """Move a new (waiting) release and its tasks along the normal path up to ``to``."""
    store = world.coordinator.store
    path = [
        (ReleaseState.WAITING, ReleaseState.INITIALIZING, TaskState.WAITING, TaskState.INITIALIZED),
        (ReleaseState.INITIALIZING, ReleaseState.RUNNING, TaskState.INITIALIZED, TaskState.RUNNING),
        (ReleaseState.RUNNING, ReleaseState.STAGED, TaskState.RUNNING, TaskState.STAGED),
    ]
    tasks = await world.coordinator.list_tasks(release_id)
    for source, dest, task_source, task_dest in path:
        changes = [TaskChange(t.id, frozenset({task_source}), task_dest) for t in tasks]
        await store.change_tasks(changes)
        await store.transition_release(release_id, {source}, dest, _SETUP)
        if dest is to:
            return


COORDINATOR_EXEMPT: dict[tuple[str, str, int], str] = {}
ROLLOUT_EXEMPT: dict[tuple[str, str, int], str] = {
    ("/release", "GET", 409): "the child's state kept changing under other writers",
}


class FailingStore:
    """A rollout store whose every call fails as a store whose database is gone."""

    shared = False

    def __getattr__(self, name: str) -> Any:
        async def fail(*args: Any, **kwargs: Any) -> Any:
            raise StorageError(f"the database is gone ({name})")

        return fail


@pytest.mark.anyio
async def test_the_coordinator_answers_what_its_document_says() -> None:
    world, ids = await static_world()
    checker = Checker(coordinator_openapi())
    c = Client(world.app, checker, OPS)
    small = Client(
        coordinator_app(world.coordinator, tokens=["op-token"], max_body=16), checker, OPS
    )

    def failing(token: str) -> bool:
        raise RuntimeError("the identity provider is down")

    broken = Client(coordinator_app(world.coordinator, verifier=failing), checker, OPS)
    sid, rid, tid, done = ids["sid"], ids["rid"], ids["tid"], ids["done"]
    coordinator = world.coordinator
    try:
        # status and the document itself
        await c("GET", "/status", 200, headers={"Authorization": ""})
        served = await c("GET", OPENAPI_PATH, 200, headers={"Authorization": ""})
        assert served.json() == coordinator_openapi()

        # task services
        await c("GET", "/task-services", 200, params={"enabled": "true", "limit": 1})
        await c("GET", "/task-services", 400, params={"limit": "x"})
        await c("GET", "/task-services", 422, params={"enabled": "maybe"})
        await c("GET", "/task-services", 401, headers={"Authorization": "Bearer nope"})
        await c("GET", "/task-services", 403, headers=PORTAL)
        await broken("GET", "/task-services", 503)
        files = TaskServiceKit("files")
        world.transport.add("memory://files", files)
        new = {"name": "files", "url": "memory://files", "enabled": False, "check": True}
        created = await c("POST", "/task-services", 201, json=new)
        nid = created.json()["id"]
        taken = {"name": "again", "url": "memory://portal", "check": False}
        await c("POST", "/task-services", 409, json=taken)
        await c("POST", "/task-services", 400, content=b"[1, 2]")
        await c("POST", "/task-services", 422, json={"name": "", "url": 5}, accepted=False)
        await small("POST", "/task-services", 413, json={"name": "x" * 20}, headers=OPS)
        await c("POST", "/task-services", 401, json=new, headers={"Authorization": ""})
        await c("POST", "/task-services", 403, json=new, headers=SEARCH)
        one = "/task-services/{service_id}"
        await c("GET", one, 200, path=f"/task-services/{sid}")
        await c("GET", one, 404, path="/task-services/TS_nope")
        await c("GET", one, 401, path=f"/task-services/{sid}", headers={"Authorization": ""})
        await c("GET", one, 403, path=f"/task-services/{sid}", headers=PORTAL)
        await c("PATCH", one, 200, path=f"/task-services/{nid}", json={"name": "file-server"})
        await c("PATCH", one, 400, path=f"/task-services/{nid}", content=b"{")
        await c("PATCH", one, 422, path=f"/task-services/{nid}", json={"url": 5}, accepted=False)
        await c("PATCH", one, 404, path="/task-services/TS_nope", json={"name": "x"})
        await c("PATCH", one, 409, path=f"/task-services/{nid}", json={"name": "portal"})
        await small("PATCH", one, 413, path=f"/task-services/{nid}", json={"name": "y" * 20})
        for action in ("enable", "disable", "health"):
            template = f"/task-services/{{service_id}}/{action}"
            await c("POST", template, 200, path=f"/task-services/{nid}/{action}")
            await c("POST", template, 200, path=f"/task-services/{nid}/{action}", json={})
            await c("POST", template, 400, path=f"/task-services/{nid}/{action}", content=b"1")
            await c("POST", template, 422, path=f"/task-services/{nid}/{action}", json={"x": 1})
            await c("POST", template, 404, path=f"/task-services/TS_nope/{action}")
            await c("POST", template, 403, path=f"/task-services/{nid}/{action}", headers=PORTAL)
            await small(
                "POST",
                template,
                413,
                path=f"/task-services/{nid}/{action}",
                content=b" " * 20,
                headers=OPS,
            )
        await c("DELETE", one, 409, path=f"/task-services/{sid}")  # the running release uses it
        await c("DELETE", one, 204, path=f"/task-services/{nid}")
        await c("DELETE", one, 404, path=f"/task-services/{nid}")

        # releases
        await c("GET", "/releases", 200, params={"state": "running,canceled", "tag": "t"})
        await c("GET", "/releases", 200, params=[("state", "running"), ("author", "ops")])
        await c("GET", "/releases", 422, params={"state": "sleeping"})
        await c("GET", "/releases", 400, params={"offset": "-x"})
        fresh = {"name": "nightly", "studies": ["SD_1"], "tags": ["t"], "description": "a\nb"}
        made = (await c("POST", "/releases", 201, json=fresh)).json()
        await c("POST", "/releases", 422, json={"name": " ", "tags": [""]}, accepted=False)
        await c("POST", "/releases", 400, content=b'"x"')
        await small("POST", "/releases", 413, json={"name": "x" * 20})
        one = "/releases/{release_id}"
        await c("GET", one, 200, path=f"/releases/{rid}")
        await c("GET", one, 404, path="/releases/RE_nope")
        await c("PATCH", one, 200, path=f"/releases/{rid}", json={"tags": ["a", "b"]})
        await c("PATCH", one, 200, path=f"/releases/{rid}", json={})
        await c("PATCH", one, 422, path=f"/releases/{rid}", json={"name": 1}, accepted=False)
        await c("PATCH", one, 404, path="/releases/RE_nope", json={"name": "x"})
        await c("PATCH", one, 400, path=f"/releases/{rid}", content=b"nope")
        await small(
            "PATCH", one, 413, path=f"/releases/{rid}", json={"name": "z" * 20}, headers=OPS
        )
        await advance(world, made["id"], ReleaseState.STAGED)
        publish = "/releases/{release_id}/publish"
        await c("POST", publish, 409, path=f"/releases/{rid}/publish")
        await c("POST", publish, 200, path=f"/releases/{made['id']}/publish")
        await c("POST", publish, 404, path="/releases/RE_nope/publish")
        await c("POST", publish, 422, path=f"/releases/{rid}/publish", json={"now": True})
        await c("POST", publish, 400, path=f"/releases/{rid}/publish", content=b"[")
        await small("POST", publish, 413, path=f"/releases/{rid}/publish", content=b" " * 20)
        published = await world.coordinator.store.transition_release(
            made["id"], {ReleaseState.PUBLISHING}, ReleaseState.PUBLISHED, _SETUP
        )
        again = "/releases/{release_id}/run-again"
        await c("POST", again, 409, path=f"/releases/{rid}/run-again")
        copy = (await c("POST", again, 201, path=f"/releases/{done}/run-again")).json()
        await c("POST", again, 404, path="/releases/RE_nope/run-again")
        await c("POST", again, 400, path=f"/releases/{done}/run-again", content=b"\xff")
        await c("POST", again, 422, path=f"/releases/{done}/run-again", json={"x": 1})
        await small("POST", again, 413, path=f"/releases/{done}/run-again", content=b" " * 20)
        cancel = "/releases/{release_id}/cancel"
        await c("POST", cancel, 422, path=f"/releases/{rid}/cancel", json={"reason": 5})
        await c("POST", cancel, 400, path=f"/releases/{rid}/cancel", content=b"[]")
        await c("POST", cancel, 404, path="/releases/RE_nope/cancel")
        await small("POST", cancel, 413, path=f"/releases/{rid}/cancel", json={"reason": "x" * 9})
        await c("POST", cancel, 409, path=f"/releases/{published.id}/cancel")
        await c("POST", cancel, 200, path=f"/releases/{copy['id']}/cancel", json={"reason": "r"})

        # tasks
        tasks = "/releases/{release_id}/tasks"
        await c("GET", tasks, 200, path=f"/releases/{rid}/tasks", params={"state": "running"})
        await c("GET", tasks, 404, path="/releases/RE_nope/tasks")
        await c("GET", tasks, 422, path=f"/releases/{rid}/tasks", params={"state": "x"})
        await c("GET", tasks, 400, path=f"/releases/{rid}/tasks", params={"limit": "1.5"})
        await c("GET", "/tasks", 200, params={"release_id": rid})
        await c("GET", "/tasks", 400)
        await c("GET", "/tasks", 404, params={"release_id": "RE_nope"})
        await c("GET", "/tasks", 422, params={"release_id": rid, "limit": 0})
        portal_task = next(
            t for t in await coordinator.list_tasks(rid) if t.service_id == ids["sid"]
        )
        other_task = next(t for t in await coordinator.list_tasks(rid) if t.id != portal_task.id)
        in_release = "/releases/{release_id}/tasks/{task_id}"
        await c("GET", in_release, 200, path=f"/releases/{rid}/tasks/{tid}")
        await c("GET", in_release, 404, path=f"/releases/{done}/tasks/{tid}")
        await c("GET", "/tasks/{task_id}", 200, path=f"/tasks/{tid}")
        await c("GET", "/tasks/{task_id}", 404, path="/tasks/TA_nope")
        await c("GET", "/tasks/{task_id}", 403, path=f"/tasks/{tid}", headers=PORTAL)
        for template, prefix in ((in_release, f"/releases/{rid}"), ("/tasks/{task_id}", "")):
            mine = f"{prefix}/tasks/{portal_task.id}"
            theirs = f"{prefix}/tasks/{other_task.id}"
            report = {"state": "running", "progress": "40%"}
            await c("PATCH", template, 200, path=mine, json=report, headers=PORTAL)
            await c("PATCH", template, 403, path=theirs, json=report, headers=PORTAL)
            await broken("PATCH", template, 503, path=mine, json=report)
            await c("PATCH", template, 401, path=mine, json=report, headers={"Authorization": ""})
            await c("PATCH", template, 409, path=mine, json={"state": "pending"})
            await c("PATCH", template, 422, path=mine, json={"state": "x"}, accepted=False)
            await c("PATCH", template, 404, path=f"{prefix}/tasks/TA_nope", json=report)
            await c("PATCH", template, 400, path=mine, content=b"{]")
            await small("PATCH", template, 413, path=mine, json={"state": "staged"}, headers=OPS)
        await c(
            "PATCH",
            "/tasks/{task_id}",
            200,
            path=f"/tasks/{portal_task.id}",
            json={"state": "staged", "progress": 100},
        )

        # events
        await c(
            "GET", "/events", 200, params={"release_id": rid, "type": "info", "kind": "transition"}
        )
        await c("GET", "/events", 200, params={"since": "2000-01-01T00:00:00Z", "after_id": 1})
        await c("GET", "/events", 400, params={"since": "yesterday"})
        await c("GET", "/events", 422, params={"after_id": -1})

        # release notes and studies (the running release names SD_1)
        more = await exercise_notes_and_studies(c, small, rid, "SD_1")
        more |= await exercise_webhooks(c, small)
        await exercise_gates(c, small)

        every = {"service_id": sid, "release_id": rid, "task_id": tid, **more}
        await refuse_tokens(c, broken, checker.document, every, PORTAL)
    finally:
        for client in (c, small, broken):
            await client.aclose()
        await world.aclose()
        await files.aclose()
    checker.assert_covered(COORDINATOR_EXEMPT)


@pytest.mark.anyio
async def test_the_rollout_manager_answers_what_its_document_says() -> None:
    checker = Checker(rollout_openapi())
    node = Node()
    guarded = Node(child_tokens=True)
    c = Client(node.app, checker)
    t = Client(guarded.app, checker)
    small = Client(
        rollout_app(node.manager, operator_tokens=["op-token"], max_body=40, max_upload=100),
        checker,
    )

    def failing(token: str) -> bool:
        raise RuntimeError("the identity provider is down")

    broken = Client(rollout_app(node.manager, verifier=failing), checker, OPS)
    gone = Client(rollout_app(RolloutManager(FailingStore()), allow_anonymous=True), checker)
    try:
        served = await c("GET", OPENAPI_PATH, 200)
        assert served.json() == rollout_openapi()

        # operator API: uploads
        await c("POST", "/rollouts", 201, headers=OPS, **multipart())
        checker.check_request(
            "/rollouts",
            "POST",
            {"strategy": strategy(), "archive": "", "rollout": {"target": EUROPE}},
            "multipart/form-data",
        )
        policy = {"type": "waves", "sizes": [0.5, 1], "min_finished": 2, "barrier_timeout": 60}
        draft = as_json("43", name="second", priority=3, match="within", start=False, policy=policy)
        await c("POST", "/rollouts", 201, headers=OPS, json=draft)
        groups = {"type": "location_sequential", "groups": [square(0, 40, 5)]}
        await c("POST", "/rollouts", 201, headers=OPS, json=as_json("44", policy=groups))
        await c("POST", "/rollouts", 409, headers=OPS, **multipart())
        await c(
            "POST",
            "/rollouts",
            415,
            headers={**OPS, "Content-Type": "text/yaml"},
            content=strategy().encode(),
        )
        bad = as_json("45", match="near", priority=2**40)
        await c("POST", "/rollouts", 422, headers=OPS, json=bad, accepted=False)
        await c(
            "POST",
            "/rollouts",
            400,
            headers={**OPS, "Content-Type": "multipart/form-data; boundary=XYZ"},
            content=b"--XYZ\r\nno header line\r\n\r\nx\r\n--XYZ--",
        )
        await small("POST", "/rollouts", 413, headers=OPS, **multipart("46"))
        await c("POST", "/rollouts", 401, json=draft)
        await broken("POST", "/rollouts", 503, json=draft)

        # the child protocol, open
        poll = {"id": "", "geographic_area": INSIDE, "number_of_children": 0}
        child = (await c("POST", "/poll", 200, json=poll)).json()["id"]
        relay = {"id": "relay", "geographic_area": EUROPE, "number_of_children": 3}
        answer = (await c("POST", "/poll", 200, json=relay)).json()
        assert "target_area" in answer
        await c("POST", "/poll", 400, json={"geographic_area": square(200, 0)}, accepted=False)
        await c("POST", "/poll", 400, content=b"NaN")
        await small("POST", "/poll", 413, json={**poll, "id": "x" * 50})
        await c("GET", "/release", 200, params={"childID": child, "releaseID": "42"})
        await c("GET", "/release", 400, params={"childID": child})
        await c("GET", "/release", 404, params={"childID": child, "releaseID": "7"})
        await c("GET", "/release/functions/{release_id}", 200, path="/release/functions/42")
        await c("GET", "/release/functions/{release_id}", 404, path="/release/functions/7")
        await c("GET", "/release/functions/{release_id}", 400, path="/release/functions/")
        await c("POST", "/result", 200, json=result(child, "canary-10", 2))
        await c("POST", "/result", 409, json=result(child, "canary-10", 4, "ab-50"))
        await c("POST", "/result", 400, json={"id": child}, accepted=False)
        await c("POST", "/result", 404, json=result("ghost", "canary-10", 2))
        await small("POST", "/result", 413, json=result(child, "canary-10", 2))
        ask = {"id": child, "strategy_id": 42, "stage_name": "canary-10"}
        await c("POST", "/end_stage", 200, json=ask)
        await c("POST", "/end_stage", 400, json={"id": child, "strategy_id": "42"}, accepted=False)
        await c("POST", "/end_stage", 404, json={**ask, "stage_name": "nope"})
        await small("POST", "/end_stage", 413, json={**ask, "id": "x" * 50})

        # the child protocol, over a store that fails
        await gone("POST", "/poll", 503, json=poll)
        await gone("GET", "/release", 503, params={"childID": child, "releaseID": "42"})
        await gone("GET", "/release/functions/{release_id}", 503, path="/release/functions/42")
        await gone("POST", "/result", 503, json=result(child, "canary-10", 2))
        await gone("POST", "/end_stage", 503, json=ask)

        # the child protocol, with child tokens
        await t("POST", "/rollouts", 201, headers=OPS, json=as_json())
        first = (await t("POST", "/poll", 200, json=poll)).json()
        other = (await t("POST", "/poll", 200, json={**poll, "geographic_area": OUTSIDE})).json()
        mine = {"Authorization": f"Bearer {first['token']}"}
        theirs = {"Authorization": f"Bearer {other['token']}"}
        cid = first["id"]
        again = {**poll, "id": cid}
        await t("POST", "/poll", 401, json=again)
        await t("POST", "/poll", 403, json=again, headers=theirs)
        await t("POST", "/poll", 200, json=again, headers=mine)
        release = {"childID": cid, "releaseID": "42"}
        await t("GET", "/release", 401, params=release)
        await t("GET", "/release", 403, params=release, headers=theirs)
        await t("GET", "/release", 200, params=release, headers=mine)
        functions = "/release/functions/{release_id}"
        await t("GET", functions, 401, path="/release/functions/42")
        named = {"childID": cid}
        await t("GET", functions, 403, path="/release/functions/42", params=named, headers=theirs)
        await t("GET", functions, 200, path="/release/functions/42", params=named, headers=mine)
        await t("GET", functions, 200, path="/release/functions/42", headers=theirs)  # no name
        await c("GET", functions, 400, path="/release/functions/42", params={"childID": "x" * 300})
        report = result(cid, "canary-10", 2)
        await t("POST", "/result", 401, json=report)
        await t("POST", "/result", 403, json=report, headers=theirs)
        await t("POST", "/result", 200, json=report, headers=mine)
        ask = {"id": cid, "strategy_id": "42", "stage_name": "canary-10"}
        await t("POST", "/end_stage", 401, json=ask)
        await t("POST", "/end_stage", 403, json=ask, headers=theirs)

        # operator API: reading
        await c("GET", "/rollouts", 200, headers=OPS, params={"state": "active,draft"})
        await c("GET", "/rollouts", 422, headers=OPS, params={"state": "done"})
        await c("GET", "/rollouts", 400, headers=OPS, params={"limit": "many"})
        await c("GET", "/rollouts", 401)
        await t("GET", "/rollouts", 403, headers=mine)
        one = "/rollouts/{rollout_id}"
        await c("GET", one, 200, path="/rollouts/42", headers=OPS)
        await c("GET", one, 404, path="/rollouts/7", headers=OPS)
        await c("GET", one, 401, path="/rollouts/42")
        status = "/rollouts/{rollout_id}/status"
        await c("GET", status, 200, path="/rollouts/42/status", headers=OPS)
        await c(
            "GET",
            status,
            200,
            path="/rollouts/42/status",
            headers=OPS,
            params={"bbox": "0,40,10,50"},
        )
        area = json.dumps(square(4, 44, 3))
        await c("GET", status, 200, path="/rollouts/42/status", headers=OPS, params={"area": area})
        await c(
            "GET", status, 400, path="/rollouts/42/status", headers=OPS, params={"bbox": "1,2,3"}
        )
        await c("GET", status, 404, path="/rollouts/7/status", headers=OPS)
        children = "/rollouts/{rollout_id}/children"
        await c(
            "GET", children, 200, path="/rollouts/42/children", headers=OPS, params={"status": "2"}
        )
        await c(
            "GET", children, 422, path="/rollouts/42/children", headers=OPS, params={"status": "x"}
        )
        await c(
            "GET", children, 400, path="/rollouts/42/children", headers=OPS, params={"area": "{"}
        )
        await c("GET", children, 404, path="/rollouts/7/children", headers=OPS)
        await c("GET", "/children", 200, headers=OPS)
        await c("GET", "/children", 422, headers=OPS, params={"offset": -1})
        await c("GET", "/children", 400, headers=OPS, params={"offset": "-"})
        revoke = "/children/{child_id}/token"
        await t("DELETE", revoke, 204, path=f"/children/{cid}/token", headers=OPS)
        await t("DELETE", revoke, 404, path=f"/children/{cid}/token", headers=OPS)
        await t("DELETE", revoke, 403, path=f"/children/{cid}/token", headers=theirs)

        # operator API: actions
        await c("POST", "/rollouts", 201, headers=OPS, json=as_json("45"))
        await node.manager.store.set_rollout_state(
            "45", {RolloutState.ACTIVE}, RolloutState.COMPLETED, reason="every child finished"
        )
        await c("POST", "/rollouts/{rollout_id}/abort", 200, path="/rollouts/44/abort", headers=OPS)
        for action, ok, refused in (
            ("start", "43", "42"),  # a draft starts; an active one cannot
            ("abort", "44", "45"),  # an aborted one aborts again (200); a completed one cannot
            ("pause", "42", "44"),
            ("resume", "42", "42"),
        ):
            template = f"/rollouts/{{rollout_id}}/{action}"
            body = {"reason": "enough"} if action == "abort" else {}
            await c("POST", template, 200, path=f"/rollouts/{ok}/{action}", headers=OPS, json=body)
            await c("POST", template, 409, path=f"/rollouts/{refused}/{action}", headers=OPS)
            await c("POST", template, 404, path=f"/rollouts/7/{action}", headers=OPS)
            await c(
                "POST", template, 422, path=f"/rollouts/42/{action}", headers=OPS, json={"x": 1}
            )
            await c(
                "POST", template, 400, path=f"/rollouts/42/{action}", headers=OPS, content=b"[]"
            )
            await small(
                "POST",
                template,
                413,
                path=f"/rollouts/42/{action}",
                headers=OPS,
                json={"reason": "r" * 50},
            )

        promote = "/rollouts/{rollout_id}/stages/{stage_name}/promote"
        await c("POST", promote, 200, path="/rollouts/42/stages/canary-10/promote", headers=OPS)
        await c("POST", promote, 409, path="/rollouts/42/stages/ab-50/promote", headers=OPS)
        await c("POST", promote, 409, path="/rollouts/44/stages/canary-10/promote", headers=OPS)
        await c("POST", promote, 404, path="/rollouts/42/stages/nope/promote", headers=OPS)
        await c("POST", promote, 404, path="/rollouts/7/stages/canary-10/promote", headers=OPS)
        await c(
            "POST",
            promote,
            422,
            path="/rollouts/42/stages/canary-10/promote",
            headers=OPS,
            json={"x": 1},
        )
        await c(
            "POST",
            promote,
            400,
            path="/rollouts/42/stages/canary-10/promote",
            headers=OPS,
            content=b"[]",
        )
        await small(
            "POST",
            promote,
            413,
            path="/rollouts/42/stages/canary-10/promote",
            headers=OPS,
            json={"reason": "r" * 50},
        )

        # operator API: stage approvals and the what-if of a draft
        gate = {"approvals": ["canary-10"]}
        await c("POST", "/rollouts", 201, headers=OPS, json=as_json("47", start=False, policy=gate))
        approve = "/rollouts/{rollout_id}/stages/{stage_name}/approve"
        approved = await c(
            "POST", approve, 200, path="/rollouts/47/stages/canary-10/approve", headers=OPS
        )
        assert approved.json()["approvals"] == [{"stage": "canary-10", "approved": True}]
        await c("POST", approve, 409, path="/rollouts/42/stages/canary-10/approve", headers=OPS)
        await c("POST", approve, 404, path="/rollouts/47/stages/nope/approve", headers=OPS)
        await c("POST", approve, 404, path="/rollouts/7/stages/canary-10/approve", headers=OPS)
        for status, body in ((422, {"json": {"x": 1}}), (400, {"content": b"[]"})):
            await c(
                "POST",
                approve,
                status,
                path="/rollouts/47/stages/canary-10/approve",
                headers=OPS,
                **body,
            )
        await small(
            "POST",
            approve,
            413,
            path="/rollouts/47/stages/canary-10/approve",
            headers=OPS,
            json={"reason": "r" * 50},
        )
        what_if = "/rollouts/{rollout_id}/what-if"
        seen = await c("GET", what_if, 200, path="/rollouts/47/what-if", headers=OPS)
        assert seen.json()["eligible"] >= 1
        await c("GET", what_if, 409, path="/rollouts/42/what-if", headers=OPS)
        await c("GET", what_if, 404, path="/rollouts/7/what-if", headers=OPS)
        await c(
            "GET", what_if, 400, path="/rollouts/47/what-if", headers=OPS, params={"limit": "x"}
        )
        await c("GET", what_if, 422, path="/rollouts/47/what-if", headers=OPS, params={"limit": 0})

        # operator API: interventions (exclude a child, retry)
        exclude = "/rollouts/{rollout_id}/children/{child_id}/exclude"
        out = await c(
            "POST",
            exclude,
            200,
            path=f"/rollouts/42/children/{child}/exclude",
            headers=OPS,
            json={"reason": "flaky"},
        )
        assert out.json()["outcome"] == "excluded"
        await c("POST", exclude, 409, path=f"/rollouts/44/children/{child}/exclude", headers=OPS)
        await c("POST", exclude, 404, path="/rollouts/42/children/ghost/exclude", headers=OPS)
        for status, body in ((422, {"json": {"x": 1}}), (400, {"content": b"[]"})):
            await c(
                "POST",
                exclude,
                status,
                path=f"/rollouts/42/children/{child}/exclude",
                headers=OPS,
                **body,
            )
        await small(
            "POST",
            exclude,
            413,
            path=f"/rollouts/42/children/{child}/exclude",
            headers=OPS,
            json={"reason": "r" * 50},
        )
        loser = (await c("POST", "/poll", 200, json=poll)).json()["id"]
        await c("GET", "/release", 200, params={"childID": loser, "releaseID": "42"})
        await c("POST", "/result", 200, json=result(loser, "canary-10", 5, "rollback"))
        retry = "/rollouts/{rollout_id}/retry"
        again = await c("POST", retry, 200, path="/rollouts/42/retry", headers=OPS)
        assert again.json()["retried"] == [loser]
        await c("POST", retry, 409, path="/rollouts/42/retry", headers=OPS)  # none failed now
        await c("POST", retry, 404, path="/rollouts/7/retry", headers=OPS)
        await c(
            "POST",
            retry,
            422,
            path="/rollouts/42/retry",
            headers=OPS,
            json={"children": [""]},
            accepted=False,
        )
        await c("POST", retry, 400, path="/rollouts/42/retry", headers=OPS, content=b"[]")
        await small(
            "POST",
            retry,
            413,
            path="/rollouts/42/retry",
            headers=OPS,
            json={"children": ["x" * 50]},
        )

        # operator API: the rollout event log
        log = "/rollouts/{rollout_id}/events"
        await c("GET", log, 200, path="/rollouts/42/events", headers=OPS, params={"kind": "policy"})
        await c("GET", log, 422, path="/rollouts/42/events", headers=OPS, params={"type": "x"})
        await c("GET", log, 400, path="/rollouts/42/events", headers=OPS, params={"since": "x"})
        await c("GET", log, 404, path="/rollouts/7/events", headers=OPS)
        await c("GET", "/rollout-events", 200, headers=OPS, params={"after_id": 1, "limit": 3})
        await c("GET", "/rollout-events", 422, headers=OPS, params={"after_id": -1})
        await c("GET", "/rollout-events", 400, headers=OPS, params={"after_id": "x"})

        every = {"rollout_id": "42", "child_id": cid, "stage_name": "canary-10"}
        await refuse_tokens(t, broken, checker.document, every, theirs)
    finally:
        for client in (c, t, small, broken, gone):
            await client.aclose()
    checker.assert_covered(ROLLOUT_EXEMPT)


def test_the_child_bodies_are_generated_from_their_structs() -> None:
    from release_coordinator.rollout.bodies import PollRequest
    from release_coordinator.schemas import schema_components

    document = rollout_openapi()
    validate_openapi(document)
    schemas = document["components"]["schemas"]
    assert schemas["PollRequest"] == schema_components([PollRequest])["PollRequest"]
    for name in ("PollAnswer", "EndStageRequest", "EndStageAnswer", "ResultAnswer"):
        assert "title" not in schemas[name]  # renamed, msgspec's title left out
    for app, make in ((rollout_app(RolloutManager(), allow_anonymous=True), rollout_openapi),):
        assert app_operations(app) <= documented(make())
