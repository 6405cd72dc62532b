"""A RolloutManager over HTTP: the edge-rollout child protocol and the operator API.

::

    from release_coordinator.server.rollout_app import rollout_app

    app = rollout_app(manager, operator_tokens={"ops": os.environ["RC_OPS_TOKEN"]},
                      lifespan=True)

**Child protocol** (byte-compatible with ``edge-rollout.md``; open unless ``child_tokens``):

=======  ==========================================  ====================================  =====
method   path                                        answer                                codes
=======  ==========================================  ====================================  =====
POST     ``/poll``                                   ``{"id", "new_release"}`` (+           200
                                                     ``target_area``, + ``token``)
GET      ``/release?childID=&releaseID=``            the strategy (YAML, ``text/plain``)   200
GET      ``/release/functions/{release_id}``         ``fns.zip`` (``application/zip``)     200
POST     ``/result``                                 ``{}`` (either encoding of the body)  200
POST     ``/end_stage``                              ``{"end_stage": bool}`` (+ ``action``) 200
=======  ==========================================  ====================================  =====

Refusals: 400 a malformed body, a missing parameter or an invalid area or value (every
ValidationError is a 400 here, as the protocol says), 401/403 child tokens, 404 an unknown
child, release or stage, 409 a status change the stage machine refuses, 413 a body over
``max_body``.

**Operator API** (an operator token is required):

======  ==================================  ====================================================
method  path                                what (success status)
======  ==================================  ====================================================
GET     ``/rollouts``                       list (``state``, paging) (200)
POST    ``/rollouts``                       upload a bundle and create a rollout (201)
GET     ``/rollouts/{id}``                  the rollout and its bundle (200)
POST    ``/rollouts/{id}/start``            start a draft (200)
POST    ``/rollouts/{id}/pause``            pause (200)
POST    ``/rollouts/{id}/resume``           resume (200)
POST    ``/rollouts/{id}/abort``            ``{"reason"}``: abort, children roll back (200)
GET     ``/rollouts/{id}/status``           counts per status, outcome, stage (with the
                                            call-weighted aggregate), lost children; ``bbox``
                                            or ``area`` narrows it to an area (200)
GET     ``/rollouts/{id}/children``         per child: status, outcome, stages (``status``,
                                            ``bbox``/``area``, paging) (200)
GET     ``/children``                       registered children (paging) (200)
DELETE  ``/children/{id}/token``            revoke a child's token (204)
GET     ``/openapi.json``                   the OpenAPI 3.1 document (no token needed) (200)
======  ==================================  ====================================================

``POST /rollouts`` takes either ``multipart/form-data`` with the parts ``strategy`` (the YAML
document), ``archive`` (``fns.zip``) and ``rollout`` (JSON: ``target``, ``name``, ``match``,
``priority``, ``policy``, ``start``), or a JSON object with those fields and ``strategy`` (text)
and ``archive`` (base64). The rollout's id is the strategy's. ``policy`` is
``{"type": "global_incremental" | "location_sequential" | "waves", ...}`` with the fields of
:class:`~release_coordinator.rollout.policies.GlobalIncremental`,
:class:`~release_coordinator.rollout.policies.LocationSequential` (``groups``: GeoJSON areas) or
:class:`~release_coordinator.rollout.policies.Waves`. Operator refusals: 400 a body or query
that does not parse, 401/403 tokens, 404, 409 (a rollout with that id exists; a state that
does not allow the action), 413 over ``max_upload``/``max_body``, 415 another content type,
422 invalid values (the strategy, the archive, the target, the policy), each listed by path.

**Child tokens** (``child_tokens=True``): a child's first poll (an empty id, or an id that holds
no token yet) is answered with an extra ``token``; from then on every request about that child
must carry ``Authorization: Bearer <token>`` (401 without a valid one, 403 with another child's).
``GET /release/functions/...`` takes any child's token. Only a hash of each token is kept, in
the manager's store (so a restart, or another process over the same database, knows it).
Original agents send no token: leave it off for them.

Needs the ``server`` extra (Starlette). ``import release_coordinator`` does not import this
module.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import logging
import math
import secrets
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import anyio.to_thread

try:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route
    from starlette.types import Scope
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "release_coordinator.server needs the server extra: "
        "pip install 'release-coordinator[server]'"
    ) from error

from release_coordinator.errors import (
    ConfigurationError,
    GeoJSONError,
    NotFoundError,
    Problem,
    ReleaseCoordinatorError,
    StrategyError,
    ValidationError,
)
from release_coordinator.fsm.rollout import ReleaseStatus
from release_coordinator.rollout.archive import (
    ARCHIVE_FILENAME,
    ARCHIVE_MEDIA_TYPE,
    ArchiveLimits,
)
from release_coordinator.rollout.geo import Area
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.models import ChildRelease, ReleaseBundle, Rollout, RolloutState
from release_coordinator.rollout.policies import (
    parse_policy,
    policy_json,
)
from release_coordinator.rollout.relay import Relay
from release_coordinator.rollout.results import StageSummary
from release_coordinator.server.common import (
    DEFAULT_MAX_BODY,
    Endpoint,
    JsonObjectEndpoint,
    Principal,
    Refusal,
    TokenAuth,
    Verifier,
    bearer_token,
    forbidden,
    guarded,
    http_error,
    json_response,
    method_routes,
    page_of,
    paging,
    parse_json,
    parse_multipart,
    read_body,
    read_object,
    unauthorized,
)
from release_coordinator.server.openapi import OPENAPI_PATH, rollout_openapi
from release_coordinator.storage.rollout_base import RolloutStore

__all__ = [
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_UPLOAD",
    "child_release_json",
    "parse_policy",
    "policy_json",
    "rollout_app",
    "rollout_json",
]

log = logging.getLogger(__name__)

#: Largest ``POST /rollouts`` body accepted by default (64 MiB).
DEFAULT_MAX_UPLOAD = 64 * 1024 * 1024

_MAX_TEXT = 256


# -- records as JSON ---------------------------------------------------------------------------


def rollout_json(rollout: Rollout) -> dict[str, Any]:
    """A rollout as the API shows it."""
    return {
        "id": rollout.id,
        "name": rollout.name,
        "state": rollout.state.value,
        "target": rollout.target.to_geojson(),
        "match": rollout.match,
        "priority": rollout.priority,
        "policy": policy_json(rollout.policy),
        "seq": rollout.seq,
        "reason": rollout.reason,
        "gated": rollout.gated,
    }


def _bundle_json(bundle: ReleaseBundle) -> dict[str, Any]:
    strategy = bundle.strategy
    return {
        "strategy": {
            "id": strategy.id,
            "name": strategy.name,
            "type": strategy.type,
            "stages": [{"name": s.name, "type": s.type.value} for s in strategy.stages],
            "functions": [f.name for f in strategy.functions],
        },
        "archive": {
            "filename": ARCHIVE_FILENAME,
            "sha256": bundle.archive.sha256,
            "size": bundle.archive.size,
            "files": list(bundle.archive.files),
        },
    }


def _finite(value: Any) -> Any:
    """Summaries as strict JSON: a float that is not finite becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _summary_json(summary: object) -> dict[str, Any] | None:
    return _finite(summary.to_documented()) if isinstance(summary, StageSummary) else None


