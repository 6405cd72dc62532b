"""Records of the rollout half: release bundles, rollouts, children and their per-child state."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from pathlib import Path

import attrs

from release_coordinator.errors import BundleError, NotFoundError
from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus
from release_coordinator.rollout.archive import ArchiveLimits, FunctionArchive
from release_coordinator.rollout.geo import Area, MatchMode
from release_coordinator.rollout.policies import GlobalIncremental, Policy
from release_coordinator.rollout.strategy import Strategy, parse_strategy

__all__ = [
    "Child",
    "ChildRelease",
    "ChildStage",
    "Outcome",
    "ReleaseBundle",
    "Rollout",
    "RolloutState",
]


@attrs.frozen
class ReleaseBundle:
    """A release: its strategy and its function archive, served back byte-for-byte.

    Build it with :meth:`from_parts` (strategy text + archive bytes) or :meth:`from_folder`
    (a folder with ``strategy.yaml`` and ``fns/``); both validate that every version path the
    strategy names is a folder of the archive.
    """

    strategy: Strategy
    strategy_text: str
    archive: FunctionArchive

    @property
    def id(self) -> str:
        return self.strategy.id

    @classmethod
    def from_parts(
        cls,
        strategy_text: str | bytes,
        archive: bytes | FunctionArchive,
        *,
        limits: ArchiveLimits | None = None,
    ) -> ReleaseBundle:
        text = strategy_text.decode("utf-8") if isinstance(strategy_text, bytes) else strategy_text
        strategy = parse_strategy(text)
        if not isinstance(archive, FunctionArchive):
            archive = FunctionArchive.from_bytes(
                archive,
                limits=limits or ArchiveLimits(),
                required_folders=strategy.version_paths(),
            )
        # A strategy naming a folder that is not in the archive is refused with its path.
        parse_strategy(text, available_paths=archive.folders)
        return cls(strategy, text, archive)

    @classmethod
    def from_folder(
        cls, folder: str | Path, *, limits: ArchiveLimits | None = None
    ) -> ReleaseBundle:
        root = Path(folder)
        strategy_file = root / "strategy.yaml"
        if not strategy_file.is_file():
            raise BundleError(
                "invalid release folder", [(str(strategy_file), "strategy.yaml is missing")]
            )
        archive = FunctionArchive.from_folder(root, limits=limits or ArchiveLimits())
        return cls.from_parts(strategy_file.read_text(encoding="utf-8"), archive)


class RolloutState(StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    PAUSED = "paused"
    ABORTED = "aborted"
    COMPLETED = "completed"


class Outcome(StrEnum):
    """How a child's release ended, recorded beside Done/Failed."""

    NONE = ""
    ROLLED_OUT = "rolled_out"
    ROLLED_BACK = "rolled_back"
    #: The manager gave up on the child: it did not fetch or report within the policy's
    #: ``child_timeout`` (the release is Failed; what the child runs is unknown).
    TIMED_OUT = "timed_out"
    #: The rollout was aborted while the child ran it, and the child's next report did not
    #: say it rolled back (it is told to; what it runs is its own word against the abort).
    ABORTED = "aborted"
    #: The operator excluded the child from the rollout (``RolloutManager.exclude``): it is
    #: never offered it again (nor retried); a child that ran it is told to roll back.
    EXCLUDED = "excluded"


@attrs.frozen
class Rollout:
    """A release deployed to the children whose area reaches ``target``.

    Its id is the release's (the strategy's ``id``). ``seq`` orders rollouts of equal priority
    by creation.
    """

    id: str
    name: str
    target: Area
    match: MatchMode = "intersects"
    priority: int = 0
    policy: Policy = attrs.field(factory=GlobalIncremental)
    state: RolloutState = RolloutState.DRAFT
    seq: int = 0
    reason: str = ""
    #: Stage barriers are opened by a parent manager (the rollout of a relay), not locally.
    gated: bool = False
    #: The id of the data release (the Coordinator's) this rollout waits for, or "": it stays
    #: a draft until that release is published, then starts; it is aborted if the release
    #: fails or is canceled (see :class:`~release_coordinator.gates.ReleaseGate`).
    after_release: str = ""


@attrs.frozen(slots=True)
class Child:
    """A node below this manager: an edge node, or a manager (relay) with nodes of its own."""

    id: str
    area: Area
    number_of_children: int = 0
    registered_at: float = 0.0


@attrs.frozen(slots=True)
class ChildStage:
    status: StageStatus = StageStatus.PENDING
    summary: object = None  # a StageSummary once reported (rollout.results)
    changed_at: float = 0.0
    started_at: float = 0.0


@attrs.frozen
class ChildRelease:
    """One rollout on one child: its ReleaseStatus, its stages, and how it ended.

    ``acknowledged`` turns true with the child's first result; until then a child that
    fetched the release and went quiet is offered it again.
    """

    rollout_id: str
    child_id: str
    status: ReleaseStatus
    stages: Mapping[str, ChildStage]
    outcome: Outcome = Outcome.NONE
    acknowledged: bool = False

    @classmethod
    def todo(cls, rollout_id: str, child_id: str, stage_names: Iterable[str]) -> ChildRelease:
        return cls(rollout_id, child_id, ReleaseStatus.TODO, {n: ChildStage() for n in stage_names})

    def stage(self, name: str) -> ChildStage:
        try:
            return self.stages[name]
        except KeyError:
            raise NotFoundError("stage", name) from None

    @property
    def live_stage(self) -> str | None:
        """The stage the child is in (in progress, waiting or told to end), if any."""
        for name, stage in self.stages.items():
            if stage.status in _LIVE:
                return name
        return None


_LIVE = frozenset({StageStatus.IN_PROGRESS, StageStatus.SUCCESS_WAITING, StageStatus.SHOULD_END})
