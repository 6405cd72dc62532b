"""Operator roles (server.roles): the roles matrix over every operator route of both APIs (read
from the apps' route tables and their OpenAPI documents, so that a new route is covered as soon
as it is added), task-service and child tokens as before, verifiers answering roles, the
``name:role=token`` syntax of ``RC_OPERATOR_TOKENS``, ``/metrics`` and the dashboard, the
OpenAPI documents and the client's error."""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from release_coordinator import (
    ConfigurationError,
    Coordinator,
    MemoryRolloutStore,
    MemoryStore,
    MemoryTransport,
    RolloutManager,
    TaskServiceKit,
)
from release_coordinator.client import AccessDeniedError, Client
from release_coordinator.client.exits import exit_code
from release_coordinator.server.coordinator_app import coordinator_app
from release_coordinator.server.openapi import (
    combined_openapi,
    coordinator_openapi,
    rollout_openapi,
)
from release_coordinator.server.roles import (
    RELEASER_ROUTES,
    OperatorToken,
    Role,
    required_role,
)
from release_coordinator.server.rollout_app import rollout_app
from release_coordinator.server.serve import service_app
from release_coordinator.server.token_auth import TokenAuth
from release_coordinator.server.tokens import (
    ENV_CALLBACK_TOKENS,
    ENV_OPERATOR_TOKENS,
    parse_tokens,
    tokens_from_env,
)

pytestmark = pytest.mark.anyio

ADMIN = "roles-admin-token-0123456789"
RELEASER = "roles-releaser-token-0123456789"
READER = "roles-reader-token-0123456789"
CALLBACK = "roles-portal-callback-0123456789"
#: The operators of every app here: a plain token (an admin) and two with a role.
TOKENS = {
    "ada": ADMIN,
    "rita": OperatorToken(RELEASER, "releaser"),
    "reed": OperatorToken(READER, Role.READER),
}
BY_ROLE = {
    Role.ADMIN: ("ada", ADMIN),
    Role.RELEASER: ("rita", RELEASER),
    Role.READER: ("reed", READER),
}

#: What a releaser may write, written out here (not read from the library's table), as the
#: issue states it: create, publish, cancel (and run again: a new release) a release, write its
#: own notes on it; create,
#: start, pause, resume, abort, retry a rollout, promote its stage and exclude a child.
RELEASER_WRITES = {
    ("POST", "/releases"),
    ("POST", "/releases/{release_id}/publish"),
    ("POST", "/releases/{release_id}/cancel"),
    ("POST", "/releases/{release_id}/run-again"),
    ("POST", "/releases/{release_id}/checks"),  # ask a release's checks again
    ("POST", "/releases/{release_id}/notes"),  # its own notes (the author is checked)
    ("PATCH", "/notes/{note_id}"),
    ("DELETE", "/notes/{note_id}"),
    ("POST", "/rollouts"),
    ("POST", "/rollouts/{rollout_id}/start"),
    ("POST", "/rollouts/{rollout_id}/pause"),
    ("POST", "/rollouts/{rollout_id}/resume"),
    ("POST", "/rollouts/{rollout_id}/abort"),
    ("POST", "/rollouts/{rollout_id}/stages/{stage_name}/promote"),
    ("POST", "/rollouts/{rollout_id}/children/{child_id}/exclude"),
    ("POST", "/rollouts/{rollout_id}/retry"),
}


def expected_role(method: str, path: str) -> Role:
    if path.startswith("/webhooks"):  # a receiver's URL may be a credential: reads too
        return Role.ADMIN
    if method in ("GET", "HEAD"):
        return Role.READER
    return Role.RELEASER if (method, path) in RELEASER_WRITES else Role.ADMIN


def coordinator() -> Coordinator:
    transport = MemoryTransport()
    transport.add("memory://portal", TaskServiceKit("portal"))
    return Coordinator(MemoryStore(), transport)