def child_release_json(state: ChildRelease, *, lost: bool = False) -> dict[str, Any]:
    """One child's state in a rollout: statuses by their protocol names, summaries in the
    documented encoding's keys."""
    return {
        "child_id": state.child_id,
        "status": state.status.wire_name,
        "outcome": state.outcome.value,
        "acknowledged": state.acknowledged,
        "lost": lost,
        "stages": {
            name: {"status": stage.status.wire_name, "summary": _summary_json(stage.summary)}
            for name, stage in state.stages.items()
        },
    }


# -- request values ------------------------------------------------------------------------------


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _text_problem(value: object, most: int = _MAX_TEXT) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if len(value) > most:
        return f"is longer than {most} characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (no lone surrogates)"
    if not value.isprintable():
        return "must be printable text"
    return None


def _area_query(request: Request) -> Area | None:
    """``?bbox=minLon,minLat,maxLon,maxLat`` or ``?area=<GeoJSON>``: the area to narrow to."""
    bbox = request.query_params.get("bbox")
    area = request.query_params.get("area")
    if bbox is not None and area is not None:
        raise Refusal(400, "give bbox or area, not both")
    if bbox is not None:
        parts = bbox.split(",")
        numbers = [_number(_float(p)) for p in parts] if len(parts) == 4 else []
        if len(numbers) != 4 or None in numbers:
            raise Refusal(400, "bbox must be four numbers: minLon,minLat,maxLon,maxLat")
        w, s, e, n = (x for x in numbers if x is not None)
        ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
        return Area.from_geojson({"type": "Polygon", "coordinates": [ring]}, path="bbox")
    if area is not None:
        return Area.from_geojson(parse_json(area), path="area")
    return None


