"""The Coordinator's HTTP API: task services, releases, tasks, events, and task-service callbacks.

::

    from release_coordinator.server.coordinator_app import coordinator_app

    app = coordinator_app(coordinator, tokens={"alice": os.environ["RC_ALICE_TOKEN"]},
                          callback_tokens={"search": os.environ["RC_SEARCH_TOKEN"]})
    # uvicorn mymodule:app, or mount it in the host's own Starlette/FastAPI app

======  ======================================  =====================================  ==========
method  path                                    what                                   success
======  ======================================  =====================================  ==========
GET     ``/status``                             name and version (no token needed)     200
GET     ``/openapi.json``                       the OpenAPI 3.1 document (no token)    200
GET     ``/task-services``                      list (``enabled``, paging)             200
POST    ``/task-services``                      register ``{name, url, enabled, check}`` 201
GET     ``/task-services/{id}``                 one                                    200
PATCH   ``/task-services/{id}``                 ``{name, url}``                        200
DELETE  ``/task-services/{id}``                 forget it                              204
POST    ``/task-services/{id}/enable``          include in new releases                200
POST    ``/task-services/{id}/disable``         leave out of new releases              200
POST    ``/task-services/{id}/health``          ask ``GET /status`` now                200
GET     ``/releases``                           list (``state``, ``tag``, ``author``)  200
POST    ``/releases``                           create                                 201
GET     ``/releases/{id}``                      one                                    200
PATCH   ``/releases/{id}``                      ``{name, description, tags}``          200
POST    ``/releases/{id}/publish``              publish a staged release               200
POST    ``/releases/{id}/cancel``               ``{reason}``                           200
POST    ``/releases/{id}/run-again``            a new release like a finished one      201
GET     ``/releases/{id}/tasks``                its tasks (``state``, paging)          200
GET     ``/releases/{rid}/tasks/{id}``          one task of the release                200
PATCH   ``/releases/{rid}/tasks/{id}``          task-service callback                  200
GET     ``/tasks?release_id=``                  the tasks of a release                 200
GET     ``/tasks/{id}``                         one task                               200
PATCH   ``/tasks/{id}``                         task-service callback                  200
GET     ``/events``                             the event log, filtered, oldest first  200
======  ======================================  =====================================  ==========

Listings answer ``{"items", "limit", "offset", "next_offset"}`` (``limit`` 1..1000, default
100; ``next_offset`` null on the last page). Refusals answer ``{"error": {"code", "message",
"details"}}``: 400 a body or query parameter that does not parse, 401 no valid token, 403 a
token that may not do this, 404 an unknown id or path, 405 a wrong method, 409 a state that
does not allow it, 413 a body over ``max_body``, 422 invalid values (``details.problems`` lists
them by path). A refusal changes nothing.

Tokens: every endpoint but ``GET /status`` and ``GET /openapi.json`` needs
``Authorization: Bearer <token>``: an operator token (``tokens`` or ``verifier``) for
everything, or, for the callbacks only, the token of the task service the task belongs to
(``callback_tokens``, keyed by the service's name or id); a service token anywhere else is a
403, and on another service's task too.

Needs the ``server`` extra (Starlette). ``import release_coordinator`` does not import this
module.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

try:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "release_coordinator.server needs the server extra: "
        "pip install 'release-coordinator[server]'"
    ) from error

from release_coordinator._version import __version__
from release_coordinator.coordinator.engine import Coordinator
from release_coordinator.coordinator.models import (
    Event,
    EventKind,
    EventType,
    Release,
    ServiceHealth,
    Task,
    TaskService,
)
from release_coordinator.coordinator.wire import MAX_TEXT, decode_callback
from release_coordinator.errors import ConfigurationError, Problem, ValidationError
from release_coordinator.fsm.release import ReleaseState, TaskState
from release_coordinator.server.common import (
    DEFAULT_MAX_BODY,
    Endpoint,
    Refusal,
    guarded,
    http_error,
    json_response,
    method_routes,
    page_of,
    paging,
    query_int,
)
from release_coordinator.server.openapi import OPENAPI_PATH, coordinator_openapi
from release_coordinator.server.request_body import read_object
from release_coordinator.server.token_auth import (
    Principal,
    TokenAuth,
    Verifier,
    bearer_token,
    forbidden,
    unauthorized,
)

__all__ = [
    "DEFAULT_MAX_BODY",
    "coordinator_app",
    "event_json",
    "release_json",
    "service_json",
    "task_json",
]

#: Longest release description accepted.
MAX_DESCRIPTION = 10_000
#: Longest task-service URL accepted.
MAX_URL = 2048
#: Most studies or tags of one release.
MAX_ITEMS = 10_000


# -- records as JSON ---------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _health_json(health: ServiceHealth) -> dict[str, Any]:
    return {
        "status": health.status.value,
        "consecutive_failures": health.consecutive_failures,
        "last_checked_at": _iso(health.last_checked_at),
        "last_error": health.last_error,
        "reported_name": health.reported_name,
        "reported_version": health.reported_version,
        "message": health.message,
    }


def service_json(service: TaskService) -> dict[str, Any]:
    """A task service as the API shows it."""
    return {
        "id": service.id,
        "name": service.name,
        "url": service.url,
        "enabled": service.enabled,
        "health": _health_json(service.health),
        "created_at": _iso(service.created_at),
        "updated_at": _iso(service.updated_at),
    }


def release_json(release: Release) -> dict[str, Any]:
    """A release as the API shows it."""
    return {
        "id": release.id,
        "name": release.name,
        "version": release.version,
        "state": release.state.value,
        "description": release.description,
        "studies": list(release.studies),
        "tags": list(release.tags),
        "author": release.author,
        "is_major": release.is_major,
        "auto_publish": release.auto_publish,
        "failure": release.failure,
        "cloned_from": release.cloned_from,
        "created_at": _iso(release.created_at),
        "updated_at": _iso(release.updated_at),
        "state_changed_at": _iso(release.state_changed_at),
    }


def task_json(task: Task) -> dict[str, Any]:
    """A task as the API shows it."""
    return {
        "id": task.id,
        "release_id": task.release_id,
        "task_service_id": task.service_id,
        "state": task.state.value,
        "progress": task.progress,
        "message": task.message,
        "created_at": _iso(task.created_at),
        "updated_at": _iso(task.updated_at),
        "progress_at": _iso(task.progress_at),
    }


def event_json(event: Event) -> dict[str, Any]:
    """An event of the log as the API shows it (the protocol's fields, plus ``kind`` and
    ``state``)."""
    return {
        "id": event.id,
        "at": _iso(event.at),
        "type": event.type.value,
        "kind": event.kind.value,
        "message": event.message,
        "release_id": event.release_id,
        "task_id": event.task_id,
        "task_service_id": event.task_service_id,
        "state": event.state,
    }


# -- request bodies -----------------------------------------------------------------------------


class _Fields:
    """Reads the fields of a JSON object body, collecting every problem with its path."""

    def __init__(self, body: Mapping[str, Any], what: str, allowed: Iterable[str]) -> None:
        self.body = body
        self.what = what
        self.problems: list[Problem] = [
            (str(key)[:60], "is not a field of this request")
            for key in body
            if key not in set(allowed)
        ]

    def _check_text(self, key: str, value: str, most: int, multiline: bool) -> bool:
        if len(value) > most:
            self.problems.append((key, f"is longer than {most} characters"))
            return False
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            self.problems.append((key, "must be valid Unicode text (no lone surrogates)"))
            return False
        allowed = "\n\t\r" if multiline else ""
        if any(not c.isprintable() and c not in allowed for c in value):
            self.problems.append((key, "must be printable text"))
            return False
        return True

    def text(
        self,
        key: str,
        *,
        required: bool = False,
        most: int = MAX_TEXT,
        multiline: bool = False,
        blank: bool = True,
    ) -> str | None:
        value = self.body.get(key)
        if value is None:
            if required:
                self.problems.append((key, "is required"))
            return None
        if not isinstance(value, str):
            self.problems.append((key, f"must be a string, not {type(value).__name__}"))
            return None
        if not blank and not value.strip():
            self.problems.append((key, "must not be empty"))
            return None
        return value if self._check_text(key, value, most, multiline) else None

    def flag(self, key: str) -> bool | None:
        value = self.body.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            self.problems.append((key, f"must be true or false, not {type(value).__name__}"))
            return None
        return value

    def texts(self, key: str) -> list[str] | None:
        value = self.body.get(key)
        if value is None:
            return None
        if not isinstance(value, list):
            self.problems.append((key, "must be a list of strings"))
            return None
        if len(value) > MAX_ITEMS:
            self.problems.append((key, f"has more than {MAX_ITEMS} entries"))
            return None
        good = True
        for i, item in enumerate(value):
            path = f"{key}[{i}]"
            if not isinstance(item, str) or not item:
                self.problems.append((path, "must be a non-empty string"))
                good = False
            elif not self._check_text(path, item, MAX_TEXT, False):
                good = False
        return list(value) if good else None

    def check(self) -> None:
        if self.problems:
            raise ValidationError(f"invalid {self.what}", self.problems)


def _choices(request: Request, name: str, allowed: Iterable[str]) -> set[str] | None:
    """A filter given as ``?name=a&name=b`` or ``?name=a,b``; 422 for a value not allowed."""
    given = [v for raw in request.query_params.getlist(name) for v in raw.split(",") if v]
    if not given:
        return None
    known = set(allowed)
    bad = sorted({v for v in given if v not in known})
    if bad:
        raise ValidationError(
            "invalid query",
            [(name, f"{v[:40]!r} is not one of {', '.join(sorted(known))}") for v in bad[:10]],
        )
    return set(given)


def _query_text(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    if value is not None and len(value) > MAX_TEXT:
        raise ValidationError("invalid query", [(name, f"is longer than {MAX_TEXT} characters")])
    return value


def _since(request: Request) -> datetime | None:
    raw = request.query_params.get("since")
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise Refusal(
            400, "the query parameter 'since' must be an ISO 8601 time", parameter="since"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# -- the app ------------------------------------------------------------------------------------


def coordinator_app(
    coordinator: Coordinator,
    *,
    tokens: Iterable[str] | Mapping[str, str] = (),
    verifier: Verifier | None = None,
    callback_tokens: Mapping[str, str] | None = None,
    allow_anonymous: bool = False,
    max_body: int = DEFAULT_MAX_BODY,
    lifespan: bool = False,
    name: str = "release-coordinator",
) -> Starlette:
    """An ASGI app serving ``coordinator``'s API (see the module docstring).

    - ``tokens``: operator bearer tokens, a collection or a mapping of names to tokens (the
      name becomes a new release's ``author`` when the request names none); ``verifier``: a
      callable (sync or async) the host supplies, given a token and answering a name or
      ``True`` to accept it, ``False``/``None`` to refuse it. One of them is required unless
      ``allow_anonymous`` (every request is then an operator: for tests and trusted networks).
    - ``callback_tokens``: task-service tokens by service name or id; such a token may only
      report the state of its own service's tasks (``PATCH /tasks/{id}``).
    - ``max_body``: the largest request body, in bytes (413 beyond).
    - ``lifespan``: the app's startup starts the coordinator and its shutdown closes it. Left
      out, the host owns the coordinator's life (the usual case when the app is mounted).
    """
    if max_body < 1:
        raise ConfigurationError(f"max_body must be at least 1 byte, not {max_body}")
    operators = TokenAuth(tokens, verifier, what="an operator token")
    services = TokenAuth(callback_tokens or {}, role="service", what="a callback token")
    if not operators.configured and not allow_anonymous:
        raise ConfigurationError(
            "the coordinator API needs operator tokens or a verifier "
            "(or allow_anonymous=True, for tests and trusted networks only)"
        )
    anonymous = None if operators.configured else Principal("anonymous", "operator")

    async def identify(request: Request) -> Principal:
        """Who is asking: an operator, or a service (401 if neither)."""
        if anonymous is not None:
            return anonymous
        token = bearer_token(request)
        if token is None:
            raise unauthorized()
        who = await operators.identify(token) or await services.identify(token)
        if who is None:
            raise unauthorized()
        return who

    async def operator(request: Request) -> Principal:
        who = await identify(request)
        if who.role != "operator":
            raise forbidden("a task-service token may only report the state of its own tasks")
        return who

    async def body_of(request: Request, *, empty: bool = False) -> dict[str, Any]:
        return await read_object(request, max_body, empty=empty)

    # -- status ---------------------------------------------------------------------------
    async def status(request: Request) -> Response:
        return json_response(200, {"name": name, "version": __version__, "message": "ok"})

    document = coordinator_openapi(__version__)

    async def openapi(request: Request) -> Response:
        return json_response(200, document)

    # -- task services ----------------------------------------------------------------------
    async def list_services(request: Request) -> Response:
        await operator(request)
        limit, offset = paging(request)
        enabled = _choices(request, "enabled", ("true", "false"))
        wanted = None if enabled is None or len(enabled) == 2 else "true" in enabled
        found = await coordinator.list_services(enabled=wanted)
        items = found[offset : offset + limit]
        return json_response(
            200,
            page_of(
                [service_json(s) for s in items], limit, offset, more=len(found) > offset + limit
            ),
        )

    async def register_service(request: Request) -> Response:
        await operator(request)
        fields = _Fields(
            await body_of(request), "task service", ("name", "url", "enabled", "check")
        )
        service_name = fields.text("name", required=True, blank=False)
        url = fields.text("url", required=True, most=MAX_URL, blank=False)
        enabled = fields.flag("enabled")
        check = fields.flag("check")
        fields.check()
        assert service_name is not None
        assert url is not None
        service = await coordinator.register_service(
            service_name,
            url,
            enabled=True if enabled is None else enabled,
            check=True if check is None else check,
        )
        return json_response(201, service_json(service))

    async def get_service(request: Request) -> Response:
        await operator(request)
        return json_response(
            200, service_json(await coordinator.get_service(request.path_params["service_id"]))
        )

    async def update_service(request: Request) -> Response:
        await operator(request)
        fields = _Fields(await body_of(request), "task service", ("name", "url"))
        new_name = fields.text("name", blank=False)
        url = fields.text("url", most=MAX_URL, blank=False)
        fields.check()
        service_id = request.path_params["service_id"]
        if new_name is None and url is None:  # nothing to change: no event either
            return json_response(200, service_json(await coordinator.get_service(service_id)))
        service = await coordinator.update_service(service_id, name=new_name, url=url)
        return json_response(200, service_json(service))

    async def remove_service(request: Request) -> Response:
        await operator(request)
        await coordinator.remove_service(request.path_params["service_id"])
        return Response(status_code=204)

    def service_action(action: str) -> Endpoint:
        async def act(request: Request) -> Response:
            await operator(request)
            _Fields(await body_of(request, empty=True), f"{action} request", ()).check()
            service_id = request.path_params["service_id"]
            if action == "enable":
                service = await coordinator.enable_service(service_id)
            elif action == "disable":
                service = await coordinator.disable_service(service_id)
            else:
                service = await coordinator.check_health(service_id)
            return json_response(200, service_json(service))

        return act

    # -- releases -----------------------------------------------------------------------------
    async def list_releases(request: Request) -> Response:
        await operator(request)
        limit, offset = paging(request)
        states = _choices(request, "state", (s.value for s in ReleaseState))
        tag = _query_text(request, "tag")
        author = _query_text(request, "author")
        if tag is None and author is None:
            found = await coordinator.list_releases(states=states, limit=limit + 1, offset=offset)
        else:  # the store filters by state only: the rest is filtered here, then paged
            everything = await coordinator.list_releases(states=states)
            matching = [
                r
                for r in everything
                if (tag is None or tag in r.tags) and (author is None or r.author == author)
            ]
            found = matching[offset : offset + limit + 1]
        items = [release_json(r) for r in found[:limit]]
        return json_response(200, page_of(items, limit, offset, more=len(found) > limit))

    async def create_release(request: Request) -> Response:
        who = await operator(request)
        fields = _Fields(
            await body_of(request),
            "release",
            ("name", "description", "studies", "tags", "author", "is_major", "auto_publish"),
        )
        release_name = fields.text("name", required=True, blank=False)
        description = fields.text("description", most=MAX_DESCRIPTION, multiline=True)
        studies = fields.texts("studies")
        release_tags = fields.texts("tags")
        author = fields.text("author")
        is_major = fields.flag("is_major")
        auto_publish = fields.flag("auto_publish")
        fields.check()
        assert release_name is not None
        if author is None:
            author = "" if who is anonymous or who.name == who.role else who.name
        release = await coordinator.create_release(
            release_name,
            description=description or "",
            studies=studies or (),
            tags=release_tags or (),
            author=author,
            is_major=bool(is_major),
            auto_publish=bool(auto_publish),
        )
        return json_response(201, release_json(release))

    async def get_release(request: Request) -> Response:
        await operator(request)
        release = await coordinator.get_release(request.path_params["release_id"])
        return json_response(200, release_json(release))

    async def update_release(request: Request) -> Response:
        await operator(request)
        fields = _Fields(await body_of(request), "release", ("name", "description", "tags"))
        new_name = fields.text("name", blank=False)
        description = fields.text("description", most=MAX_DESCRIPTION, multiline=True)
        release_tags = fields.texts("tags")
        fields.check()
        release_id = request.path_params["release_id"]
        if new_name is None and description is None and release_tags is None:
            return json_response(200, release_json(await coordinator.get_release(release_id)))
        release = await coordinator.update_release(
            release_id, name=new_name, description=description, tags=release_tags
        )
        return json_response(200, release_json(release))

    async def publish(request: Request) -> Response:
        await operator(request)
        _Fields(await body_of(request, empty=True), "publish request", ()).check()
        release = await coordinator.publish(request.path_params["release_id"])
        return json_response(200, release_json(release))

    async def cancel(request: Request) -> Response:
        await operator(request)
        fields = _Fields(await body_of(request, empty=True), "cancel request", ("reason",))
        reason = fields.text("reason", most=1000)
        fields.check()
        release = await coordinator.cancel(request.path_params["release_id"], reason=reason or "")
        return json_response(200, release_json(release))

    async def run_again(request: Request) -> Response:
        await operator(request)
        _Fields(await body_of(request, empty=True), "run-again request", ()).check()
        release = await coordinator.run_again(request.path_params["release_id"])
        return json_response(201, release_json(release))

    # -- tasks ----------------------------------------------------------------------------------
    async def tasks_of(request: Request, release_id: str) -> Response:
        limit, offset = paging(request)
        states = _choices(request, "state", (s.value for s in TaskState))
        found = await coordinator.list_tasks(release_id)
        if states is not None:
            found = [t for t in found if t.state.value in states]
        items = [task_json(t) for t in found[offset : offset + limit]]
        return json_response(200, page_of(items, limit, offset, more=len(found) > offset + limit))

    async def list_tasks(request: Request) -> Response:
        await operator(request)
        release_id = request.query_params.get("release_id")
        if not release_id:
            raise Refusal(
                400, "the query parameter 'release_id' is required", parameter="release_id"
            )
        return await tasks_of(request, release_id)

    async def list_release_tasks(request: Request) -> Response:
        await operator(request)
        return await tasks_of(request, request.path_params["release_id"])

    async def find_task(request: Request) -> Task:
        task = await coordinator.get_task(request.path_params["task_id"])
        release_id = request.path_params.get("release_id")
        if release_id is not None and task.release_id != release_id:
            raise Refusal(
                404,
                f"unknown task {release_id + '/' + task.id!r}",
                kind="task",
                id=f"{release_id}/{task.id}",
            )
        return task

    async def get_task(request: Request) -> Response:
        await operator(request)
        return json_response(200, task_json(await find_task(request)))

    async def report_task(request: Request) -> Response:
        """The task-service callback: ``{"state", "progress"}``."""
        who = await identify(request)
        report = decode_callback(await body_of(request))
        task = await find_task(request)
        if who.role == "service":
            service = await coordinator.get_service(task.service_id)
            if who.name not in (service.id, service.name):
                raise forbidden("this token may only report the tasks of its own task service")
        updated = await coordinator.report_task_state(
            task.id, request.path_params.get("release_id"), report.state, report.progress
        )
        return json_response(200, task_json(updated))

    # -- events ---------------------------------------------------------------------------------
    async def list_events(request: Request) -> Response:
        await operator(request)
        limit, offset = paging(request)
        types = _choices(request, "type", (t.value for t in EventType))
        kinds = _choices(request, "kind", (k.value for k in EventKind))
        found = await coordinator.events(
            release_id=_query_text(request, "release_id"),
            task_id=_query_text(request, "task_id"),
            task_service_id=_query_text(request, "task_service_id"),
            types=None if types is None else {EventType(t) for t in types},
            kinds=None if kinds is None else {EventKind(k) for k in kinds},
            after_id=query_int(request, "after_id", 0, low=0, high=2**63 - 1),
            since=_since(request),
            limit=limit + 1,
            offset=offset,
        )
        items = [event_json(e) for e in found[:limit]]
        return json_response(200, page_of(items, limit, offset, more=len(found) > limit))

    def route(path: str, method: str, handler: Endpoint) -> tuple[str, str, Endpoint]:
        return path, method, guarded(handler)

    services_path = "/task-services/{service_id}"
    release_path = "/releases/{release_id}"
    routes = [
        route("/status", "GET", status),
        route(OPENAPI_PATH, "GET", openapi),
        route("/task-services", "GET", list_services),
        route("/task-services", "POST", register_service),
        route(services_path, "GET", get_service),
        route(services_path, "PATCH", update_service),
        route(services_path, "DELETE", remove_service),
        *(
            route(f"{services_path}/{action}", "POST", service_action(action))
            for action in ("enable", "disable", "health")
        ),
        route("/releases", "GET", list_releases),
        route("/releases", "POST", create_release),
        route(release_path, "GET", get_release),
        route(release_path, "PATCH", update_release),
        route(f"{release_path}/publish", "POST", publish),
        route(f"{release_path}/cancel", "POST", cancel),
        route(f"{release_path}/run-again", "POST", run_again),
        route(f"{release_path}/tasks", "GET", list_release_tasks),
        route(f"{release_path}/tasks/{{task_id}}", "GET", get_task),
        route(f"{release_path}/tasks/{{task_id}}", "PATCH", report_task),
        route("/tasks", "GET", list_tasks),
        route("/tasks/{task_id}", "GET", get_task),
        route("/tasks/{task_id}", "PATCH", report_task),
        route("/events", "GET", list_events),
    ]

    @contextlib.asynccontextmanager
    async def run(_app: Starlette) -> AsyncIterator[None]:
        if lifespan:
            await coordinator.start()
        try:
            yield
        finally:
            if lifespan:
                await coordinator.close()

    return Starlette(
        routes=method_routes(routes), exception_handlers={HTTPException: http_error}, lifespan=run
    )