def coordinator_part(**options: Any) -> Starlette:
    options.setdefault("tokens", TOKENS)
    return coordinator_app(coordinator(), callback_tokens={"portal": CALLBACK}, **options)


def rollout_part(**options: Any) -> Starlette:
    options.setdefault("operator_tokens", TOKENS)
    return rollout_app(RolloutManager(MemoryRolloutStore()), **options)


def operator_routes(app: Starlette, document: dict[str, Any]) -> list[tuple[str, str]]:
    """Every ``(method, path)`` of ``app``'s route table an operator token may call, by the
    security of its operation in the app's OpenAPI ``document`` (``HEAD`` beside each
    ``GET``; a route the document lacks fails here, and ``test_openapi`` too)."""
    found = []
    for route in app.routes:
        assert isinstance(route, Route)
        path = re.sub(r":\w+\}", "}", route.path)  # {id:path} -> {id}
        for method in sorted(route.methods or ()):
            operation = document["paths"][path]["get" if method == "HEAD" else method.lower()]
            if {"operatorToken": []} in operation.get("security", document["security"]):
                found.append((method, path))
    return found


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "nope", path)


def client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rc.test")


async def call(http: httpx.AsyncClient, method: str, path: str, token: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    if method in ("POST", "PATCH", "PUT"):
        headers["Content-Type"] = "application/json"
        return await http.request(method, concrete(path), headers=headers, content=b"{}")
    return await http.request(method, concrete(path), headers=headers)


def assert_role_refusal(answer: httpx.Response, needed: Role, name: str, role: Role) -> None:
    assert answer.status_code == 403, answer.text
    if answer.request.method == "HEAD":  # no body
        return
    body = answer.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    error = body["error"]
    assert error["code"] == "forbidden"
    assert error["details"]["required_role"] == needed.value
    assert error["details"]["role"] == role.value
    assert error["details"]["principal"] == name
    message = error["message"]
    assert f"needs the {needed.value} role" in message
    assert f"the token of {name!r} has the {role.value} role" in message
    assert all(token not in answer.text for token in (ADMIN, RELEASER, READER))


APPS = {"coordinator": coordinator_part, "rollout": rollout_part}
DOCUMENTS = {"coordinator": coordinator_openapi(), "rollout": rollout_openapi()}


def matrix() -> Iterator[tuple[str, str, str]]:
    for name, make in APPS.items():
        for method, path in operator_routes(make(), DOCUMENTS[name]):
            yield name, method, path


MATRIX = list(matrix())


def test_the_matrix_covers_both_apis() -> None:
    paths = {path for _, _, path in MATRIX}
    assert {"/releases", "/task-services/{service_id}", "/events", "/tasks/{task_id}"} <= paths
    assert {"/rollouts", "/children/{child_id}/token", "/rollouts/{rollout_id}/status"} <= paths
    assert not paths & {"/status", "/openapi.json", "/poll", "/result", "/end_stage"}


def test_the_releaser_routes_are_the_issues_and_every_one_exists() -> None:
    assert RELEASER_ROUTES == RELEASER_WRITES
    routes = {(method, path) for _, method, path in MATRIX}
    assert routes >= RELEASER_WRITES  # a renamed route would silently need an admin


@pytest.mark.parametrize(("app", "method", "path"), MATRIX)
@pytest.mark.parametrize("role", list(Role))
async def test_the_roles_matrix(app: str, method: str, path: str, role: Role) -> None:
    needed = expected_role(method, path)
    assert required_role(method, path) is needed
    name, token = BY_ROLE[role]
    async with client(APPS[app]()) as http:
        answer = await call(http, method, path, token)
    if role.allows(needed):
        assert answer.status_code not in (401, 403), answer.text
    else:
        assert_role_refusal(answer, needed, name, role)


@pytest.mark.parametrize(("method", "path"), [(m, p) for a, m, p in MATRIX if a == "coordinator"])
async def test_a_task_service_token_only_reports_as_before(method: str, path: str) -> None:
    async with client(coordinator_part()) as http:
        answer = await call(http, method, path, CALLBACK)
    if method == "PATCH" and path.endswith("{task_id}"):  # the callbacks: on to the body
        assert answer.status_code == 422, answer.text  # (own tasks: test_coordinator_app)
    else:
        assert answer.status_code == 403, answer.text
        if method == "HEAD":  # no body
            return
        error = answer.json()["error"]
        assert error["message"] == "a task-service token may only report the state of its own tasks"
        assert "required_role" not in error["details"]


async def test_anonymous_apps_are_admins_everywhere() -> None:
    for name, option in (("coordinator", "tokens"), ("rollout", "operator_tokens")):
        app = APPS[name](**{option: (), "allow_anonymous": True})
        async with client(app) as http:
            for method, path in operator_routes(app, DOCUMENTS[name]):
                answer = await call(http, method, path, "whatever-token")
                assert answer.status_code not in (401, 403), (method, path, answer.text)


async def test_a_refused_role_reads_no_body_and_changes_nothing() -> None:
    app = coordinator_part(max_body=10)
    async with client(app) as http:
        reed = {"Authorization": f"Bearer {READER}", "Content-Type": "application/json"}
        answer = await http.post("/releases", headers=reed, content=b'{"name": "x"}' * 100)
        assert_role_refusal(answer, Role.RELEASER, "reed", Role.READER)
        listed = await http.get("/releases", headers=reed)
        assert listed.json()["items"] == []


async def test_a_releaser_runs_a_release_and_a_reader_watches() -> None:
    app = coordinator_part()
    rita = {"Authorization": f"Bearer {RELEASER}"}
    reed = {"Authorization": f"Bearer {READER}"}
    ada = {"Authorization": f"Bearer {ADMIN}"}
    async with client(app) as http:
        denied = await http.post("/task-services", json={"name": "p"}, headers=rita)
        assert_role_refusal(denied, Role.ADMIN, "rita", Role.RELEASER)
        made = await http.post("/releases", json={"name": "r1"}, headers=rita)
        assert made.status_code == 201, made.text
        assert made.json()["author"] == "rita"
        release_id = made.json()["id"]
        edited = await http.patch(f"/releases/{release_id}", json={"name": "r2"}, headers=rita)
        assert_role_refusal(edited, Role.ADMIN, "rita", Role.RELEASER)
        assert (await http.patch(f"/releases/{release_id}", json={}, headers=ada)).is_success
        assert (await http.get(f"/releases/{release_id}", headers=reed)).status_code == 200
        assert (await http.head(f"/releases/{release_id}", headers=reed)).status_code == 200
        canceled = await http.post(f"/releases/{release_id}/cancel", json={}, headers=rita)
        assert canceled.status_code in (200, 409), canceled.text


async def test_a_releaser_creates_releases_under_its_own_name_and_sees_no_password() -> None:
    app = coordinator_part()
    rita = {"Authorization": f"Bearer {RELEASER}"}
    reed = {"Authorization": f"Bearer {READER}"}
    ada = {"Authorization": f"Bearer {ADMIN}"}
    async with client(app) as http:
        posing = await http.post("/releases", json={"name": "r", "author": "ada"}, headers=rita)
        assert posing.status_code == 403, posing.text
        assert "under its own name only" in posing.json()["error"]["message"]
        own = await http.post("/releases", json={"name": "r", "author": "rita"}, headers=rita)
        assert own.status_code == 201, own.text
        named = await http.post("/releases", json={"name": "r", "author": "ops"}, headers=ada)
        assert named.json()["author"] == "ops"  # an admin may name anyone
    from release_coordinator.transports.http import HttpTransport

    over_http = coordinator_app(Coordinator(MemoryStore(), HttpTransport()), tokens=TOKENS)
    async with client(over_http) as http:
        url = "https://svc:s3cret-pass@127.0.0.1:9/release"
        made = await http.post(
            "/task-services", json={"name": "p", "url": url, "check": False}, headers=ada
        )
        assert made.status_code == 201, made.text
        service_id = made.json()["id"]
        moved = await http.patch(
            f"/task-services/{service_id}",
            json={"url": url.replace("/release", "/r2")},
            headers=ada,
        )
        assert moved.status_code == 200, moved.text
        events = await http.get("/events", headers=reed)
        for answer in (made, moved, await http.get("/task-services", headers=reed), events):
            assert "s3cret-pass" not in answer.text, answer.text
        assert "https://svc:***@127.0.0.1:9/r2" in moved.text
        assert "https://svc:***@127.0.0.1:9/release" in events.text


async def test_a_releaser_writes_its_own_release_notes_only() -> None:
    app = coordinator_part()
    rita = {"Authorization": f"Bearer {RELEASER}"}
    reed = {"Authorization": f"Bearer {READER}"}
    ada = {"Authorization": f"Bearer {ADMIN}"}
    async with client(app) as http:
        release_id = (await http.post("/releases", json={"name": "r1"}, headers=rita)).json()["id"]
        notes = f"/releases/{release_id}/notes"
        own = await http.post(notes, json={"text": "# What changed"}, headers=rita)
        assert own.status_code == 201, own.text
        assert own.json()["author"] == "rita"
        named = await http.post(notes, json={"text": "mine", "author": "rita"}, headers=rita)
        assert named.status_code == 201, named.text
        posing = await http.post(notes, json={"text": "x", "author": "ada"}, headers=rita)
        assert posing.status_code == 403, posing.text
        assert "own notes only" in posing.json()["error"]["message"]
        by_ada = await http.post(notes, json={"text": "the admin's"}, headers=ada)
        assert by_ada.status_code == 201, by_ada.text
        ada_note, rita_note = by_ada.json()["id"], own.json()["id"]
        for method, path, body in (
            ("PATCH", f"/notes/{ada_note}", {"text": "changed"}),
            ("DELETE", f"/notes/{ada_note}", None),
        ):
            refused = await http.request(method, path, json=body, headers=rita)
            assert refused.status_code == 403, refused.text
        assert (await http.get(f"/notes/{ada_note}", headers=reed)).json()["text"] == "the admin's"
        edited = await http.patch(f"/notes/{rita_note}", json={"text": "fixed"}, headers=rita)
        assert edited.status_code == 200, edited.text
        assert (await http.delete(f"/notes/{rita_note}", headers=rita)).status_code == 204
        assert (await http.patch(f"/notes/{ada_note}", json={"text": "ok"}, headers=ada)).is_success
        denied = await http.post(notes, json={"text": "x"}, headers=reed)
        assert_role_refusal(denied, Role.RELEASER, "reed", Role.READER)
    # A releaser without a name cannot tell its notes from others': it writes none.
    unnamed = coordinator_part(tokens=[ADMIN, OperatorToken(RELEASER, "releaser")])
    async with client(unnamed) as http:
        release_id = (await http.post("/releases", json={"name": "r"}, headers=rita)).json()["id"]
        refused = await http.post(f"/releases/{release_id}/notes", json={"text": "x"}, headers=rita)
        assert refused.status_code == 403, refused.text
        assert "needs a name" in refused.json()["error"]["message"]


# -- verifiers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "name", "role"),
    [
        (True, "operator", Role.ADMIN),
        ("vera", "vera", Role.ADMIN),
        (Role.READER, "operator", Role.READER),
        (("vera", "releaser"), "vera", Role.RELEASER),
        (("vera", Role.READER), "vera", Role.READER),
        (("vera", "ADMIN"), "vera", Role.ADMIN),
    ],
)
async def test_a_verifier_answers_a_role(answer: object, name: str, role: Role) -> None:
    auth = TokenAuth(verifier=lambda token: answer)  # type: ignore[arg-type,return-value]
    who = await auth.identify("any-token")
    assert who is not None
    assert (who.name, who.kind, who.role) == (name, "operator", role)


