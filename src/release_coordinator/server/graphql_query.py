"""The GraphQL schema's root: the read-only ``Query`` type (there is no mutation).

Every root field reads what a ``GET`` of the REST API reads, with its filters and its paging
(``limit`` 1..1000, default 100; ``offset``), and refuses what it refuses (an unknown state, a
text too long): as a GraphQL error whose ``extensions.code`` is the REST error's ``code``
(``not_found``, ``invalid``) and ``extensions.details`` its details.

=========================================  =========================================
field                                      as
=========================================  =========================================
``releases(state, study, tag, author)``    ``GET /releases``
``release(id)``                            ``GET /releases/{id}``
``tasks(release_id, state)``               ``GET /tasks?release_id=``
``task(id)``                               ``GET /tasks/{id}``
``events(release_id, task_id, ...)``       ``GET /events``
``task_services(enabled)``                 ``GET /task-services``
``task_service(id)``                       ``GET /task-services/{id}``
``note(id)``                               ``GET /notes/{id}``
``studies``, ``study(id)``                 ``GET /studies``, ``GET /studies/{id}``
``rollouts(state)``, ``rollout(id)``       ``GET /rollouts``, ``GET /rollouts/{id}``
``children``                               ``GET /children``
=========================================  =========================================

Needs the ``graphql`` extra (strawberry-graphql).
"""

from __future__ import annotations

import strawberry
from strawberry.scalars import JSON

from release_coordinator.fsm.release import ReleaseState
from release_coordinator.rollout.models import RolloutState
from release_coordinator.server.coordinator_json import (
    note_json,
    release_json,
    task_json,
)
from release_coordinator.server.graphql_context import (
    DEFAULT_PAGE,
    Info,
    Page,
    check_page,
    choices,
    made,
    page,
    read_page,
    records,
    resolved,
    since_time,
    text,
    window,
)
from release_coordinator.server.graphql_types import (
    EventNode,
    NoteNode,
    ReleaseNode,
    RolloutNode,
    StudyNode,
    TaskNode,
    TaskServiceNode,
    _id,
    _task_page,
    event_page,
    services,
    study_node,
)
from release_coordinator.server.rollout_records import rollout_json

__all__ = ["ChildNode", "Query"]


@strawberry.type(name="Child", description="A registered child of the RolloutManager.")
class ChildNode:
    id: strawberry.ID
    area: JSON = strawberry.field(description="Its area (GeoJSON).")
    number_of_children: int
    lost: bool
    has_token: bool


