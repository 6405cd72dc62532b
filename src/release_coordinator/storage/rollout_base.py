"""The storage interface of the RolloutManager: domain-level, compare-and-set, async.

Every method's docstring is its contract. Adapters:
:mod:`release_coordinator.storage.memory_rollout` (in-process) and, behind the ``[sql]`` extra,
:mod:`release_coordinator.storage.sql` (``SQLRolloutStore``). The rules of
:mod:`release_coordinator.storage.base` hold here too: compare-and-set changes, immutable
snapshots, ``NotFoundError`` for unknown ids, ``StorageError`` for failures underneath.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING

import attrs

from release_coordinator.errors import NotFoundError
from release_coordinator.rollout.events import ALL_EVENTS, RolloutEvent, RolloutEventFilter

if TYPE_CHECKING:  # the rollout half's records, without importing shapely at run time
    from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus
    from release_coordinator.rollout.models import (
        Child,
        ChildRelease,
        ReleaseBundle,
        Rollout,
        RolloutState,
    )

__all__ = ["BarrierRecord", "RolloutStore", "last_of_each"]


def last_of_each(children: Sequence[Child]) -> list[Child]:
    """``children`` with each id once, as last given, in the order of their last places (what
    saving them one after another leaves)."""
    last = {child.id: i for i, child in enumerate(children)}
    return [child for i, child in enumerate(children) if last[child.id] == i]


@attrs.frozen
class BarrierRecord:
    """A ``WaitForSignal`` stage's barrier as stored: ``open`` once it opened (for good), and
    when the first child began to wait on it (the manager's clock; for the barrier time-out)."""

    open: bool = False
    waiting_since: float | None = None


class RolloutStore(abc.ABC):
    """What a RolloutManager keeps: rollouts with their bundles, children, and per-child state.

    A child release that was targeted but never fetched is ``Todo`` with every stage
    ``Pending``; adapters may keep such records implicit (a fleet has far more targetings than
    fetches). Changes of a child release or stage are compare-and-sets like the Coordinator's.

    ``shared`` is true for a store that several RolloutManager processes may use at once
    (PostgreSQL): the manager then re-reads what other processes may have changed instead of
    trusting its own counters (see :class:`~release_coordinator.rollout.manager.RolloutManager`).
    """

    #: Several manager processes may use this store at once.
    shared: bool = False

    # -- rollouts ----------------------------------------------------------------------------
    @abc.abstractmethod
    async def add_rollout(
        self, rollout: Rollout, bundle: ReleaseBundle, *, events: Sequence[RolloutEvent] = ()
    ) -> Rollout:
        """Store a new rollout with its bundle; ``seq`` is assigned (creation order).
        ConflictError when the id exists. ``events`` are appended with it (not when refused),
        in the same transaction."""

    @abc.abstractmethod
    async def get_rollout(self, rollout_id: str) -> Rollout:
        """The rollout; NotFoundError."""

    @abc.abstractmethod
    async def get_bundle(self, rollout_id: str) -> ReleaseBundle:
        """The rollout's release bundle; NotFoundError."""

    @abc.abstractmethod
    async def list_rollouts(
        self, *, states: Collection[RolloutState] | None = None
    ) -> list[Rollout]:
        """Rollouts by priority (highest first), then creation."""

    @abc.abstractmethod
    async def set_rollout_state(
        self,
        rollout_id: str,
        from_states: Collection[RolloutState],
        to_state: RolloutState,
        *,
        reason: str | None = None,
        events: Sequence[RolloutEvent] = (),
    ) -> Rollout:
        """Compare-and-set the rollout's state; ConcurrentUpdateError, NotFoundError.
        ``events`` are appended when (and only when) the state is set, together with it."""

    # -- children ----------------------------------------------------------------------------
    @abc.abstractmethod
    async def save_child(self, child: Child) -> None:
        """Insert or replace a child."""

    async def save_children(self, children: Sequence[Child]) -> None:
        """``save_child`` for each, in order (what this default does; a child given twice is
        saved as last given, in the place of its last save); an adapter may save them in one
        transaction (a fleet registering at once)."""
        for child in last_of_each(children):
            await self.save_child(child)

    @abc.abstractmethod
    async def get_child(self, child_id: str) -> Child:
        """The child; NotFoundError."""

    async def get_children(self, child_ids: Iterable[str]) -> dict[str, Child]:
        """The registered ones of ``child_ids``, by id (what this default reads one by one);
        an adapter may read them at once."""
        found = {}
        for child_id in dict.fromkeys(child_ids):
            with contextlib.suppress(NotFoundError):
                found[child_id] = await self.get_child(child_id)
        return found

    @abc.abstractmethod
    async def list_children(self) -> list[Child]:
        """Every child, in registration order."""

    @abc.abstractmethod
    async def touch_child(self, child_id: str, seen_at: float) -> None:
        """Record that the child polled at ``seen_at`` (the manager's clock); the newest time
        wins (a late, older one changes nothing). A child never saved is ignored."""

    @abc.abstractmethod
    async def last_seen(self, child_ids: Iterable[str]) -> dict[str, float]:
        """When each of these children last polled (children never saved, or that never
        polled, are left out); a poll is seen as soon as :meth:`touch_child` returned."""

    # -- targeting and offers ----------------------------------------------------------------
    @abc.abstractmethod
    async def target(
        self,
        rollout_id: str,
        child_ids: Iterable[str],
        *,
        event: RolloutEvent | None = None,
        events: Sequence[RolloutEvent] = (),
    ) -> list[str]:
        """Make the rollout wait for these children (``No`` -> ``Todo``); children already
        targeted are left as they are. Returns the ids newly targeted.

        With the targeting, in its transaction: ``event`` once per child newly targeted (with
        its ``child_id``), then ``events``, written only if some child was newly targeted."""

    @abc.abstractmethod
    async def withdraw(
        self, rollout_id: str, child_ids: Iterable[str], *, event: RolloutEvent | None = None
    ) -> list[str]:
        """Take back the rollout from children that have not fetched it (``Todo`` -> ``No``).
        Returns the ids withdrawn; ``event`` is appended once per child withdrawn (with its
        ``child_id``), with the withdrawal."""

    @abc.abstractmethod
    async def targeted(self, rollout_id: str) -> list[str]:
        """Every child the rollout waits for or went to, in targeting order."""

    @abc.abstractmethod
    async def first_offer(self, child_id: str) -> str:
        """The id of the first active rollout waiting for the child (by priority, then
        creation): one it is ``Todo`` for, or one it fetched and never reported on. ``""``
        when none. The hot path of every poll."""

    # -- per-child state ---------------------------------------------------------------------
    @abc.abstractmethod
    async def child_release(self, rollout_id: str, child_id: str) -> ChildRelease:
        """The child's state for the rollout; NotFoundError if it was never targeted."""

    @abc.abstractmethod
    async def child_releases(self, rollout_id: str) -> list[ChildRelease]:
        """The state of every targeted child, in targeting order."""

    @abc.abstractmethod
    async def put_child_release(
        self, expected: ChildRelease, new: ChildRelease, *, events: Sequence[RolloutEvent] = ()
    ) -> ChildRelease:
        """Replace the child's state with ``new`` if it still equals ``expected``
        (ConcurrentUpdateError otherwise): the compare-and-set every status change goes
        through, so racing reports never both win. ``events`` are appended with a change that
        wins, never with one that loses."""

    # -- counts, barriers, changes -----------------------------------------------------------
    @abc.abstractmethod
    async def status_counts(
        self, rollout_id: str
    ) -> dict[tuple[ReleaseStatus, tuple[StageStatus, ...]], int]:
        """How many targeted children are in each (release status, stage statuses) state; the
        stage statuses in the strategy's order. NotFoundError for an unknown rollout."""

    @abc.abstractmethod
    async def waiting(self, rollout_id: str, stage_name: str) -> list[str]:
        """The children whose stage ``stage_name`` is ``SuccessWaiting``, in the order they
        began to wait (then by id)."""

    @abc.abstractmethod
    async def barrier(self, rollout_id: str, stage_name: str) -> BarrierRecord:
        """The stage's barrier (closed, nobody waiting, when never marked); NotFoundError for
        an unknown rollout."""

    @abc.abstractmethod
    async def mark_barrier(
        self,
        rollout_id: str,
        stage_name: str,
        *,
        open: bool = False,
        waiting_since: float | None = None,
        events: Sequence[RolloutEvent] = (),
    ) -> BarrierRecord:
        """Record that the barrier opened (it stays open) and/or when the first child began to
        wait (the first time given is kept); returns the barrier as stored now. NotFoundError
        for an unknown rollout. ``events`` are appended when this call opened the barrier (it
        was closed): of several calls opening it at once, one writes them."""

    @abc.abstractmethod
    async def children_since(self, change: int) -> tuple[list[Child], int]:
        """The children saved (registered, moved, changed) after change number ``change``, in
        the order of their last change, and the latest change number (0 for none): a manager
        sharing the store follows what other processes registered."""

    # -- the event log -----------------------------------------------------------------------
    @abc.abstractmethod
    async def append_events(self, events: Sequence[RolloutEvent]) -> list[RolloutEvent]:
        """Append events that come with no change of state; returns them with their ids
        (which grow with every append; nothing is ever changed later)."""

    @abc.abstractmethod
    async def last_event_id(self) -> int:
        """The id of the newest event (0 when the log is empty)."""

    @abc.abstractmethod
    async def list_events(
        self, filter: RolloutEventFilter = ALL_EVENTS, *, limit: int | None = None, offset: int = 0
    ) -> list[RolloutEvent]:
        """Events that match ``filter``, oldest first (by id); a page of ``limit`` from
        ``offset``. An event is listed once its change is: following the log with
        ``after_id`` never skips one."""

    # -- child tokens (the HTTP layer's per-child credentials; only a digest is kept) ---------
    @abc.abstractmethod
    async def child_token(self, child_id: str) -> str | None:
        """The digest of ``child_id``'s token, or None when it holds none."""

    @abc.abstractmethod
    async def add_child_token(self, child_id: str, digest: str) -> bool:
        """Keep ``digest`` as ``child_id``'s token unless it holds one already (then nothing
        changes and the answer is False): of several processes issuing a first token for a
        child at once, exactly one wins."""

    @abc.abstractmethod
    async def drop_child_token(self, child_id: str) -> bool:
        """Forget ``child_id``'s token; False when it held none."""

    @abc.abstractmethod
    async def children_with_tokens(self, child_ids: Iterable[str]) -> set[str]:
        """Those of ``child_ids`` that hold a token."""

    # -- leases on periodic work (one process of several does it at a time) -----------------
    @abc.abstractmethod
    async def hold_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Take or renew the lease ``name`` for ``owner``, to run out ``seconds`` from now on
        the store's clock (the database's, over SQL): True when ``owner`` holds it after the
        call; False, changing nothing, while another owner's lease has not run out. Of several
        owners asking at once, at most one holds it."""

    @abc.abstractmethod
    async def drop_lease(self, name: str, owner: str) -> bool:
        """Give the lease ``name`` up, if ``owner`` holds it (then True): another owner may
        take it at once instead of waiting for it to run out."""

    async def flush(self) -> None:  # noqa: B027 - optional hook
        """Write what the adapter buffers (e.g. when children last polled). Idempotent."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Write what is buffered, release connections and files. Idempotent."""