@pytest.mark.parametrize("answer", [("vera", "boss"), ("", "reader"), ("vera", 3)])
async def test_a_verifier_answering_no_role_is_a_500_that_shows_no_token(
    answer: object, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "verified-secret-token-0123456789"
    app = coordinator_part(tokens=(), verifier=lambda token: answer)
    async with client(app) as http:
        with caplog.at_level(logging.DEBUG):
            refused = await http.get("/releases", headers={"Authorization": f"Bearer {secret}"})
    assert refused.status_code == 500, refused.text
    assert refused.json()["error"]["code"] == "internal"
    assert secret not in refused.text
    assert secret not in caplog.text


async def test_a_verifiers_reader_is_refused_a_publish() -> None:
    async def verify(token: str) -> tuple[str, str] | None:
        return ("vic", "reader") if token == "vic-token-0123456789" else None

    app = rollout_part(operator_tokens=(), verifier=verify)
    async with client(app) as http:
        answer = await call(http, "POST", "/rollouts/{rollout_id}/start", "vic-token-0123456789")
        assert_role_refusal(answer, Role.RELEASER, "vic", Role.READER)
        listed = await call(http, "GET", "/rollouts", "vic-token-0123456789")
        assert listed.status_code == 200


# -- configuration ------------------------------------------------------------------------------


def test_operator_tokens_carry_roles_in_the_environment() -> None:
    tokens = tokens_from_env(
        {
            ENV_OPERATOR_TOKENS: f"ada={ADMIN}, rita:releaser={RELEASER},reed : Reader={READER}",
            ENV_CALLBACK_TOKENS: f"portal:reader={CALLBACK}",  # no roles here: a name
        }
    )
    operators = tokens.operator_tokens()
    assert isinstance(operators, dict)
    assert list(operators) == ["ada", "rita", "reed"]
    assert operators == {"ada": ADMIN, "rita": RELEASER, "reed": READER}
    assert not isinstance(operators["ada"], OperatorToken)
    assert [getattr(t, "role", None) for t in operators.values()] == [None, "releaser", "reader"]
    assert tokens.callback_tokens() == {"portal:reader": CALLBACK}
    assert all(token not in repr(tokens) for token in (ADMIN, RELEASER, READER))


def test_bare_tokens_stay_admins() -> None:
    entries = parse_tokens(f"{ADMIN},{READER}==", variable="X", roles=True)
    assert entries == [("", ADMIN), ("", f"{READER}==")]
    assert not any(isinstance(token, OperatorToken) for _, token in entries)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"ada={ADMIN},bob:reder={READER}", "entry 2 ('bob'): unknown role 'reder'"),
        (f"bob:={READER}", "entry 1 ('bob'): unknown role ''"),
        (f"ci:bot={READER}", "entry 1 ('ci'): unknown role 'bot'"),
        (f":reader={READER}", "entry 1: a role needs a name"),
        # an empty token after name:role= (an unset variable): refused, never a bare token
        (f"ada={ADMIN},deploy-bot:releaser=", "entry 2 ('deploy-bot'): no token after '='"),
        (f"grafana:reader==,ada={ADMIN}", "entry 1 ('grafana'): no token after '='"),
    ],
)
def test_a_bad_role_is_a_configuration_error_naming_the_entry(text: str, shown: str) -> None:
    with pytest.raises(ConfigurationError) as bad:
        tokens_from_env({ENV_OPERATOR_TOKENS: text})
    message = bad.value.message
    assert shown in message
    assert ENV_OPERATOR_TOKENS in message
    assert READER not in message
    if "unknown role" in shown:
        assert "the roles are reader, releaser, admin" in message


