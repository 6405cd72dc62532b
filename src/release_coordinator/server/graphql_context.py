"""What the GraphQL schema's resolvers share: the request's context, argument checks, pages.

:class:`GraphQLContext` is one request's: the coordinator and the manager, who asks, and the
per-request loaders through which a record that a query names many times is read once (the
release of many tasks; the task-service registry, read once for every task's
``task_service``; a rollout's report, behind its ``status`` and its ``children``). It also
counts the items the request lists, up to ``max_items`` (:class:`TooManyItems` beyond).

The checks of arguments are the REST API's query parameters' (:func:`text`, :func:`choices`,
:func:`check_page`), with the same messages; a listing is a :class:`Page` (``items``,
``limit``, ``offset``, ``next_offset``). Needs the ``graphql`` extra (strawberry-graphql).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import strawberry
from strawberry.dataloader import DataLoader

from release_coordinator.coordinator.engine import Coordinator
from release_coordinator.coordinator.models import Release, Study, Task, TaskService
from release_coordinator.errors import ConfigurationError, NotFoundError, ValidationError
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.models import ReleaseBundle
from release_coordinator.rollout.reports import RolloutReport
from release_coordinator.schemas import DEFAULT_PAGE, MAX_INT32, MAX_PAGE, MAX_TEXT
from release_coordinator.server.coordinator_requests import _chosen
from release_coordinator.server.token_auth import Principal

__all__ = [
    "DEFAULT_MAX_ITEMS",
    "DEFAULT_PAGE",
    "GraphQLContext",
    "Info",
    "Page",
    "TooManyItems",
    "check_page",
    "choices",
    "full_page",
    "made",
    "maybe",
    "page",
    "read_page",
    "records",
    "resolved",
    "since_time",
    "text",
    "window",
]

#: The most listed items one request may return, all its pages together.
DEFAULT_MAX_ITEMS = 10_000

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")


class TooManyItems(ValidationError):
    """A query that asks for more listed items than the request may return."""

    code = "too_large"
    http_status = 413


def _loader(one: Callable[[K], Awaitable[V]]) -> DataLoader[K, V]:
    """A per-request loader reading each distinct key once, one after the other (never many
    store reads at once: a SQL store's pool stays free for other requests)."""

    async def load(keys: list[K]) -> list[V]:
        return [await one(key) for key in keys]

    return DataLoader(load_fn=load)


class GraphQLContext:
    """What the resolvers of one request read: the ``coordinator``, the ``manager`` (None: the
    server has no RolloutManager, and the rollout fields answer an error), who asks
    (``principal``, None through the library) and the per-request loaders.

    Through the library: ``await schema.execute(query, context_value=GraphQLContext(
    coordinator, manager))`` (or :func:`~release_coordinator.server.graphql.execute_graphql`);
    make one per request, since it keeps what it read."""

    def __init__(
        self,
        coordinator: Coordinator,
        manager: RolloutManager | None = None,
        *,
        principal: Principal | None = None,
        max_items: int = DEFAULT_MAX_ITEMS,
    ) -> None:
        if max_items < 1:
            raise ConfigurationError(f"max_items must be at least 1, not {max_items}")
        self.coordinator = coordinator
        self._manager = manager
        self.principal = principal
        self.max_items = max_items
        self.items = 0
        self.releases: DataLoader[str, Release | None] = _loader(self._release)
        self.tasks: DataLoader[str, list[Task]] = _loader(coordinator.list_tasks)
        self.studies: DataLoader[str, Study | None] = _loader(self._study)
        self.reports: DataLoader[str, RolloutReport] = _loader(self._report)
        self.bundles: DataLoader[str, ReleaseBundle] = _loader(self._bundle)
        self.services: DataLoader[str, TaskService | None] = DataLoader(load_fn=self._services)

    @property
    def manager(self) -> RolloutManager:
        """The RolloutManager; a ConfigurationError (a GraphQL error) when there is none."""
        if self._manager is None:
            raise ConfigurationError("this server has no RolloutManager: no rollouts to query")
        return self._manager

    def reserve(self, limit: int) -> None:
        """Before a store read of at most ``limit`` items: count them already, so that the
        reads of a query that would list too much are refused before they are made (the
        listing then counts what it lists instead: :func:`read_page`)."""
        self.spend(limit)

    def spend(self, count: int) -> None:
        """Count ``count`` listed items against the request's ``max_items`` (nothing is
        counted when they would pass it: :class:`TooManyItems`)."""
        if self.items + count > self.max_items:
            raise TooManyItems(
                "the query lists too many items",
                [("query", f"would list more than {self.max_items} items: ask for less")],
            )
        self.items += count

    async def _release(self, release_id: str) -> Release | None:
        try:
            return await self.coordinator.get_release(release_id)
        except NotFoundError:
            return None

    async def _study(self, study_id: str) -> Study | None:
        try:
            return await self.coordinator.get_study(study_id)
        except NotFoundError:
            return None

    async def _report(self, rollout_id: str) -> RolloutReport:
        return await self.manager.report(rollout_id)

    async def _bundle(self, rollout_id: str) -> ReleaseBundle:
        return await self.manager.store.get_bundle(rollout_id)

    async def _services(self, ids: list[str]) -> list[TaskService | None]:
        """The task services of ``ids``: one read of the registry for all of them."""
        by_id = {s.id: s for s in await self.coordinator.list_services()}
        return [by_id.get(service_id) for service_id in ids]


Info = strawberry.Info[GraphQLContext, None]

F = TypeVar("F", bound=Callable[..., Any])


def resolved(description: str) -> Callable[[F], F]:
    """``@strawberry.field(description=...)``, typed (strawberry's overload answers Any)."""
    made: Callable[[F], F] = strawberry.field(description=description)
    return made


# -- arguments -------------------------------------------------------------------------------


def text(name: str, value: str | None) -> str | None:
    """A text argument, checked as the REST API checks its query parameters."""
    if value is not None and len(value) > MAX_TEXT:
        raise ValidationError(
            "invalid arguments", [(name, f"is longer than {MAX_TEXT} characters")]
        )
    if value is not None and "\x00" in value:  # (no stored text holds one)
        raise ValidationError("invalid arguments", [(name, "must not hold a NUL character")])
    return value


def choices(name: str, given: Sequence[str] | None, allowed: Iterable[str]) -> set[str] | None:
    """A filter of allowed values (None: no filter); the REST API's refusal otherwise."""
    return _chosen(name, given, allowed, "invalid arguments")


def check_page(limit: int, offset: int) -> None:
    """The REST API's paging rules: ``limit`` 1..MAX_PAGE, ``offset`` 0..MAX_INT32."""
    problems = []
    if not 1 <= limit <= MAX_PAGE:
        problems.append(("limit", f"must be within 1..{MAX_PAGE}"))
    if not 0 <= offset <= MAX_INT32:
        problems.append(("offset", f"must be within 0..{MAX_INT32}"))
    if problems:
        raise ValidationError("invalid arguments", problems)


def window(found: Sequence[T], limit: int, offset: int) -> tuple[list[T], int | None]:
    """The page of ``found`` (everything) at ``offset``, and the next page's offset."""
    items = list(found[offset : offset + limit])
    return items, offset + len(items) if len(found) > offset + limit else None


def since_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValidationError(
            "invalid arguments", [("since", "must be an ISO 8601 time")]
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# -- pages -----------------------------------------------------------------------------------


@strawberry.type(description="A page of a listing; `next_offset` is null on the last page.")
class Page(Generic[T]):
    items: list[T]
    limit: int
    offset: int
    next_offset: int | None


def page(
    info: Info, items: Sequence[T], limit: int, offset: int, next_offset: int | None
) -> Page[T]:
    info.context.spend(len(items))
    return Page(items=list(items), limit=limit, offset=offset, next_offset=next_offset)


def read_page(info: Info, found: Sequence[T], limit: int, offset: int) -> Page[T]:
    """A page of ``found``, read from the store with ``limit + 1`` at ``offset`` after
    ``info.context.reserve(limit)``."""
    info.context.items -= limit  # the reservation: what the page lists is counted instead
    items = list(found[:limit])
    return page(info, items, limit, offset, offset + len(items) if len(found) > limit else None)


def full_page(info: Info, found: Sequence[T], limit: int, offset: int) -> Page[T]:
    """A page of ``found``, every item."""
    items, next_offset = window(found, limit, offset)
    return page(info, items, limit, offset, next_offset)


def made(kind: Callable[..., T], fields: dict[str, Any], **more: Any) -> T:
    """A ``kind`` (a strawberry type) of the REST API's JSON ``fields``: those it declares (a
    field the REST API gained since is left out until the type declares it too)."""
    declared = {f.name for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
    return kind(**{k: v for k, v in fields.items() if k in declared}, **more)


def records(kind: Callable[..., T], reader: Callable[[Any], dict[str, Any]], found: Any) -> list[T]:
    """``found`` records as ``kind``, from the REST reader's JSON (and the record itself)."""
    return [made(kind, reader(r), record=r) for r in found]


def maybe(
    kind: Callable[..., T], reader: Callable[[Any], dict[str, Any]], found: Any | None
) -> T | None:
    return None if found is None else made(kind, reader(found), record=found)
