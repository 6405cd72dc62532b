"""The rollout app's operator API: uploads, rollouts' actions and reports, children and their
tokens (see :mod:`release_coordinator.server.rollout_app`). Needs the ``server`` extra.

Request bodies are decoded from bytes to their Structs (:mod:`release_coordinator.rollout.
api_bodies`), which check every field's type, range and length and refuse unknown fields;
the rules JSON Schema cannot state (the target area, the policy, printable text, the strategy
document and the archive) are checked in code after them. A body msgspec refuses goes the full
way (JSON, then the checks of every field, which list every problem), so that every refusal is
what it always was.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
from collections.abc import Mapping
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response

from release_coordinator.errors import (
    GeoJSONError,
    NotFoundError,
    Problem,
    StrategyError,
    ValidationError,
)
from release_coordinator.fsm.rollout import ReleaseStatus
from release_coordinator.rollout.api_bodies import (
    MAX_REASON,
    MAX_RELEASE_ID,
    AbortRequest,
    ActionRequest,
    RolloutFields,
    RolloutUpload,
)
from release_coordinator.rollout.archive import ARCHIVE_FILENAME, ArchiveLimits
from release_coordinator.rollout.geo import Area
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.models import ReleaseBundle, RolloutState
from release_coordinator.rollout.policies import parse_policy
from release_coordinator.schemas import BodyDecoder
from release_coordinator.server.child_tokens import ChildTokens
from release_coordinator.server.common import (
    Endpoint,
    Refusal,
    guarded,
    json_response,
    page_of,
    paging,
)
from release_coordinator.server.request_body import (
    decode_object,
    parse_json,
    parse_multipart,
    read_body,
)
from release_coordinator.server.rollout_approvals import approval_routes
from release_coordinator.server.rollout_events import actor_of
from release_coordinator.server.rollout_interventions import intervention_routes
from release_coordinator.server.rollout_records import (
    area_query,
    bundle_json,
    child_release_json,
    rollout_json,
    stage_judgement_json,
    summary_json,
    text_problem,
)
from release_coordinator.server.token_auth import (
    Principal,
    TokenAuth,
    authorize,
    bearer_token,
    forbidden,
    unauthorized,
)

__all__ = ["OperatorApi"]

log = logging.getLogger("release_coordinator.server.rollout_app")

_UPLOAD = BodyDecoder(RolloutUpload)
_FIELDS = BodyDecoder(RolloutFields)
_ACTION = BodyDecoder(ActionRequest)
_ABORT = BodyDecoder(AbortRequest)

#: A rollout's fields: their Struct, or the JSON object msgspec refused (fully checked).
Fields = RolloutFields | Mapping[str, Any]


def _target_into(value: object, options: dict[str, Any], problems: list[Problem]) -> None:
    try:
        options["target"] = Area.from_geojson(value, path="target")
    except GeoJSONError as error:
        problems += error.problems


def _name_into(name: object, options: dict[str, Any], problems: list[Problem]) -> None:
    if name is not None:
        if (problem := text_problem(name)) is not None:
            problems.append(("name", problem))
        else:
            options["name"] = name


def _policy_into(value: object, options: dict[str, Any], problems: list[Problem]) -> None:
    try:
        options["policy"] = parse_policy(value)
    except ValidationError as error:
        problems += error.problems


def _checked_fields(fields: Mapping[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    """The options of a rollout's fields that msgspec refused, and every problem of them."""
    problems: list[Problem] = []
    allowed = {"target", "name", "match", "priority", "policy", "start", "after_release"}
    problems += [(str(k)[:60], "is not a field of a rollout") for k in fields if k not in allowed]
    options: dict[str, Any] = {}
    if "target" not in fields:
        problems.append(("target", "is required (a GeoJSON Polygon or MultiPolygon)"))
    else:
        _target_into(fields["target"], options, problems)
    _name_into(fields.get("name"), options, problems)
    match = fields.get("match", "intersects")
    if match not in ("intersects", "within"):
        problems.append(("match", "must be 'intersects' or 'within'"))
    else:
        options["match"] = match
    priority = fields.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) >= 2**31:
        problems.append(("priority", "must be a 32-bit integer"))
    else:
        options["priority"] = priority
    start = fields.get("start", True)
    if not isinstance(start, bool):
        problems.append(("start", "must be true or false"))
    else:
        options["start"] = start
    after = fields.get("after_release")
    if after is not None:
        if not isinstance(after, str) or not 0 < len(after) <= MAX_RELEASE_ID:
            problems.append(
                ("after_release", f"must be a release id of 1 to {MAX_RELEASE_ID} characters")
            )
        else:
            options["after_release"] = after
    _policy_into(fields.get("policy"), options, problems)
    return options, problems


