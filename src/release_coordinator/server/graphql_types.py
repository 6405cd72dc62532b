"""The GraphQL schema's object types, over a Coordinator and a RolloutManager (read-only).

Each type's plain fields are the REST API's (the same names, the same values: every object
is made from the JSON the REST endpoint answers, by :mod:`~release_coordinator.server.
coordinator_json` and :mod:`~release_coordinator.server.rollout_records`), so that a task
service's URL shows its password as ``***`` here too. The links between records are fields
of their own, resolved only when a query selects them: a release's ``tasks``, ``notes`` and
``events``; a task's ``release`` and ``task_service``; an event's and a note's ``release``;
a study's ``releases``, ``latest_release``, ``last_published_release`` and ``notes``; a
rollout's ``bundle``, ``status`` (what ``GET /rollouts/{id}/status`` answers), ``children``
and the data ``release`` it waits for. The root fields are in
:mod:`~release_coordinator.server.graphql_query`.

Needs the ``graphql`` extra (strawberry-graphql).
"""

from __future__ import annotations

from typing import Any, NoReturn

import strawberry
from strawberry.scalars import JSON

from release_coordinator.coordinator.models import (
    Event,
    EventKind,
    EventType,
    Release,
    ReleaseNote,
    Study,
    Task,
    TaskService,
)
from release_coordinator.errors import ValidationError
from release_coordinator.fsm.release import TaskState
from release_coordinator.fsm.rollout import ReleaseStatus
from release_coordinator.rollout.models import Rollout
from release_coordinator.server.coordinator_json import (
    event_json,
    note_json,
    release_json,
    service_json,
    study_json,
    task_json,
)
from release_coordinator.server.graphql_context import (
    DEFAULT_PAGE,
    Info,
    Page,
    check_page,
    choices,
    full_page,
    made,
    maybe,
    page,
    read_page,
    records,
    resolved,
    text,
    window,
)
from release_coordinator.server.rollout_records import (
    bundle_json,
    child_release_json,
    stage_judgement_json,
    summary_json,
)

__all__ = [
    "ChildReleaseNode",
    "EventNode",
    "NoteNode",
    "ReleaseNode",
    "RolloutNode",
    "StudyNode",
    "TaskNode",
    "TaskServiceNode",
    "event_page",
    "release_of",
    "services",
    "study_node",
]


async def release_of(info: Info, release_id: str | None) -> ReleaseNode | None:
    """The release ``release_id`` names (None: none, or an unknown one), read once per
    request."""
    if not release_id:
        return None
    return maybe(ReleaseNode, release_json, await info.context.releases.load(release_id))


async def event_page(
    info: Info,
    *,
    release_id: str | None,
    task_id: str | None = None,
    task_service_id: str | None = None,
    type: list[str] | None = None,
    kind: list[str] | None = None,
    after_id: int = 0,
    since: Any = None,
    limit: int,
    offset: int,
) -> Page[EventNode]:
    """A page of the event log, filtered as ``GET /events`` filters it."""
    check_page(limit, offset)
    if after_id < 0:
        raise_invalid("after_id", "must be at least 0")
    types = choices("type", type, (t.value for t in EventType))
    kinds = choices("kind", kind, (k.value for k in EventKind))
    info.context.reserve(limit)
    found = await info.context.coordinator.events(
        release_id=text("release_id", release_id),
        task_id=text("task_id", task_id),
        task_service_id=text("task_service_id", task_service_id),
        types=None if types is None else {EventType(t) for t in types},
        kinds=None if kinds is None else {EventKind(k) for k in kinds},
        after_id=after_id,
        since=since,
        limit=limit + 1,
        offset=offset,
    )
    return read_page(info, records(EventNode, event_json, found), limit, offset)


