"""The tokens of ``release-coordinator serve``, read from the environment (never from the
command line, where ``ps`` shows them) and never logged: operator tokens, task-service callback
tokens, the token the coordinator sends to task services, and the one a relay sends to its
parent.

An operator token may carry a role (:mod:`release_coordinator.server.roles`):
``RC_OPERATOR_TOKENS=alice=tok1,bob:releaser=tok2,grafana:reader=tok3``; a token without one
(``alice=tok1``, or a bare ``tok1``) is an admin, as every token was before roles."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import attrs

from release_coordinator.errors import ConfigurationError
from release_coordinator.server.roles import OperatorToken, Role
from release_coordinator.server.token_auth import check_token

__all__ = [
    "ENV_CALLBACK_TOKENS",
    "ENV_OPERATOR_TOKENS",
    "ENV_PARENT_TOKEN",
    "ENV_TASK_SERVICE_TOKEN",
    "ServeTokens",
    "parse_tokens",
    "tokens_from_env",
]

log = logging.getLogger("release_coordinator.server.serve")

#: Operator tokens (both APIs): ``tok1,tok2`` or ``name=tok1,other=tok2``, a named token with a
#: role as ``name:role=token`` (``admin``, ``releaser``, ``reader``; admin when left out).
ENV_OPERATOR_TOKENS = "RC_OPERATOR_TOKENS"
#: Task-service callback tokens: ``service=token,...`` (service name or id).
ENV_CALLBACK_TOKENS = "RC_CALLBACK_TOKENS"
#: The bearer token sent to task services.
ENV_TASK_SERVICE_TOKEN = "RC_TASK_SERVICE_TOKEN"
#: The bearer token a relay (``serve --parent URL``) sends to its parent.
ENV_PARENT_TOKEN = "RC_PARENT_TOKEN"
#: Bare tokens shorter than this are accepted with a warning.
_SHORT_TOKEN = 16


def parse_tokens(
    text: str, *, variable: str, named: bool | None = None, roles: bool = False
) -> list[tuple[str, str]]:
    """The entries of a token variable as ``(name, token)`` pairs (name ``""`` when bare).

    ``text`` is a comma-separated list; blanks around entries and empty entries are ignored.
    An entry is ``name=token`` when it holds an ``=`` with a name before it and a token after
    it; otherwise (no ``=``, or only ``=`` after the first one: base64 padding) it is a bare
    token. With ``roles``, a name may end with ``:role`` (``bob:reader=token``): that entry's
    token is an :class:`~release_coordinator.server.roles.OperatorToken` of that role (the
    others are plain strings: admins). ``named=True`` requires names, ``False`` forbids them,
    ``None`` takes either but not both in one variable. Names and tokens are unique.
    ConfigurationError says which entry is wrong (its position and name), never showing a
    token.
    """
    entries: list[tuple[str, str]] = []
    for position, raw in enumerate(text.split(","), start=1):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, token = entry.partition("=")
        name, token = name.strip(), token.strip()
        where = f"{variable}, entry {position}"
        if roles and sep and ":" in name and not token.strip("="):
            # name:role= with nothing after it (an unset variable in a template, say): never a
            # bare token (no token holds a ':'), which would make the text itself an admin's
            shown = name.rpartition(":")[0].strip()[:60]
            raise ConfigurationError(f"{where} ({shown!r}): no token after '='")
        if not sep or not name or not token.strip("="):
            name, token = "", entry
        role: Role | None = None
        if roles and name and ":" in name:
            name, _, role_name = name.rpartition(":")
            name = name.strip()
            if not name:
                raise ConfigurationError(f"{where}: a role needs a name (name:role=token)")
            role = Role.parse(role_name, f"{where} ({name[:60]!r})")
        check_token(token, f"the token of {where}")
        if name and not name.isprintable():
            raise ConfigurationError(f"{where}: the name must be printable text")
        entries.append((name, token if role is None else OperatorToken(token, role)))
    names = [name for name, _ in entries if name]
    if named is True and len(names) != len(entries):
        raise ConfigurationError(f"{variable}: every entry must be name=token")
    if named is False and names:
        raise ConfigurationError(f"{variable}: entries are tokens, not name=token")
    if named is None and names and len(names) != len(entries):
        raise ConfigurationError(
            f"{variable}: name every token (name=token) or none of them, not some"
        )
    if len(set(names)) != len(names):
        raise ConfigurationError(f"{variable}: a name is given twice")
    tokens = [token for _, token in entries]
    if len(set(tokens)) != len(tokens):
        raise ConfigurationError(f"{variable}: the same token is given twice")
    return entries


@attrs.frozen(repr=False)
class ServeTokens:
    """The tokens of ``serve``, read by :func:`tokens_from_env`. Its repr shows no token."""

    #: Operator tokens as ``(name, token)`` (name ``""``: unnamed); a token with a role is an
    #: :class:`~release_coordinator.server.roles.OperatorToken`.
    operators: tuple[tuple[str, str], ...] = ()
    #: Task-service callback tokens by service name or id.
    callbacks: tuple[tuple[str, str], ...] = ()
    #: The token sent to task services (None: no ``Authorization`` header).
    task_service: str | None = None
    #: The token a relay sends to its parent (None: none, unless the parent issues one).
    parent: str | None = None

    def __attrs_post_init__(self) -> None:
        operators = {token for _, token in self.operators}
        if any(token in operators for _, token in self.callbacks):
            raise ConfigurationError(
                f"a token of {ENV_CALLBACK_TOKENS} is also an operator token: "
                "a task service would get operator rights"
            )

    def __repr__(self) -> str:
        return (
            f"ServeTokens(operators={len(self.operators)}, callbacks={len(self.callbacks)}, "
            f"task_service={'set' if self.task_service else 'unset'}, "
            f"parent={'set' if self.parent else 'unset'})"
        )

    def operator_tokens(self) -> list[str] | dict[str, str]:
        """As ``coordinator_app`` and ``rollout_app`` take them: a mapping if named."""
        if self.operators and all(name for name, _ in self.operators):
            return dict(self.operators)
        return [token for _, token in self.operators]

    def callback_tokens(self) -> dict[str, str]:
        return dict(self.callbacks)


def tokens_from_env(environ: Mapping[str, str] | None = None) -> ServeTokens:
    """:class:`ServeTokens` from ``RC_OPERATOR_TOKENS``, ``RC_CALLBACK_TOKENS``,
    ``RC_TASK_SERVICE_TOKEN`` and ``RC_PARENT_TOKEN`` (of ``environ``, ``os.environ`` by
    default)."""
    env = os.environ if environ is None else environ
    operators = parse_tokens(
        env.get(ENV_OPERATOR_TOKENS, ""), variable=ENV_OPERATOR_TOKENS, roles=True
    )
    if any(len(token) < _SHORT_TOKEN for _, token in operators):
        log.warning(
            "%s holds a token shorter than %d characters: easy to guess",
            ENV_OPERATOR_TOKENS,
            _SHORT_TOKEN,
        )
    callbacks = parse_tokens(
        env.get(ENV_CALLBACK_TOKENS, ""), variable=ENV_CALLBACK_TOKENS, named=True
    )
    task_service = env.get(ENV_TASK_SERVICE_TOKEN, "").strip() or None
    if task_service is not None:
        check_token(task_service, ENV_TASK_SERVICE_TOKEN)
    parent = env.get(ENV_PARENT_TOKEN, "").strip() or None
    if parent is not None:
        check_token(parent, ENV_PARENT_TOKEN)
    return ServeTokens(tuple(operators), tuple(callbacks), task_service, parent)
