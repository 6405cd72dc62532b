"""Canary judgement over HTTP: a policy's ``judgement`` in ``POST /rollouts`` (a bad one is a
422 naming the field), the verdicts in ``GET /rollouts/{id}/status``, both as the OpenAPI
document says."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from release_coordinator.rollout.judgement import Judgement, judgement_json
from release_coordinator.server.openapi import rollout_openapi

from .test_judgement import HEALTHY, waiting
from .test_rollout_app import OPS, Node, as_json
from .test_rollout_manager import fetched, square

# -- over HTTP: the policy's judgement in, the verdict out --------------------------------------


def schema_validator(component: str) -> Draft202012Validator:
    document = rollout_openapi()
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("urn:openapi", resource)
    return Draft202012Validator(
        {"$ref": f"urn:openapi#/components/schemas/{component}"}, registry=registry
    )


@pytest.mark.anyio
async def test_over_http_a_bad_judgement_is_a_422_naming_it() -> None:
    node = Node()
    try:
        policy = {"type": "waves", "judgement": {"confidence": 2, "scope": "region"}}
        answer = await node.client.post("/rollouts", json=as_json(policy=policy), headers=OPS)
        assert answer.status_code == 422, answer.text
        where = {p["path"] for p in answer.json()["error"]["details"]["problems"]}
        assert {"policy.judgement.confidence", "policy.judgement.scope"} <= where, answer.text
    finally:
        await node.client.aclose()


@pytest.mark.anyio
async def test_over_http_the_status_shows_each_stages_verdict() -> None:
    node = Node()
    try:
        judgement = {"scope": "child", "latency_threshold": 0.1, "min_calls": 100}
        policy = {"judgement": judgement}
        created = await node.client.post("/rollouts", json=as_json(policy=policy), headers=OPS)
        assert created.status_code == 201, created.text
        shown = created.json()["policy"]["judgement"]
        assert shown == {**judgement_json(Judgement()), **judgement}
        assert not list(schema_validator("Policy").iter_errors(created.json()["policy"]))
        manager = node.manager
        good, slow = await fetched(manager, square(2, 45), square(5, 45))
        await manager.submit_result(waiting(good, **HEALTHY))
        await manager.submit_result(waiting(slow, (20.0, 24.0), **HEALTHY))
        status = await node.client.get("/rollouts/42/status", headers=OPS)
        assert status.status_code == 200, status.text
        body = status.json()
        canary, ab = body["stages"]
        assert ab["judgement"] is None
        verdict = canary["judgement"]
        assert verdict["scope"] == "child"
        assert verdict["units"] == {"pass": 1, "fail": 1}
        assert verdict["failing"][0]["unit"] == slow
        assert "median 24 ms new against 20 ms old" in verdict["failing"][0]["reason"]
        assert body["outcomes"] == {"rolled_back": 1}
        assert not list(schema_validator("RolloutStatus").iter_errors(body))
    finally:
        await node.client.aclose()