async def _task_page(
    info: Info, release_id: str, state: list[str] | None, limit: int, offset: int
) -> Page[TaskNode]:
    """A page of a release's tasks (those in the states ``state`` names), as ``GET
    /releases/{id}/tasks`` shows them."""
    check_page(limit, offset)
    states = choices("state", state, (s.value for s in TaskState))
    found = await info.context.tasks.load(_id("release_id", release_id))
    if states is not None:
        found = [t for t in found if t.state.value in states]
    return full_page(info, records(TaskNode, task_json, found), limit, offset)


def _id(name: str, value: str) -> str:
    """An id argument, checked as :func:`text` checks it."""
    checked = text(name, value)
    assert checked is not None
    return checked


def raise_invalid(name: str, message: str) -> NoReturn:
    raise ValidationError("invalid arguments", [(name, message)])


@strawberry.type(name="TaskServiceHealth", description="A task service's last health check.")
class HealthNode:
    status: str
    consecutive_failures: int
    last_checked_at: str | None
    last_error: str
    reported_name: str
    reported_version: str
    message: str


@strawberry.type(
    name="TaskService",
    description="A registered task service (a password in its URL is shown as ***).",
)
class TaskServiceNode:
    id: strawberry.ID
    name: str
    url: str
    enabled: bool
    health: HealthNode
    created_at: str
    updated_at: str
    record: strawberry.Private[TaskService]

    @classmethod
    def of(cls, service: TaskService) -> TaskServiceNode:
        fields = service_json(service)
        return made(cls, fields, health=made(HealthNode, fields.pop("health")), record=service)


def services(found: list[TaskService]) -> list[TaskServiceNode]:
    return [TaskServiceNode.of(s) for s in found]


@strawberry.type(name="Task", description="A release's task: one task service's part in it.")
class TaskNode:
    id: strawberry.ID
    release_id: str
    task_service_id: str
    state: str
    progress: int
    message: str
    created_at: str
    updated_at: str
    progress_at: str
    record: strawberry.Private[Task]

    @resolved("The release of the task.")
    async def release(self, info: Info) -> ReleaseNode | None:
        return await release_of(info, self.release_id)

    @resolved("The task service of the task (null once it is removed).")
    async def task_service(self, info: Info) -> TaskServiceNode | None:
        found = await info.context.services.load(self.task_service_id)
        return None if found is None else TaskServiceNode.of(found)


@strawberry.type(name="Event", description="An entry of the event log.")
class EventNode:
    id: int
    at: str
    type: str
    kind: str
    message: str
    release_id: str | None
    task_id: str | None
    task_service_id: str | None
    state: str | None
    record: strawberry.Private[Event]

    @resolved("The release the event is about, if any.")
    async def release(self, info: Info) -> ReleaseNode | None:
        return await release_of(info, self.release_id)


@strawberry.type(name="ReleaseNote", description="A release note, on a release or a study.")
class NoteNode:
    id: strawberry.ID
    release_id: str
    study_id: str
    author: str
    text: str
    created_at: str
    updated_at: str
    record: strawberry.Private[ReleaseNote]

    @resolved("The release the note is on.")
    async def release(self, info: Info) -> ReleaseNode | None:
        return await release_of(info, self.release_id)


