"""The Coordinator: drives data releases through every task service together.

For each release a *driver* (one asyncio task, holding the release's lease in the store) runs a
reconciliation loop: it reads the release and its tasks from the store, decides the next step
with the state machines of :mod:`release_coordinator.fsm.release`, sends the step's action to
every task service at once, and records the answers with compare-and-set transitions. Because
every decision is taken from stored state and every action is safe to repeat, a coordinator
created anew over a store that holds unfinished releases simply picks them up and finishes them.

Status arrives both ways the protocol allows: by polling (``get_status`` every
``poll_interval``) and by callbacks (:meth:`Coordinator.report_task_state`, which the HTTP layer
calls for ``PATCH /tasks/{id}``); a callback wakes the driver at once.

This module holds the :class:`Coordinator` itself: its construction, lifecycle, the operator's
release actions and queries, and the callbacks from task services. Its other jobs are parts it
is made of, one module each: :mod:`~release_coordinator.coordinator.services` (task services
and health checks), :mod:`~release_coordinator.coordinator.driver` (leases, the driver loop,
time limits), :mod:`~release_coordinator.coordinator.fanout` (one action to every task, retries),
:mod:`~release_coordinator.coordinator.plans` (what a report or answer does to a task),
:mod:`~release_coordinator.coordinator.notes` (release notes and studies) and
:mod:`~release_coordinator.coordinator.events` (the event log and its subscribers); the
configuration records are in :mod:`~release_coordinator.coordinator.config`, the time limits'
arithmetic in :mod:`~release_coordinator.coordinator.limits`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from datetime import datetime

import attrs

from release_coordinator.coordinator.config import CoordinatorConfig
from release_coordinator.coordinator.driver import DriverMixin
from release_coordinator.coordinator.events import Subscriber, new_event
from release_coordinator.coordinator.models import (
    Event,
    EventKind,
    EventType,
    Release,
    Task,
    new_id,
    utcnow,
)
from release_coordinator.coordinator.notes import NotesMixin
from release_coordinator.coordinator.plans import change_for_report, refused_report
from release_coordinator.coordinator.publish_gates import PublishGatesMixin, publish_gate
from release_coordinator.coordinator.services import ServicesMixin
from release_coordinator.coordinator.webhooks import WebhooksMixin
from release_coordinator.errors import (
    ConcurrentUpdateError,
    ConflictError,
    InvalidTransitionError,
    NotFoundError,
    ValidationError,
)
from release_coordinator.fsm.release import RELEASE_MACHINE, ReleaseState
from release_coordinator.schemas import MAX_TEXT
from release_coordinator.storage.base import _ALL, CoordinatorStore, EventFilter
from release_coordinator.storage.memory import MemoryStore
from release_coordinator.transports.base import TaskServiceTransport
from release_coordinator.transports.memory import MemoryTransport

__all__ = ["Coordinator"]

RS = ReleaseState
#: The states in which a repeated request is met already (it answers the release unchanged).
#: Seconds :meth:`Coordinator.close` lets its drivers finish the step they are in.
_CLOSE_GRACE = 2.0

_PUBLISH_DONE = frozenset({RS.PUBLISHING, RS.PUBLISHED})
_CANCEL_DONE = frozenset({RS.CANCELING, RS.CANCELED})


def _text_problems(field: str, values: tuple[object, ...]) -> list[tuple[str, str]]:
    """Problems with a list of short texts that travel to every task service."""
    problems = []
    for i, value in enumerate(values):
        if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
            problems.append((f"{field}[{i}]", f"must be a non-empty string of at most {MAX_TEXT}"))
        elif not value.isprintable():
            problems.append((f"{field}[{i}]", "must be printable text"))
        else:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                problems.append((f"{field}[{i}]", "must be valid Unicode text"))
    return problems


class Coordinator(ServicesMixin, DriverMixin, NotesMixin, WebhooksMixin, PublishGatesMixin):
    """Drives data releases across task services. Async; see :class:`SyncCoordinator` for a
    blocking facade.

    ``store`` defaults to a fresh :class:`~release_coordinator.storage.memory.MemoryStore` and
    ``transport`` to a fresh :class:`~release_coordinator.transports.memory.MemoryTransport`.
    Use it as an async context manager (``async with coordinator:``, or ``async with
    coordinator.running():`` in a host's lifespan; or call :meth:`start` and :meth:`close`):
    starting it resumes unfinished releases found in the store and starts its background loops
    (claiming unowned releases, health checks). :attr:`is_running` tells whether they run.
    """

    def __init__(
        self,
        store: CoordinatorStore | None = None,
        transport: TaskServiceTransport | None = None,
        *,
        config: CoordinatorConfig | None = None,
        owner: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store if store is not None else MemoryStore()
        self.transport = transport if transport is not None else MemoryTransport()
        self.config = config if config is not None else CoordinatorConfig()
        self.owner = owner or new_id("CO")
        self._rng = rng or random.Random()
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._changed = asyncio.Condition()
        self._background: list[asyncio.Task[None]] = []
        self._init_feed()  # the event log's subscribers (feeds.EventFeed)
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> Coordinator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def is_running(self) -> bool:
        """Whether :meth:`start` ran and :meth:`close` has not since: unfinished and unowned
        releases are claimed, health checks run."""
        return bool(self._background) and not self._closed

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Coordinator]:
        """``async with coordinator.running():`` runs the coordinator inside the block
        (:meth:`start` on entry, :meth:`close` on exit). A coordinator running already on
        entry is left running on exit: only what this block started is stopped (so that a
        host's lifespan and an app's can both use it)."""
        started = not self.is_running
        await self.start()
        try:
            yield self
        finally:
            if started:
                await self.close()

    async def start(self) -> None:
        """Resume unfinished releases (and keep claiming unowned ones), start health checks.
        Idempotent."""
        if self._background:
            return
        self._closed = False
        await self._claim_unowned()
        loop = asyncio.get_running_loop()
        self._background.append(loop.create_task(self._claim_loop(), name="rc-claim"))
        if self.config.health_interval > 0:
            self._background.append(loop.create_task(self._health_loop(), name="rc-health"))

    async def close(self) -> None:
        """Stop driving (releases stay where they are, for a later coordinator to resume).
        Idempotent; :meth:`start` starts it again."""
        self._closed = True
        driven = list(self._drivers)
        drivers = list(self._drivers.values())
        # Drivers stop between two steps: wake the pausing ones, and give the others a moment
        # to finish the step they are in. Cancelling one inside a store write could leave a
        # SQLite connection holding the database's lock; only those still busy after
        # _CLOSE_GRACE seconds (a slow task service, say) are cancelled.
        for wake in self._wake.values():
            wake.set()
        if drivers:
            await asyncio.wait(drivers, timeout=_CLOSE_GRACE)
        tasks = [*self._background, *drivers]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._background.clear()
        for release_id in driven:  # let another coordinator take them over at once
            await self.store.drop_lease(release_id, self.owner)
        self._drivers.clear()
        await asyncio.gather(*self._flushes, return_exceptions=True)
        await self._flush_events()

    # -- releases: user actions --------------------------------------------------------------
    async def create_release(
        self,
        name: str,
        *,
        description: str = "",
        studies: Iterable[str] = (),
        tags: Iterable[str] = (),
        author: str = "",
        is_major: bool = False,
        auto_publish: bool = False,
        cloned_from: str = "",
        required_approvals: int = 0,
        checks: Iterable[str] = (),
        publish_at: datetime | None = None,
    ) -> Release:
        """Create a release over every enabled task service and start driving it.

        It is staged on all of them and then waits in ``staged`` for :meth:`publish`, unless
        ``auto_publish`` asks to publish as soon as everything is staged. Its gates before
        publish (:mod:`~release_coordinator.coordinator.publish_gates`): it needs
        ``required_approvals`` approvals (:meth:`approve`) and a ``pass`` of each of
        ``checks`` (webhook ids), and is published at ``publish_at`` (by itself), not before.
        """
        studies, tags = tuple(studies), tuple(tags)
        problems = [("name", "must not be empty")] if not name.strip() else []
        problems += _text_problems("studies", studies) + _text_problems("tags", tags)
        if problems:
            raise ValidationError("invalid release", problems)
        gates = await self._gates_asked(required_approvals, checks, publish_at)
        services = await self.store.list_services(enabled=True)
        draft = Release(
            id=new_id("RE"),
            name=name,
            version="0.0.0",
            description=description,
            studies=studies,
            tags=tags,
            author=author,
            is_major=is_major,
            auto_publish=auto_publish,
            cloned_from=cloned_from,
            gates=gates,
        )
        release, _ = await self.store.create_release(
            draft,
            [s.id for s in services],
            new_event(
                EventKind.USER_ACTION,
                f"release {name!r} created over {len(services)} task service(s)"
                + (f" by {author}" if author else ""),
                release_id=draft.id,
            ),
        )
        self._events_written()
        await self._ensure_driver(release.id)
        return release

    async def publish(self, release_id: str) -> Release:
        """Request publication of a staged release.

        Refused with InvalidTransitionError unless the release is ``staged`` (already
        ``publishing`` or ``published`` returns it unchanged). A driver moving the release at
        the same moment (publishing it automatically, say) never makes it fail: the request is
        judged again against the state that won.
        """

        def allowed(release: Release) -> None:
            if release.state is not RS.STAGED:
                raise InvalidTransitionError(
                    "release",
                    release.state.value,
                    "publish",
                    subject=release_id,
                    hint="only a staged release can be published",
                )
            closed = publish_gate(release, utcnow())
            if closed is not None:
                raise ConflictError(
                    f"release {release_id} cannot be published yet: {closed}",
                    id=release_id,
                    gate=closed,
                )

        return await self._user_transition(
            release_id, "publish", _PUBLISH_DONE, allowed=allowed, detail=""
        )

    async def cancel(self, release_id: str, *, reason: str = "") -> Release:
        """Cancel a release at any non-final state; every task is told to cancel.

        Idempotent: canceling a release that is canceling or canceled returns it unchanged.
        A published or failed release cannot be canceled (InvalidTransitionError). A driver
        moving the release at the same moment never makes it fail: the request is judged
        again against the state that won, and once accepted the release ends ``canceled``
        (or ``failed``, when something had failed already).
        """

        def allowed(release: Release) -> None:
            RELEASE_MACHINE.next_state(release.state, "cancel", subject=release_id)

        return await self._user_transition(
            release_id,
            "cancel",
            _CANCEL_DONE,
            allowed=allowed,
            detail=f" ({reason})" if reason else "",
        )

    async def _user_transition(
        self,
        release_id: str,
        trigger: str,
        done: frozenset[ReleaseState],
        *,
        allowed: Callable[[Release], None],
        detail: str,
    ) -> Release:
        """A user's request to move a release on by ``trigger``, as a compare-and-set against
        the freshly read state, and again whenever a driver (or another user) moved the
        release in between: ``done`` states return the release unchanged (the request was
        met already), ``allowed`` raises when the fresh state refuses the request, and only
        then is it refused. The request's event is stored with the change it made."""
        # Every lost compare-and-set means the release moved on, and the release machine has
        # no cycle: after as many attempts as it has states the release is final (in
        # ``done`` or refused by ``allowed``).
        for _attempt in range(len(RELEASE_MACHINE.states) + 1):
            release = await self.store.get_release(release_id)
            if release.state in done:
                return release
            allowed(release)
            try:
                updated = await self._transition(release, trigger, user=True, detail=detail)
            except ConcurrentUpdateError:
                continue  # the release moved meanwhile: judge the request again
            await self._ensure_driver(release_id)
            return updated
        raise ConflictError(  # pragma: no cover - the release machine has no cycle
            f"release {release_id!r} keeps changing; ask for {trigger!r} again", id=release_id
        )

    async def run_again(self, release_id: str) -> Release:
        """A new release like a finished one (same name, scope, tags, approvals and checks
        required: not its scheduled time, which has passed), over today's services."""
        old = await self.store.get_release(release_id)
        if not old.is_final:
            raise ConflictError(
                f"release {release_id!r} is {old.state.value!r}; only a finished release runs "
                "again",
                id=release_id,
                state=old.state.value,
            )
        return await self.create_release(
            old.name,
            description=old.description,
            studies=old.studies,
            tags=old.tags,
            author=old.author,
            is_major=old.is_major,
            auto_publish=old.auto_publish,
            cloned_from=old.id,
            required_approvals=old.gates.required_approvals,
            checks=[c for c in old.gates.checks if c in await self._webhook_ids()],
        )

    async def _webhook_ids(self) -> set[str]:
        return {w.id for w in await self.store.list_webhooks()}

    async def update_release(
        self,
        release_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> Release:
        """Change a release's name, description or tags."""
        if name is not None and not name.strip():
            raise ValidationError("invalid release", [("name", "must not be empty")])
        updated = await self.store.update_release(
            release_id,
            new_event(EventKind.USER_ACTION, "release details updated", release_id=release_id),
            name=name,
            description=description,
            tags=tags,
        )
        self._events_written()
        return updated

    # -- releases: queries -------------------------------------------------------------------
    async def get_release(self, release_id: str) -> Release:
        return await self.store.get_release(release_id)

    async def list_releases(
        self,
        *,
        states: Collection[ReleaseState | str] | None = None,
        limit: int | None = None,
        offset: int = 0,
        study: str | None = None,
    ) -> list[Release]:
        """Releases, newest first; only those in ``states`` when given, and only those that
        name the study ``study`` when given."""
        wanted = None if states is None else {RS(s) for s in states}
        return await self.store.list_releases(
            states=wanted, limit=limit, offset=offset, study=study
        )

    async def list_tasks(self, release_id: str) -> list[Task]:
        return await self.store.list_tasks(release_id)

    async def get_task(self, task_id: str) -> Task:
        return await self.store.get_task(task_id)

    async def events(
        self,
        *,
        release_id: str | None = None,
        task_id: str | None = None,
        task_service_id: str | None = None,
        types: Collection[EventType] | None = None,
        kinds: Collection[EventKind] | None = None,
        after_id: int = 0,
        since: datetime | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Event]:
        """The event log, oldest first, filtered."""
        flt = EventFilter(release_id, task_id, task_service_id, types, kinds, after_id, since)
        return await self.store.list_events(flt, limit=limit, offset=offset)

    async def wait(
        self,
        release_id: str,
        states: Collection[ReleaseState | str] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline for the caller's convenience
    ) -> Release:
        """Wait until the release is in one of ``states`` (default: any final state).

        Raises TimeoutError after ``timeout`` seconds.
        """
        wanted = (
            frozenset(RELEASE_MACHINE.final) if states is None else frozenset(RS(s) for s in states)
        )

        async def until() -> Release:
            async with self._changed:
                while True:
                    release = await self.store.get_release(release_id)
                    if release.state in wanted:
                        return release
                    # Another process may drive it: look again now and then.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), 1.0)

        return await asyncio.wait_for(until(), timeout)

    # -- subscribers -------------------------------------------------------------------------
    async def subscribe(
        self, subscriber: Subscriber, *, filter: EventFilter | None = None
    ) -> Callable[[], None]:
        """Call ``subscriber`` with every event appended from now on (that matches
        ``filter``), in order; returns an unsubscribe function. A subscriber that raises is
        logged and kept. Events come from the store, so with a shared store a subscriber also
        sees what other coordinators log (delivered when this one next writes)."""
        last = await self._last_event_id()
        if not self._subscribers:
            self._events_seen = last
        start = attrs.evolve(filter or EventFilter(), after_id=max(last, (filter or _ALL).after_id))
        entry = (subscriber, start)
        self._subscribers.append(entry)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(entry)

        return unsubscribe

    # -- callbacks from task services --------------------------------------------------------
    async def report_task_state(
        self, task_id: str, release_id: str | None, state: str, progress: int | None = None
    ) -> Task:
        """Apply a task service's report (the ``PATCH /tasks/{id}`` callback).

        It goes through the task state machine like a polled status: a state the task can reach
        along the normal path is accepted (a callback may run ahead of an answer); ``failed``,
        ``rejected`` or an unexpected ``canceled`` fail the task and, with it, the release.
        Anything else (a state behind the task, one beyond what was sent, any report on a
        finished release) raises InvalidTransitionError and changes nothing.
        """
        for _attempt in range(5):
            task = await self.store.get_task(task_id)
            if release_id is not None and task.release_id != release_id:
                raise NotFoundError("task", f"{release_id}/{task_id}")
            release = await self.store.get_release(task.release_id)
            if release.is_final:
                raise refused_report(
                    task, state, f"release {release.id} is {release.state.value!r}"
                )
            change = change_for_report(release, task, state, progress, callback=True)
            if change is None:
                return task
            try:
                updated = await self.store.change_task(change)
            except ConcurrentUpdateError:
                continue  # a concurrent answer moved it: judge the report again
            self._events_written()
            self._poke(task.release_id)
            return updated
        raise ConflictError(f"task {task_id!r} keeps changing; report {state!r} again", id=task_id)