def test_an_operator_token_is_a_str_that_hides_itself() -> None:
    token = OperatorToken(READER, "reader")
    assert token == READER
    assert isinstance(token, str)
    assert token.role is Role.READER
    assert READER not in repr(token)
    assert READER not in repr({"reed": token})
    assert OperatorToken(ADMIN).role is Role.ADMIN
    copied = pickle.loads(pickle.dumps(token))
    assert (copied, copied.role) == (READER, Role.READER)
    with pytest.raises(ConfigurationError, match="unknown role 'boss'"):
        OperatorToken(READER, "boss")


async def test_a_collection_of_operator_tokens_keeps_their_roles() -> None:
    auth = TokenAuth([OperatorToken(READER, "reader"), ADMIN])
    reader = await auth.identify(READER)
    admin = await auth.identify(ADMIN)
    assert reader is not None
    assert admin is not None
    assert (reader.name, reader.role, admin.role) == ("operator", Role.READER, Role.ADMIN)
    services = TokenAuth({"portal": OperatorToken(CALLBACK, "admin")}, kind="service")
    service = await services.identify(CALLBACK)
    assert service is not None
    assert (service.kind, service.role) == ("service", None)
    assert "service" in repr(services)


def test_the_role_order() -> None:
    assert Role.ADMIN.allows(Role.RELEASER)
    assert Role.ADMIN.allows(Role.READER)
    assert Role.RELEASER.allows(Role.READER)
    assert not Role.RELEASER.allows(Role.ADMIN)
    assert not Role.READER.allows(Role.RELEASER)
    assert required_role("head", "/anything") is Role.READER
    assert required_role("POST", "/some/new/route") is Role.ADMIN
    assert required_role("DELETE", "/releases") is Role.ADMIN