@strawberry.type(name="Release", description="A data release.")
class ReleaseNode:
    id: strawberry.ID
    name: str
    version: str
    state: str
    description: str
    studies: list[str]
    tags: list[str]
    author: str
    is_major: bool
    auto_publish: bool
    failure: str
    cloned_from: str
    created_at: str
    updated_at: str
    state_changed_at: str
    gates: JSON = strawberry.field(
        description="Its gates before publish: required approvals, checks, scheduled time,"
        " the approvals and the checks' answers (as `GET /releases/{id}` shows them)."
    )
    publish_gate: str | None = strawberry.field(
        description="Why it may not be published now (null: nothing holds it)."
    )
    record: strawberry.Private[Release]

    @resolved("Its tasks (filtered by `state`), as `GET /releases/{id}/tasks`.")
    async def tasks(
        self,
        info: Info,
        state: list[str] | None = None,
        limit: int = DEFAULT_PAGE,
        offset: int = 0,
    ) -> Page[TaskNode] | None:
        return await _task_page(info, self.record.id, state, limit, offset)

    @resolved("Its notes, oldest first (those on one study: `study_id`).")
    async def notes(
        self,
        info: Info,
        study_id: str | None = None,
        limit: int = DEFAULT_PAGE,
        offset: int = 0,
    ) -> Page[NoteNode] | None:
        check_page(limit, offset)
        info.context.reserve(limit)
        found = await info.context.coordinator.list_notes(
            release_id=self.record.id,
            study_id=text("study_id", study_id),
            limit=limit + 1,
            offset=offset,
        )
        return read_page(info, records(NoteNode, note_json, found), limit, offset)

    @resolved("Its events, oldest first, filtered as `GET /events`.")
    async def events(
        self,
        info: Info,
        type: list[str] | None = None,
        kind: list[str] | None = None,
        after_id: int = 0,
        limit: int = DEFAULT_PAGE,
        offset: int = 0,
    ) -> Page[EventNode] | None:
        return await event_page(
            info,
            release_id=self.record.id,
            type=type,
            kind=kind,
            after_id=after_id,
            limit=limit,
            offset=offset,
        )


@strawberry.type(name="Study", description="A study, read from the releases that name it.")
class StudyNode:
    id: strawberry.ID
    created_at: str
    release_ids: list[str]
    latest_release_id: str
    latest_version: str
    last_published_release_id: str
    last_published_version: str
    last_published_at: str | None
    record: strawberry.Private[Study]

    @resolved("The releases that name it, in `release_ids`' order.")
    async def releases(
        self, info: Info, limit: int = DEFAULT_PAGE, offset: int = 0
    ) -> Page[ReleaseNode] | None:
        check_page(limit, offset)
        wanted = self.release_ids[offset : offset + limit]
        info.context.reserve(len(wanted))
        found = [await release_of(info, release_id) for release_id in wanted]
        items = [r for r in found if r is not None]
        more = len(self.release_ids) > offset + limit
        info.context.items -= len(wanted) - len(items)
        return Page(
            items=items,
            limit=limit,
            offset=offset,
            next_offset=offset + len(wanted) if more else None,
        )

    @resolved("Its latest release.")
    async def latest_release(self, info: Info) -> ReleaseNode | None:
        return await release_of(info, self.latest_release_id)

    @resolved("Its last published release.")
    async def last_published_release(self, info: Info) -> ReleaseNode | None:
        return await release_of(info, self.last_published_release_id)

    @resolved("The notes on it, oldest first.")
    async def notes(
        self, info: Info, limit: int = DEFAULT_PAGE, offset: int = 0
    ) -> Page[NoteNode] | None:
        check_page(limit, offset)
        info.context.reserve(limit)
        found = await info.context.coordinator.list_notes(
            study_id=self.record.id, limit=limit + 1, offset=offset
        )
        return read_page(info, records(NoteNode, note_json, found), limit, offset)


def study_node(found: Study | None) -> StudyNode | None:
    return maybe(StudyNode, study_json, found)


# -- rollouts ----------------------------------------------------------------------------------


@strawberry.type(name="BundleStage", description="A stage of a bundle's strategy.")
class BundleStageNode:
    name: str
    type: str


@strawberry.type(name="BundleStrategy", description="The outline of a bundle's strategy.")
class BundleStrategyNode:
    id: str
    name: str
    type: str
    stages: list[BundleStageNode]
    functions: list[str]


@strawberry.type(name="BundleArchive", description="The outline of a bundle's function archive.")
class BundleArchiveNode:
    filename: str
    sha256: str
    size: int
    files: list[str]


@strawberry.type(name="Bundle", description="A rollout's bundle: its strategy, its archive.")
class BundleNode:
    strategy: BundleStrategyNode
    archive: BundleArchiveNode


