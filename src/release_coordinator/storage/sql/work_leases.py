"""Leases on periodic work in SQL: which of several RolloutManager processes runs the loop.

One row per lease (``rc_work_leases``: name, owner, when it runs out), taken with one upsert
that only overwrites a lease of the same owner or one that ran out, timed by the database's
clock (as the releases' leases are), so that the processes' clocks do not matter. Written in
the control lane (:mod:`~release_coordinator.storage.sql.lanes`): a busy fleet never makes
the holder miss its renewal.
"""

from __future__ import annotations

import sqlalchemy as sa

from release_coordinator.storage.sql.engine import _edge
from release_coordinator.storage.sql.lanes import Lane
from release_coordinator.storage.sql.rollout_rows import _RolloutRows
from release_coordinator.storage.sql.schema import work_leases


class _WorkLeases(_RolloutRows):
    """The leases' part of :class:`~release_coordinator.storage.sql.SQLRolloutStore`."""

    @_edge
    async def hold_lease(self, name: str, owner: str, seconds: float) -> bool:
        db = self._db
        insert = self._insert(work_leases).values(
            name=name, owner=owner, expires_at=db._expiry(seconds)
        )
        upsert = insert.on_conflict_do_update(
            index_elements=[work_leases.c.name],
            set_={"owner": insert.excluded.owner, "expires_at": insert.excluded.expires_at},
            where=sa.or_(work_leases.c.owner == owner, work_leases.c.expires_at <= db._now()),
        ).returning(work_leases.c.owner)
        async with db._write(Lane.CONTROL) as conn:
            return (await conn.execute(upsert)).first() is not None

    @_edge
    async def drop_lease(self, name: str, owner: str) -> bool:
        async with self._db._write(Lane.CONTROL) as conn:
            done = await conn.execute(
                sa.delete(work_leases).where(
                    work_leases.c.name == name, work_leases.c.owner == owner
                )
            )
            return bool(done.rowcount == 1)
