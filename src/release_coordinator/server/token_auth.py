"""Bearer tokens: who a request comes from, and the checks of its ``Authorization`` header.

:class:`TokenAuth` checks ``Authorization: Bearer <token>`` against configured tokens (compared
in constant time) and/or a verifier the host supplies. Tokens are accepted in that header only
(never in a URL, which ends up in access logs) and are never logged or echoed. An operator's
token carries a role (:mod:`release_coordinator.server.roles`); :func:`authorize` checks it
against the one the request needs.

Needs the ``server`` extra (Starlette).
"""

from __future__ import annotations

import hmac
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping

import attrs
from starlette.requests import Request

from release_coordinator.errors import ConfigurationError
from release_coordinator.server.common import Refusal
from release_coordinator.server.roles import (
    Role,
    required_role,
    role_of,
    role_refusal,
    route_template,
)

__all__ = [
    "Principal",
    "TokenAuth",
    "Verifier",
    "VerifierAnswer",
    "authorize",
    "bearer_token",
    "check_token",
    "forbidden",
    "unauthorized",
]

log = logging.getLogger(__name__)

_TOKEN_CHAR = re.compile(r"^[!-~]+$")  # printable ASCII without blanks

VerifierAnswer = bool | str | Role | tuple[str, Role | str] | None
"""What a verifier answers: to accept a token, ``True`` (an admin), a principal's name (an
admin), a :class:`~release_coordinator.server.roles.Role` (unnamed, of that role) or
``(name, role)`` (the role a Role or its name); ``False``/``None`` to refuse it."""

Verifier = Callable[[str], VerifierAnswer | Awaitable[VerifierAnswer]]
"""A host's check of a bearer token (sync or async); it gets the token without the scheme."""


def _default_role(principal: Principal) -> Role | None:
    return Role.ADMIN if principal.kind == "operator" else None


@attrs.frozen
class Principal:
    """Who a request comes from: ``kind`` is ``operator``, ``service`` or ``child``; ``role``
    is an operator's role (admin unless its token says otherwise), None for the others."""

    name: str
    kind: str
    role: Role | None = attrs.field(default=attrs.Factory(_default_role, takes_self=True))


def bearer_token(request: Request) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (the scheme in any case), or None."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def check_token(token: object, what: str) -> str:
    """``token`` if it can travel in a header (printable ASCII, no blanks); else
    ConfigurationError (which never shows the token)."""
    if not isinstance(token, str) or not _TOKEN_CHAR.match(token):
        raise ConfigurationError(f"{what} must be non-empty printable ASCII without blanks")
    return token


