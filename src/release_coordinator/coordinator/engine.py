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
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import random
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import attrs

from release_coordinator.coordinator.models import (
    _TASK_FINISHED,
    Event,
    EventKind,
    EventType,
    HealthStatus,
    Release,
    ServiceHealth,
    Task,
    TaskService,
    new_id,
    utcnow,
)
from release_coordinator.coordinator.wire import MAX_TEXT, TaskAction, TaskAnswer, TaskRequest
from release_coordinator.errors import (
    ConcurrentUpdateError,
    ConfigurationError,
    ConflictError,
    InvalidTransitionError,
    NotFoundError,
    PeerAnswerError,
    TransientTransportError,
    TransportError,
    ValidationError,
)
from release_coordinator.fsm.release import (
    RELEASE_MACHINE,
    TASK_MACHINE,
    ReleaseState,
    TaskState,
    task_state_behind,
    task_steps,
)
from release_coordinator.storage.base import (
    _ALL,
    CoordinatorStore,
    EventFilter,
    StepEvent,
    TaskChange,
    step_event,
)
from release_coordinator.storage.memory import MemoryStore
from release_coordinator.transports.base import TaskServiceTransport
from release_coordinator.transports.memory import MemoryTransport

__all__ = ["Coordinator", "CoordinatorConfig", "RetryPolicy", "Subscriber"]

log = logging.getLogger(__name__)

RS = ReleaseState
TS = TaskState

#: A subscriber gets every event of the log, in order; it may be sync or async.
Subscriber = Callable[[Event], Awaitable[None] | None]

#: The state a task service's reported state stands for on the normal path.
_REPORTED_TO_TASK = {
    "pending": TS.INITIALIZED,
    "running": TS.RUNNING,
    "staged": TS.STAGED,
    "publishing": TS.PUBLISHING,
    "published": TS.PUBLISHED,
}
_BAD_REPORTS = frozenset({"failed", "canceled", "rejected"})
_KNOWN_REPORTS = _BAD_REPORTS | frozenset(_REPORTED_TO_TASK)

#: Per release state: the task states the coordinator is waiting to see move on.
_WAITING_ON = {
    RS.INITIALIZING: frozenset({TS.WAITING}),
    RS.RUNNING: frozenset({TS.INITIALIZED, TS.RUNNING}),
    RS.PUBLISHING: frozenset({TS.STAGED, TS.PUBLISHING}),
    RS.CANCELING: frozenset(
        {TS.WAITING, TS.INITIALIZED, TS.RUNNING, TS.STAGED, TS.PUBLISHING, TS.PUBLISHED}
    ),
}


def _in_state(tasks: Iterable[Task], state: TaskState) -> list[Task]:
    """The tasks in ``state`` (an argument: ``TS.X`` in the filter itself would be an Enum
    member lookup per task, which is slow)."""
    return [t for t in tasks if t.state is state]


def _all_in_state(tasks: Iterable[Task], state: TaskState) -> bool:
    return all(t.state is state for t in tasks)


def _late_tasks(
    tasks: Iterable[Task], states: Collection[TaskState], now: datetime, limit: float
) -> list[Task]:
    """The tasks in ``states`` whose last progress is more than ``limit`` seconds before
    ``now``, i.e. ``(now - t.progress_at).total_seconds() > limit``, without the arithmetic
    per task: that is ``now - t.progress_at`` of at least ``least`` microseconds, the fewest
    whose seconds (as ``total_seconds`` computes them) exceed ``limit``."""
    if math.isfinite(limit) and 0 <= limit < 10**9:  # (else: the slow way, which is exact)
        least = math.floor(limit * 10**6)
        while least > 0 and (least - 1) / 10**6 > limit:
            least -= 1
        while not least / 10**6 > limit:
            least += 1
        cutoff = now - timedelta(microseconds=least)
        return [t for t in tasks if t.state in states and t.progress_at <= cutoff]
    return [t for t in tasks if t.state in states and (now - t.progress_at).total_seconds() > limit]


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ConfigurationError(f"{attribute.name} must be positive, not {value!r}")


def _not_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ConfigurationError(f"{attribute.name} must not be negative, not {value!r}")


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


@attrs.frozen
class RetryPolicy:
    """Retries of transient trouble (connection refused, time-out, 502/504).

    ``attempts`` counts every try (1 means no retry). The n-th retry waits
    ``min(max_delay, base_delay * 2 ** (n - 1))``, of which the fraction ``jitter`` is drawn at
    random, so that many coordinators do not retry in step. Real answers (400, 404, 500, 503)
    are never retried.
    """

    attempts: int = attrs.field(default=4, validator=_positive)
    base_delay: float = attrs.field(default=0.2, validator=_not_negative)
    max_delay: float = attrs.field(default=5.0, validator=_not_negative)
    jitter: float = attrs.field(default=0.5)

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError(f"jitter must be within 0..1, not {self.jitter!r}")

    def delay(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (retry - 1))
        return float(ceiling * (1 - self.jitter) + rng.uniform(0, ceiling * self.jitter))