# -- serve: both APIs, /metrics, the dashboard, the client -------------------------------------


def served(**options: Any) -> Starlette:
    tokens = tokens_from_env(
        {ENV_OPERATOR_TOKENS: f"ada={ADMIN},rita:releaser={RELEASER},reed:reader={READER}"}
    )
    return service_app(
        coordinator(),
        RolloutManager(MemoryRolloutStore()),
        operator_tokens=tokens.operator_tokens(),
        **options,
    )


async def test_serve_gives_the_environments_roles_to_both_apis_and_metrics() -> None:
    app = served()
    async with client(app) as http:
        for token in (ADMIN, RELEASER, READER):
            scraped = await http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
            assert scraped.status_code == 200, scraped.text
        assert (await http.get("/metrics")).status_code == 401
        assert (await http.get("/ui/")).status_code == 200  # the page holds no secret
        for method, path in ((m, p) for _, m, p in MATRIX):
            answer = await call(http, method, path, READER)
            if expected_role(method, path) is Role.READER:
                assert answer.status_code != 403, (method, path)
            else:
                assert_role_refusal(answer, expected_role(method, path), "reed", Role.READER)


async def test_the_client_says_which_role_is_needed() -> None:
    app = served()
    transport = httpx.ASGITransport(app=app)
    async with Client("http://rc.test", token=READER, transport=transport) as reader:
        with pytest.raises(AccessDeniedError) as denied:
            await reader.publish_release("nope")
    error = denied.value
    assert (error.status_code, error.error_code) == (403, "forbidden")
    assert (error.required_role, error.role) == ("releaser", "reader")
    assert "needs the releaser role" in error.message
    assert "'reed' has the reader role" in error.message
    assert READER not in error.message
    assert exit_code(error) == 4


def test_the_documents_say_the_role_of_every_operator_operation() -> None:
    document = combined_openapi()
    seen = 0
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            security = operation.get("security", document["security"])
            if {"operatorToken": []} not in security:
                assert "x-required-role" not in operation
                continue
            seen += 1
            role = expected_role(method.upper(), path)
            assert operation["x-required-role"] == role.value, (method, path)
            assert {"401", "403"} <= set(operation["responses"]), (method, path)
            assert f"`{role.value}` role" in operation["description"]
    assert seen == len(MATRIX) - sum(1 for _, m, _ in MATRIX if m == "HEAD")