@strawberry.type(description="Read-only queries over the Coordinator and the RolloutManager.")
class Query:
    @resolved("Releases, newest first, filtered as `GET /releases`.")
    async def releases(
        self,
        info: Info,
        state: list[str] | None = None,
        study: str | None = None,
        tag: str | None = None,
        author: str | None = None,
        limit: int = DEFAULT_PAGE,
        offset: int = 0,
    ) -> Page[ReleaseNode] | None:
        check_page(limit, offset)
        coordinator = info.context.coordinator
        states = choices("state", state, (s.value for s in ReleaseState))
        study = text("study", study)
        tag = text("tag", tag)
        author = text("author", author)
        if tag is None and author is None:
            info.context.reserve(limit)
            found = await coordinator.list_releases(
                states=states, study=study, limit=limit + 1, offset=offset
            )
            return read_page(info, records(ReleaseNode, release_json, found), limit, offset)
        everything = await coordinator.list_releases(states=states, study=study)
        matching = [
            r
            for r in everything
            if (tag is None or tag in r.tags) and (author is None or r.author == author)
        ]
        shown, next_offset = window(matching, limit, offset)
        return page(info, records(ReleaseNode, release_json, shown), limit, offset, next_offset)

    @resolved("One release (an error `not_found` for an unknown id).")
    async def release(self, info: Info, id: strawberry.ID) -> ReleaseNode | None:
        found = await info.context.coordinator.get_release(_id("id", id))
        return made(ReleaseNode, release_json(found), record=found)

    @resolved("The tasks of a release (filtered by `state`).")
    async def tasks(
        self,
        info: Info,
        release_id: strawberry.ID,
        state: list[str] | None = None,
        limit: int = DEFAULT_PAGE,
        offset: int = 0,
    ) -> Page[TaskNode] | None:
        return await _task_page(info, release_id, state, limit, offset)

    @resolved("One task.")
    async def task(self, info: Info, id: strawberry.ID) -> TaskNode | None:
        found = await info.context.coordinator.get_task(_id("id", id))
        return made(TaskNode, task_json(found), record=found)

    @resolved("The event log, oldest first, filtered as `GET /events` (`since`: an ISO 8601 time).")
    async def events(
        self,
        info: Info,
        release_id: str | None = None,
        task_id: str | None = None,
        task_service_id: str | None = None,
        type: list[str] | None = None,
        kind: list[str] | None = None,
        after_id: int = 0,
        since: str | None = None,
        limit: int = DEFAULT_PAGE,
        offset: int = 0,
    ) -> Page[EventNode] | None:
        return await event_page(
            info,
            release_id=release_id,
            task_id=task_id,
            task_service_id=task_service_id,
            type=type,
            kind=kind,
            after_id=after_id,
            since=since_time(text("since", since)),
            limit=limit,
            offset=offset,
        )

    @resolved("The registry of task services (`enabled`: only those).")
    async def task_services(
        self,
        info: Info,
        enabled: bool | None = None,
        limit: int = DEFAULT_PAGE,
        offset: int = 0,
    ) -> Page[TaskServiceNode] | None:
        check_page(limit, offset)
        found = await info.context.coordinator.list_services(enabled=enabled)
        shown, next_offset = window(found, limit, offset)
        return page(info, services(shown), limit, offset, next_offset)

    @resolved("One task service.")
    async def task_service(self, info: Info, id: strawberry.ID) -> TaskServiceNode | None:
        return TaskServiceNode.of(await info.context.coordinator.get_service(_id("id", id)))

    @resolved("One release note.")
    async def note(self, info: Info, id: strawberry.ID) -> NoteNode | None:
        found = await info.context.coordinator.get_note(_id("id", id))
        return made(NoteNode, note_json(found), record=found)

    @resolved("Every study releases name, newest first.")
    async def studies(
        self, info: Info, limit: int = DEFAULT_PAGE, offset: int = 0
    ) -> Page[StudyNode] | None:
        check_page(limit, offset)
        info.context.reserve(limit)
        found = await info.context.coordinator.list_studies(limit=limit + 1, offset=offset)
        items = [s for s in (study_node(f) for f in found) if s is not None]
        return read_page(info, items, limit, offset)

    @resolved("One study: its releases, the latest, the last published.")
    async def study(self, info: Info, id: strawberry.ID) -> StudyNode | None:
        return study_node(await info.context.coordinator.get_study(_id("id", id)))

    @resolved("Rollouts (filtered by `state`).")
    async def rollouts(
        self,
        info: Info,
        state: list[str] | None = None,
        limit: int = DEFAULT_PAGE,
        offset: int = 0,
    ) -> Page[RolloutNode] | None:
        check_page(limit, offset)
        states = choices("state", state, (s.value for s in RolloutState))
        found = await info.context.manager.list_rollouts(
            states=None if states is None else {RolloutState(s) for s in states}
        )
        shown, next_offset = window(found, limit, offset)
        items = [made(RolloutNode, rollout_json(r), record=r) for r in shown]
        return page(info, items, limit, offset, next_offset)

    @resolved("One rollout.")
    async def rollout(self, info: Info, id: strawberry.ID) -> RolloutNode | None:
        found = await info.context.manager.get_rollout(_id("id", id))
        return made(RolloutNode, rollout_json(found), record=found)

    @resolved("The registered children, as `GET /children`.")
    async def children(
        self, info: Info, limit: int = DEFAULT_PAGE, offset: int = 0
    ) -> Page[ChildNode] | None:
        check_page(limit, offset)
        manager = info.context.manager
        everyone = await manager.children()
        live = {c.id for c in await manager.live_children()}
        shown, next_offset = window(everyone, limit, offset)
        with_tokens = await manager.store.children_with_tokens(c.id for c in shown)
        items = [
            ChildNode(
                id=strawberry.ID(c.id),
                area=JSON(c.area.to_geojson()),
                number_of_children=c.number_of_children,
                lost=c.id not in live,
                has_token=c.id in with_tokens,
            )
            for c in shown
        ]
        return page(info, items, limit, offset, next_offset)
