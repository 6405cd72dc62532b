"""Task services in SQL: registration, changes, health, removal.

Names and urls are unique (UNIQUE constraints, and a check that names the clash before the
write); a service is removed only while no unfinished release has a task on it, the row locked
so that a release being created over it finishes first.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from release_coordinator.coordinator.models import (
    Event,
    HealthStatus,
    ServiceHealth,
    TaskService,
)
from release_coordinator.errors import ConflictError, NotFoundError
from release_coordinator.storage.base import service_in_use, updated_service
from release_coordinator.storage.sql.engine import _edge
from release_coordinator.storage.sql.events import _EventLog
from release_coordinator.storage.sql.releases import _FINAL
from release_coordinator.storage.sql.schema import releases, services, tasks


def _service(row: sa.Row[Any]) -> TaskService:
    return TaskService(
        id=row.id,
        name=row.name,
        url=row.url,
        enabled=bool(row.enabled),
        health=ServiceHealth(
            status=HealthStatus(row.health_status),
            consecutive_failures=row.health_failures,
            last_checked_at=row.health_checked_at,
            last_error=row.health_error,
            reported_name=row.health_name,
            reported_version=row.health_version,
            message=row.health_message,
        ),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _health_values(health: ServiceHealth) -> dict[str, Any]:
    return {
        "health_status": health.status.value,
        "health_failures": health.consecutive_failures,
        "health_checked_at": health.last_checked_at,
        "health_error": health.last_error,
        "health_name": health.reported_name,
        "health_version": health.reported_version,
        "health_message": health.message,
    }


class _Services(_EventLog):
    """The task services' part of :class:`~release_coordinator.storage.sql.SQLStore`."""

    async def _service_row(self, conn: AsyncConnection, service_id: str) -> sa.Row[Any]:
        row = await self._one(conn, sa.select(services).where(services.c.id == service_id))
        if row is None:
            raise NotFoundError("task service", service_id)
        return row

    async def _clash(self, conn: AsyncConnection, service_id: str, name: str, url: str) -> None:
        for column, value, what in ((services.c.name, name, "named"), (services.c.url, url, "at")):
            other = (
                await conn.execute(
                    sa.select(services.c.id).where(column == value, services.c.id != service_id)
                )
            ).scalar()
            if other is not None:
                raise ConflictError(f"a task service {what} {value!r} exists", id=other)

    @_edge
    async def add_service(self, service: TaskService, event: Event) -> TaskService:
        try:
            async with self._write() as conn:
                found = await self._one(
                    conn, sa.select(services.c.id).where(services.c.id == service.id)
                )
                if found is not None:
                    raise ConflictError(f"task service {service.id!r} exists", id=service.id)
                await self._clash(conn, service.id, service.name, service.url)
                await conn.execute(
                    sa.insert(services).values(
                        id=service.id,
                        name=service.name,
                        url=service.url,
                        enabled=service.enabled,
                        created_at=service.created_at,
                        updated_at=service.updated_at,
                        **_health_values(service.health),
                    )
                )
                await self._insert_events(conn, [event])
        except sa_exc.IntegrityError:  # a concurrent registration got there first
            raise ConflictError(
                f"a task service with the id {service.id!r}, the name {service.name!r} or the "
                f"url {service.url!r} exists",
                id=service.id,
            ) from None
        return service

    @_edge
    async def get_service(self, service_id: str) -> TaskService:
        async with self._read() as conn:
            return _service(await self._service_row(conn, service_id))

    @_edge
    async def list_services(self, *, enabled: bool | None = None) -> list[TaskService]:
        query = sa.select(services).order_by(services.c.seq)
        if enabled is not None:
            query = query.where(services.c.enabled == enabled)
        async with self._read() as conn:
            return [_service(row) for row in await conn.execute(query)]

    @_edge
    async def update_service(
        self,
        service_id: str,
        event: Event,
        *,
        name: str | None = None,
        url: str | None = None,
        enabled: bool | None = None,
    ) -> TaskService:
        try:
            async with self._write() as conn:
                current = _service(await self._service_row(conn, service_id))
                updated = updated_service(current, name, url, enabled)
                await self._clash(conn, service_id, updated.name, updated.url)
                await conn.execute(
                    sa.update(services)
                    .where(services.c.id == service_id)
                    .values(
                        name=updated.name,
                        url=updated.url,
                        enabled=updated.enabled,
                        updated_at=updated.updated_at,
                    )
                )
                await self._insert_events(conn, [event])
        except sa_exc.IntegrityError:
            raise ConflictError(
                f"another task service has the name {name!r} or the url {url!r}", id=service_id
            ) from None
        return updated

    @_edge
    async def record_health(
        self, service_id: str, health: ServiceHealth, event: Event | None = None
    ) -> TaskService:
        async with self._write() as conn:
            row = await self._one(
                conn,
                sa.update(services)
                .where(services.c.id == service_id)
                .values(**_health_values(health))
                .returning(*services.c),
            )
            if row is None:
                raise NotFoundError("task service", service_id)
            await self._insert_events(conn, [event])
            return _service(row)

    @_edge
    async def remove_service(self, service_id: str, event: Event) -> None:
        async with self._write() as conn:
            # Lock the row: a release being created over this service (FOR SHARE) finishes
            # first, and its tasks are then seen below.
            row = await self._one(
                conn,
                sa.select(services.c.id).where(services.c.id == service_id).with_for_update(),
            )
            if row is None:
                raise NotFoundError("task service", service_id)
            busy = (
                await conn.execute(
                    sa.select(tasks.c.release_id)
                    .join(releases, releases.c.id == tasks.c.release_id)
                    .where(tasks.c.service_id == service_id, releases.c.state.not_in(_FINAL))
                    .order_by(tasks.c.seq)
                    .limit(1)
                )
            ).scalar()
            if busy is not None:
                raise service_in_use(service_id, busy)
            await conn.execute(sa.delete(services).where(services.c.id == service_id))
            await self._insert_events(conn, [event])
