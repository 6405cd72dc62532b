"""Release notes and studies in SQL.

Notes live in ``rc_notes`` (schema version 5), each written with its event in one
transaction. Studies have no table: a study is read from the releases that name it (their
``studies`` JSON, searched with ``json_each`` on SQLite and ``json_array_elements_text`` on
PostgreSQL), so it can never disagree with them and an upgrade has nothing to backfill.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from release_coordinator.coordinator.models import Event, ReleaseNote, utcnow
from release_coordinator.errors import ConflictError, NotFoundError
from release_coordinator.storage.sql.engine import _edge
from release_coordinator.storage.sql.events import _page
from release_coordinator.storage.sql.releases import _Releases
from release_coordinator.storage.sql.schema import notes, releases

_NOTE_COLUMNS = [c for c in notes.c if c.name != "seq"]


def _note(row: sa.Row[Any]) -> ReleaseNote:
    return ReleaseNote(
        id=row.id,
        release_id=row.release_id,
        text=row.text,
        study_id=row.study_id,
        author=row.author,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class _Notes(_Releases):
    """The release notes' part of :class:`~release_coordinator.storage.sql.SQLStore`."""

    # -- notes -----------------------------------------------------------------------------
    @_edge
    async def add_note(self, note: ReleaseNote, event: Event) -> ReleaseNote:
        try:
            async with self._write() as conn:
                known = await self._one(
                    conn, sa.select(releases.c.id).where(releases.c.id == note.release_id)
                )
                if known is None:
                    raise NotFoundError("release", note.release_id)
                taken = await self._one(conn, sa.select(notes.c.id).where(notes.c.id == note.id))
                if taken is not None:
                    raise ConflictError(f"note {note.id!r} exists", id=note.id)
                await conn.execute(
                    sa.insert(notes).values(
                        id=note.id,
                        release_id=note.release_id,
                        study_id=note.study_id,
                        author=note.author,
                        text=note.text,
                        created_at=note.created_at,
                        updated_at=note.updated_at,
                    )
                )
                await self._insert_events(conn, [event])
        except sa_exc.IntegrityError:  # a concurrent note with this id got there first
            raise ConflictError(f"note {note.id!r} exists", id=note.id) from None
        return note

    @_edge
    async def get_note(self, note_id: str) -> ReleaseNote:
        async with self._read() as conn:
            row = await self._one(conn, sa.select(*_NOTE_COLUMNS).where(notes.c.id == note_id))
        if row is None:
            raise NotFoundError("note", note_id)
        return _note(row)

    @_edge
    async def list_notes(
        self,
        *,
        release_id: str | None = None,
        study_id: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ReleaseNote]:
        query = sa.select(*_NOTE_COLUMNS).order_by(notes.c.seq)
        if release_id is not None:
            query = query.where(notes.c.release_id == release_id)
        if study_id is not None:
            query = query.where(notes.c.study_id == study_id)
        query = _page(query, limit, offset)
        async with self._read() as conn:
            return [_note(row) for row in await conn.execute(query)]

    @_edge
    async def update_note(self, note_id: str, event: Event, *, text: str) -> ReleaseNote:
        async with self._write() as conn:
            row = await self._one(
                conn,
                sa.update(notes)
                .where(notes.c.id == note_id)
                .values(text=text, updated_at=utcnow())
                .returning(*_NOTE_COLUMNS),
            )
            if row is None:
                raise NotFoundError("note", note_id)
            await self._insert_events(conn, [event])
            return _note(row)

    @_edge
    async def delete_note(self, note_id: str, event: Event) -> None:
        async with self._write() as conn:
            gone = await self._one(
                conn, sa.delete(notes).where(notes.c.id == note_id).returning(notes.c.id)
            )
            if gone is None:
                raise NotFoundError("note", note_id)
            await self._insert_events(conn, [event])
