"""The rollout operator API's bodies, declared once as msgspec Structs.

Their JSON shape, the source of their JSON Schema (see :mod:`release_coordinator.schemas`):

- **requests**: :class:`RolloutUpload` (``POST /rollouts`` as one JSON object),
  :class:`RolloutMultipart` and :class:`RolloutFields` (the same upload as multipart parts),
  :class:`ActionRequest` (start, pause, resume) and :class:`AbortRequest`. The HTTP app decodes
  them from bytes; a body msgspec refuses goes the full way (the app's checks, which list every
  problem), so that every refusal is what it always was;
- **answers**: the records the operator API writes (``rollout_records``), named here with a
  ``Body`` suffix and documented without it (``RolloutBody`` is the ``Rollout`` component).

Rules JSON Schema cannot state stay in code, and each field they bind names them: a rollout's
target is parsed by :meth:`~release_coordinator.rollout.geo.Area.from_geojson`, its policy by
:func:`~release_coordinator.rollout.policies.parse_policy` (its cross-field rules), free text
must be printable (``text_problem``), and the strategy document and the function archive are
checked by :meth:`~release_coordinator.rollout.models.ReleaseBundle.from_parts`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus
from release_coordinator.rollout.archive import ARCHIVE_FILENAME, ARCHIVE_MEDIA_TYPE
from release_coordinator.rollout.bodies import AREA_RULE
from release_coordinator.rollout.models import Outcome, RolloutState
from release_coordinator.rollout.strategy import StageType
from release_coordinator.schemas import MAX_INT32, MAX_PAGE, MAX_REASON, MAX_TEXT, PRINTABLE_PATTERN

__all__ = [
    "ANSWER_BODIES",
    "ANSWER_NAMES",
    "MAX_REASON",
    "MAX_RELEASE_ID",
    "REQUEST_BODIES",
    "AbortRequest",
    "ActionRequest",
    "BundleBody",
    "ChildBody",
    "ChildPageBody",
    "ChildReleaseBody",
    "ChildReleasePageBody",
    "FailingUnitBody",
    "RolloutBody",
    "RolloutFields",
    "RolloutMultipart",
    "RolloutPageBody",
    "RolloutStatusBody",
    "RolloutUpload",
    "RolloutWithBundleBody",
    "StageJudgementBody",
    "SummaryBody",
    "SummaryTimesBody",
]


_SCHEMAS = "#/components/schemas/"
_STAGE_NAMES = [s.wire_name for s in StageStatus]
_RELEASE_NAMES = [s.wire_name for s in ReleaseStatus]


def _component(name: str, description: str | None = None) -> msgspec.Meta:
    """A JSON object typed by a hand-written component (its rules are checked in code)."""
    return msgspec.Meta(description=description, extra_json_schema={"$ref": _SCHEMAS + name})


def _one_of(values: list[str]) -> msgspec.Meta:
    return msgspec.Meta(extra_json_schema={"enum": values})


def _counts(names: list[str], description: str | None = None) -> msgspec.Meta:
    return msgspec.Meta(
        description=description, extra_json_schema={"propertyNames": {"enum": names}}
    )


_POLICY_RULE = (
    "How the rollout advances (null: ``global_incremental``); the fields its ``type`` takes,"
    " its groups' areas and the policy's own rules (such as growing wave sizes) are checked"
    " in code (``parse_policy``)."
)
_TEXT_RULE = "Printable text (checked in code: no unprintable character, no lone surrogate)."

#: Printable text of at most :data:`~release_coordinator.schemas.MAX_TEXT` characters.
Name = Annotated[
    str, msgspec.Meta(max_length=MAX_TEXT, pattern=PRINTABLE_PATTERN, description=_TEXT_RULE)
]
Match = Literal["intersects", "within"]
Int32 = Annotated[int, msgspec.Meta(ge=-MAX_INT32, le=MAX_INT32)]
Count = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
#: The longest data release id a rollout may wait for (its SQL column's width).
MAX_RELEASE_ID = 128


# -- requests -----------------------------------------------------------------------------------


class RolloutFields(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The rollout part of an upload."""

    target: Annotated[dict[str, Any], _component("Area", AREA_RULE)]
    name: Name | None = None
    match: Match = "intersects"
    priority: Int32 = 0
    policy: Annotated[dict[str, Any], _component("PolicyInput", _POLICY_RULE)] | None = None
    start: Annotated[
        bool, msgspec.Meta(description="False leaves the rollout a draft to start later.")
    ] = True
    after_release: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1,
                max_length=MAX_RELEASE_ID,
                description="A data release's id: the rollout stays a draft until that release"
                " is published, then starts; it is aborted if the release fails or is canceled"
                " (404 for an unknown release; 409 for one that failed or was canceled; not"
                " with ``start: false``).",
            ),
        ]
        | None
    ) = None


