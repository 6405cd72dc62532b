"""Bearer tokens: who a request comes from, and the checks of its ``Authorization`` header.

:class:`TokenAuth` checks ``Authorization: Bearer <token>`` against configured tokens (compared
in constant time) and/or a verifier the host supplies. Tokens are accepted in that header only
(never in a URL, which ends up in access logs) and are never logged or echoed.

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

__all__ = [
    "Principal",
    "TokenAuth",
    "Verifier",
    "VerifierAnswer",
    "bearer_token",
    "check_token",
    "forbidden",
    "unauthorized",
]

log = logging.getLogger(__name__)

_TOKEN_CHAR = re.compile(r"^[!-~]+$")  # printable ASCII without blanks

VerifierAnswer = bool | str | None
"""What a verifier answers: a principal's name or ``True`` to accept, ``False``/``None`` to
refuse."""

Verifier = Callable[[str], VerifierAnswer | Awaitable[VerifierAnswer]]
"""A host's check of a bearer token (sync or async); it gets the token without the scheme."""


@attrs.frozen
class Principal:
    """Who a request comes from: ``role`` is ``operator``, ``service`` or ``child``."""

    name: str
    role: str


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
    """Bearer tokens of one role: configured ``tokens`` and/or a ``verifier``.

    ``tokens`` is a collection of tokens (their principal is called ``default_name``) or a
    mapping of principal names to tokens. Every configured token is compared, in constant
    time, with the one given; the verifier is asked when none matches.
    """

    def __init__(
        self,
        tokens: Iterable[str] | Mapping[str, str] = (),
        verifier: Verifier | None = None,
        *,
        role: str = "operator",
        default_name: str = "operator",
        what: str = "a token",
    ) -> None:
        if isinstance(tokens, str | bytes):
            raise ConfigurationError(f"{what}s must be a collection of tokens, not one string")
        if isinstance(tokens, Mapping):
            named = [(str(name), check_token(tok, what)) for name, tok in tokens.items()]
        else:
            named = [(default_name, check_token(tok, what)) for tok in tokens]
        if verifier is not None and not callable(verifier):
            raise ConfigurationError("verifier must be callable")
        self._tokens = [(name, tok.encode("ascii")) for name, tok in named]
        self._verifier = verifier
        self.role = role

    @property
    def configured(self) -> bool:
        """Whether any token or a verifier is configured."""
        return bool(self._tokens) or self._verifier is not None

    def __repr__(self) -> str:  # never the tokens themselves
        return f"TokenAuth(role={self.role!r}, tokens={len(self._tokens)})"

    async def identify(self, token: str) -> Principal | None:
        """The principal ``token`` belongs to, or None."""
        given = token.encode("utf-8", "surrogateescape")
        found: str | None = None
        for name, expected in self._tokens:  # compare with all of them: no early exit
            if hmac.compare_digest(given, expected) and found is None:
                found = name
        if found is not None:
            return Principal(found, self.role)
        if self._verifier is None:
            return None
        try:
            answer = self._verifier(token)
            if inspect.isawaitable(answer):
                answer = await answer
        except Exception as error:  # the host's code: its message may hold the token
            log.error("the token verifier raised %s", type(error).__name__)
            raise Refusal(503, "the token could not be verified now") from None
        if answer is True:
            return Principal(self.role, self.role)
        if isinstance(answer, str) and answer:
            return Principal(answer, self.role)
        return None


def unauthorized(message: str = "a valid bearer token is required") -> Refusal:
    """401 with ``WWW-Authenticate: Bearer``."""
    return Refusal(401, message, headers={"WWW-Authenticate": "Bearer"})


def forbidden(message: str) -> Refusal:
    """403: the token is valid, and not for this."""
    return Refusal(403, message)
