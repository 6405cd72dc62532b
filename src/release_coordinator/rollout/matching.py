"""The RolloutManager's matching of children with rollouts: which children exist (registered
by polls here, by other processes over a shared store, or loaded from the store), which
rollouts' targets reach them, and whom a rollout's policy admits."""

from __future__ import annotations

import asyncio
import contextlib

from release_coordinator.errors import NotFoundError
from release_coordinator.rollout.admission import admit
from release_coordinator.rollout.bookkeeping import _Bookkeeping
from release_coordinator.rollout.geo import Area
from release_coordinator.rollout.models import Child, Rollout, RolloutState
from release_coordinator.rollout.policies import GlobalIncremental

__all__: list[str] = []


class _Matching(_Bookkeeping):
    """Registering children and matching them with rollouts (see the module documentation)."""

    async def load(self) -> None:
        """Rebuild the in-memory indexes from the store (a manager restarted over a store)."""
        self._tallies.clear()
        self._barriers.clear()
        self._lost_at = None
        self._child_change = 0
        self._synced_at = self._clock()
        await self._sync_children()
        for rollout in await self.store.list_rollouts(
            states={RolloutState.ACTIVE, RolloutState.PAUSED}
        ):
            self._targets[rollout.match].add(rollout.id, rollout.target)
            await self._find_eligible(rollout)
        self._aborted_for.clear()
        for rollout in await self.store.list_rollouts(states={RolloutState.ABORTED}):
            await self._note_aborted(rollout.id)

    async def _sync_children(self) -> list[Child]:
        """Index the children saved since the last look (by this or another process)."""
        saved, self._child_change = await self.store.children_since(self._child_change)
        changed = []
        for child in saved:
            self._children_count[child.id] = child.number_of_children
            if child.id in self._children and self._children.area(child.id) == child.area:
                continue  # (saved by this manager, or a change of its count only)
            self._fingerprints[child.id] = 0  # its next poll here is parsed again
            changed.append(child)
        self._children.add_many((child.id, child.area) for child in changed)
        return changed

    async def _sync(self, *, force: bool = False) -> None:
        """Over a shared store: take in the children and rollouts other processes registered,
        moved, started or stopped (at most every ``refresh`` seconds unless ``force``)."""
        if not self.shared:
            return
        now = self._clock()
        if not force and self._synced_at is not None and 0 <= now - self._synced_at < self.refresh:
            return
        self._synced_at = now
        changed = await self._sync_children()
        live = {
            r.id: r
            for r in await self.store.list_rollouts(
                states={RolloutState.ACTIVE, RolloutState.PAUSED}
            )
        }
        for rollout_id in [r for r in self._eligible if r not in live]:
            self._eligible.pop(rollout_id)
            for index in self._targets.values():
                index.discard(rollout_id)
            with contextlib.suppress(NotFoundError):  # aborted by another process?
                if (await self.store.get_rollout(rollout_id)).state is RolloutState.ABORTED:
                    await self._note_aborted(rollout_id)
        newcomers: dict[str, list[str] | None] = {}
        for rollout in live.values():
            if rollout.id not in self._eligible:
                self._targets[rollout.match].add(rollout.id, rollout.target)
                await self._find_eligible(rollout)
                newcomers[rollout.id] = None  # (every eligible child)
        for child in changed:  # moved or new: which rollouts reach it now
            reached = set(self._targets["intersects"].match(child.area, "intersects"))
            reached.update(self._targets["within"].match(child.area, "contains"))
            for rollout_id, eligible in self._eligible.items():
                if rollout_id in reached:
                    if child.id not in eligible:
                        found = newcomers.setdefault(rollout_id, [])
                        if found is not None:
                            found.append(child.id)
                    eligible[child.id] = child.area
                else:
                    eligible.pop(child.id, None)
        # A rollout started elsewhere, or a child registered elsewhere, may reach children the
        # other process did not know of: admit them (targeting is idempotent).
        for rollout_id, new in newcomers.items():
            rollout = live[rollout_id]
            if rollout.state is RolloutState.ACTIVE:
                await self._admit(rollout, new)

    async def _find_eligible(self, rollout: Rollout) -> None:
        eligible = self._eligible.setdefault(rollout.id, {})
        for child_id in self._children.match(rollout.target, rollout.match):
            if child_id not in eligible:
                eligible[child_id] = self._children.area(child_id)

    async def _admit(self, rollout: Rollout, newcomers: list[str] | None = None) -> None:
        """Offer the rollout to the children its policy admits now (or abort it);
        ``newcomers``: only these became eligible since the last look."""
        if rollout.state is not RolloutState.ACTIVE:
            return
        eligible = self._eligible.get(rollout.id, {})
        if isinstance(rollout.policy, GlobalIncremental):
            # Everyone at once: no need to look at anybody's state.
            await self._target(rollout.id, list(eligible) if newcomers is None else newcomers)
            return
        states = {c.child_id: c for c in await self.store.child_releases(rollout.id)}
        seen = await self.store.last_seen(states)
        now = self._clock()
        decision = admit(
            rollout.policy,
            sorted(eligible) if self.shared else list(eligible),
            states,
            lost=lambda child: self._is_lost(seen, child, now),
            area_of=eligible.__getitem__,
        )
        if decision.abort:  # (the policy's error_action: abort, or pause)
            await self._policy_failed(rollout, decision.abort)
        elif decision.admit:
            policy = f"{type(rollout.policy).__name__} policy"  # (logged: a wave or group)
            await self._target(rollout.id, decision.admit, decision=policy)

    async def _register(self, child_id: str, area: Area, count: int, fingerprint: int) -> None:
        """Register a new child, or a child's new area. Registrations that arrive while others
        are being written are written together, as one batch (a fleet starting at once: one
        read, one save and one targeting per rollout for many children, not for each)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._registering.append((child_id, area, count, fingerprint, done))
        registrar = self._registrar
        if registrar is None or registrar.done() or registrar.get_loop() is not loop:
            self._registrar = loop.create_task(self._write_registrations())
        await done

    async def _write_registrations(self) -> None:
        """Write the waiting registrations, batch after batch, until none is left; each waiting
        poll learns how its batch went."""
        batch: list[tuple[str, Area, int, int, asyncio.Future[None]]] = []
        try:
            while self._registering:
                batch, self._registering = self._registering, []
                await self._register_many([(c, a, n, f) for c, a, n, f, _ in batch])
                for *_, done in batch:
                    if not done.done():
                        done.set_result(None)
                batch = []
        except BaseException as error:
            # This batch failed (or the writer was stopped): so did every registration still
            # waiting (their polls raise; their children poll again).
            failed, self._registering = batch + self._registering, []
            for child_id, *_, done in failed:
                # Its next poll registers it again, whatever this batch got to do.
                self._fingerprints.pop(child_id, None)
                self._children.discard(child_id)
                if not done.done():
                    done.set_exception(
                        error if isinstance(error, Exception) else asyncio.CancelledError()
                    )
            if not isinstance(error, Exception):
                raise

    async def _register_many(self, batch: list[tuple[str, Area, int, int]]) -> None:
        latest: dict[str, tuple[Area, int, int]] = {}  # child -> the last area, count, print
        for child_id, area, count, fingerprint in batch:
            latest.pop(child_id, None)
            latest[child_id] = (area, count, fingerprint)
        olds = await self.store.get_children(latest)
        now = self._clock()
        await self._sync()  # (over a shared store: the rollouts other processes started)
        saving = []
        for child_id, (area, count, _) in latest.items():
            old = olds.get(child_id)
            child = Child(child_id, area, count, old.registered_at if old else now)
            if child != old:
                saving.append(child)
        await self.store.save_children(saving)
        newcomers: dict[str, list[str]] = {}  # rollout -> children its target reaches now
        moved: list[tuple[str, set[str]]] = []  # (child, the rollouts that reach it now)
        for child_id, (area, count, fingerprint) in latest.items():
            old = olds.get(child_id)
            changed = old is None or old.area != area
            self._fingerprints[child_id] = fingerprint
            self._children_count[child_id] = count
            if not changed and child_id in self._children:
                continue
            self.children_version += 1
            self._children.add(child_id, area)
            reached = set(self._targets["intersects"].match(area, "intersects"))
            reached.update(self._targets["within"].match(area, "contains"))
            for rollout_id in reached:
                newcomers.setdefault(rollout_id, []).append(child_id)
            if changed and old is not None:
                moved.append((child_id, reached))
        for rollout_id in sorted(newcomers):
            rollout = await self.store.get_rollout(rollout_id)
            if rollout.state in (RolloutState.ACTIVE, RolloutState.PAUSED):
                eligible = self._eligible.setdefault(rollout_id, {})
                for child_id in newcomers[rollout_id]:
                    eligible[child_id] = latest[child_id][0]
                await self._admit(rollout, newcomers[rollout_id])
        # Moved away: take back what they have not fetched yet.
        leaving: dict[str, list[str]] = {}
        for child_id, reached in moved:
            for rollout_id, eligible in self._eligible.items():
                if rollout_id not in reached and eligible.pop(child_id, None) is not None:
                    leaving.setdefault(rollout_id, []).append(child_id)
        for rollout_id, child_ids in leaving.items():
            await self._withdraw(rollout_id, child_ids)
