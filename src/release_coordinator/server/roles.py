"""Operator roles: what an operator token may do, decided by one rule for every operator route.

=========  ==========================================================================
role       may
=========  ==========================================================================
reader     every ``GET`` (and ``HEAD``): list and read everything, the dashboard's
           views, ``GET /metrics``; GraphQL queries (``POST /graphql`` too)
releaser   what a reader may, and the release actions of :data:`RELEASER_ROUTES`:
           create, publish, cancel and run again a release; write its own release
           notes; upload (create), start, pause, resume, abort, retry a rollout, promote a
           stage and exclude a child from a rollout
admin      everything (the task-service registry, editing a release, task callbacks
           sent with an operator token, revoking a child's token, the webhooks — their
           reads too —, and any route not listed)
=========  ==========================================================================

The rule (:func:`required_role`) looks at the method and the route's template only, so that a
route added later gets a sane default: its ``GET`` needs a reader, anything else an admin
until it is listed in :data:`RELEASER_ROUTES`. A token given no role is an admin (what every
token was before roles). Task-service and child tokens have no role: they keep their own
rules (a task service reports its own tasks only; a child speaks the child protocol only).

A role travels with its token as an :class:`OperatorToken` (a ``str``, so it goes wherever a
token goes: ``tokens={"bob": OperatorToken(secret, "reader")}``); a verifier may answer a role
too (see :data:`~release_coordinator.server.token_auth.VerifierAnswer`).

Needs the ``server`` extra (Starlette).
"""

from __future__ import annotations

import enum
import re

from starlette.requests import Request

from release_coordinator.errors import ConfigurationError
from release_coordinator.server.common import Refusal

__all__ = [
    "ADMIN_ROUTE_PREFIXES",
    "READER_ROUTES",
    "READ_METHODS",
    "RELEASER_ROUTES",
    "OperatorToken",
    "Role",
    "required_role",
    "role_of",
    "role_refusal",
    "route_template",
]


class Role(enum.StrEnum):
    """An operator's role; each may do what the ones before it may (see the module)."""

    READER = "reader"
    RELEASER = "releaser"
    ADMIN = "admin"

    @classmethod
    def parse(cls, value: object, where: str = "a role") -> Role:
        """``value`` (a Role or its name, in any case) as a Role; ConfigurationError naming
        ``where`` (never a token) and the roles otherwise."""
        if isinstance(value, Role):
            return value
        if isinstance(value, str):
            try:
                return cls(value.strip().lower())
            except ValueError:
                pass
        shown = repr(value[:40]) if isinstance(value, str) else type(value).__name__
        raise ConfigurationError(
            f"{where}: unknown role {shown}; the roles are {', '.join(r.value for r in cls)}"
        )

    def allows(self, needed: Role) -> bool:
        """Whether this role may do what ``needed`` may."""
        return _RANK[self] >= _RANK[needed]


_RANK = {role: rank for rank, role in enumerate(Role)}
_CONVERTER = re.compile(r":[A-Za-z_]+\}")

#: The methods a reader may use.
READ_METHODS = frozenset({"GET", "HEAD"})

#: The writes a releaser may make, as ``(method, route template)``; every other write needs
#: an admin. Both operator APIs' paths are here (they do not clash: ``serve`` serves both at
#: its root).
RELEASER_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {
        # the Coordinator: a release's life (editing one, PATCH, stays with admins)
        ("POST", "/releases"),
        ("POST", "/releases/{release_id}/publish"),
        ("POST", "/releases/{release_id}/cancel"),
        ("POST", "/releases/{release_id}/run-again"),  # a new release: as POST /releases
        ("POST", "/releases/{release_id}/checks"),  # ask its checks again (approve: admins)
        # release notes: a releaser's own (coordinator_notes checks the author)
        ("POST", "/releases/{release_id}/notes"),
        ("PATCH", "/notes/{note_id}"),
        ("DELETE", "/notes/{note_id}"),
        # the RolloutManager: a rollout's life
        ("POST", "/rollouts"),
        ("POST", "/rollouts/{rollout_id}/start"),
        ("POST", "/rollouts/{rollout_id}/pause"),
        ("POST", "/rollouts/{rollout_id}/resume"),
        ("POST", "/rollouts/{rollout_id}/abort"),
        ("POST", "/rollouts/{rollout_id}/stages/{stage_name}/promote"),
        ("POST", "/rollouts/{rollout_id}/children/{child_id}/exclude"),
        ("POST", "/rollouts/{rollout_id}/retry"),
    }
)


#: The requests that only read although their method is not ``GET``: a reader may send them.
#: ``POST /graphql`` (server.graphql) carries a query (its schema has no mutation).
READER_ROUTES: frozenset[tuple[str, str]] = frozenset({("POST", "/graphql")})


#: The routes whose reads need an admin too: a webhook's URL may be a credential (a chat's
#: incoming-webhook URL is).
ADMIN_ROUTE_PREFIXES = ("/webhooks",)


def required_role(method: str, route: str) -> Role:
    """The role a request needs: ``GET``/``HEAD`` (and the reads of :data:`READER_ROUTES`) a
    reader, the writes of :data:`RELEASER_ROUTES` a releaser, anything else an admin.
    ``route`` is the route's template (``/releases/{release_id}/publish``), relative to the
    app."""
    method = method.upper()
    if any(route == p or route.startswith(p + "/") for p in ADMIN_ROUTE_PREFIXES):
        return Role.ADMIN
    if method in READ_METHODS or (method, route) in READER_ROUTES:
        return Role.READER
    if (method, route) in RELEASER_ROUTES:
        return Role.RELEASER
    return Role.ADMIN


def route_template(request: Request) -> str:
    """The template of the route serving ``request`` (relative to the app that routed it),
    (``{name}``, without a converter), or its path when no route is known (which needs an
    admin for any write)."""
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return request.url.path
    return _CONVERTER.sub("}", path)  # {id:path} -> {id}, as the documents write it


def role_refusal(method: str, route: str, needed: Role, name: str, role: Role) -> Refusal:
    """The 403 of a token whose ``role`` is below ``needed``: the message and the details say
    both roles (and the token's name, never the token)."""
    return Refusal(
        403,
        f"{method} {route} needs the {needed.value} role (or a higher one); "
        f"the token of {name!r} has the {role.value} role",
        required_role=needed.value,
        role=role.value,
        principal=name,
        method=method,
        route=route,
    )


class OperatorToken(str):
    """An operator token with its role: a ``str`` (the token itself), so that it goes wherever
    a token goes (``tokens``, ``operator_tokens``, a mapping's values). A plain ``str`` token
    is an admin. Its repr shows the role only, never the token."""

    role: Role

    def __new__(cls, token: str, role: Role | str = Role.ADMIN) -> OperatorToken:
        if not isinstance(token, str):
            raise ConfigurationError("an operator token must be a string")
        made = super().__new__(cls, token)
        made.role = Role.parse(role, "an operator token")
        return made

    def __repr__(self) -> str:
        return f"OperatorToken(role={self.role.value!r})"

    def __reduce__(self) -> tuple[object, ...]:
        return (OperatorToken, (str(self), self.role))


def role_of(token: str) -> Role:
    """The role ``token`` grants: its own if an :class:`OperatorToken`, admin otherwise."""
    return token.role if isinstance(token, OperatorToken) else Role.ADMIN
