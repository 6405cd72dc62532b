"""The rollout app's child protocol: ``/poll``, ``/release``, ``/release/functions``,
``/result`` and ``/end_stage`` (see :mod:`release_coordinator.server.rollout_app`).

Bodies are decoded from bytes to their Structs (:mod:`release_coordinator.rollout.bodies`);
one msgspec refuses goes the full way (JSON, then the manager's checks, which list every
problem), so that every refusal is what it always was. Needs the ``server`` extra (Starlette).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Scope

from release_coordinator.errors import ReleaseCoordinatorError, ValidationError
from release_coordinator.rollout.archive import ARCHIVE_FILENAME, ARCHIVE_MEDIA_TYPE
from release_coordinator.rollout.bodies import EndStageRequest, PollRequest
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.wire import PollAnswer
from release_coordinator.schemas import BodyDecoder
from release_coordinator.server.child_tokens import ChildTokens
from release_coordinator.server.common import Endpoint, guarded, json_response
from release_coordinator.server.poll_path import PollEndpoint
from release_coordinator.server.request_body import decode_object, read_body

__all__ = ["ChildProtocol", "child_status"]

_RESULT: BodyDecoder[dict[str, Any]] = BodyDecoder(dict[str, Any])
_END_STAGE = BodyDecoder(EndStageRequest)


def child_status(error: ReleaseCoordinatorError) -> int | None:
    """The child protocol answers every invalid input with 400."""
    return 400 if isinstance(error, ValidationError) else None


def _child_id_of(body: Mapping[str, Any] | PollRequest | EndStageRequest) -> str:
    """The ``id`` of a child request body, when child tokens need it."""
    child_id = body.get("id") if isinstance(body, Mapping) else body.id
    if not isinstance(child_id, str) or not child_id:
        raise ValidationError("invalid request", [("id", "is required (a string)")])
    return child_id


class ChildProtocol:
    """The child protocol's endpoints over ``manager``; with ``child_tokens``, the tokens
    ``tokens`` issues are required (see the app's docstring)."""

    def __init__(
        self, manager: RolloutManager, tokens: ChildTokens, *, child_tokens: bool, max_body: int
    ) -> None:
        self.manager = manager
        self.tokens = tokens
        self.child_tokens = child_tokens
        self.max_body = max_body

    async def poll(
        self, body: PollRequest | dict[str, Any], raw: bytes, scope: Scope
    ) -> tuple[PollAnswer, dict[str, Any]]:
        """``POST /poll``: the manager's answer, and its JSON (with a new child token)."""
        if isinstance(body, PollRequest):
            child_id: object = body.id
            area: object = body.geographic_area
            count: object = body.number_of_children
        else:
            child_id = body.get("id")
            area = body.get("geographic_area")
            count = body.get("number_of_children")
        child_id = "" if child_id is None else child_id  # Go agents: a missing id is ""
        count = 0 if count is None else count
        held = None  # the digest of the child's token (one read per poll)
        if self.child_tokens and isinstance(child_id, str) and child_id:
            held = await self.token_of(child_id, scope)
        # The same body bytes carry the same area: they stand in for its fingerprint.
        answer = await self.manager.poll(child_id, area, count, area_key=raw)
        out = answer.to_json()
        if self.child_tokens and held is None:  # a child without a token: its first one
            issued = await self.tokens.issue(answer.id)
            if issued is not None:
                out["token"] = issued
        return answer, out

    async def token_of(self, child_id: str, scope: Scope) -> str | None:
        """The digest of ``child_id``'s token, the request's token required to be it (401,
        403); None when the child holds none yet (its poll gets one)."""
        held = await self.tokens.digest(child_id)
        if held is not None:
            await self.tokens.require(Request(scope), child_id, held)
        return held

    async def get_release(self, request: Request) -> Response:
        child_id = request.query_params.get("childID")
        release_id = request.query_params.get("releaseID")
        if self.child_tokens:
            if not child_id:
                raise ValidationError("invalid request", [("childID", "is required (a string)")])
            await self.tokens.require(request, child_id)
        bundle = await self.manager.release(child_id, release_id)
        archive = bundle.archive
        # Extras: what the child will fetch next, so that it can check it (old agents ignore).
        headers = {"X-Archive-SHA256": archive.sha256, "X-Archive-Size": str(archive.size)}
        return Response(
            bundle.strategy_text.encode("utf-8"), media_type="text/plain", headers=headers
        )

    async def get_functions(self, request: Request) -> Response:
        # The protocol's request names no child; this library's agents add ``childID`` so the
        # call counts as the child being seen (with child tokens, it must be the token's).
        child_id = request.query_params.get("childID", "")
        if self.child_tokens:
            await self.tokens.require(request, child_id or None)
        archive = await self.manager.archive(request.path_params["release_id"], child_id)
        digest = base64.b64encode(bytes.fromhex(archive.sha256)).decode("ascii")
        return Response(
            archive.data,
            media_type=ARCHIVE_MEDIA_TYPE,
            headers={
                "Content-Disposition": f'attachment; filename="{ARCHIVE_FILENAME}"',
                "ETag": f'"{archive.sha256}"',
                "Repr-Digest": f"sha-256=:{digest}:",  # RFC 9530
            },
        )

    async def result(self, request: Request) -> Response:
        # the two key encodings of a result body are told apart by parse_result, in code
        body = decode_object(await read_body(request, self.max_body), _RESULT)
        if self.child_tokens:
            await self.tokens.require(request, _child_id_of(body))
        action = await self.manager.submit_result(body)
        return json_response(200, {"action": action} if action else {})

    async def end_stage(self, request: Request) -> Response:
        body = decode_object(await read_body(request, self.max_body), _END_STAGE)
        if self.child_tokens:
            await self.tokens.require(request, _child_id_of(body))
        if isinstance(body, EndStageRequest):
            answer = await self.manager.end_stage(body.id, body.strategy_id, body.stage_name)
        else:
            answer = await self.manager.end_stage(
                body.get("id"), body.get("strategy_id"), body.get("stage_name")
            )
        return json_response(200, answer.to_json())

    def poll_route(self) -> Route:
        """``POST /poll``, what a fleet sends most: a pure ASGI endpoint that answers a body it
        has seen before from what it answered then (:class:`~release_coordinator.server.
        poll_path.PollEndpoint`; same answers as the others)."""
        return Route("/poll", PollEndpoint(self, status_for=child_status), methods=["POST"])

    def table(self) -> list[tuple[str, str, Endpoint]]:
        """The other endpoints, as ``(path, method, endpoint)``."""
        return [
            (path, method, guarded(handler, status_for=child_status))
            for path, method, handler in (
                ("/release", "GET", self.get_release),
                ("/release/functions/{release_id:path}", "GET", self.get_functions),
                ("/result", "POST", self.result),
                ("/end_stage", "POST", self.end_stage),
            )
        ]