class TokenAuth:
    """Bearer tokens of one ``kind`` (``operator`` or ``service``): configured ``tokens``
    and/or a ``verifier``.

    ``tokens`` is a collection of tokens (their principal is called ``default_name``) or a
    mapping of principal names to tokens; an operator token that is an
    :class:`~release_coordinator.server.roles.OperatorToken` has its role, any other is an
    admin. Every configured token is compared, in constant time, with the one given; the
    verifier is asked when none matches. ``role`` is the former name of ``kind``.
    """

    def __init__(
        self,
        tokens: Iterable[str] | Mapping[str, str] = (),
        verifier: Verifier | None = None,
        *,
        kind: str = "operator",
        default_name: str = "operator",
        what: str = "a token",
        role: str | None = None,
    ) -> None:
        if role is not None:
            kind = role
        if isinstance(tokens, str | bytes):
            raise ConfigurationError(f"{what}s must be a collection of tokens, not one string")
        if isinstance(tokens, Mapping):
            named = [(str(name), check_token(tok, what)) for name, tok in tokens.items()]
        else:
            named = [(default_name, check_token(tok, what)) for tok in tokens]
        if verifier is not None and not callable(verifier):
            raise ConfigurationError("verifier must be callable")
        self.kind = kind
        self._tokens = [
            (name, tok.encode("ascii"), role_of(tok) if kind == "operator" else None)
            for name, tok in named
        ]
        self._verifier = verifier

    @property
    def configured(self) -> bool:
        """Whether any token or a verifier is configured."""
        return bool(self._tokens) or self._verifier is not None

    def __repr__(self) -> str:  # never the tokens themselves
        return f"TokenAuth(kind={self.kind!r}, tokens={len(self._tokens)})"

    async def identify(self, token: str) -> Principal | None:
        """The principal ``token`` belongs to, or None."""
        given = token.encode("utf-8", "surrogateescape")
        found: tuple[str, Role | None] | None = None
        for name, expected, role in self._tokens:  # compare with all of them: no early exit
            if hmac.compare_digest(given, expected) and found is None:
                found = (name, role)
        if found is not None:
            return Principal(found[0], self.kind, found[1])
        if self._verifier is None:
            return None
        try:
            answer = self._verifier(token)
            if inspect.isawaitable(answer):
                answer = await answer
        except Exception as error:  # the host's code: its message may hold the token
            log.error("the token verifier raised %s", type(error).__name__)
            raise Refusal(503, "the token could not be verified now") from None
        return self._answered(answer)

    def _answered(self, answer: object) -> Principal | None:
        """The principal of a verifier's ``answer`` (see :data:`VerifierAnswer`)."""
        role: object = Role.ADMIN
        name: object = self.kind
        if answer is True:
            pass
        elif isinstance(answer, Role):
            role = answer
        elif isinstance(answer, str) and answer:
            name = answer
        elif isinstance(answer, tuple) and len(answer) == 2:
            name, role = answer
        else:
            return None
        if not isinstance(name, str) or not name:
            log.error("the token verifier answered a name that is not a non-empty string")
            raise Refusal(500, "the token verifier answered an invalid name", code="internal")
        try:
            checked = Role.parse(role, "the token verifier's answer")
        except ConfigurationError as error:
            log.error("%s", error.message)
            raise Refusal(500, error.message, code="internal") from None
        return Principal(name, self.kind, checked if self.kind == "operator" else None)


def _api_tokens(
    api: str,
    tokens: Iterable[str] | Mapping[str, str],
    verifier: Verifier | None,
    callback_tokens: Mapping[str, str] | None,
    *,
    allow_anonymous: bool,
) -> tuple[TokenAuth, TokenAuth, Principal | None]:
    """The operators' and the task services' tokens of ``api`` (the coordinator's REST API,
    its GraphQL API), and the principal of every request when no operator token is configured
    (None: tokens are); ConfigurationError when none is and ``allow_anonymous`` is not set."""
    operators = TokenAuth(tokens, verifier, what="an operator token")
    services = TokenAuth(callback_tokens or {}, kind="service", what="a callback token")
    if not operators.configured and not allow_anonymous:
        raise ConfigurationError(
            f"the {api} needs operator tokens or a verifier "
            "(or allow_anonymous=True, for tests and trusted networks only)"
        )
    anonymous = None if operators.configured else Principal("anonymous", "operator")
    return operators, services, anonymous


def authorize(who: Principal, request: Request) -> Principal:
    """``who`` if its role allows ``request`` (see
    :func:`~release_coordinator.server.roles.required_role`); a 403 that says the role needed
    and the role held otherwise, and for a principal that is no operator."""
    if who.kind != "operator" or who.role is None:
        raise forbidden(f"a {who.kind} token may not use the operator API")
    method = request.method.upper()
    route = route_template(request)
    needed = required_role(method, route)
    if not who.role.allows(needed):
        raise role_refusal(method, route, needed, who.name, who.role)
    return who


def unauthorized(message: str = "a valid bearer token is required") -> Refusal:
    """401 with ``WWW-Authenticate: Bearer``."""
    return Refusal(401, message, headers={"WWW-Authenticate": "Bearer"})


def forbidden(message: str) -> Refusal:
    """403: the token is valid, and not for this."""
    return Refusal(403, message)
