"""Leases on releases in SQL: which coordinator process drives which unfinished release.

A lease is two columns of the release's row, claimed with ``SELECT ... FOR UPDATE SKIP
LOCKED`` (PostgreSQL) and timed by the database's clock (``now()``; SQLite's julian day), so
that the processes' clocks do not matter: when a process dies, another takes its releases over
once the lease runs out.
"""

from __future__ import annotations

import sqlalchemy as sa

from release_coordinator.coordinator.models import Release
from release_coordinator.storage.sql.database import SQLDatabase
from release_coordinator.storage.sql.engine import _edge
from release_coordinator.storage.sql.releases import _FINAL, _release, _release_row
from release_coordinator.storage.sql.schema import _RELEASE_COLUMNS, releases


class _Leases(SQLDatabase):
    """The leases' part of :class:`~release_coordinator.storage.sql.SQLStore`."""

    def _claimable(self, owner: str) -> sa.ColumnElement[bool]:
        return sa.and_(releases.c.state.not_in(_FINAL), self._unleased(releases, owner))

    @_edge
    async def claim_releases(
        self, owner: str, lease_seconds: float, *, limit: int = 100
    ) -> list[Release]:
        claimed = await self._claim(
            releases, self._claimable(owner), owner, lease_seconds, limit, _RELEASE_COLUMNS
        )
        return [_release(row) for row in claimed]

    @_edge
    async def claim_release(self, release_id: str, owner: str, lease_seconds: float) -> bool:
        async with self._write() as conn:
            row = await self._one(
                conn,
                sa.update(releases)
                .where(releases.c.id == release_id, self._claimable(owner))
                .values(lease_owner=owner, lease_expires_at=self._expiry(lease_seconds))
                .returning(releases.c.id),
            )
            if row is None:
                await _release_row(conn, release_id)  # NotFoundError
                return False
            return True

    @_edge
    async def renew_lease(self, release_id: str, owner: str, lease_seconds: float) -> bool:
        async with self._write() as conn:
            row = await self._one(
                conn,
                sa.update(releases)
                .where(
                    releases.c.id == release_id,
                    releases.c.lease_owner == owner,
                    releases.c.state.not_in(_FINAL),
                )
                .values(lease_expires_at=self._expiry(lease_seconds))
                .returning(releases.c.id),
            )
            return row is not None

    @_edge
    async def drop_lease(self, release_id: str, owner: str) -> None:
        await self._drop_lease(releases, release_id, owner)
