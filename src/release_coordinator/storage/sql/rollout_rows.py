"""What every part of the SQL rollout store shares: its database, its write transactions,
counters, and the rollouts' rows with what never changes about them (decoded once).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from release_coordinator.errors import NotFoundError
from release_coordinator.rollout.models import Rollout, RolloutState
from release_coordinator.storage.sql.database import SQLDatabase
from release_coordinator.storage.sql.lanes import Lane
from release_coordinator.storage.sql.rollout_codec import _Fixed, _fixed
from release_coordinator.storage.sql.schema import _ROLLOUT_COLUMNS, counters, rollouts

#: Rows per statement when a call names many children.
_CHUNK = 500


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    """``ids`` in slices of :data:`_CHUNK` (one statement each)."""
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


class _RolloutRows:
    """The base of :class:`~release_coordinator.storage.sql.SQLRolloutStore`'s parts."""

    def __init__(self, db: SQLDatabase, *, owns_db: bool) -> None:
        self._db = db
        self._owns_db = owns_db
        self.url = db.url
        self.shared = db.dialect == "postgresql"
        self._postgres = self.shared
        self._fixed: dict[str, _Fixed] = {}
        self._closed = False

    @contextlib.asynccontextmanager
    async def _write(self, lane: Lane = Lane.FLEET) -> AsyncIterator[AsyncConnection]:
        """A write transaction of the rollout tables: the offers cached before it, or read
        while it runs, are forgotten. In the fleet lane unless it is a rollout's own record
        (:mod:`~release_coordinator.storage.sql.lanes`)."""
        self._db.rollout_changes += 1
        try:
            async with self._db._write(lane) as conn:
                yield conn
        finally:
            self._db.rollout_changes += 1

    def _read(
        self, lane: Lane = Lane.FLEET
    ) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """A read transaction, in the fleet lane unless it reads a rollout's own record."""
        return self._db._read(lane)

    def _insert(self, table: sa.Table) -> Any:
        dialect = pg_dialect if self._db.dialect == "postgresql" else sqlite_dialect
        return dialect.insert(table)

    async def _next_counter(self, conn: AsyncConnection, name: str, count: int = 1) -> int:
        """Take the next ``count`` numbers of counter ``name`` (1 first); the last one taken.
        The row stays locked to the commit, so numbers become visible in the order they
        grow."""
        insert = self._insert(counters).values(name=name, value=count)
        value = (
            await conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[counters.c.name], set_={"value": counters.c.value + count}
                ).returning(counters.c.value)
            )
        ).scalar_one()
        return int(value)

    async def _rollout_row(self, conn: AsyncConnection, rollout_id: str) -> Any:
        row = (
            await conn.execute(sa.select(*_ROLLOUT_COLUMNS).where(rollouts.c.id == rollout_id))
        ).first()
        if row is None:
            raise NotFoundError("release", rollout_id)
        return row

    async def _fixed_of(self, conn: AsyncConnection, rollout_id: str) -> _Fixed:
        fixed = self._fixed.get(rollout_id)
        if fixed is not None:
            return fixed
        row = (
            await conn.execute(
                sa.select(
                    rollouts.c.target,
                    rollouts.c.policy,
                    rollouts.c.strategy_text,
                    rollouts.c.archive,
                    rollouts.c.archive_files,
                ).where(rollouts.c.id == rollout_id)
            )
        ).first()
        if row is None:
            raise NotFoundError("release", rollout_id)
        return self._fixed.setdefault(rollout_id, _fixed(rollout_id, row))

    async def _cached_fixed(self, rollout_id: str) -> _Fixed:
        """:meth:`_fixed_of` without a transaction when this process knows it already."""
        fixed = self._fixed.get(rollout_id)
        if fixed is None:
            async with self._read() as conn:
                fixed = await self._fixed_of(conn, rollout_id)
        return fixed

    async def _rollout(self, conn: AsyncConnection, row: Any) -> Rollout:
        fixed = await self._fixed_of(conn, row.id)
        return Rollout(
            id=row.id,
            name=row.name,
            target=fixed.target,
            match=row.match,
            priority=row.priority,
            policy=fixed.policy,
            state=RolloutState(row.state),
            seq=row.seq,
            reason=row.reason,
            gated=row.gated,
            after_release=row.after_release or "",
        )

    async def _names(self, conn: AsyncConnection, rollout_id: str) -> tuple[str, ...]:
        return (await self._fixed_of(conn, rollout_id)).bundle.strategy.stage_names