_STRATEGY = msgspec.Meta(
    description="The strategy document (YAML); parsed and checked in code"
    " (``ReleaseBundle.from_parts``)."
)
_ARCHIVE_RULE = "its entries are checked in code (``ReleaseBundle.from_parts``)."


class RolloutUpload(RolloutFields, kw_only=True, forbid_unknown_fields=True):
    """``POST /rollouts`` as one JSON object: the strategy, the archive and the rollout's
    fields."""

    strategy: Annotated[str, _STRATEGY]
    archive: Annotated[
        str,
        msgspec.Meta(
            description=f"``{ARCHIVE_FILENAME}``, base64 (decoded in code); {_ARCHIVE_RULE}",
            extra_json_schema={
                "contentEncoding": "base64",
                "contentMediaType": ARCHIVE_MEDIA_TYPE,
            },
        ),
    ]


class RolloutMultipart(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /rollouts`` as ``multipart/form-data`` parts (what ``curl -F`` sends)."""

    strategy: Annotated[str, _STRATEGY]
    archive: Annotated[
        str,
        msgspec.Meta(
            description=f"``{ARCHIVE_FILENAME}``; {_ARCHIVE_RULE}",
            extra_json_schema={"contentMediaType": ARCHIVE_MEDIA_TYPE},
        ),
    ]
    rollout: RolloutFields


class ActionRequest(msgspec.Struct, forbid_unknown_fields=True):
    """An empty object (or an empty body): the action takes no field."""


class AbortRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /rollouts/{rollout_id}/abort``'s body (or an empty body)."""

    reason: (
        Annotated[
            str,
            msgspec.Meta(max_length=MAX_REASON, pattern=PRINTABLE_PATTERN, description=_TEXT_RULE),
        ]
        | None
    ) = None


#: The request bodies' Structs.
REQUEST_BODIES = (RolloutFields, RolloutUpload, RolloutMultipart, ActionRequest, AbortRequest)


# -- answers ------------------------------------------------------------------------------------


class _Record(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An answer's object: every field always present, nothing else."""


class RolloutBody(_Record):
    """A rollout as the API shows it."""

    id: Annotated[str, msgspec.Meta(description="The strategy's (and release's) id.")]
    name: str
    state: Annotated[str, _one_of([s.value for s in RolloutState])]
    target: Annotated[dict[str, Any], _component("Area")]
    match: Match
    priority: int
    policy: Annotated[dict[str, Any], _component("Policy")]
    seq: Count
    reason: str
    gated: bool
    after_release: Annotated[
        str,
        msgspec.Meta(
            description="The data release the rollout waits for (it starts when that release"
            " is published), or empty."
        ),
    ]


class BundleStageBody(_Record):
    """A stage of a bundle's strategy."""

    name: str
    type: Annotated[str, _one_of([t.value for t in StageType])]


class BundleStrategyBody(_Record):
    """The outline of a bundle's strategy."""

    id: str
    name: str
    type: str
    stages: list[BundleStageBody]
    functions: list[str]


class BundleArchiveBody(_Record):
    """The outline of a bundle's function archive."""

    filename: Annotated[str, msgspec.Meta(extra_json_schema={"const": ARCHIVE_FILENAME})]
    sha256: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
    size: Count
    files: list[str]


class BundleBody(_Record):
    """A rollout's bundle: its strategy's outline, its archive's."""

    strategy: BundleStrategyBody
    archive: BundleArchiveBody


class RolloutWithBundleBody(RolloutBody):
    """A rollout and its bundle (the strategy and the function archive)."""

    bundle: BundleBody


class _Page(_Record):
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE)]
    offset: Count
    next_offset: Count | None


class RolloutPageBody(_Page):
    """A page of Rollout records; ``next_offset`` is null on the last page."""

    items: list[RolloutBody]


_NULLABLE_NUMBER = float | None


class SummaryTimesBody(_Record, rename="pascal"):
    """Milliseconds; minimum <= median <= maximum."""

    median: _NULLABLE_NUMBER
    minimum: _NULLABLE_NUMBER
    maximum: _NULLABLE_NUMBER


class SummaryBody(_Record):
    """A stage summary (or a call-weighted aggregate) in the documented encoding's keys."""

    proxy_times: SummaryTimesBody = msgspec.field(name="ProxyTimes")
    f1_times_summary: SummaryTimesBody = msgspec.field(name="F1TimesSummary")
    f2_times_summary: SummaryTimesBody = msgspec.field(name="F2TimesSummary")
    f1_err_rate: _NULLABLE_NUMBER = msgspec.field(name="F1ErrRate")
    f2_err_rate: _NULLABLE_NUMBER = msgspec.field(name="F2ErrRate")
    f1_calls: Count
    f2_calls: Count