@strawberry.type(name="StageCounts", description="One stage of a rollout's status.")
class StageCountsNode:
    name: str
    counts: JSON = strawberry.field(description="How many children are in each StageStatus.")
    aggregate: JSON | None = strawberry.field(
        description="The call-weighted aggregate of their summaries (documented keys)."
    )
    judgement: JSON | None = strawberry.field(
        description="The stage's canary judgement, when the rollout's policy has one."
    )


@strawberry.type(
    name="StageApproval",
    description="A stage the rollout's policy needs approved before it opens, and whether it is.",
)
class StageApprovalNode:
    stage: str
    approved: bool


@strawberry.type(
    name="RolloutStatus",
    description="A rollout's status, as `GET /rollouts/{id}/status` answers it.",
)
class RolloutStatusNode:
    children: int
    statuses: JSON = strawberry.field(description="How many children are in each ReleaseStatus.")
    outcomes: JSON = strawberry.field(description="How many children rolled out or back.")
    lost: list[str]
    stages: list[StageCountsNode]
    approvals: list[StageApprovalNode] = strawberry.field(
        description="The stages the policy's approvals name, and whether each is approved."
    )


@strawberry.type(
    name="ChildRelease",
    description="One child's state in a rollout (statuses by their protocol names).",
)
class ChildReleaseNode:
    child_id: str
    status: str
    outcome: str
    acknowledged: bool
    lost: bool
    stages: JSON = strawberry.field(description="Each stage's status and summary, by name.")


@strawberry.type(name="Rollout", description="A rollout of a bundle to the edge children.")
class RolloutNode:
    id: strawberry.ID
    name: str
    state: str
    target: JSON = strawberry.field(description="The target area (GeoJSON).")
    match: str
    priority: int
    policy: JSON = strawberry.field(description="The orchestration policy.")
    seq: int
    reason: str
    gated: bool
    after_release: str
    record: strawberry.Private[Rollout]

    @resolved("Its bundle: the strategy's outline and the archive's.")
    async def bundle(self, info: Info) -> BundleNode | None:
        shown = bundle_json(await info.context.bundles.load(self.record.id))
        strategy = dict(shown["strategy"])
        strategy["stages"] = [made(BundleStageNode, s) for s in strategy["stages"]]
        return BundleNode(
            strategy=made(BundleStrategyNode, strategy),
            archive=made(BundleArchiveNode, shown["archive"]),
        )

    @resolved("Its status: counts per status, outcome and stage.")
    async def status(self, info: Info) -> RolloutStatusNode | None:
        report = await info.context.reports.load(self.record.id)
        return RolloutStatusNode(
            children=len(report.children),
            statuses=JSON(dict(report.statuses)),
            outcomes=JSON(dict(report.outcomes)),
            lost=list(report.lost),
            stages=[
                StageCountsNode(
                    name=row.name,
                    counts=JSON(dict(row.counts)),
                    aggregate=JSON(summary_json(row.aggregate)),
                    judgement=JSON(stage_judgement_json(row.judgement)),
                )
                for row in report.stages
            ],
            approvals=[
                StageApprovalNode(stage=a.stage, approved=a.approved)
                for a in await info.context.manager.approvals(self.record.id)
            ],
        )

    @resolved("Its children's states (one `status`: its protocol name).")
    async def children(
        self,
        info: Info,
        status: str | None = None,
        limit: int = DEFAULT_PAGE,
        offset: int = 0,
    ) -> Page[ChildReleaseNode] | None:
        check_page(limit, offset)
        wanted = None if status is None else ReleaseStatus.from_wire(status, "status")
        report = await info.context.reports.load(self.record.id)
        lost = set(report.lost)
        rows = [c for c in report.children if wanted is None or c.status is wanted]
        shown, next_offset = window(rows, limit, offset)
        items = [
            made(ChildReleaseNode, child_release_json(c, lost=c.child_id in lost)) for c in shown
        ]
        return page(info, items, limit, offset, next_offset)

    @resolved("The data release it waits for (`after_release`), if any.")
    async def release(self, info: Info) -> ReleaseNode | None:
        return await release_of(info, self.after_release)