@attrs.frozen
class CoordinatorConfig:
    """How a :class:`Coordinator` paces and bounds its work (seconds throughout).

    - ``poll_interval``: between two ``get_status`` rounds while tasks stage or publish;
    - ``phase_timeout``: a task the coordinator waits on that shows no progress (no new state,
      no new progress figure) for this long fails, and with it the release;
    - ``release_timeout``: a release that stays in one active state (initializing, running,
      publishing, canceling) for this long fails; ``staged`` waits for a publish request
      without limit;
    - ``health_interval``: between two health-check rounds (``0`` turns them off);
      ``health_threshold`` consecutive failures report a service ``down``;
    - ``lease_seconds``: how long a claim on a release lasts without renewal (several
      coordinators over one store); ``claim_interval``: how often unowned releases are looked for.
    """

    poll_interval: float = attrs.field(default=5.0, validator=_not_negative)
    retry: RetryPolicy = RetryPolicy()
    phase_timeout: float = attrs.field(default=3600.0, validator=_positive)
    release_timeout: float = attrs.field(default=6 * 3600.0, validator=_positive)
    health_interval: float = attrs.field(default=60.0, validator=_not_negative)
    health_threshold: int = attrs.field(default=3, validator=_positive)
    lease_seconds: float = attrs.field(default=30.0, validator=_positive)
    claim_interval: float = attrs.field(default=5.0, validator=_positive)


class _Plan(NamedTuple):
    """How a report changes a task, whatever its ids and figures (see ``_report_plan``).

    ``to_state`` ``None`` is a progress report (a change only if the figure is new); ``steps``
    are the states passed through, each with its event's type and the end of its message;
    ``message`` is written to the task; ``with_progress`` says whether the reported progress
    is written too.
    """

    to_state: TaskState | None
    from_states: frozenset[TaskState]
    #: Per state passed through: its event's type, the end of its message, the state's value.
    steps: tuple[tuple[EventType, str, str], ...]
    message: str | None
    with_progress: bool
    #: The same, unpacked, for a plan of exactly one step (the common case), else None.
    single: _Single | None


_Single = tuple[frozenset[TaskState], TaskState, EventType, str, str, str | None, bool]


def _plan(
    to_state: TaskState | None,
    from_state: TaskState,
    steps: Iterable[tuple[TaskState, EventType, str]],
    message: str | None = None,
    with_progress: bool = True,
) -> _Plan:
    """A plan; ``steps`` are (state, event type, detail after the state in the message)."""
    from_states = _FROM[from_state]
    events = tuple(
        (type, f" is {state.value}{detail}", state.value) for state, type, detail in steps
    )
    single = None
    if to_state is not None and len(events) == 1:
        type, suffix, value = events[0]
        single = (from_states, to_state, type, suffix, value, message, with_progress)
    return _Plan(to_state, from_states, events, message, with_progress, single)


#: The compare-and-set expectation of a change from each state (shared: they never change).
_FROM = {state: frozenset({state}) for state in TaskState}


#: Decided plans for answers: (task state, reported state, release state, action) -> plan.
_ANSWER_PLANS: dict[tuple[TaskState, str, ReleaseState, TaskAction], _Plan | None] = {}
_UNDECIDED = _Plan(None, frozenset(), (), "undecided", False, None)
_NO_SINGLE: _Single = (frozenset(), TaskState.WAITING, EventType.INFO, "", "", None, False)


@attrs.frozen
class _Outcome:
    """What one request to one task service ended with."""

    task: Task
    service: TaskService
    answer: TaskAnswer | None = None
    error: TransportError | None = None
    attempts: int = 1


