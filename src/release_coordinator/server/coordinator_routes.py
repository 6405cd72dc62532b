"""The Coordinator API's endpoints, by job: who asks (:class:`Access`), then the task services,
the releases, the tasks (with the task-service callback) and the event log, each a class whose
``table()`` gives its ``(path, method, endpoint)`` rows (see
:mod:`release_coordinator.server.coordinator_app`). Needs the ``server`` extra (Starlette).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from release_coordinator.coordinator.engine import Coordinator
from release_coordinator.coordinator.models import EventKind, EventType, Task
from release_coordinator.coordinator.wire import decode_callback
from release_coordinator.fsm.release import ReleaseState, TaskState
from release_coordinator.server.common import (
    Endpoint,
    Refusal,
    json_response,
    page_of,
    paging,
    query_int,
)
from release_coordinator.server.coordinator_json import (
    event_json,
    release_json,
    service_json,
    task_json,
)
from release_coordinator.server.coordinator_requests import (
    CANCEL,
    RELEASE_CREATE,
    RELEASE_UPDATE,
    SERVICE_CREATE,
    SERVICE_UPDATE,
    choices,
    empty_body,
    query_text,
    since,
)
from release_coordinator.server.request_body import read_object
from release_coordinator.server.roles import Role
from release_coordinator.server.token_auth import (
    Principal,
    TokenAuth,
    authorize,
    bearer_token,
    forbidden,
    unauthorized,
)

__all__ = [
    "Access",
    "EventEndpoints",
    "ReleaseEndpoints",
    "ServiceEndpoints",
    "TaskEndpoints",
]

Table = list[tuple[str, str, Endpoint]]


class Access:
    """Who a request comes from: an operator (``operators``' tokens; everyone, as an admin,
    when ``anonymous``), or a task service (``services``' callback tokens).

    :meth:`operator` is what an operator endpoint calls first: it also checks the operator's
    role against the one the request needs, by the one rule of
    :func:`~release_coordinator.server.roles.required_role` (a ``GET`` needs a reader, the
    release actions a releaser, anything else an admin)."""

    def __init__(
        self, operators: TokenAuth, services: TokenAuth, anonymous: Principal | None
    ) -> None:
        self.operators = operators
        self.services = services
        self.anonymous = anonymous

    async def identify(self, request: Request) -> Principal:
        """Who is asking: an operator, or a service (401 if neither)."""
        if self.anonymous is not None:
            return self.anonymous
        token = bearer_token(request)
        if token is None:
            raise unauthorized()
        who = await self.operators.identify(token) or await self.services.identify(token)
        if who is None:
            raise unauthorized()
        return who

    def author_name(self, who: Principal) -> str:
        """``who``'s name as the author of what it writes ("" for the anonymous operator or a
        token given without a name)."""
        return "" if who is self.anonymous or who.name == who.kind else who.name

    async def operator(self, request: Request) -> Principal:
        """The operator asking, if its role allows the request (403 otherwise, and for a task
        service's token)."""
        who = await self.identify(request)
        if who.kind != "operator":
            raise forbidden("a task-service token may only report the state of its own tasks")
        return authorize(who, request)


class _Endpoints:
    def __init__(self, coordinator: Coordinator, access: Access, max_body: int) -> None:
        self.coordinator = coordinator
        self.access = access
        self.max_body = max_body


class ServiceEndpoints(_Endpoints):
    """The registry of task services."""

    async def list(self, request: Request) -> Response:
        await self.access.operator(request)
        limit, offset = paging(request)
        enabled = choices(request, "enabled", ("true", "false"))
        wanted = None if enabled is None or len(enabled) == 2 else "true" in enabled
        found = await self.coordinator.list_services(enabled=wanted)
        items = found[offset : offset + limit]
        return json_response(
            200,
            page_of(
                [service_json(s) for s in items], limit, offset, more=len(found) > offset + limit
            ),
        )

    async def register(self, request: Request) -> Response:
        await self.access.operator(request)
        body = await SERVICE_CREATE.read(request, self.max_body)
        service = await self.coordinator.register_service(
            body.name,
            body.url,
            enabled=True if body.enabled is None else body.enabled,
            check=True if body.check is None else body.check,
        )
        return json_response(201, service_json(service))

    async def get(self, request: Request) -> Response:
        await self.access.operator(request)
        service = await self.coordinator.get_service(request.path_params["service_id"])
        return json_response(200, service_json(service))

    async def update(self, request: Request) -> Response:
        await self.access.operator(request)
        body = await SERVICE_UPDATE.read(request, self.max_body)
        service_id = request.path_params["service_id"]
        if body.name is None and body.url is None:  # nothing to change: no event either
            return json_response(200, service_json(await self.coordinator.get_service(service_id)))
        service = await self.coordinator.update_service(service_id, name=body.name, url=body.url)
        return json_response(200, service_json(service))

    async def remove(self, request: Request) -> Response:
        await self.access.operator(request)
        await self.coordinator.remove_service(request.path_params["service_id"])
        return Response(status_code=204)

    def action(self, action: str) -> Endpoint:
        reader = empty_body(f"{action} request")

        async def act(request: Request) -> Response:
            await self.access.operator(request)
            await reader.read(request, self.max_body)
            service_id = request.path_params["service_id"]
            if action == "enable":
                service = await self.coordinator.enable_service(service_id)
            elif action == "disable":
                service = await self.coordinator.disable_service(service_id)
            else:
                service = await self.coordinator.check_health(service_id)
            return json_response(200, service_json(service))

        return act

    def table(self) -> Table:
        one = "/task-services/{service_id}"
        return [
            ("/task-services", "GET", self.list),
            ("/task-services", "POST", self.register),
            (one, "GET", self.get),
            (one, "PATCH", self.update),
            (one, "DELETE", self.remove),
            *((f"{one}/{action}", "POST", self.action(action)) for action in _SERVICE_ACTIONS),
        ]


_SERVICE_ACTIONS = ("enable", "disable", "health")
_PUBLISH = empty_body("publish request")
_RUN_AGAIN = empty_body("run-again request")


class ReleaseEndpoints(_Endpoints):
    """Data releases: listed, created, changed, published, canceled, run again."""

    #: Whether the listing also filters by ``?study=`` (in the store).
    _by_study = False

    async def list(self, request: Request) -> Response:
        await self.access.operator(request)
        limit, offset = paging(request)
        study = query_text(request, "study") if self._by_study else None
        states = choices(request, "state", (s.value for s in ReleaseState))
        tag = query_text(request, "tag")
        author = query_text(request, "author")
        if tag is None and author is None:
            found = await self.coordinator.list_releases(
                states=states, study=study, limit=limit + 1, offset=offset
            )
        else:  # the store filters by state and study only: the rest is filtered here, then paged
            everything = await self.coordinator.list_releases(states=states, study=study)
            matching = [
                r
                for r in everything
                if (tag is None or tag in r.tags) and (author is None or r.author == author)
            ]
            found = matching[offset : offset + limit + 1]
        items = [release_json(r) for r in found[:limit]]
        return json_response(200, page_of(items, limit, offset, more=len(found) > limit))

    async def create(self, request: Request) -> Response:
        who = await self.access.operator(request)
        body = await RELEASE_CREATE.read(request, self.max_body)
        own = self.access.author_name(who)
        author = own if body.author is None else body.author
        if who.role is Role.RELEASER and author != own:
            raise forbidden(
                f"a releaser creates releases under its own name only: the author given is "
                f"{author!r}, the token's name {own!r} (an admin may name anyone)"
            )
        release = await self.coordinator.create_release(
            body.name,
            description=body.description or "",
            studies=body.studies or (),
            tags=body.tags or (),
            author=author,
            is_major=bool(body.is_major),
            auto_publish=bool(body.auto_publish),
            required_approvals=body.required_approvals or 0,
            checks=body.checks or (),
            publish_at=body.publish_at,
        )
        return json_response(201, release_json(release))

    async def get(self, request: Request) -> Response:
        await self.access.operator(request)
        release = await self.coordinator.get_release(request.path_params["release_id"])
        return json_response(200, release_json(release))

    async def update(self, request: Request) -> Response:
        await self.access.operator(request)
        body = await RELEASE_UPDATE.read(request, self.max_body)
        release_id = request.path_params["release_id"]
        if body.name is None and body.description is None and body.tags is None:
            return json_response(200, release_json(await self.coordinator.get_release(release_id)))
        release = await self.coordinator.update_release(
            release_id, name=body.name, description=body.description, tags=body.tags
        )
        return json_response(200, release_json(release))

    async def publish(self, request: Request) -> Response:
        await self.access.operator(request)
        await _PUBLISH.read(request, self.max_body)
        release = await self.coordinator.publish(request.path_params["release_id"])
        return json_response(200, release_json(release))

    async def cancel(self, request: Request) -> Response:
        await self.access.operator(request)
        body = await CANCEL.read(request, self.max_body)
        release = await self.coordinator.cancel(
            request.path_params["release_id"], reason=body.reason or ""
        )
        return json_response(200, release_json(release))

    async def run_again(self, request: Request) -> Response:
        await self.access.operator(request)
        await _RUN_AGAIN.read(request, self.max_body)
        release = await self.coordinator.run_again(request.path_params["release_id"])
        return json_response(201, release_json(release))

    def table(self) -> Table:
        one = "/releases/{release_id}"
        return [
            ("/releases", "GET", self.list),
            ("/releases", "POST", self.create),
            (one, "GET", self.get),
            (one, "PATCH", self.update),
            (f"{one}/publish", "POST", self.publish),
            (f"{one}/cancel", "POST", self.cancel),
            (f"{one}/run-again", "POST", self.run_again),
        ]


class TaskEndpoints(_Endpoints):
    """A release's tasks, and the task-service callback that reports their state."""

    async def _page(self, request: Request, release_id: str) -> Response:
        limit, offset = paging(request)
        states = choices(request, "state", (s.value for s in TaskState))
        found = await self.coordinator.list_tasks(release_id)
        if states is not None:
            found = [t for t in found if t.state.value in states]
        items = [task_json(t) for t in found[offset : offset + limit]]
        return json_response(200, page_of(items, limit, offset, more=len(found) > offset + limit))

    async def list(self, request: Request) -> Response:
        await self.access.operator(request)
        release_id = request.query_params.get("release_id")
        if not release_id:
            raise Refusal(
                400, "the query parameter 'release_id' is required", parameter="release_id"
            )
        return await self._page(request, release_id)

    async def list_of_release(self, request: Request) -> Response:
        await self.access.operator(request)
        return await self._page(request, request.path_params["release_id"])

    async def _find(self, request: Request) -> Task:
        task = await self.coordinator.get_task(request.path_params["task_id"])
        release_id = request.path_params.get("release_id")
        if release_id is not None and task.release_id != release_id:
            raise Refusal(
                404,
                f"unknown task {release_id + '/' + task.id!r}",
                kind="task",
                id=f"{release_id}/{task.id}",
            )
        return task

    async def get(self, request: Request) -> Response:
        await self.access.operator(request)
        return json_response(200, task_json(await self._find(request)))

    async def report(self, request: Request) -> Response:
        """The task-service callback: ``{"state", "progress"}``."""
        who = await self.access.identify(request)
        if who.kind == "operator":
            authorize(who, request)
        report = decode_callback(await read_object(request, self.max_body))
        task = await self._find(request)
        if who.kind == "service":
            service = await self.coordinator.get_service(task.service_id)
            if who.name not in (service.id, service.name):
                raise forbidden("this token may only report the tasks of its own task service")
        updated = await self.coordinator.report_task_state(
            task.id, request.path_params.get("release_id"), report.state, report.progress
        )
        return json_response(200, task_json(updated))

    def table(self) -> Table:
        of_release = "/releases/{release_id}/tasks"
        return [
            (of_release, "GET", self.list_of_release),
            (f"{of_release}/{{task_id}}", "GET", self.get),
            (f"{of_release}/{{task_id}}", "PATCH", self.report),
            ("/tasks", "GET", self.list),
            ("/tasks/{task_id}", "GET", self.get),
            ("/tasks/{task_id}", "PATCH", self.report),
        ]


class EventEndpoints(_Endpoints):
    """The append-only event log, filtered, oldest first."""

    async def list(self, request: Request) -> Response:
        await self.access.operator(request)
        limit, offset = paging(request)
        types = choices(request, "type", (t.value for t in EventType))
        kinds = choices(request, "kind", (k.value for k in EventKind))
        found = await self.coordinator.events(
            release_id=query_text(request, "release_id"),
            task_id=query_text(request, "task_id"),
            task_service_id=query_text(request, "task_service_id"),
            types=None if types is None else {EventType(t) for t in types},
            kinds=None if kinds is None else {EventKind(k) for k in kinds},
            after_id=query_int(request, "after_id", 0, low=0, high=2**63 - 1),
            since=since(request),
            limit=limit + 1,
            offset=offset,
        )
        items = [event_json(e) for e in found[:limit]]
        return json_response(200, page_of(items, limit, offset, more=len(found) > limit))

    def table(self) -> Table:
        return [("/events", "GET", self.list)]
