"""The operator API's routes for interventions: ``POST /rollouts/{id}/children/{child_id}/
exclude`` (:meth:`RolloutManager.exclude <release_coordinator.rollout.manager.RolloutManager.
exclude>`) and ``POST /rollouts/{id}/retry`` (:meth:`RolloutManager.retry
<release_coordinator.rollout.manager.RolloutManager.retry>`), a releaser's (see
:mod:`~release_coordinator.server.roles`). Needs the ``server`` extra (Starlette)."""

from __future__ import annotations

from typing import Protocol

from starlette.requests import Request
from starlette.responses import Response

from release_coordinator.errors import Problem, ValidationError
from release_coordinator.rollout.intervention_bodies import ExcludeRequest, RetryRequest
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.schemas import MAX_REASON, BodyDecoder
from release_coordinator.server.common import Endpoint, json_response
from release_coordinator.server.request_body import decode_object, read_body
from release_coordinator.server.rollout_records import (
    child_release_json,
    rollout_json,
    text_problem,
)
from release_coordinator.server.token_auth import Principal

__all__ = ["intervention_routes"]

_EXCLUDE = BodyDecoder(ExcludeRequest)
_RETRY = BodyDecoder(RetryRequest)


class _OperatorApi(Protocol):
    manager: RolloutManager
    max_body: int

    async def operator(self, request: Request) -> Principal: ...

    def actor(self, who: Principal) -> str: ...


def _unknown(body: dict[str, object], allowed: str, what: str) -> list[Problem]:
    return [(str(k)[:60], f"is not a field of {what}") for k in body if k != allowed]


def intervention_routes(api: _OperatorApi) -> list[tuple[str, str, Endpoint]]:
    """The routes, as ``(path, method, endpoint)`` (unguarded: the caller guards them)."""

    async def exclude(request: Request) -> Response:
        actor = api.actor(await api.operator(request))
        raw = await read_body(request, api.max_body)
        body = decode_object(raw, _EXCLUDE) if raw.strip() else {}  # empty: no field
        if isinstance(body, ExcludeRequest):
            reason = body.reason
        else:  # refused by msgspec: every problem, by path
            problems = _unknown(body, "reason", "an exclude request")
            reason = body.get("reason")
            if reason is not None and (problem := text_problem(reason, MAX_REASON)):
                problems.append(("reason", problem))
            if problems:
                raise ValidationError("invalid exclude request", problems)
        rollout_id = request.path_params["rollout_id"]
        child_id = request.path_params["child_id"]
        state = await api.manager.exclude(rollout_id, child_id, reason=reason or "", actor=actor)
        manager = api.manager
        seen = await manager.store.last_seen([child_id])
        lost = manager._is_lost(seen, child_id, manager._clock())
        return json_response(200, child_release_json(state, lost=lost))

    async def retry(request: Request) -> Response:
        actor = api.actor(await api.operator(request))
        raw = await read_body(request, api.max_body)
        body = decode_object(raw, _RETRY) if raw.strip() else {}  # empty: no field
        if isinstance(body, RetryRequest):
            children = body.children
        else:  # refused by msgspec: the manager lists what is wrong with the children
            problems = _unknown(body, "children", "a retry request")
            children = body.get("children")
            if children is not None and not isinstance(children, list):
                problems.append(("children", "must be a list of child ids, or null"))
            if problems:
                raise ValidationError("invalid retry request", problems)
        done = await api.manager.retry(request.path_params["rollout_id"], children, actor=actor)
        return json_response(
            200, {"rollout": rollout_json(done.rollout), "retried": list(done.retried)}
        )

    one = "/rollouts/{rollout_id}"
    return [
        (f"{one}/children/{{child_id}}/exclude", "POST", exclude),
        (f"{one}/retry", "POST", retry),
    ]
