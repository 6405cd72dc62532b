"""The Coordinator API's gates before publish (see :mod:`~release_coordinator.coordinator.
publish_gates`): an admin's approval, and asking a release's checks again.

======  ===============================  ===========================================  =======
method  path                             what                                         success
======  ===============================  ===========================================  =======
POST    ``/releases/{id}/approve``       the operator's approval (an admin's, once)   200
POST    ``/releases/{id}/checks``        ask its checks again (a releaser may)        200
======  ===============================  ===========================================  =======

A release's gates are given at its creation (``POST /releases``: ``required_approvals``,
``checks``, ``publish_at``) and shown with it (``gates``, ``publish_gate``). An approval is
by the operator token's name: a token without one cannot approve. Needs the ``server`` extra.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from release_coordinator.server.common import json_response
from release_coordinator.server.coordinator_json import release_json
from release_coordinator.server.coordinator_requests import empty_body
from release_coordinator.server.coordinator_routes import Table, _Endpoints
from release_coordinator.server.token_auth import forbidden

__all__ = ["GateEndpoints"]

_APPROVE = empty_body("approval")
_CHECKS = empty_body("checks request")


class GateEndpoints(_Endpoints):
    """Approvals and checks before publish."""

    async def approve(self, request: Request) -> Response:
        who = await self.access.operator(request)
        await _APPROVE.read(request, self.max_body)
        # an app without tokens (a trusted network) approves as "anonymous"
        name = self.access.author_name(who) or (
            who.name if who is self.access.anonymous else ""
        )
        if not name:
            raise forbidden(
                "an approval is by the token's name, and this token has none (name=token, or "
                "name:admin=token)"
            )
        release = await self.coordinator.approve(request.path_params["release_id"], by=name)
        return json_response(200, release_json(release))

    async def checks(self, request: Request) -> Response:
        who = await self.access.operator(request)
        await _CHECKS.read(request, self.max_body)
        release = await self.coordinator.rerun_checks(
            request.path_params["release_id"], by=self.access.author_name(who)
        )
        return json_response(200, release_json(release))

    def table(self) -> Table:
        one = "/releases/{release_id}"
        return [(f"{one}/approve", "POST", self.approve), (f"{one}/checks", "POST", self.checks)]
