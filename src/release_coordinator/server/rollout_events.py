"""The rollout event log on the operator API: ``GET /rollout-events`` (the whole log) and
``GET /rollouts/{rollout_id}/events`` (one rollout's), filtered, paged and followed with
``after_id`` as the Coordinator's ``GET /events`` (see :mod:`release_coordinator.rollout.
events`). The whole log has a path of its own, not ``/rollouts/events``: that one would hide
the rollout named ``events``. Needs the ``server`` extra (Starlette)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from release_coordinator.coordinator.models import EventType
from release_coordinator.rollout.events import RolloutEvent, RolloutEventKind
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.server.common import (
    Endpoint,
    guarded,
    json_response,
    page_of,
    paging,
    query_int,
)
from release_coordinator.server.coordinator_requests import choices, query_text, since
from release_coordinator.server.token_auth import Principal

__all__ = ["EVENTS_PATH", "RolloutEventApi", "actor_of", "rollout_event_json"]

#: The whole rollout event log's path.
EVENTS_PATH = "/rollout-events"

#: The largest ``after_id`` (the log's ids are 64-bit).
MAX_EVENT_ID = 2**63 - 1


def rollout_event_json(event: RolloutEvent) -> dict[str, Any]:
    """A rollout event as the API shows it (the shape of the Coordinator's events)."""
    return {
        "id": event.id,
        "at": event.at.isoformat(),
        "type": event.type.value,
        "kind": event.kind.value,
        "message": event.message,
        "rollout_id": event.rollout_id,
        "child_id": event.child_id,
        "stage": event.stage,
        "state": event.state,
        "actor": event.actor,
    }


def actor_of(who: Principal, anonymous: bool) -> str:
    """``who``'s name as the actor of an operator action ("" for the anonymous operator or a
    token given without a name), what the event log shows."""
    return "" if anonymous or who.name == who.kind else who.name


class RolloutEventApi:
    """The event log's endpoints over ``manager``; ``operator`` is the operator API's check
    of who asks (a ``GET``: any reader)."""

    def __init__(
        self, manager: RolloutManager, operator: Callable[[Request], Awaitable[Principal]]
    ) -> None:
        self.manager = manager
        self.operator = operator

    async def list_events(self, request: Request) -> Response:
        await self.operator(request)
        limit, offset = paging(request)
        rollout_id = request.path_params.get("rollout_id")
        if rollout_id is not None:
            await self.manager.get_rollout(rollout_id)  # 404 for an unknown rollout
        else:
            rollout_id = query_text(request, "rollout_id")
        types = choices(request, "type", (t.value for t in EventType))
        kinds = choices(request, "kind", (k.value for k in RolloutEventKind))
        found = await self.manager.list_events(
            rollout_id=rollout_id,
            child_id=query_text(request, "child_id"),
            stage=query_text(request, "stage"),
            types=None if types is None else {EventType(t) for t in types},
            kinds=None if kinds is None else {RolloutEventKind(k) for k in kinds},
            after_id=query_int(request, "after_id", 0, low=0, high=MAX_EVENT_ID),
            since=since(request),
            limit=limit + 1,
            offset=offset,
        )
        items = [rollout_event_json(e) for e in found[:limit]]
        return json_response(200, page_of(items, limit, offset, more=len(found) > limit))

    def table(self) -> list[tuple[str, str, Endpoint]]:
        """The endpoints, as ``(path, method, endpoint)``."""
        return [
            (EVENTS_PATH, "GET", guarded(self.list_events)),
            ("/rollouts/{rollout_id}/events", "GET", guarded(self.list_events)),
        ]