class FailingUnitBody(_Record):
    """A unit (a child, or a group of children) whose own canary verdict is ``fail``, and
    why."""

    unit: Annotated[str, msgspec.Meta(description="A child's id, or a group's name.")]
    reason: str


_VERDICTS = ["pass", "fail", "inconclusive"]


class StageJudgementBody(_Record):
    """A stage's canary judgement (the policy's ``judgement``): the new version (f2) against
    the old one (f1) over the call-weighted aggregate of the summaries the stage's children
    reported; with the ``child`` and ``group`` scopes, also each unit's own verdict."""

    scope: Literal["rollout", "child", "group"]
    verdict: Annotated[str, _one_of(_VERDICTS)]
    reason: str
    old_calls: Count
    new_calls: Count
    old_error_rate: float
    new_error_rate: float
    old_median: float
    new_median: float
    z: Annotated[float | None, msgspec.Meta(description="The pooled two-proportion z statistic.")]
    p_value: Annotated[
        float | None,
        msgspec.Meta(description="One-sided: P(Z >= z), the new version failing more often."),
    ]
    latency_ratio: Annotated[
        float | None, msgspec.Meta(description="The new median over the old one.")
    ]
    units: Annotated[
        dict[str, Positive],
        _counts(_VERDICTS, "Children (scope child) or groups (scope group) by their verdict."),
    ]
    failing: list[FailingUnitBody]


class StageCountsBody(_Record):
    """One stage of a rollout's status: its children's counts per StageStatus, its
    aggregate, its canary judgement (null: the policy has none, or no summary yet)."""

    name: str
    counts: Annotated[dict[str, Positive], _counts(_STAGE_NAMES)]
    aggregate: SummaryBody | None
    judgement: StageJudgementBody | None


class StageApprovalBody(_Record):
    """A stage the rollout's policy needs approved before it opens, and whether it is."""

    stage: str
    approved: bool


class RolloutStatusBody(_Record):
    """A rollout's status: counts per status, outcome and stage, aggregates, lost
    children."""

    rollout: RolloutBody
    children: Count
    statuses: Annotated[
        dict[str, Positive],
        _counts(_RELEASE_NAMES, "How many children are in each ReleaseStatus."),
    ]
    outcomes: Annotated[
        dict[str, Positive],
        _counts([o.value for o in Outcome if o.value], "How many children rolled out or back."),
    ]
    lost: list[str]
    stages: list[StageCountsBody]
    approvals: Annotated[
        list[StageApprovalBody],
        msgspec.Meta(description="The stages the policy's approvals name, and whether each is."),
    ]


class ChildStageBody(_Record):
    """One stage of a child's release: its StageStatus and summary."""

    status: Annotated[str, _one_of(_STAGE_NAMES)]
    summary: SummaryBody | None


class ChildReleaseBody(_Record):
    """One child's state in a rollout: statuses by their protocol names, summaries in the
    documented encoding's keys."""

    child_id: str
    status: Annotated[str, _one_of(_RELEASE_NAMES)]
    outcome: Annotated[str, _one_of([o.value for o in Outcome])]
    acknowledged: bool
    lost: bool
    stages: dict[str, ChildStageBody]


class ChildReleasePageBody(_Page):
    """A page of ChildRelease records; ``next_offset`` is null on the last page."""

    items: list[ChildReleaseBody]


class ChildBody(_Record):
    """A registered child."""

    id: str
    area: Annotated[dict[str, Any], _component("Area")]
    number_of_children: Count
    lost: bool
    has_token: bool


class ChildPageBody(_Page):
    """A page of Child records; ``next_offset`` is null on the last page."""

    items: list[ChildBody]


#: The answers' Structs (the ones the paths name; they use the others).
ANSWER_BODIES = (
    RolloutBody,
    RolloutWithBundleBody,
    RolloutPageBody,
    RolloutStatusBody,
    ChildReleasePageBody,
    ChildPageBody,
)

#: The components' names of the answers' Structs: without their ``Body`` suffix.
ANSWER_NAMES = {
    cls.__name__: cls.__name__.removesuffix("Body")
    for cls in (
        *ANSWER_BODIES,
        BundleBody,
        BundleStageBody,
        BundleStrategyBody,
        BundleArchiveBody,
        SummaryTimesBody,
        SummaryBody,
        StageCountsBody,
        StageJudgementBody,
        FailingUnitBody,
        ChildStageBody,
        ChildReleaseBody,
        ChildBody,
    )
}
