"""Stage approvals and the what-if over HTTP: the Client's methods, the CLI's commands and the
roles (approving is an admin's, the what-if any reader's)."""

from __future__ import annotations

import argparse
import io
import json

import httpx
import pytest

from release_coordinator import (
    Client,
    ConflictError,
    InvalidTransitionError,
    NotFoundError,
    RolloutManager,
)
from release_coordinator.cli import _parser
from release_coordinator.client import AccessDeniedError
from release_coordinator.client.render import Output
from release_coordinator.client.rollout_commands import _act, rollouts_what_if, status_view
from release_coordinator.errors import ValidationError
from release_coordinator.server.roles import OperatorToken
from release_coordinator.server.rollout_app import rollout_app
from release_coordinator.storage.memory_rollout import MemoryRolloutStore

from .test_client import strategy
from .test_rollout_manager import EUROPE, INSIDE, archive

pytestmark = pytest.mark.anyio

TOKENS = {
    "alice": OperatorToken("admin-token", "admin"),
    "rel": OperatorToken("releaser-token", "releaser"),
    "ro": OperatorToken("reader-token", "reader"),
}


def client(manager: RolloutManager, token: str) -> Client:
    app = rollout_app(manager, operator_tokens=TOKENS)
    return Client("http://rc.test", token=token, transport=httpx.ASGITransport(app=app))


def out() -> Output:
    return Output(json_mode=False, use_rich=False, stream=io.StringIO())


async def test_approve_and_what_if_over_http() -> None:
    manager = RolloutManager(MemoryRolloutStore())
    await manager.poll("c1", INSIDE, 0)
    await manager.poll("relay", EUROPE, 3)
    policy = {"type": "waves", "sizes": [0.5, 1.0], "approvals": ["canary-10"]}
    async with client(manager, "admin-token") as admin, client(manager, "reader-token") as reader:
        with pytest.raises(ValidationError, match="approvals"):  # a 422: no such stage
            await admin.create_rollout(
                strategy("r-1"), archive(), EUROPE, policy={"approvals": ["nope"]}
            )
        draft = await admin.create_rollout(
            strategy("r-1"), archive(), EUROPE, policy=policy, start=False
        )
        assert draft["policy"]["approvals"] == ["canary-10"]
        seen = await reader.rollout_what_if("r-1", limit=1)
        assert (seen["eligible"], seen["relays"]) == (2, 1)
        assert [w["count"] for w in seen["waves"]] == [1, 1]
        assert seen["approvals"] == [{"stage": "canary-10", "approved": False}]
        assert all(len(a["children"]) <= 1 for a in seen["areas"])
        with pytest.raises(AccessDeniedError):
            await reader.approve_stage("r-1", "canary-10")
        async with client(manager, "releaser-token") as releaser:
            with pytest.raises(AccessDeniedError):  # a separate authority: an admin's
                await releaser.approve_stage("r-1", "canary-10")
        answer = await admin.approve_stage("r-1", "canary-10")
        assert answer["approvals"] == [{"stage": "canary-10", "approved": True}]
        status = await reader.rollout_status("r-1")  # the report the dashboard reads
        assert status["approvals"] == [{"stage": "canary-10", "approved": True}]
        assert "canary-10 approved" in status_view(status).text()
        with pytest.raises(InvalidTransitionError):
            await admin.approve_stage("r-1", "ab-50")  # needs none
        with pytest.raises(NotFoundError):
            await admin.approve_stage("r-1", "nope")
        events = await admin.list_rollout_events("r-1", kind=["user_action"])
        assert [e["actor"] for e in events["items"] if e["stage"] == "canary-10"] == ["alice"]

        # the CLI's commands
        printed = out()
        args = argparse.Namespace(id="r-1", limit=None)
        assert await rollouts_what_if(reader, args, printed) == 0
        text = printed.stream.getvalue()  # type: ignore[attr-defined]
        for word in ("eligible", "waves[0]", "relay"):
            assert word in text
        printed = Output(json_mode=True, stream=io.StringIO())
        approve = argparse.Namespace(rollout_action="approve", id="r-1", stage="canary-10")
        assert await _act(admin, approve, printed) == 0
        shown = json.loads(printed.stream.getvalue())  # type: ignore[attr-defined]
        assert shown["approvals"][0]["approved"] is True
        assert await _act(admin, approve, out()) == 0  # again: nothing changes

        await admin.start_rollout("r-1")
        with pytest.raises(ConflictError):  # a 409: no draft any more
            await reader.rollout_what_if("r-1")


def test_the_cli_parses_the_commands() -> None:
    parsed = _parser().parse_args(["rollouts", "approve", "r-1", "canary-10"])
    assert (parsed.rollout_action, parsed.id, parsed.stage) == ("approve", "r-1", "canary-10")
    parsed = _parser().parse_args(["rollouts", "what-if", "r-1", "--limit", "5"])
    assert (parsed.id, parsed.limit) == ("r-1", 5)
