"""The Coordinator's task services: registering, changing and removing them, and checking
their health (on request and in a background round every ``health_interval``).

:class:`ServicesMixin` is a part of :class:`~release_coordinator.coordinator.engine.Coordinator`.
"""

from __future__ import annotations

import asyncio

import attrs

from release_coordinator.coordinator.config import CoordinatorConfig
from release_coordinator.coordinator.events import EventsMixin, log, new_event
from release_coordinator.coordinator.models import (
    EventKind,
    EventType,
    HealthStatus,
    ServiceHealth,
    TaskService,
    new_id,
    utcnow,
)
from release_coordinator.coordinator.wire import ServiceStatus
from release_coordinator.errors import TransportError, ValidationError
from release_coordinator.transports._httpx import url_shown
from release_coordinator.transports.base import TaskServiceTransport

__all__ = ["ServicesMixin"]


def _healthy(status: ServiceStatus) -> ServiceHealth:
    """The health of a service that has just answered ``GET /status`` with ``status``."""
    return ServiceHealth(
        status=HealthStatus.OK,
        last_checked_at=utcnow(),
        reported_name=status.name,
        reported_version=status.version,
        message=status.message,
    )


class ServicesMixin(EventsMixin):
    """The registry of task services and their health checks."""

    transport: TaskServiceTransport
    config: CoordinatorConfig

    async def register_service(
        self, name: str, url: str, *, enabled: bool = True, check: bool = True
    ) -> TaskService:
        """Register a task service at ``url``.

        With ``check`` (the default) the service must answer ``GET /status`` with 200 and a
        name, or it is refused with a ValidationError that says what it answered.
        """
        problems = []
        if not name.strip():
            problems.append(("name", "must not be empty"))
        if not url.strip():
            problems.append(("url", "must not be empty"))
        elif (problem := self.transport.check_url(url)) is not None:
            problems.append(("url", problem))
        if problems:
            raise ValidationError("invalid task service", problems)
        service = TaskService(id=new_id("TS"), name=name, url=url, enabled=enabled)
        if check:
            try:
                status = await self.transport.status(service)
            except TransportError as error:
                raise ValidationError(
                    f"task service {name!r} is not answering GET /status",
                    [("url", error.message)],
                ) from None
            service = attrs.evolve(service, health=_healthy(status))
        stored = await self.store.add_service(
            service,
            new_event(
                EventKind.USER_ACTION,
                f"task service {name!r} registered at {url_shown(url)}",
                service=service,
            ),
        )
        self._events_written()
        return stored

    async def get_service(self, service_id: str) -> TaskService:
        return await self.store.get_service(service_id)

    async def list_services(self, *, enabled: bool | None = None) -> list[TaskService]:
        return await self.store.list_services(enabled=enabled)

    async def update_service(
        self, service_id: str, *, name: str | None = None, url: str | None = None
    ) -> TaskService:
        """Rename a task service or move it to another URL (takes effect for new requests)."""
        problems = []
        if name is not None and not name.strip():
            problems.append(("name", "must not be empty"))
        if url is not None and (problem := self.transport.check_url(url)) is not None:
            problems.append(("url", problem))
        if problems:
            raise ValidationError("invalid task service", problems)
        current = await self.store.get_service(service_id)
        shown = None if url is None else url_shown(url)
        changes = {k: v for k, v in (("name", name), ("url", shown)) if v is not None}
        updated = await self.store.update_service(
            service_id,
            new_event(EventKind.USER_ACTION, f"task service updated: {changes}", service=current),
            name=name,
            url=url,
        )
        self._events_written()
        return updated

    async def enable_service(self, service_id: str) -> TaskService:
        """Include the service in releases created from now on."""
        return await self._set_enabled(service_id, True)

    async def disable_service(self, service_id: str) -> TaskService:
        """Leave the service out of releases created from now on (running ones go on with it)."""
        return await self._set_enabled(service_id, False)

    async def _set_enabled(self, service_id: str, enabled: bool) -> TaskService:
        current = await self.store.get_service(service_id)
        word = "enabled" if enabled else "disabled"
        updated = await self.store.update_service(
            service_id,
            new_event(
                EventKind.USER_ACTION, f"task service {current.name!r} {word}", service=current
            ),
            enabled=enabled,
        )
        self._events_written()
        return updated

    async def remove_service(self, service_id: str) -> None:
        """Forget a task service. Refused (ConflictError) while an unfinished release uses it."""
        current = await self.store.get_service(service_id)
        await self.store.remove_service(
            service_id,
            new_event(
                EventKind.USER_ACTION, f"task service {current.name!r} removed", service=current
            ),
        )
        self._events_written()

    async def check_health(self, service_id: str) -> TaskService:
        """Ask one service ``GET /status`` now and record the result."""
        service = await self.store.get_service(service_id)
        return await self._check(service)

    async def _check(self, service: TaskService) -> TaskService:
        before = service.health
        try:
            status = await self.transport.status(service)
        except TransportError as error:
            failures = before.consecutive_failures + 1
            down = failures >= self.config.health_threshold
            health = attrs.evolve(
                before,
                status=HealthStatus.DOWN if down else before.status,
                consecutive_failures=failures,
                last_checked_at=utcnow(),
                last_error=error.message,
            )
        else:
            health = _healthy(status)
        event = None
        if health.status != before.status:
            bad = health.status is HealthStatus.DOWN
            event = new_event(
                EventKind.HEALTH,
                f"task service {service.name!r} is {health.status.value}"
                + (
                    f" after {health.consecutive_failures} failed checks: {health.last_error}"
                    if bad
                    else ""
                ),
                type=EventType.ERROR if bad else EventType.INFO,
                service=service,
            )
        updated = await self.store.record_health(service.id, health, event)
        if event is not None:
            self._events_written()
        return updated

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval)
            try:
                services = await self.store.list_services(enabled=True)
                await asyncio.gather(*(self._check(s) for s in services))
            except Exception:  # keep checking; the next round may succeed
                log.exception("health check round failed")
