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
POST    ``/rollouts/{id}/stages/{s}/promote`` end the WaitForSignal stage ``s`` now (200)
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

**Lifecycle.** The manager's background loop (``RolloutManager.running()``, or for a relay
``Relay.running()``) judges what time alone settles: lost children, barrier and child
time-outs, the completion they allow (and a relay's polling of its parent). With
``lifespan=True`` the app's lifespan runs it; a *mounted* app's lifespan never runs, so a host
that mounts the app runs ``async with manager.running():`` (``relay.running()``) in its own
lifespan (see ``docs/howto/embedding.md``). A request reaching the app while the loop does not
run logs one WARNING (per app) that says so and names the fix; the request is served as usual
(see :class:`~release_coordinator.server.background.BackgroundCheck` for why it warns
rather than refuses).

Needs the ``server`` extra (Starlette). ``import release_coordinator`` does not import this
module.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from release_coordinator.errors import ConfigurationError
from release_coordinator.rollout.archive import ArchiveLimits
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.policies import parse_policy, policy_json
from release_coordinator.rollout.relay import Relay
from release_coordinator.server.background import BackgroundCheck
from release_coordinator.server.child_tokens import ChildTokens
from release_coordinator.server.common import (
    DEFAULT_MAX_BODY,
    guarded,
    http_error,
    json_response,
    method_routes,
)
from release_coordinator.server.openapi import OPENAPI_PATH, rollout_openapi
from release_coordinator.server.rollout_child import ChildProtocol
from release_coordinator.server.rollout_events import RolloutEventApi
from release_coordinator.server.rollout_operator import OperatorApi
from release_coordinator.server.rollout_records import child_release_json, rollout_json
from release_coordinator.server.token_auth import TokenAuth, Verifier

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
      (:meth:`RolloutManager.load`) and ticks it every ``tick_interval`` seconds
      (``manager.running()``), or runs ``relay`` (``relay.running()``: it polls its parent and
      ticks the manager); the shutdown stops them (a loop the host runs already is left
      running). Left out, the host owns the manager's life. A mounted app's lifespan never
      runs: the host runs ``async with manager.running():`` in its own
      (``docs/howto/embedding.md``); the first request while the loop does not run logs a
      WARNING saying so.
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
    tokens = ChildTokens(manager.store)
    child = ChildProtocol(manager, tokens, child_tokens=child_tokens, max_body=max_body)
    operator = OperatorApi(
        manager,
        operators,
        tokens,
        max_body=max_body,
        max_upload=max_upload,
        limits=archive_limits or ArchiveLimits(),
    )
    document = rollout_openapi()

    async def openapi(request: Request) -> Response:
        return json_response(200, document)

    events = RolloutEventApi(manager, operator.operator)
    routes = [
        *child.table(),
        *operator.table(),
        *events.table(),
        (OPENAPI_PATH, "GET", guarded(openapi)),
    ]

    if relay is not None:
        loops = relay
        background = BackgroundCheck(
            "rollout_app",
            "relay (the manager's background loop) is",
            "async with relay.running():",
            is_running=lambda: loops.is_running,
            lifespan=lifespan,
            logger=log,
        )
    else:
        background = BackgroundCheck(
            "rollout_app",
            "background loops are",
            "async with manager.running():",
            is_running=lambda: manager.is_running,
            lifespan=lifespan,
            logger=log,
        )

    def running() -> contextlib.AbstractAsyncContextManager[Any]:
        if relay is not None:
            return relay.running()
        return manager.running(interval=tick_interval)

    return Starlette(
        routes=[child.poll_route(), *method_routes(routes)],
        middleware=[background.middleware()],
        exception_handlers={HTTPException: http_error},
        lifespan=background.app_lifespan(running),
    )