def _float(text: str) -> float | None:
    try:
        return float(text) if len(text) <= 40 else None
    except ValueError:
        return None


# -- child tokens ---------------------------------------------------------------------------------


class _ChildTokens:
    """Tokens issued to children at registration, kept in the manager's store (only their
    SHA-256), so that a restarted server and every process sharing the store know them.

    A token reads ``<child id, base64url>.<secret>``, so that the child it claims to be is
    known without a search.
    """

    def __init__(self, store: RolloutStore) -> None:
        self.store = store

    @staticmethod
    def _digest(token: str) -> str:
        return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()

    async def digest(self, child_id: str) -> str | None:
        """The digest of ``child_id``'s token (None: it holds none)."""
        return await self.store.child_token(child_id)

    async def issue(self, child_id: str) -> str | None:
        """A new token for a child that holds none (None if it holds one already, also when
        another request issued one a moment ago: the store keeps the first)."""
        prefix = base64.urlsafe_b64encode(child_id.encode("utf-8")).decode("ascii").rstrip("=")
        token = f"{prefix}.{secrets.token_urlsafe(32)}"
        if not await self.store.add_child_token(child_id, self._digest(token)):
            return None
        return token

    @staticmethod
    def _claimed(token: str) -> str | None:
        """The child a token says it belongs to (its prefix), or None."""
        prefix, dot, _ = token.partition(".")
        if not dot or len(prefix) > 400:
            return None
        try:
            child_id = base64.urlsafe_b64decode(prefix + "=" * (-len(prefix) % 4)).decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        return child_id if 0 < len(child_id) <= _MAX_TEXT else None

    async def owner(self, token: str, known: tuple[str, str] | None = None) -> str | None:
        """The child ``token`` belongs to, or None. ``known``: a child's id and digest already
        read (no second read when the token claims to be that child's)."""
        child_id = self._claimed(token)
        if child_id is None:
            return None
        if known is not None and known[0] == child_id:
            expected: str | None = known[1]
        else:
            expected = await self.store.child_token(child_id)
        if expected is None or not secrets.compare_digest(self._digest(token), expected):
            return None
        return child_id

    async def require(
        self, request: Request, child_id: str | None, digest: str | None = None
    ) -> None:
        """401 without a valid child token; 403 when it is not ``child_id``'s (``None``: any
        child's will do). ``digest``: ``child_id``'s, when it was read already."""
        token = bearer_token(request)
        if token is None:
            raise unauthorized("a child token is required")
        known = None if child_id is None or digest is None else (child_id, digest)
        owner = await self.owner(token, known)
        if owner is None:
            raise unauthorized("the child token is not valid")
        if child_id is not None and owner != child_id:
            raise forbidden("the token belongs to another child")


# -- the app --------------------------------------------------------------------------------------


def _child_status(error: ReleaseCoordinatorError) -> int | None:
    """The child protocol answers every invalid input with 400."""
    return 400 if isinstance(error, ValidationError) else None


