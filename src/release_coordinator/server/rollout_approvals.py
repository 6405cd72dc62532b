"""The operator API's routes for what waits: ``POST /rollouts/{id}/stages/{stage}/approve``
(:meth:`RolloutManager.approve <release_coordinator.rollout.manager.RolloutManager.approve>`,
an admin's: see :mod:`~release_coordinator.server.roles`) and ``GET /rollouts/{id}/what-if``
(:meth:`RolloutManager.what_if <release_coordinator.rollout.manager.RolloutManager.what_if>`,
any reader). Needs the ``server`` extra (Starlette)."""

from __future__ import annotations

from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response

from release_coordinator.errors import ValidationError
from release_coordinator.rollout.api_bodies import ActionRequest
from release_coordinator.rollout.approving import StageApproval
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.what_if import WHAT_IF_LIMIT, WhatIfGroup
from release_coordinator.schemas import MAX_PAGE, BodyDecoder
from release_coordinator.server.common import Endpoint, json_response, query_int
from release_coordinator.server.request_body import decode_object, read_body
from release_coordinator.server.rollout_records import rollout_json
from release_coordinator.server.token_auth import Principal

__all__ = ["approval_routes"]

_ACTION = BodyDecoder(ActionRequest)


class _OperatorApi(Protocol):
    manager: RolloutManager
    max_body: int

    async def operator(self, request: Request) -> Principal: ...

    def actor(self, who: Principal) -> str: ...


def _approvals_json(approvals: tuple[StageApproval, ...]) -> list[dict[str, Any]]:
    return [{"stage": a.stage, "approved": a.approved} for a in approvals]


def _group_json(group: WhatIfGroup) -> dict[str, Any]:
    return {
        "name": group.name,
        "count": group.count,
        "relay_count": group.relay_count,
        "children": list(group.children),
        "relays": list(group.relays),
    }


def approval_routes(api: _OperatorApi) -> list[tuple[str, str, Endpoint]]:
    """The routes, as ``(path, method, endpoint)`` (unguarded: the caller guards them)."""

    async def approve(request: Request) -> Response:
        actor = api.actor(await api.operator(request))
        raw = await read_body(request, api.max_body)
        body = decode_object(raw, _ACTION) if raw.strip() else {}  # empty: no field
        if not isinstance(body, ActionRequest) and body:
            raise ValidationError(
                "invalid approve request",
                [(str(k)[:60], "is not a field of an approve request") for k in body],
            )
        rollout_id = request.path_params["rollout_id"]
        stage_name = request.path_params["stage_name"]
        rollout = await api.manager.approve(rollout_id, stage_name, actor=actor)
        approvals = await api.manager.approvals(rollout_id)
        return json_response(
            200, {"rollout": rollout_json(rollout), "approvals": _approvals_json(approvals)}
        )

    async def what_if(request: Request) -> Response:
        await api.operator(request)
        limit = query_int(request, "limit", WHAT_IF_LIMIT, low=1, high=MAX_PAGE)
        rollout_id = request.path_params["rollout_id"]
        seen = await api.manager.what_if(rollout_id, limit=limit)
        approvals = await api.manager.approvals(rollout_id)
        return json_response(
            200,
            {
                "rollout": rollout_json(seen.rollout),
                "eligible": seen.eligible,
                "relays": seen.relays,
                "lost": seen.lost,
                "areas": [_group_json(g) for g in seen.areas],
                "waves": [_group_json(g) for g in seen.waves],
                "children": list(seen.children),
                "approvals": _approvals_json(approvals),
                "note": seen.note,
            },
        )

    one = "/rollouts/{rollout_id}"
    return [
        (f"{one}/stages/{{stage_name}}/approve", "POST", approve),
        (f"{one}/what-if", "GET", what_if),
    ]
