"""Releases in SQL: creation with their tasks, compare-and-set transitions, versions.

Versions are computed in the creating (or publishing) transaction from the highest stored
version, and a UNIQUE constraint on ``(major, minor, patch)`` keeps them unique: a transaction
that loses the race on it starts again, a bounded number of times.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Collection, Sequence
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from release_coordinator.coordinator.models import Event, Release, Task, publish_gate, utcnow
from release_coordinator.coordinator.publish_gates import gates_from_json, gates_json
from release_coordinator.errors import (
    ConcurrentUpdateError,
    ConflictError,
    NotFoundError,
    StorageError,
)
from release_coordinator.fsm.release import ReleaseState
from release_coordinator.storage.base import GatesChange, new_tasks
from release_coordinator.storage.sql.engine import _edge, _violates
from release_coordinator.storage.sql.events import _EventLog, _page
from release_coordinator.storage.sql.schema import _RELEASE_COLUMNS, releases, services, tasks
from release_coordinator.versions import Version, next_release_version, published_version

_FINAL = tuple(
    s.value for s in (ReleaseState.PUBLISHED, ReleaseState.CANCELED, ReleaseState.FAILED)
)
#: How many times a creation (or publication) that lost the race for a version starts again.
_VERSION_ATTEMPTS = 50


def _release(row: sa.Row[Any]) -> Release:
    return Release(
        id=row.id,
        name=row.name,
        version=f"{row.major}.{row.minor}.{row.patch}",
        state=ReleaseState(row.state),
        description=row.description,
        studies=tuple(row.studies),
        tags=tuple(row.tags),
        author=row.author,
        is_major=bool(row.is_major),
        auto_publish=bool(row.auto_publish),
        failure=row.failure,
        cloned_from=row.cloned_from,
        created_at=row.created_at,
        updated_at=row.updated_at,
        state_changed_at=row.state_changed_at,
        gates=gates_from_json(row.gates),
    )


def _version_of(row: sa.Row[Any] | None) -> list[str]:
    return [] if row is None else [f"{row.major}.{row.minor}.{row.patch}"]


def _in_states(states: Collection[ReleaseState]) -> sa.ColumnElement[bool]:
    """The release's state is one of ``states``."""
    return releases.c.state.in_([ReleaseState(s).value for s in states])


async def _release_row(conn: AsyncConnection, release_id: str) -> sa.Row[Any]:
    """The release's row (less its lease); NotFoundError."""
    query = sa.select(*_RELEASE_COLUMNS).where(releases.c.id == release_id)
    row = (await conn.execute(query)).first()
    if row is None:
        raise NotFoundError("release", release_id)
    return row


async def _lost_release(
    conn: AsyncConnection, release_id: str, expected: Collection[ReleaseState]
) -> ConcurrentUpdateError:
    row = await _release_row(conn, release_id)
    return ConcurrentUpdateError("release", release_id, expected, row.state)


