"""The child protocol's bodies, declared once as msgspec Structs.

Their JSON shape, the source of their JSON Schema (see :mod:`release_coordinator.schemas`): the
HTTP app decodes the requests from bytes and hands their fields to the manager, which checks
them as it always did; the answers' Structs document what
:mod:`release_coordinator.rollout.wire`'s answers write. Rules JSON Schema cannot state stay in
code: a child's area is parsed by :meth:`~release_coordinator.rollout.geo.Area.from_geojson`,
and result bodies (``/result``, in either key encoding) by
:func:`~release_coordinator.rollout.results.parse_result`.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec

from release_coordinator.schemas import MAX_INT32, MAX_TEXT, Text

__all__ = [
    "AREA_RULE",
    "EndStageAnswerBody",
    "EndStageRequest",
    "PollAnswerBody",
    "PollRequest",
    "ResultAnswer",
]

_AREA = "#/components/schemas/Area"
#: The description of a field holding an area: the rule that stays in code.
AREA_RULE = (
    "A GeoJSON Polygon or MultiPolygon (or a Feature carrying one); that it is a valid area"
    " is checked in code (``Area.from_geojson``)."
)


class PollRequest(msgspec.Struct, kw_only=True):
    """``POST /poll``'s body: a child registers or refreshes itself."""

    id: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=MAX_TEXT,
                description="Empty (or left out) for a new child: the answer names it.",
            ),
        ]
        | None
    ) = None
    geographic_area: Annotated[
        dict[str, Any],
        msgspec.Meta(description=AREA_RULE, extra_json_schema={"$ref": _AREA}),
    ]
    number_of_children: Annotated[int, msgspec.Meta(ge=0, le=MAX_INT32)] | None = None

    documented_defaults: ClassVar[dict[str, object]] = {"number_of_children": 0}


class PollAnswerBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /poll``'s answer (see :class:`PollAnswer`)."""

    id: Annotated[str, msgspec.Meta(min_length=1)]
    new_release: Annotated[
        str, msgspec.Meta(description="The first release waiting for the child, or empty.")
    ]
    target_area: (
        Annotated[
            dict[str, Any],
            msgspec.Meta(
                description="For relays: the release's target.", extra_json_schema={"$ref": _AREA}
            ),
        ]
        | msgspec.UnsetType
    ) = msgspec.UNSET
    token: (
        Annotated[
            str,
            msgspec.Meta(description="The child's token, at its first poll (child tokens only)."),
        ]
        | msgspec.UnsetType
    ) = msgspec.UNSET
    aborted: (
        Annotated[
            list[str],
            msgspec.Meta(
                description="Releases the child is running whose rollout was aborted: roll "
                "them back now (left out when there are none; old agents ignore it)."
            ),
        ]
        | msgspec.UnsetType
    ) = msgspec.UNSET
    next_poll: (
        Annotated[
            int,
            msgspec.Meta(
                ge=1,
                description="The manager's hint: seconds until the child should poll again "
                "(shorter while it is offered or runs a release, longer while its rollouts wait "
                "for a maintenance window or a scheduled start; bounded by the manager). Old "
                "agents ignore it.",
            ),
        ]
        | msgspec.UnsetType
    ) = msgspec.UNSET


class EndStageRequest(msgspec.Struct, kw_only=True):
    """``POST /end_stage``'s body (the manager checks that the stage exists)."""

    id: Text
    strategy_id: Text | Annotated[int, msgspec.Meta(ge=0)]
    stage_name: Annotated[str, msgspec.Meta(min_length=1)]


class EndStageAnswerBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /end_stage``'s answer (see :class:`EndStageAnswer`)."""

    end_stage: bool
    action: (
        Annotated[
            Literal["rollback"], msgspec.Meta(description="An aborted rollout: roll back now.")
        ]
        | msgspec.UnsetType
    ) = msgspec.UNSET


class ResultAnswer(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /result``'s answer: an empty object, or ``{"action": "rollback"}`` when the
    release's rollout was aborted (the report was recorded as the abort's)."""

    action: (
        Annotated[
            Literal["rollback"],
            msgspec.Meta(description="The rollout was aborted: roll back now (an extra)."),
        ]
        | msgspec.UnsetType
    ) = msgspec.UNSET