def rollout_app(
    manager: RolloutManager,
    *,
    operator_tokens: Iterable[str] | Mapping[str, str] = (),
    verifier: Verifier | None = None,
    allow_anonymous: bool = False,
    child_tokens: bool = False,
    max_body: int = DEFAULT_MAX_BODY,
    max_upload: int = DEFAULT_MAX_UPLOAD,
    archive_limits: ArchiveLimits | None = None,
    lifespan: bool = False,
    tick_interval: float = 1.0,
    relay: Relay | None = None,
) -> Starlette:
    """An ASGI app serving ``manager`` (see the module docstring).

    - ``operator_tokens`` (a collection, or names to tokens) and/or ``verifier`` (a host's
      callable, sync or async, answering a name or ``True`` to accept a token): who may use
      the operator API; one is required unless ``allow_anonymous``.
    - ``child_tokens``: issue per-child tokens at registration and require them (opt-in);
      their hashes are kept in the manager's store, beside the children.
    - ``max_body``: the largest request body; ``max_upload``: the largest ``POST /rollouts``
      body; ``archive_limits``: what an uploaded ``fns.zip`` must stay within.
    - ``lifespan``: the app's startup rebuilds the manager's indexes from its store
      (:meth:`RolloutManager.load`) and ticks it every ``tick_interval`` seconds, or runs
      ``relay`` (which polls its parent and ticks the manager); the shutdown stops them. Left
      out, the host owns the manager's life.
    """
    if max_body < 1 or max_upload < 1:
        raise ConfigurationError("max_body and max_upload must be at least 1 byte")
    if tick_interval <= 0:
        raise ConfigurationError(f"tick_interval must be positive, not {tick_interval}")
    if relay is not None and relay.manager is not manager:
        raise ConfigurationError("the relay must run the manager the app serves")
    operators = TokenAuth(operator_tokens, verifier, what="an operator token")
    if not operators.configured and not allow_anonymous:
        raise ConfigurationError(
            "the operator API needs operator tokens or a verifier "
            "(or allow_anonymous=True, for tests and trusted networks only)"
        )
    tokens = _ChildTokens(manager.store)
    limits = archive_limits or ArchiveLimits()

    async def operator(request: Request) -> Principal:
        if not operators.configured:
            return Principal("anonymous", "operator")
        token = bearer_token(request)
        who = None if token is None else await operators.identify(token)
        if who is None:
            if token is not None and await tokens.owner(token) is not None:
                raise forbidden("a child token may not use the operator API")
            raise unauthorized()
        return who

    def child_id_of(body: Mapping[str, Any]) -> str:
        """The ``id`` of a child request body, when child tokens need it."""
        child_id = body.get("id")
        if not isinstance(child_id, str) or not child_id:
            raise ValidationError("invalid request", [("id", "is required (a string)")])
        return child_id

    # -- child protocol -------------------------------------------------------------------------
    async def poll(body: dict[str, Any], raw: bytes, scope: Scope) -> tuple[int, Any]:
        child_id = body.get("id")
        child_id = "" if child_id is None else child_id  # Go agents: a missing id is ""
        count = body.get("number_of_children")
        count = 0 if count is None else count
        held = None  # the digest of the child's token (one read per poll)
        if child_tokens and isinstance(child_id, str) and child_id:
            held = await tokens.digest(child_id)
            if held is not None:
                await tokens.require(Request(scope), child_id, held)
        # The same body bytes carry the same area: they stand in for its fingerprint.
        answer = await manager.poll(child_id, body.get("geographic_area"), count, area_key=raw)
        out = answer.to_json()
        if child_tokens and held is None:  # a child without a token: its first one
            issued = await tokens.issue(answer.id)
            if issued is not None:
                out["token"] = issued
        return 200, out

    async def get_release(request: Request) -> Response:
        child_id = request.query_params.get("childID")
        release_id = request.query_params.get("releaseID")
        if child_tokens:
            if not child_id:
                raise ValidationError("invalid request", [("childID", "is required (a string)")])
            await tokens.require(request, child_id)
        text = await manager.get_release(child_id, release_id)
        return Response(text.encode("utf-8"), media_type="text/plain")

    async def get_functions(request: Request) -> Response:
        if child_tokens:
            await tokens.require(request, None)
        data = await manager.get_functions(request.path_params["release_id"])
        return Response(
            data,
            media_type=ARCHIVE_MEDIA_TYPE,
            headers={"Content-Disposition": f'attachment; filename="{ARCHIVE_FILENAME}"'},
        )

    async def result(request: Request) -> Response:
        body = await read_object(request, max_body)
        if child_tokens:
            await tokens.require(request, child_id_of(body))
        await manager.submit_result(body)
        return json_response(200, {})

    async def end_stage(request: Request) -> Response:
        body = await read_object(request, max_body)
        if child_tokens:
            await tokens.require(request, child_id_of(body))
        answer = await manager.end_stage(
            body.get("id"), body.get("strategy_id"), body.get("stage_name")
        )
        return json_response(200, answer.to_json())

    # -- operator API -----------------------------------------------------------------------------
    async def read_upload(request: Request) -> tuple[object, object, dict[str, Any]]:
        """``(strategy, archive, rollout fields)`` of a ``POST /rollouts``; the strategy and
        archive as bytes when they came as multipart parts, as JSON values otherwise."""
        raw = await read_body(request, max_upload)
        content_type = request.headers.get("content-type", "")
        kind = content_type.partition(";")[0].strip().lower()
        if kind == "multipart/form-data":
            parts = parse_multipart(raw, content_type)
            unknown = sorted(set(parts) - {"strategy", "archive", "rollout"})
            if unknown:
                raise ValidationError(
                    "invalid upload", [(n[:60], "is not a part of an upload") for n in unknown]
                )
            fields: Any = {}
            if "rollout" in parts:
                fields = parse_json(parts["rollout"][0])
                if not isinstance(fields, dict):
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
        body = parse_json(raw)
        if not isinstance(body, dict):
            raise Refusal(400, "the body must be a JSON object", got=type(body).__name__)
        strategy = body.pop("strategy", None)
        archive = body.pop("archive", None)
        return strategy, archive, body

    def rollout_options(fields: Mapping[str, Any]) -> dict[str, Any]:
        problems: list[Problem] = []
        allowed = {"target", "name", "match", "priority", "policy", "start"}
        problems += [
            (str(k)[:60], "is not a field of a rollout") for k in fields if k not in allowed
        ]
        options: dict[str, Any] = {}
        if "target" not in fields:
            problems.append(("target", "is required (a GeoJSON Polygon or MultiPolygon)"))
        else:
            try:
                options["target"] = Area.from_geojson(fields["target"], path="target")
            except GeoJSONError as error:
                problems += error.problems
        name = fields.get("name")
        if name is not None:
            if (problem := _text_problem(name)) is not None:
                problems.append(("name", problem))
            else:
                options["name"] = name
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
        try:
            options["policy"] = parse_policy(fields.get("policy"))
        except ValidationError as error:
            problems += error.problems
        if problems:
            raise ValidationError("invalid rollout", problems)
        return options

    def strategy_text(strategy: object) -> str:
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

    def archive_bytes(archive: object) -> bytes:
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

    async def create_rollout(request: Request) -> Response:
        await operator(request)
        strategy, archive, fields = await read_upload(request)
        options = rollout_options(fields)
        text = strategy_text(strategy)
        data = archive_bytes(archive)
        # checking a zip of many MiB takes a while: not on the event loop
        bundle = await anyio.to_thread.run_sync(
            functools.partial(ReleaseBundle.from_parts, text, data, limits=limits)
        )
        target = options.pop("target")
        rollout = await manager.create_rollout(bundle, target, **options)
        return json_response(201, {**rollout_json(rollout), "bundle": _bundle_json(bundle)})

    async def list_rollouts(request: Request) -> Response:
        await operator(request)
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
        found = await manager.list_rollouts(states=states)
        items = [rollout_json(r) for r in found[offset : offset + limit]]
        return json_response(200, page_of(items, limit, offset, more=len(found) > offset + limit))

    async def get_rollout(request: Request) -> Response:
        await operator(request)
        rollout_id = request.path_params["rollout_id"]
        rollout = await manager.get_rollout(rollout_id)
        bundle = await manager.store.get_bundle(rollout_id)
        return json_response(200, {**rollout_json(rollout), "bundle": _bundle_json(bundle)})

    def rollout_action(action: str) -> Endpoint:
        async def act(request: Request) -> Response:
            await operator(request)
            body = await read_object(request, max_body, empty=True)
            allowed = {"reason"} if action == "abort" else set()
            problems: list[Problem] = [
                (str(k)[:60], f"is not a field of a {action} request")
                for k in body
                if k not in allowed
            ]
            reason = body.get("reason")
            if reason is not None and (problem := _text_problem(reason, 1000)) is not None:
                problems.append(("reason", problem))
            if problems:
                raise ValidationError(f"invalid {action} request", problems)
            rollout_id = request.path_params["rollout_id"]
            if action == "start":
                rollout = await manager.start(rollout_id)
            elif action == "pause":
                rollout = await manager.pause(rollout_id)
            elif action == "resume":
                rollout = await manager.resume(rollout_id)
            else:
                rollout = await manager.abort(
                    rollout_id, reason=reason or "aborted by the operator"
                )
            return json_response(200, rollout_json(rollout))

        return act

    async def rollout_status(request: Request) -> Response:
        await operator(request)
        report = await manager.report(request.path_params["rollout_id"], area=_area_query(request))
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
                        "aggregate": _summary_json(row.aggregate),
                    }
                    for row in report.stages
                ],
            },
        )

    async def rollout_children(request: Request) -> Response:
        await operator(request)
        limit, offset = paging(request)
        wanted = request.query_params.get("status")
        status = None
        if wanted is not None:
            try:
                status = ReleaseStatus.from_wire(wanted, "status")
            except ValidationError as error:
                raise ValidationError("invalid query", error.problems) from None
        report = await manager.report(request.path_params["rollout_id"], area=_area_query(request))
        lost = set(report.lost)
        rows = [c for c in report.children if status is None or c.status is status]
        items = [
            child_release_json(c, lost=c.child_id in lost) for c in rows[offset : offset + limit]
        ]
        return json_response(200, page_of(items, limit, offset, more=len(rows) > offset + limit))

    async def list_children(request: Request) -> Response:
        await operator(request)
        limit, offset = paging(request)
        children = await manager.children()
        live = {c.id for c in await manager.live_children()}
        page = children[offset : offset + limit]
        with_tokens = await manager.store.children_with_tokens(c.id for c in page)
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

    async def revoke_token(request: Request) -> Response:
        await operator(request)
        child_id = request.path_params["child_id"]
        if not await manager.store.drop_child_token(child_id):
            raise NotFoundError("child token", child_id)
        log.info("the token of child %s was revoked", child_id)
        return Response(status_code=204)

    document = rollout_openapi()

    async def openapi(request: Request) -> Response:
        return json_response(200, document)

    def child(path: str, method: str, handler: Endpoint) -> tuple[str, str, Endpoint]:
        return path, method, guarded(handler, status_for=_child_status)

    def op(path: str, method: str, handler: Endpoint) -> tuple[str, str, Endpoint]:
        return path, method, guarded(handler)

    one = "/rollouts/{rollout_id}"
    # POST /poll is what a fleet sends most: a pure ASGI endpoint (same answers as the others).
    poll_route = Route(
        "/poll",
        JsonObjectEndpoint(poll, max_body=max_body, status_for=_child_status),
        methods=["POST"],
    )
    routes = [
        child("/release", "GET", get_release),
        child("/release/functions/{release_id:path}", "GET", get_functions),
        child("/result", "POST", result),
        child("/end_stage", "POST", end_stage),
        op("/rollouts", "GET", list_rollouts),
        op("/rollouts", "POST", create_rollout),
        op(one, "GET", get_rollout),
        *(
            op(f"{one}/{action}", "POST", rollout_action(action))
            for action in ("start", "pause", "resume", "abort")
        ),
        op(f"{one}/status", "GET", rollout_status),
        op(f"{one}/children", "GET", rollout_children),
        op("/children", "GET", list_children),
        op("/children/{child_id}/token", "DELETE", revoke_token),
        op(OPENAPI_PATH, "GET", openapi),
    ]

    async def tick_forever() -> None:
        while True:
            await asyncio.sleep(tick_interval)
            try:
                await manager.tick()
            except Exception:  # keep ticking; the next round may succeed
                log.exception("rollout manager tick failed")

    @contextlib.asynccontextmanager
    async def run(_app: Starlette) -> AsyncIterator[None]:
        if not lifespan:
            yield
            return
        await manager.load()
        loop = asyncio.get_running_loop()
        task = loop.create_task(relay.run() if relay is not None else tick_forever())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return Starlette(
        routes=[poll_route, *method_routes(routes)],
        exception_handlers={HTTPException: http_error},
        lifespan=run,
    )
