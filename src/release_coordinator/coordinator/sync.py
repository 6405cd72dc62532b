"""A blocking facade over the async :class:`~release_coordinator.coordinator.Coordinator`.

For hosts that are not async (a Django view, a script, a Celery task): the coordinator runs in
an event loop on its own thread (an anyio blocking portal) and every method here waits for the
coroutine of the same name. There is no second copy of the logic::

    with SyncCoordinator(transport=transport) as coordinator:
        coordinator.register_service("search", "https://search.internal/release")
        release = coordinator.create_release("2026-11", studies=["SD_1"])
        coordinator.wait(release.id, ["staged"])
        coordinator.publish(release.id)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Coroutine, Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, ParamSpec, Self, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from release_coordinator.coordinator.config import CoordinatorConfig
from release_coordinator.coordinator.engine import Coordinator
from release_coordinator.coordinator.events import Subscriber
from release_coordinator.coordinator.models import (
    Event,
    EventKind,
    EventType,
    Release,
    ReleaseNote,
    Study,
    Task,
    TaskService,
)
from release_coordinator.coordinator.webhook_records import Webhook, WebhookDelivery
from release_coordinator.fsm.release import ReleaseState
from release_coordinator.storage.base import CoordinatorStore, EventFilter
from release_coordinator.transports.base import TaskServiceTransport

__all__ = ["SyncCoordinator"]

P = ParamSpec("P")
R = TypeVar("R")


class _BlockingFacade:
    """An event loop on a thread of its own (an anyio blocking portal) and the calls into it:
    the machinery of :class:`SyncCoordinator` and of
    :class:`~release_coordinator.rollout.sync.SyncRolloutManager`.

    A subclass calls :meth:`_open` in its constructor with a coroutine function that builds
    (and starts) what it wraps in the loop's thread, and implements :meth:`_shutdown`, which
    :meth:`close` awaits there before the thread ends.
    """

    _portal: BlockingPortal
    _portal_cm: AbstractContextManager[BlockingPortal] | None = None

    def _open(self, build: Callable[[], Coroutine[Any, Any, None]]) -> None:
        cm = start_blocking_portal(backend="asyncio")
        self._portal = cm.__enter__()
        self._portal_cm = cm
        try:
            self._portal.call(build)
        except BaseException:
            self._portal_cm = None
            cm.__exit__(None, None, None)
            raise

    async def _shutdown(self) -> None:
        """Stop what the facade wraps (in its event loop); :meth:`close` calls it once."""

    def _call(
        self, fn: Callable[P, Coroutine[Any, Any, R]], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        result: R = self._portal.call(functools.partial(fn, *args, **kwargs))
        return result

    def run(self, fn: Callable[[], Coroutine[Any, Any, R]]) -> R:
        """Run any coroutine function in the facade's event loop (wiring, tests)."""
        result: R = self._portal.call(fn)
        return result

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran (calls fail from then on)."""
        return self._portal_cm is None

    def close(self) -> None:
        """Stop what the facade wraps, and its thread. Idempotent."""
        if self._portal_cm is None:
            return
        try:
            self._portal.call(self._shutdown)
        finally:
            cm, self._portal_cm = self._portal_cm, None
            cm.__exit__(None, None, None)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncCoordinator(_BlockingFacade):
    """The :class:`Coordinator`, callable from synchronous code. Close it (or use ``with``)."""

    coordinator: Coordinator

    def __init__(
        self,
        store: CoordinatorStore | None = None,
        transport: TaskServiceTransport | None = None,
        *,
        config: CoordinatorConfig | None = None,
        owner: str | None = None,
    ) -> None:
        async def build() -> None:
            self.coordinator = Coordinator(store, transport, config=config, owner=owner)
            await self.coordinator.start()

        self._open(build)

    async def _shutdown(self) -> None:
        await self.coordinator.close()

    def close(self) -> None:
        """Stop the coordinator and its thread. Idempotent."""
        super().close()

    # -- the Coordinator's API, blocking -----------------------------------------------------
    def register_service(
        self, name: str, url: str, *, enabled: bool = True, check: bool = True
    ) -> TaskService:
        return self._call(
            self.coordinator.register_service, name, url, enabled=enabled, check=check
        )

    def get_service(self, service_id: str) -> TaskService:
        return self._call(self.coordinator.get_service, service_id)

    def list_services(self, *, enabled: bool | None = None) -> list[TaskService]:
        return self._call(self.coordinator.list_services, enabled=enabled)

    def update_service(
        self, service_id: str, *, name: str | None = None, url: str | None = None
    ) -> TaskService:
        return self._call(self.coordinator.update_service, service_id, name=name, url=url)

    def enable_service(self, service_id: str) -> TaskService:
        return self._call(self.coordinator.enable_service, service_id)

    def disable_service(self, service_id: str) -> TaskService:
        return self._call(self.coordinator.disable_service, service_id)

    def remove_service(self, service_id: str) -> None:
        self._call(self.coordinator.remove_service, service_id)

    def check_health(self, service_id: str) -> TaskService:
        return self._call(self.coordinator.check_health, service_id)

    def create_release(
        self,
        name: str,
        *,
        description: str = "",
        studies: Iterable[str] = (),
        tags: Iterable[str] = (),
        author: str = "",
        is_major: bool = False,
        auto_publish: bool = False,
        required_approvals: int = 0,
        checks: Iterable[str] = (),
        publish_at: datetime | None = None,
    ) -> Release:
        return self._call(
            self.coordinator.create_release,
            name,
            description=description,
            studies=tuple(studies),
            tags=tuple(tags),
            author=author,
            is_major=is_major,
            auto_publish=auto_publish,
            required_approvals=required_approvals,
            checks=tuple(checks),
            publish_at=publish_at,
        )

    def approve(self, release_id: str, *, by: str) -> Release:
        return self._call(self.coordinator.approve, release_id, by=by)

    def rerun_checks(self, release_id: str, *, by: str = "") -> Release:
        return self._call(self.coordinator.rerun_checks, release_id, by=by)

    # -- webhooks ------------------------------------------------------------------------------
    def add_webhook(self, url: str, **settings: Any) -> Webhook:
        """Subscribe ``url`` (the settings of ``Coordinator.add_webhook``)."""
        return self._call(self.coordinator.add_webhook, url, **settings)

    def get_webhook(self, webhook_id: str) -> Webhook:
        return self._call(self.coordinator.get_webhook, webhook_id)

    def list_webhooks(self, *, enabled: bool | None = None) -> list[Webhook]:
        return self._call(self.coordinator.list_webhooks, enabled=enabled)

    def update_webhook(self, webhook_id: str, **changes: Any) -> Webhook:
        return self._call(self.coordinator.update_webhook, webhook_id, **changes)

    def remove_webhook(self, webhook_id: str) -> None:
        self._call(self.coordinator.remove_webhook, webhook_id)

    def list_webhook_deliveries(
        self, webhook_id: str, *, limit: int | None = None, offset: int = 0
    ) -> list[WebhookDelivery]:
        return self._call(
            self.coordinator.list_webhook_deliveries, webhook_id, limit=limit, offset=offset
        )

    def publish(self, release_id: str) -> Release:
        return self._call(self.coordinator.publish, release_id)

    def cancel(self, release_id: str, *, reason: str = "") -> Release:
        return self._call(self.coordinator.cancel, release_id, reason=reason)

    def run_again(self, release_id: str) -> Release:
        return self._call(self.coordinator.run_again, release_id)

    def update_release(
        self,
        release_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> Release:
        return self._call(
            self.coordinator.update_release,
            release_id,
            name=name,
            description=description,
            tags=tags,
        )

    def get_release(self, release_id: str) -> Release:
        return self._call(self.coordinator.get_release, release_id)

    def list_releases(
        self,
        *,
        states: Collection[ReleaseState | str] | None = None,
        limit: int | None = None,
        offset: int = 0,
        study: str | None = None,
    ) -> list[Release]:
        return self._call(
            self.coordinator.list_releases, states=states, limit=limit, offset=offset, study=study
        )

    # -- release notes and studies -----------------------------------------------------------
    def add_note(
        self, release_id: str, text: str, *, study_id: str = "", author: str = ""
    ) -> ReleaseNote:
        return self._call(
            self.coordinator.add_note, release_id, text, study_id=study_id, author=author
        )

    def edit_note(self, note_id: str, text: str, *, editor: str = "") -> ReleaseNote:
        return self._call(self.coordinator.edit_note, note_id, text, editor=editor)

    def delete_note(self, note_id: str, *, by: str = "") -> None:
        self._call(self.coordinator.delete_note, note_id, by=by)

    def get_note(self, note_id: str) -> ReleaseNote:
        return self._call(self.coordinator.get_note, note_id)

    def list_notes(
        self,
        *,
        release_id: str | None = None,
        study_id: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ReleaseNote]:
        return self._call(
            self.coordinator.list_notes,
            release_id=release_id,
            study_id=study_id,
            limit=limit,
            offset=offset,
        )

    def get_study(self, study_id: str) -> Study:
        return self._call(self.coordinator.get_study, study_id)

    def list_studies(self, *, limit: int | None = None, offset: int = 0) -> list[Study]:
        return self._call(self.coordinator.list_studies, limit=limit, offset=offset)

    def list_tasks(self, release_id: str) -> list[Task]:
        return self._call(self.coordinator.list_tasks, release_id)

    def get_task(self, task_id: str) -> Task:
        return self._call(self.coordinator.get_task, task_id)

    def events(
        self,
        *,
        release_id: str | None = None,
        task_id: str | None = None,
        task_service_id: str | None = None,
        types: Collection[EventType] | None = None,
        kinds: Collection[EventKind] | None = None,
        after_id: int = 0,
        limit: int | None = None,
    ) -> list[Event]:
        return self._call(
            self.coordinator.events,
            release_id=release_id,
            task_id=task_id,
            task_service_id=task_service_id,
            types=types,
            kinds=kinds,
            after_id=after_id,
            limit=limit,
        )

    def wait(
        self,
        release_id: str,
        states: Collection[ReleaseState | str] | None = None,
        *,
        timeout: float | None = None,
    ) -> Release:
        return self._call(self.coordinator.wait, release_id, states, timeout=timeout)

    def subscribe(
        self, subscriber: Subscriber, *, filter: EventFilter | None = None
    ) -> Callable[[], None]:
        """Subscribe to events; ``subscriber`` is called in the coordinator's thread."""
        return self._call(self.coordinator.subscribe, subscriber, filter=filter)

    def report_task_state(
        self, task_id: str, release_id: str | None, state: str, progress: int | None = None
    ) -> Task:
        return self._call(self.coordinator.report_task_state, task_id, release_id, state, progress)
