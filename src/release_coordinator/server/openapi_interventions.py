"""The operator's interventions in the rollout manager's OpenAPI document: the routes
``POST /rollouts/{rollout_id}/children/{child_id}/exclude`` and ``POST /rollouts/{rollout_id}/
retry`` (:mod:`~release_coordinator.server.rollout_interventions`), and a Waves policy's
``error_action`` (:func:`with_error_action`)."""

from __future__ import annotations

import copy
from typing import Any

from release_coordinator.rollout.api_bodies import ChildReleaseBody
from release_coordinator.rollout.intervention_bodies import (
    ExcludeRequest,
    RetryAnswerBody,
    RetryRequest,
)
from release_coordinator.rollout.policies import ERROR_ACTIONS
from release_coordinator.server.openapi_parts import (
    _BODY,
    _OPERATOR,
    _or_null,
    _param,
    _path_id,
)
from release_coordinator.server.openapi_routes import Route

__all__ = ["INTERVENTION_ROUTES", "with_error_action"]

_ONE = (_param("rolloutId"),)

#: The interventions' routes, in the document's order (after a rollout's actions).
INTERVENTION_ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/rollouts/{rollout_id}/children/{child_id}/exclude",
        "excludeRolloutChild",
        "Exclude a child from the rollout: it is never offered it again (nor retried), and "
        "rolls back if it runs it (Failed, outcome excluded; excluding again changes "
        "nothing). 409 for an aborted rollout, a child that finished the release (Done) or "
        "one the target does not reach",
        "rollouts",
        {200: ("The child's state in the rollout now.", ChildReleaseBody)},
        (*_BODY, 404, 409, *_OPERATOR),
        request=ExcludeRequest,
        request_required=False,
        parameters=(*_ONE, _path_id("child_id", "child")),
    ),
    Route(
        "POST",
        "/rollouts/{rollout_id}/retry",
        "retryRollout",
        "Offer the rollout again to the children whose release failed or timed out (or the "
        "ones named): they start over; a completed rollout becomes active again. 409 for a "
        "draft or aborted rollout, a named child that did not fail or was excluded, and when "
        "no child is left to retry",
        "rollouts",
        {200: ("The rollout as it is now, and the children retried.", RetryAnswerBody)},
        (*_BODY, 404, 409, *_OPERATOR),
        request=RetryRequest,
        request_required=False,
        parameters=_ONE,
    ),
)

_ERROR_ACTION = {
    "type": "string",
    "enum": list(ERROR_ACTIONS),
    "description": "What the error condition (more than failure_threshold of the finished "
    "children failed) does: abort the rollout, or pause it for the operator (who retries or "
    "excludes the failed children, then resumes, or aborts). Left out: abort (shown only "
    "when pause).",
}


def with_error_action(policies: dict[str, Any], *, output: bool) -> dict[str, Any]:
    """The policies' schema (``oneOf`` one per kind) with ``error_action`` on waves: an
    optional property (answers show it only when it is ``pause``)."""
    schema = copy.deepcopy(policies)
    for kind in schema["oneOf"]:
        properties = kind["properties"]
        if properties["type"].get("const") == "waves":
            properties["error_action"] = _ERROR_ACTION if output else _or_null(_ERROR_ACTION)
    return schema
