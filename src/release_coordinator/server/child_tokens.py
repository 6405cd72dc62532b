"""The tokens a rollout app issues to children, kept (hashed) in the manager's store.

Needs the ``server`` extra (Starlette).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets

from starlette.requests import Request

from release_coordinator.server.token_auth import bearer_token, forbidden, unauthorized
from release_coordinator.storage.rollout_base import RolloutStore

__all__ = ["ChildTokens"]

_MAX_TEXT = 256


class ChildTokens:
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