class Coordinator:
    """Drives data releases across task services. Async; see :class:`SyncCoordinator` for a
    blocking facade.

    ``store`` defaults to a fresh :class:`~release_coordinator.storage.memory.MemoryStore` and
    ``transport`` to a fresh :class:`~release_coordinator.transports.memory.MemoryTransport`.
    Use it as an async context manager (or call :meth:`start` and :meth:`close`): starting it
    resumes unfinished releases found in the store and starts the health checks.
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
        self._subscribers: list[tuple[Subscriber, EventFilter]] = []
        self._events_seen = 0
        self._flush_scheduled = False
        self._flush_lock = asyncio.Lock()
        self._flushes: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> Coordinator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Resume unfinished releases (and keep claiming unowned ones), start health checks."""
        if self._background:
            return
        self._closed = False
        await self._claim_unowned()
        loop = asyncio.get_running_loop()
        self._background.append(loop.create_task(self._claim_loop(), name="rc-claim"))
        if self.config.health_interval > 0:
            self._background.append(loop.create_task(self._health_loop(), name="rc-health"))

    async def close(self) -> None:
        """Stop driving (releases stay where they are, for a later coordinator to resume)."""
        self._closed = True
        driven = list(self._drivers)
        tasks = [*self._background, *self._drivers.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._background.clear()
        for release_id in driven:  # let another coordinator take them over at once
            await self.store.drop_lease(release_id, self.owner)
        self._drivers.clear()
        await asyncio.gather(*self._flushes, return_exceptions=True)
        await self._flush_events()

    # -- task services -----------------------------------------------------------------------
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
            service = attrs.evolve(
                service,
                health=ServiceHealth(
                    status=HealthStatus.OK,
                    last_checked_at=utcnow(),
                    reported_name=status.name,
                    reported_version=status.version,
                    message=status.message,
                ),
            )
        stored = await self.store.add_service(
            service,
            self._event(
                EventKind.USER_ACTION,
                f"task service {name!r} registered at {url}",
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
        changes = {k: v for k, v in (("name", name), ("url", url)) if v is not None}
        updated = await self.store.update_service(
            service_id,
            self._event(EventKind.USER_ACTION, f"task service updated: {changes}", service=current),
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
            self._event(
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
            self._event(
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
            health = ServiceHealth(
                status=HealthStatus.OK,
                last_checked_at=utcnow(),
                reported_name=status.name,
                reported_version=status.version,
                message=status.message,
            )
        event = None
        if health.status != before.status:
            bad = health.status is HealthStatus.DOWN
            event = self._event(
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
    ) -> Release:
        """Create a release over every enabled task service and start driving it.

        It is staged on all of them and then waits in ``staged`` for :meth:`publish`, unless
        ``auto_publish`` asks to publish as soon as everything is staged.
        """
        studies, tags = tuple(studies), tuple(tags)
        problems = [("name", "must not be empty")] if not name.strip() else []
        problems += _text_problems("studies", studies) + _text_problems("tags", tags)
        if problems:
            raise ValidationError("invalid release", problems)
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
        )
        release, _ = await self.store.create_release(
            draft,
            [s.id for s in services],
            self._event(
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
        ``publishing`` or ``published`` returns it unchanged).
        """
        release = await self.store.get_release(release_id)
        if release.state in (RS.PUBLISHING, RS.PUBLISHED):
            return release
        if release.state is not RS.STAGED:
            raise InvalidTransitionError(
                "release",
                release.state,
                "publish",
                subject=release_id,
                hint="only a staged release can be published",
            )
        release = await self._transition(release, "publish", user=True)
        await self._ensure_driver(release_id)
        return release

    async def cancel(self, release_id: str, *, reason: str = "") -> Release:
        """Cancel a release at any non-final state; every task is told to cancel.

        Idempotent: canceling a release that is canceling or canceled returns it unchanged.
        A published or failed release cannot be canceled (InvalidTransitionError).
        """
        release = await self.store.get_release(release_id)
        if release.state in (RS.CANCELING, RS.CANCELED):
            return release
        RELEASE_MACHINE.next_state(release.state, "cancel", subject=release_id)
        release = await self._transition(
            release, "cancel", user=True, detail=f" ({reason})" if reason else ""
        )
        await self._ensure_driver(release_id)
        return release

    async def run_again(self, release_id: str) -> Release:
        """A new release like a finished one (same name, scope, tags...), over today's services."""
        old = await self.store.get_release(release_id)
        if not old.is_final:
            raise ConflictError(
                f"release {release_id!r} is {old.state}; only a finished release runs again",
                id=release_id,
                state=old.state,
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
        )

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
            self._event(EventKind.USER_ACTION, "release details updated", release_id=release_id),
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
    ) -> list[Release]:
        """Releases, newest first; only those in ``states`` when given."""
        wanted = None if states is None else {RS(s) for s in states}
        return await self.store.list_releases(states=wanted, limit=limit, offset=offset)

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

    async def _last_event_id(self) -> int:
        return await self.store.last_event_id()

    def _events_written(self) -> None:
        if not self._subscribers or self._flush_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no running loop: flushed on the next write
            return
        self._flush_scheduled = True
        flush = loop.create_task(self._flush_events())
        self._flushes.add(flush)  # asyncio keeps only weak references to tasks
        flush.add_done_callback(self._flushes.discard)

    async def _flush_events(self) -> None:
        # One flush at a time, each starting where the last one ended: a subscriber that
        # awaits must not see an event twice or out of order.
        async with self._flush_lock:
            self._flush_scheduled = False
            if not self._subscribers:
                return
            events = await self.store.list_events(EventFilter(after_id=self._events_seen))
            if events:
                self._events_seen = events[-1].id
            await self._deliver(events)

    async def _deliver(self, events: list[Event]) -> None:
        for event in events:
            for subscriber, flt in list(self._subscribers):
                if not flt.matches(event):
                    continue
                try:
                    result = subscriber(event)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("event subscriber %r failed", subscriber)

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
                raise InvalidTransitionError(
                    "task",
                    task.state,
                    f"report {state}",
                    subject=task_id,
                    hint=f"release {release.id} is {release.state}",
                )
            change = self._change_for_report(release, task, state, progress, callback=True)
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

    # -- driving -----------------------------------------------------------------------------
    async def _ensure_driver(self, release_id: str) -> None:
        if self._closed:
            return
        driver = self._drivers.get(release_id)
        if driver is not None and not driver.done():
            self._poke(release_id)
            return
        if await self.store.claim_release(release_id, self.owner, self.config.lease_seconds):
            self._spawn(release_id)

    def _spawn(self, release_id: str) -> None:
        self._wake.setdefault(release_id, asyncio.Event())
        self._drivers[release_id] = asyncio.get_running_loop().create_task(
            self._drive(release_id), name=f"rc-drive-{release_id}"
        )

    def _poke(self, release_id: str) -> None:
        wake = self._wake.get(release_id)
        if wake is not None:
            wake.set()

    async def _claim_unowned(self) -> None:
        claimed = await self.store.claim_releases(self.owner, self.config.lease_seconds)
        for release in claimed:
            driver = self._drivers.get(release.id)
            if driver is None or driver.done():
                if release.state not in (RS.WAITING,):
                    log.info("resuming release %s (%s)", release.id, release.state)
                self._spawn(release.id)

    async def _claim_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.claim_interval)
            try:
                await self._claim_unowned()
            except Exception:
                log.exception("claiming releases failed")

    async def _drive(self, release_id: str) -> None:
        try:
            while True:
                renewed = await self.store.renew_lease(
                    release_id, self.owner, self.config.lease_seconds
                )
                release = await self.store.get_release(release_id)
                if release.is_final:
                    return
                if not renewed:
                    log.warning(
                        "lost the lease on release %s; another coordinator has it", release_id
                    )
                    return
                tasks = await self.store.list_tasks(release_id)
                pause = await self._step(release, tasks)
                self._events_written()
                async with self._changed:
                    self._changed.notify_all()
                if pause:
                    await self._pause(release_id, pause)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Stored state is consistent (every change is a compare-and-set); the claim loop
            # picks the release up again.
            log.exception("driving release %s failed; it will be resumed", release_id)
        finally:
            self._drivers.pop(release_id, None)
            if not self._closed:
                with contextlib.suppress(Exception):
                    await self.store.drop_lease(release_id, self.owner)
            async with self._changed:
                self._changed.notify_all()

    async def _pause(self, release_id: str, seconds: float) -> None:
        wake = self._wake.setdefault(release_id, asyncio.Event())
        # Wake up in time to renew the lease even when nothing happens.
        limit = min(seconds, self.config.lease_seconds / 3)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), limit)
        wake.clear()

    async def _step(self, release: Release, tasks: list[Task]) -> float:
        """One decision for a release; returns how long to pause before the next (0: none)."""
        state = release.state
        now = utcnow()
        if state is not RS.CANCELING:
            finished = [t for t in tasks if t.state in _TASK_FINISHED]
            if finished:
                bad = finished[0]
                await self._transition(
                    release,
                    "cancel",
                    failure=f"task {bad.id} on {bad.service_id} is {bad.state}"
                    + (f": {bad.message}" if bad.message else ""),
                )
                return 0
        if (timed_out := await self._enforce_time_limits(release, tasks, now)) is not None:
            return timed_out

        if state is RS.WAITING:
            if not tasks:
                await self._transition(release, "stage", detail=" (no enabled task service)")
            else:
                await self._transition(release, "initialize")
            return 0
        if state is RS.INITIALIZING:
            todo = _in_state(tasks, TS.WAITING)
            if not todo:
                await self._transition(release, "start")
                return 0
            return await self._fan_out(release, todo, TaskAction.INITIALIZE)
        if state is RS.RUNNING:
            todo = _in_state(tasks, TS.INITIALIZED)
            if todo:
                return await self._fan_out(release, todo, TaskAction.START, pause=0)
            if _all_in_state(tasks, TS.STAGED):
                await self._transition(release, "stage")
                return 0
            polled = _in_state(tasks, TS.RUNNING)
            return await self._fan_out(release, polled, TaskAction.GET_STATUS)
        if state is RS.STAGED:
            if release.auto_publish:
                await self._transition(release, "publish", detail=" (automatic)")
                return 0
            return self.config.lease_seconds  # wait for publish() to wake us
        if state is RS.PUBLISHING:
            todo = _in_state(tasks, TS.STAGED)
            if todo:
                return await self._fan_out(release, todo, TaskAction.PUBLISH, pause=0)
            if _all_in_state(tasks, TS.PUBLISHED):
                await self._transition(release, "complete")
                return 0
            polled = _in_state(tasks, TS.PUBLISHING)
            return await self._fan_out(release, polled, TaskAction.GET_STATUS)
        if state is RS.CANCELING:
            todo = [t for t in tasks if not t.is_finished]
            if todo:
                return await self._fan_out(release, todo, TaskAction.CANCEL, pause=0)
            await self._transition(release, "fail" if release.failure else "finish_cancel")
            return 0
        raise AssertionError(f"no step for release state {state}")  # pragma: no cover

    async def _enforce_time_limits(
        self, release: Release, tasks: list[Task], now: datetime
    ) -> float | None:
        waiting_on = _WAITING_ON.get(release.state)
        if waiting_on is None:
            return None
        age = (now - release.state_changed_at).total_seconds()
        if age > self.config.release_timeout:
            limit = self.config.release_timeout
            why = f"release stayed {release.state} for {age:.1f}s (limit {limit:g}s)"
            if release.state is RS.CANCELING:
                await self._transition(
                    release, "fail", failure=release.failure or why, detail=f": {why}"
                )
            else:
                await self._transition(release, "cancel", failure=why)
            return 0
        late = _late_tasks(tasks, waiting_on, now, self.config.phase_timeout)
        if not late:
            return None
        changes = [
            self._task_change(
                release,
                t,
                "fail",
                message=f"no progress for {self.config.phase_timeout:g}s "
                f"while the release is {release.state}",
                type=EventType.ERROR,
            )
            for t in late
        ]
        await self.store.change_tasks(changes)
        return 0

    # -- fan-out -----------------------------------------------------------------------------
    async def _fan_out(
        self, release: Release, tasks: list[Task], action: TaskAction, *, pause: float | None = None
    ) -> float:
        """Send ``action`` to every task's service at once and record the answers.

        Returns the pause before the next step: ``pause`` if given, else the poll interval when
        no task moved (nothing to do but wait), else 0.
        """
        services = {s.id: s for s in await self.store.list_services()}
        release_id, studies = release.id, release.studies
        calls = [
            (services[t.service_id], TaskRequest(action, t.id, release_id, studies)) for t in tasks
        ]
        # First attempt for everyone in one concurrent batch; then only the transient failures
        # are retried (concurrently, each with its own backoff).
        first = await self.transport.send_many(calls)
        if len(first) != len(tasks):
            raise ValueError(f"{len(tasks)} requests sent, {len(first)} results received")
        answers = [r for r in first if isinstance(r, TaskAnswer)]
        if len(answers) == len(first):  # the common case: every service answered
            del calls, first  # (not needed any more: fewer live objects for the collector)
            # One pass over the answers, every event of the batch dated alike.
            now = utcnow()
            uniform = self._moves_for_answers(release, tasks, answers, action, now)
            if uniform is not None:  # ... all making the same move: one batch of it
                del answers
                from_state, to_state, message, moves, event = uniform
                done = await self.store.move_tasks(
                    from_state, to_state, moves, event, message=message
                )
                self._events_written()
                if pause is not None:
                    return pause
                if any(not isinstance(r, ConcurrentUpdateError) for r in done):
                    return 0
                return self._poll_pause(release, tasks)
            found = self._changes_for_answers(release, tasks, answers, action, now)
            del answers
        else:
            troubled = [i for i, result in enumerate(first) if not isinstance(result, TaskAnswer)]
            settled = await asyncio.gather(
                *(self._settle(release, tasks[i], *calls[i], first[i]) for i in troubled)
            )
            now = utcnow()  # (every event of the batch dated alike)
            outcomes = dict(zip(troubled, settled, strict=True))
            found = []
            for i, (task, result) in enumerate(zip(tasks, first, strict=True)):
                if isinstance(result, TaskAnswer):
                    found += self._changes_for_answers(release, [task], [result], action, now)
                elif (outcome := outcomes[i]) is not None:
                    found.append(self._change_for_outcome(release, outcome, action, at=now))
        changes = [change for change in found if change is not None]
        results = await self.store.change_tasks(changes) if changes else []
        self._events_written()
        moved = any(
            not isinstance(r, ConcurrentUpdateError) and c.to_state is not None
            for c, r in zip(changes, results, strict=True)
        )
        if pause is not None:
            return pause
        return 0 if moved else self._poll_pause(release, tasks)

    def _poll_pause(self, release: Release, tasks: list[Task]) -> float:
        """The poll interval, cut short when a time limit runs out earlier."""
        now = utcnow()
        limits = [self.config.phase_timeout - (now - t.progress_at).total_seconds() for t in tasks]
        limits.append(
            self.config.release_timeout - (now - release.state_changed_at).total_seconds()
        )
        return max(0.0, min(self.config.poll_interval, *(x + 0.01 for x in limits)))

    async def _settle(
        self,
        release: Release,
        task: Task,
        service: TaskService,
        request: TaskRequest,
        result: TaskAnswer | TransportError,
    ) -> _Outcome | None:
        """Turn a first attempt's result into an outcome, retrying transient trouble.

        ``None`` when a retry is abandoned because the release moved on meanwhile (canceled,
        say): the task is left as it is, for the release's new phase to deal with.
        """
        attempts = self.config.retry.attempts
        attempt = 1
        while True:
            if isinstance(result, TaskAnswer):
                return _Outcome(task, service, answer=result, attempts=attempt)
            transient = isinstance(result, TransientTransportError)
            last = not transient or attempt == attempts
            if transient:
                counted = f" (attempt {attempt} of {attempts}{'' if last else ', will retry'})"
            else:
                counted = ""
            await self.store.append_events(
                [
                    self._event(
                        EventKind.REQUEST_ERROR,
                        f"{request.action.value!r} to {service.name!r} failed{counted}: "
                        f"{result.message}",
                        type=EventType.ERROR if last else EventType.WARNING,
                        release_id=release.id,
                        task_id=task.id,
                        service=service,
                    )
                ]
            )
            self._events_written()
            if last:
                return _Outcome(task, service, error=result, attempts=attempt)
            await asyncio.sleep(self.config.retry.delay(attempt, self._rng))
            current = await self.store.get_release(release.id)
            if current.state is not release.state:
                await self.store.append_events(
                    [
                        self._event(
                            EventKind.REQUEST_ERROR,
                            f"{request.action.value!r} to {service.name!r} not retried: the "
                            f"release is {current.state.value} now",
                            release_id=release.id,
                            task_id=task.id,
                            service=service,
                        )
                    ]
                )
                self._events_written()
                return None
            attempt += 1
            try:
                result = await self.transport.send(service, request)
            except TransportError as error:
                result = error

    def _change_for_outcome(
        self, release: Release, outcome: _Outcome, action: TaskAction, *, at: datetime
    ) -> TaskChange | None:
        task = outcome.task
        error = outcome.error
        if error is not None:
            if (
                action is TaskAction.CANCEL
                and isinstance(error, PeerAnswerError)
                and (error.status_code == 404)
            ):
                return self._task_change(
                    release,
                    task,
                    "cancel",
                    message="the service does not know it: nothing to cancel",
                    at=at,
                )
            trigger = "reject" if action is TaskAction.INITIALIZE else "fail"
            why = error.message
            if isinstance(error, TransientTransportError) and outcome.attempts > 1:
                why = f"{why} (gave up after {outcome.attempts} attempts)"
            return self._task_change(
                release, task, trigger, message=why, type=EventType.ERROR, at=at
            )
        assert outcome.answer is not None
        return self._changes_for_answers(release, [task], [outcome.answer], action, at)[0]

    def _changes_for_answers(
        self,
        release: Release,
        tasks: Sequence[Task],
        answers: Sequence[TaskAnswer],
        action: TaskAction,
        at: datetime,
    ) -> list[TaskChange | None]:
        """The change each answer calls for (``None``: none), in order; events are dated ``at``.

        The hot path of every fan-out: what an answer does to a task depends only on the task's
        state, the reported state, the release's state and the action, so it is decided once
        per such combination (:meth:`_answer_plan`) and only applied per answer.
        """
        plans = _ANSWER_PLANS
        release_id = release.id
        release_state = release.state
        check_ids = action is not TaskAction.CANCEL  # (cancel is judged by its state alone)
        changes: list[TaskChange | None] = []
        append = changes.append
        # The plan of the previous answer, and its single step unpacked: most answers of a
        # batch report the same for tasks in the same state.
        plan: _Plan | None = _UNDECIDED
        last_state: TaskState | None = None
        last_reported = ""
        single: _Single | None = None
        from_states, to_state, type_, suffix, value, message, with_progress = _NO_SINGLE
        for task, answer in zip(tasks, answers, strict=True):
            task_id = task.id
            if check_ids and (answer.task_id != task_id or answer.release_id != release_id):
                append(
                    self._task_change(
                        release,
                        task,
                        "reject" if action is TaskAction.INITIALIZE else "fail",
                        type=EventType.ERROR,
                        message=f"the service answered for task {answer.task_id!r} of release "
                        f"{answer.release_id!r}",
                        at=at,
                    )
                )
                continue
            state, reported = task.state, answer.state
            if state is not last_state or reported != last_reported or plan is _UNDECIDED:
                plan = plans.get((state, reported, release_state, action), _UNDECIDED)
                if plan is _UNDECIDED:
                    plan = self._cached_answer_plan(release, task, reported, action)
                last_state, last_reported = state, reported
                single = None if plan is None else plan.single
                if single is not None:
                    from_states, to_state, type_, suffix, value, message, with_progress = single
            if single is not None:  # the common case, inline
                event = step_event(type_, suffix, value, release_id, task_id, task.service_id, at)
                append(
                    TaskChange(
                        task_id,
                        from_states,
                        to_state,
                        (event,),
                        answer.progress if with_progress else None,
                        message,
                    )
                )
            elif plan is None:
                append(None)
            else:
                append(self._apply_plan(plan, release, task, answer.progress, at))
        return changes

    def _moves_for_answers(
        self,
        release: Release,
        tasks: Sequence[Task],
        answers: Sequence[TaskAnswer],
        action: TaskAction,
        at: datetime,
    ) -> tuple[TaskState, TaskState, str | None, list[tuple[Task, int | None]], StepEvent] | None:
        """When every answer moves its task the same one step (the common case): the move,
        ``(from_state, to_state, message, moves, event)``, for
        :meth:`CoordinatorStore.move_tasks`, making the changes :meth:`_changes_for_answers`
        would; else None."""
        if not tasks:
            return None
        state, reported = tasks[0].state, answers[0].state
        plan = self._cached_answer_plan(release, tasks[0], reported, action)
        if plan is None or plan.single is None:
            return None
        _, to_state, type_, suffix, value, message, with_progress = plan.single
        release_id = release.id
        check_ids = action is not TaskAction.CANCEL  # (cancel is judged by its state alone)
        moves: list[tuple[Task, int | None]] = []
        append = moves.append
        for task, answer in zip(tasks, answers, strict=True):
            if (
                task.state is not state
                or answer.state != reported
                or (check_ids and (answer.task_id != task.id or answer.release_id != release_id))
            ):
                return None  # not all alike: the general way
            append((task, answer.progress if with_progress else None))
        return state, to_state, message, moves, StepEvent(type_, suffix, value, release_id, at)

    def _cached_answer_plan(
        self, release: Release, task: Task, reported: str, action: TaskAction
    ) -> _Plan | None:
        """:meth:`_answer_plan`, decided once per (task state, report, release state, action)."""
        key = (task.state, reported, release.state, action)
        plan = _ANSWER_PLANS.get(key, _UNDECIDED)
        if plan is _UNDECIDED:
            plan = self._answer_plan(release, task, reported, action)
            if reported in _KNOWN_REPORTS:  # (the cache stays small whatever comes)
                _ANSWER_PLANS[key] = plan
        return plan

    def _answer_plan(
        self, release: Release, task: Task, reported: str, action: TaskAction
    ) -> _Plan | None:
        """What an answer reporting ``reported`` to ``action`` does to ``task`` (ids checked)."""
        if action is TaskAction.CANCEL:
            if reported == "canceled":
                return self._trigger_plan(task, "cancel")
            return self._trigger_plan(
                task,
                "fail",
                type=EventType.ERROR,
                message=f"the service answered 'cancel' with {reported!r}",
                with_progress=False,
            )
        return self._report_plan(release, task, reported, callback=False, action=action)

    def _change_for_report(
        self,
        release: Release,
        task: Task,
        reported: str,
        progress: int | None,
        *,
        callback: bool,
        action: TaskAction | None = None,
    ) -> TaskChange | None:
        """The change a reported state calls for; ``None`` when it changes nothing.

        For callbacks an impossible report raises InvalidTransitionError; for answers, which
        may arrive late, a report behind the task is ignored.
        """
        plan = self._report_plan(release, task, reported, callback=callback, action=action)
        return self._apply_plan(plan, release, task, progress, utcnow())

    def _report_plan(
        self,
        release: Release,
        task: Task,
        reported: str,
        *,
        callback: bool,
        action: TaskAction | None = None,
    ) -> _Plan | None:
        """The decision of :meth:`_change_for_report`. It depends on the states only (the
        ids go into the errors raised for callbacks), so that answers can share it."""
        source = "callback" if callback else f"answer to {action.value!r}" if action else "report"
        if reported in _BAD_REPORTS:
            if task.is_finished:
                return None
            if reported == "canceled" and release.state is RS.CANCELING:
                return self._trigger_plan(task, "cancel")
            trigger = "reject" if (reported == "rejected" and task.state is TS.WAITING) else "fail"
            return self._trigger_plan(
                task,
                trigger,
                type=EventType.ERROR,
                message=f"the service reported {reported!r} ({source})",
            )
        target = _REPORTED_TO_TASK.get(reported)
        if target is None or task.is_finished or release.state is RS.CANCELING:
            if callback:
                raise InvalidTransitionError(
                    "task",
                    task.state,
                    f"report {reported}",
                    subject=task.id,
                    hint="the task is finished"
                    if task.is_finished
                    else (f"release {release.id} is {release.state}"),
                )
            return None
        steps = task_steps(task.state, target, release.state)
        if steps is None:
            if not callback and task_state_behind(target, task.state):
                return None  # a late answer: the task has moved on already
            if callback:
                raise InvalidTransitionError(
                    "task",
                    task.state,
                    f"report {reported}",
                    subject=task.id,
                    hint=f"{reported!r} is not reachable from {task.state!r} while release "
                    f"{release.id} is {release.state}",
                )
            return self._trigger_plan(
                task,
                "reject" if task.state is TS.WAITING else "fail",
                type=EventType.ERROR,
                message=f"the service reported {reported!r}, which a {task.state} task "
                f"cannot reach ({source})",
            )
        if not steps:  # a progress report, if the figure is new
            return _plan(None, task.state, ())
        detail = f" ({source})"
        return _plan(
            steps[-1][1], task.state, ((state, EventType.INFO, detail) for _, state in steps)
        )

    def _trigger_plan(
        self,
        task: Task,
        trigger: str,
        *,
        message: str | None = None,
        type: EventType = EventType.INFO,
        with_progress: bool = True,
    ) -> _Plan:
        """Fire ``trigger`` on the task (InvalidTransitionError if the machine refuses it)."""
        dest = TaskState(TASK_MACHINE.next_state(task.state, trigger, subject=task.id))
        detail = f": {message}" if message else ""
        return _plan(dest, task.state, ((dest, type, detail),), message, with_progress)

    def _apply_plan(
        self,
        plan: _Plan | None,
        release: Release,
        task: Task,
        progress: int | None,
        at: datetime,
    ) -> TaskChange | None:
        """The change ``plan`` makes to ``task``, its events dated ``at``."""
        if plan is None:
            return None
        if not plan.with_progress:
            progress = None
        if plan.to_state is None:
            if progress is None or progress == task.progress:
                return None
            return TaskChange(
                task.id,
                plan.from_states,
                None,
                events=(
                    Event(
                        EventType.INFO,
                        EventKind.PROGRESS,
                        f"task {task.id} on {task.service_id} at {progress}%",
                        release.id,
                        task.id,
                        task.service_id,
                        at=at,
                    ),
                ),
                progress=progress,
            )
        return TaskChange(
            task.id,
            plan.from_states,
            plan.to_state,
            events=tuple(
                step_event(type, suffix, value, release.id, task.id, task.service_id, at)
                for type, suffix, value in plan.steps
            ),
            progress=progress,
            message=plan.message,
        )

    def _task_change(
        self,
        release: Release,
        task: Task,
        trigger: str,
        *,
        message: str | None = None,
        progress: int | None = None,
        type: EventType = EventType.INFO,
        at: datetime | None = None,
    ) -> TaskChange:
        plan = self._trigger_plan(task, trigger, message=message, type=type)
        change = self._apply_plan(plan, release, task, progress, utcnow() if at is None else at)
        assert change is not None  # (a plan that moves the task always changes it)
        return change

    async def _transition(
        self,
        release: Release,
        trigger: str,
        *,
        failure: str | None = None,
        user: bool = False,
        detail: str = "",
    ) -> Release:
        dest = ReleaseState(RELEASE_MACHINE.next_state(release.state, trigger, subject=release.id))
        bad = dest is RS.FAILED or (failure is not None and trigger == "cancel")
        why = f": {failure}" if failure else detail
        if user:
            # The request is an event of its own; the state change below is another.
            await self.store.append_events(
                [
                    self._event(
                        EventKind.USER_ACTION,
                        f"{trigger} of release {release.name!r} requested{detail}",
                        release_id=release.id,
                    )
                ]
            )
        event = Event(
            type=EventType.ERROR if bad else EventType.INFO,
            kind=EventKind.TRANSITION,
            message=f"release {release.name!r} {release.state.value} -> {dest.value}{why}",
            release_id=release.id,
            state=dest.value,
        )
        updated = await self.store.transition_release(
            release.id, {release.state}, dest, event, failure=failure
        )
        self._events_written()
        return updated

    def _event(
        self,
        kind: EventKind,
        message: str,
        *,
        type: EventType = EventType.INFO,
        release_id: str | None = None,
        task_id: str | None = None,
        service: TaskService | None = None,
        service_id: str | None = None,
    ) -> Event:
        return Event(
            type=type,
            kind=kind,
            message=message,
            release_id=release_id,
            task_id=task_id,
            task_service_id=service.id if service else service_id,
        )