class _Releases(_EventLog):
    """The releases' part of :class:`~release_coordinator.storage.sql.SQLStore`."""

    async def _top_version(self, conn: AsyncConnection) -> sa.Row[Any] | None:
        return await self._one(
            conn,
            sa.select(releases.c.major, releases.c.minor, releases.c.patch)
            .order_by(releases.c.major.desc(), releases.c.minor.desc(), releases.c.patch.desc())
            .limit(1),
        )

    async def _retry_version(self, attempt: int, error: sa_exc.IntegrityError) -> None:
        """After losing the race for a version: wait a little, or give up."""
        if not _violates(error, "uq_rc_releases_version", "major", "minor", "patch"):
            raise error
        if attempt + 1 >= _VERSION_ATTEMPTS:
            raise StorageError(
                f"no unique release version after {_VERSION_ATTEMPTS} attempts; "
                "too many concurrent creations"
            ) from error
        await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))

    @_edge
    async def create_release(
        self, release: Release, service_ids: Sequence[str], event: Event
    ) -> tuple[Release, list[Task]]:
        for attempt in range(_VERSION_ATTEMPTS):
            try:
                return await self._create_release(release, service_ids, event)
            except sa_exc.IntegrityError as error:
                if _violates(error, "uq_rc_releases_id", "rc_releases.id"):
                    raise ConflictError(f"release {release.id!r} exists", id=release.id) from None
                await self._retry_version(attempt, error)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _create_release(
        self, release: Release, service_ids: Sequence[str], event: Event
    ) -> tuple[Release, list[Task]]:
        async with self._write() as conn:
            found = await self._one(
                conn, sa.select(releases.c.id).where(releases.c.id == release.id)
            )
            if found is not None:
                raise ConflictError(f"release {release.id!r} exists", id=release.id)
            if service_ids:
                # FOR SHARE: a concurrent remove_service waits for this release's tasks.
                known = set(
                    (
                        await conn.execute(
                            sa.select(services.c.id)
                            .where(services.c.id.in_(set(service_ids)))
                            .with_for_update(read=True)
                        )
                    ).scalars()
                )
                for service_id in service_ids:
                    if service_id not in known:
                        raise NotFoundError("task service", service_id)
            version = next_release_version(_version_of(await self._top_version(conn)))
            parsed = Version.parse(version)
            stored = attrs.evolve(release, version=version)
            await conn.execute(
                sa.insert(releases).values(
                    id=stored.id,
                    name=stored.name,
                    major=parsed.major,
                    minor=parsed.minor,
                    patch=parsed.patch,
                    state=stored.state.value,
                    description=stored.description,
                    studies=list(stored.studies),
                    tags=list(stored.tags),
                    author=stored.author,
                    is_major=stored.is_major,
                    auto_publish=stored.auto_publish,
                    failure=stored.failure,
                    cloned_from=stored.cloned_from,
                    created_at=stored.created_at,
                    updated_at=stored.updated_at,
                    state_changed_at=stored.state_changed_at,
                    gates=gates_json(stored.gates) if stored.gates.configured else None,
                )
            )
            created = new_tasks(stored.id, service_ids)
            if created:
                await conn.execute(
                    sa.insert(tasks),
                    [
                        {
                            "id": t.id,
                            "release_id": t.release_id,
                            "service_id": t.service_id,
                            "state": t.state.value,
                            "progress": t.progress,
                            "message": t.message,
                            "created_at": t.created_at,
                            "updated_at": t.updated_at,
                            "progress_at": t.progress_at,
                        }
                        for t in created
                    ],
                )
            await self._insert_events(conn, [event])
            return stored, created

    @_edge
    async def get_release(self, release_id: str) -> Release:
        async with self._read() as conn:
            return _release(await _release_row(conn, release_id))

    def _names_study(self, study: str) -> sa.ColumnElement[bool]:
        """The release's ``studies`` hold ``study``."""
        each = sa.func.json_each if self._sqlite else sa.func.json_array_elements_text
        elements = each(releases.c.studies).table_valued("value").alias("named")
        return sa.exists(
            sa.select(sa.literal(1)).select_from(elements).where(elements.c.value == study)
        )

    @_edge
    async def list_releases(
        self,
        *,
        states: Collection[ReleaseState] | None = None,
        limit: int | None = None,
        offset: int = 0,
        study: str | None = None,
    ) -> list[Release]:
        query = sa.select(*_RELEASE_COLUMNS).order_by(releases.c.seq.desc())
        if states is not None:
            query = query.where(_in_states(states))
        if study is not None:
            query = query.where(self._names_study(study))
        query = _page(query, limit, offset)
        async with self._read() as conn:
            return [_release(row) for row in await conn.execute(query)]

    @_edge
    async def transition_release(
        self,
        release_id: str,
        from_states: Collection[ReleaseState],
        to_state: ReleaseState,
        event: Event,
        *,
        failure: str | None = None,
        before: Sequence[Event] = (),
    ) -> Release:
        for attempt in range(_VERSION_ATTEMPTS):
            try:
                return await self._transition_release(
                    release_id, from_states, to_state, [*before, event], failure
                )
            except sa_exc.IntegrityError as error:
                await self._retry_version(attempt, error)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _transition_release(
        self,
        release_id: str,
        from_states: Collection[ReleaseState],
        to_state: ReleaseState,
        events: Sequence[Event],
        failure: str | None,
    ) -> Release:
        async with self._write() as conn:
            now = utcnow()
            values: dict[str, Any] = {
                "state": to_state.value,
                "updated_at": now,
                "state_changed_at": now,
            }
            if failure is not None:
                values["failure"] = failure
            if to_state is ReleaseState.PUBLISHING:
                # the gates as stored, locked: a gate closed since the caller looked (checks
                # asked again) makes it a lost compare-and-set, judged anew by the caller
                locked = await self._one(
                    conn,
                    sa.select(*_RELEASE_COLUMNS)
                    .where(releases.c.id == release_id)
                    .with_for_update(),
                )
                if locked is not None and publish_gate(_release(locked), now) is not None:
                    raise ConcurrentUpdateError(
                        "release", release_id, from_states, f"{locked.state}, gated"
                    )
            if to_state is ReleaseState.PUBLISHED:
                current = await _release_row(conn, release_id)
                if current.state not in from_states:
                    raise await _lost_release(conn, release_id, from_states)
                top = _version_of(await self._top_version(conn))
                promoted = Version.parse(published_version(top, major=bool(current.is_major)))
                values.update(major=promoted.major, minor=promoted.minor, patch=promoted.patch)
            row = await self._one(
                conn,
                sa.update(releases)
                .where(releases.c.id == release_id, _in_states(from_states))
                .values(**values)
                .returning(*_RELEASE_COLUMNS),
            )
            if row is None:
                raise await _lost_release(conn, release_id, from_states)
            await self._insert_events(conn, events)
            return _release(row)

    @_edge
    async def update_gates(self, release_id: str, change: GatesChange) -> Release:
        async with self._write() as conn:
            # (locked to the end of the transaction: two changes of one release's gates never
            # both start from the same read; SQLite's writes take one at a time anyway)
            row = await self._one(
                conn,
                sa.select(*_RELEASE_COLUMNS)
                .where(releases.c.id == release_id)
                .with_for_update(),
            )
            if row is None:
                raise NotFoundError("release", release_id)
            current = _release(row)
            changed = change(current)
            if changed is None:
                return current
            gates, events = changed
            values = {"gates": gates_json(gates), "updated_at": utcnow()}
            row = await self._one(
                conn,
                sa.update(releases)
                .where(releases.c.id == release_id)
                .values(**values)
                .returning(*_RELEASE_COLUMNS),
            )
            assert row is not None
            await self._insert_events(conn, events)
            return _release(row)

    @_edge
    async def update_release(
        self,
        release_id: str,
        event: Event,
        *,
        name: str | None = None,
        description: str | None = None,
        tags: Sequence[str] | None = None,
        expect_states: Collection[ReleaseState] | None = None,
    ) -> Release:
        values: dict[str, Any] = {"updated_at": utcnow()}
        if name is not None:
            values["name"] = name
        if description is not None:
            values["description"] = description
        if tags is not None:
            values["tags"] = list(tags)
        query = sa.update(releases).where(releases.c.id == release_id)
        if expect_states is not None:
            query = query.where(_in_states(expect_states))
        async with self._write() as conn:
            row = await self._one(conn, query.values(**values).returning(*_RELEASE_COLUMNS))
            if row is None:  # (NotFoundError for an unknown release)
                raise await _lost_release(conn, release_id, expect_states or ())
            await self._insert_events(conn, [event])
            return _release(row)