def _struct_fields(fields: RolloutFields) -> tuple[dict[str, Any], list[Problem]]:
    """The options of a rollout's fields msgspec decoded, and the problems of the rules it
    cannot check (the target area, the name's text, the policy)."""
    problems: list[Problem] = []
    options: dict[str, Any] = {
        "match": fields.match,
        "priority": fields.priority,
        "start": fields.start,
    }
    if fields.after_release is not None:
        options["after_release"] = fields.after_release
    _target_into(fields.target, options, problems)
    _name_into(fields.name, options, problems)
    _policy_into(fields.policy, options, problems)
    return options, problems


class OperatorApi:
    """The operator API's endpoints over ``manager``, for the holders of ``operators``'
    tokens (a child's token is refused with 403)."""

    def __init__(
        self,
        manager: RolloutManager,
        operators: TokenAuth,
        tokens: ChildTokens,
        *,
        max_body: int,
        max_upload: int,
        limits: ArchiveLimits,
    ) -> None:
        self.manager = manager
        self.operators = operators
        self.tokens = tokens
        self.max_body = max_body
        self.max_upload = max_upload
        self.limits = limits

    async def operator(self, request: Request) -> Principal:
        """The operator asking (everyone, as an admin, without tokens), if its role allows the
        request: a ``GET`` needs a reader, the rollout actions (create, start, pause, resume,
        abort, promote) a releaser, anything else (revoking a child's token) an admin (see
        :func:`~release_coordinator.server.roles.required_role`); 401 without a valid token,
        403 for a child's token or a role below the one needed."""
        if not self.operators.configured:
            return Principal("anonymous", "operator")
        token = bearer_token(request)
        who = None if token is None else await self.operators.identify(token)
        if who is None:
            if token is not None and await self.tokens.owner(token) is not None:
                raise forbidden("a child token may not use the operator API")
            raise unauthorized()
        return authorize(who, request)

    async def read_upload(self, request: Request) -> tuple[object, object, Fields]:
        """``(strategy, archive, rollout fields)`` of a ``POST /rollouts``; the strategy and
        archive as bytes when they came as multipart parts, as JSON values otherwise; the
        fields as their Struct when msgspec decoded them."""
        raw = await read_body(request, self.max_upload)
        content_type = request.headers.get("content-type", "")
        kind = content_type.partition(";")[0].strip().lower()
        if kind == "multipart/form-data":
            parts = parse_multipart(raw, content_type)
            unknown = sorted(set(parts) - {"strategy", "archive", "rollout"})
            if unknown:
                raise ValidationError(
                    "invalid upload", [(n[:60], "is not a part of an upload") for n in unknown]
                )
            fields: Fields = {}
            if "rollout" in parts:
                part = parts["rollout"][0]
                decoded = _FIELDS.decode(part)
                fields = decoded if decoded is not None else parse_json(part)
                if not isinstance(fields, RolloutFields | dict):
                    raise Refusal(400, "the rollout part must be a JSON object")
            strategy = parts["strategy"][0] if "strategy" in parts else None
            archive = parts["archive"][0] if "archive" in parts else None
            return strategy, archive, fields
        if kind not in ("application/json", ""):
            raise Refusal(
                415,
                "POST /rollouts takes multipart/form-data or application/json",
                content_type=kind[:100],
            )
        body = decode_object(raw, _UPLOAD)
        if isinstance(body, RolloutUpload):
            return body.strategy, body.archive, body
        strategy = body.pop("strategy", None)
        archive = body.pop("archive", None)
        return strategy, archive, body

    def rollout_options(self, fields: Fields) -> dict[str, Any]:
        """The options of ``create_rollout`` from a rollout's fields; ValidationError listing
        every problem."""
        if isinstance(fields, RolloutFields):
            options, problems = _struct_fields(fields)
        else:
            options, problems = _checked_fields(fields)
        if problems:
            raise ValidationError("invalid rollout", problems)
        return options

    def strategy_text(self, strategy: object) -> str:
        if strategy is None:
            raise ValidationError("invalid upload", [("strategy", "is required")])
        if isinstance(strategy, bytes):
            try:
                strategy = strategy.decode("utf-8")
            except UnicodeDecodeError as error:
                raise StrategyError(
                    "invalid release strategy", [("strategy", f"not UTF-8 text: {error.reason}")]
                ) from None
        if not isinstance(strategy, str):
            raise ValidationError("invalid upload", [("strategy", "must be the YAML text")])
        try:
            strategy.encode("utf-8")
        except UnicodeEncodeError:
            raise StrategyError(
                "invalid release strategy", [("strategy", "must be valid Unicode text")]
            ) from None
        return strategy

    def archive_bytes(self, archive: object) -> bytes:
        if archive is None:
            raise ValidationError(
                "invalid upload", [("archive", f"is required ({ARCHIVE_FILENAME})")]
            )
        if isinstance(archive, bytes):
            return archive
        if not isinstance(archive, str):
            raise ValidationError("invalid upload", [("archive", "must be base64 text")])
        try:
            return base64.b64decode(archive.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise ValidationError("invalid upload", [("archive", "is not valid base64")]) from None

    def actor(self, who: Principal) -> str:
        """``who``'s name in the event log ("" for the anonymous operator)."""
        return actor_of(who, anonymous=not self.operators.configured)

    async def create_rollout(self, request: Request) -> Response:
        who = await self.operator(request)
        strategy, archive, fields = await self.read_upload(request)
        options = self.rollout_options(fields)
        text = self.strategy_text(strategy)
        data = self.archive_bytes(archive)
        # checking a zip of many MiB takes a while: not on the event loop
        bundle = await anyio.to_thread.run_sync(
            functools.partial(ReleaseBundle.from_parts, text, data, limits=self.limits)
        )
        target = options.pop("target")
        rollout = await self.manager.create_rollout(
            bundle, target, actor=self.actor(who), **options
        )
        return json_response(201, {**rollout_json(rollout), "bundle": bundle_json(bundle)})

    async def list_rollouts(self, request: Request) -> Response:
        await self.operator(request)
        limit, offset = paging(request)
        given = [v for raw in request.query_params.getlist("state") for v in raw.split(",") if v]
        known = {s.value for s in RolloutState}
        bad = [v for v in given if v not in known]
        if bad:
            raise ValidationError(
                "invalid query",
                [("state", f"{v[:40]!r} is not one of {', '.join(sorted(known))}") for v in bad],
            )
        states = {RolloutState(v) for v in given} or None
        found = await self.manager.list_rollouts(states=states)
        items = [rollout_json(r) for r in found[offset : offset + limit]]
        return json_response(200, page_of(items, limit, offset, more=len(found) > offset + limit))

    async def get_rollout(self, request: Request) -> Response:
        await self.operator(request)
        rollout_id = request.path_params["rollout_id"]
        rollout = await self.manager.get_rollout(rollout_id)
        bundle = await self.manager.store.get_bundle(rollout_id)
        return json_response(200, {**rollout_json(rollout), "bundle": bundle_json(bundle)})

    def rollout_action(self, action: str) -> Endpoint:
        decoder: BodyDecoder[AbortRequest] | BodyDecoder[ActionRequest]
        decoder = _ABORT if action == "abort" else _ACTION

        async def act(request: Request) -> Response:
            actor = self.actor(await self.operator(request))
            raw = await read_body(request, self.max_body)
            body = decode_object(raw, decoder) if raw.strip() else {}  # empty: no field
            problems: list[Problem] = []
            if isinstance(body, AbortRequest | ActionRequest):
                reason = body.reason if isinstance(body, AbortRequest) else None
            else:
                allowed = {"reason"} if action == "abort" else set()
                problems += [
                    (str(k)[:60], f"is not a field of a {action} request")
                    for k in body
                    if k not in allowed
                ]
                reason = body.get("reason")
            if reason is not None and (problem := text_problem(reason, MAX_REASON)) is not None:
                problems.append(("reason", problem))
            if problems:
                raise ValidationError(f"invalid {action} request", problems)
            rollout_id = request.path_params["rollout_id"]
            if action == "promote":
                stage_name = request.path_params["stage_name"]
                rollout = await self.manager.promote(rollout_id, stage_name, actor=actor)
            elif action == "start":
                rollout = await self.manager.start(rollout_id, actor=actor)
            elif action == "pause":
                rollout = await self.manager.pause(rollout_id, actor=actor)
            elif action == "resume":
                rollout = await self.manager.resume(rollout_id, actor=actor)
            else:
                rollout = await self.manager.abort(
                    rollout_id, reason=reason or "aborted by the operator", actor=actor
                )
            return json_response(200, rollout_json(rollout))

        return act

    async def rollout_status(self, request: Request) -> Response:
        await self.operator(request)
        report = await self.manager.report(
            request.path_params["rollout_id"], area=area_query(request)
        )
        return json_response(
            200,
            {
                "rollout": rollout_json(report.rollout),
                "children": len(report.children),
                "statuses": dict(report.statuses),
                "outcomes": dict(report.outcomes),
                "lost": list(report.lost),
                "stages": [
                    {
                        "name": row.name,
                        "counts": dict(row.counts),
                        "aggregate": summary_json(row.aggregate),
                        "judgement": stage_judgement_json(row.judgement),
                    }
                    for row in report.stages
                ],
                "approvals": [  # (rollout.approvals)
                    {"stage": a.stage, "approved": a.approved}
                    for a in await self.manager.approvals(report.rollout.id)
                ],
            },
        )

    async def rollout_children(self, request: Request) -> Response:
        await self.operator(request)
        limit, offset = paging(request)
        wanted = request.query_params.get("status")
        status = None
        if wanted is not None:
            try:
                status = ReleaseStatus.from_wire(wanted, "status")
            except ValidationError as error:
                raise ValidationError("invalid query", error.problems) from None
        report = await self.manager.report(
            request.path_params["rollout_id"], area=area_query(request)
        )
        lost = set(report.lost)
        rows = [c for c in report.children if status is None or c.status is status]
        items = [
            child_release_json(c, lost=c.child_id in lost) for c in rows[offset : offset + limit]
        ]
        return json_response(200, page_of(items, limit, offset, more=len(rows) > offset + limit))

    async def list_children(self, request: Request) -> Response:
        await self.operator(request)
        limit, offset = paging(request)
        children = await self.manager.children()
        live = {c.id for c in await self.manager.live_children()}
        page = children[offset : offset + limit]
        with_tokens = await self.manager.store.children_with_tokens(c.id for c in page)
        items = [
            {
                "id": c.id,
                "area": c.area.to_geojson(),
                "number_of_children": c.number_of_children,
                "lost": c.id not in live,
                "has_token": c.id in with_tokens,
            }
            for c in page
        ]
        return json_response(
            200, page_of(items, limit, offset, more=len(children) > offset + limit)
        )

    async def revoke_token(self, request: Request) -> Response:
        await self.operator(request)
        child_id = request.path_params["child_id"]
        if not await self.manager.store.drop_child_token(child_id):
            raise NotFoundError("child token", child_id)
        log.info("the token of child %s was revoked", child_id)
        return Response(status_code=204)

    def table(self) -> list[tuple[str, str, Endpoint]]:
        """The endpoints, as ``(path, method, endpoint)``."""
        one = "/rollouts/{rollout_id}"
        return [
            (path, method, guarded(handler))
            for path, method, handler in (
                ("/rollouts", "GET", self.list_rollouts),
                ("/rollouts", "POST", self.create_rollout),
                (one, "GET", self.get_rollout),
                *(
                    (f"{one}/{action}", "POST", self.rollout_action(action))
                    for action in ("start", "pause", "resume", "abort")
                ),
                (f"{one}/stages/{{stage_name}}/promote", "POST", self.rollout_action("promote")),
                *approval_routes(self),  # approve a stage, what-if (.rollout_approvals)
                *intervention_routes(self),  # exclude a child, retry (.rollout_interventions)
                (f"{one}/status", "GET", self.rollout_status),
                (f"{one}/children", "GET", self.rollout_children),
                ("/children", "GET", self.list_children),
                ("/children/{child_id}/token", "DELETE", self.revoke_token),
            )
        ]
