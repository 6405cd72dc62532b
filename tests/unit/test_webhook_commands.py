"""The Client's and the command line's webhooks and gates before publish, against serve's app
in process (the commands parsed by the real parser, their handlers run with a Client)."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from release_coordinator import ConflictError, ValidationError
from release_coordinator.cli import _parser
from release_coordinator.client import AccessDeniedError
from release_coordinator.client.http import Client
from release_coordinator.client.render import Output

from .test_client import Served, state_of, until

pytestmark = pytest.mark.anyio


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    node = Served()
    async with node.app.router.lifespan_context(node.app):
        yield node


async def command(client: Client, *argv: str) -> tuple[int, Any]:
    """Run ``release-coordinator ARGV --json`` with ``client``: its exit status and output."""
    args = _parser().parse_args([*argv, "--json"])
    out = Output(json_mode=True, stream=io.StringIO())
    status = await args.handler(client, args, out)
    text = out.stream.getvalue()  # type: ignore[attr-defined]
    return status, json.loads(text) if text.strip() else None


async def test_webhooks_through_the_client_and_the_commands(served: Served) -> None:
    async with served.client() as client:
        made = await client.add_webhook("http://127.0.0.1:9/hook", states=["published"])
        assert made["secret"].startswith("whsec_")
        status, added = await command(
            client, "webhooks", "add", "http://127.0.0.1:9/other", "--kind", "transition"
        )
        assert status == 0
        assert added["kinds"] == ["transition"]
        assert "secret" in added
        status, listed = await command(client, "webhooks", "list")
        assert [w["id"] for w in listed["items"]] == [made["id"], added["id"]]
        status, off = await command(client, "webhooks", "disable", made["id"])
        assert off["enabled"] is False
        status, listed = await command(client, "webhooks", "list", "--disabled")
        assert [w["id"] for w in listed["items"]] == [made["id"]]
        status, on = await command(client, "webhooks", "enable", made["id"])
        assert on["enabled"] is True
        status, shown = await command(client, "webhooks", "show", made["id"])
        assert "secret" not in shown
        status, log = await command(client, "webhooks", "deliveries", made["id"])
        assert status == 0
        assert isinstance(log["items"], list)
        status, _ = await command(client, "webhooks", "remove", added["id"])
        assert status == 0
        with pytest.raises(ValidationError):
            await client.add_webhook("ftp://nope/")
        with pytest.raises(AccessDeniedError):
            async with served.client(token="wrong") as stranger:
                await stranger.list_webhooks()


async def test_gates_through_the_client_and_the_commands(served: Served) -> None:
    async with served.client() as client:
        await client.register_service("portal", "memory://portal")
        status, release = await command(
            client, "releases", "create", "r1", "--approvals", "1", "--auto-publish"
        )
        assert status == 0
        assert release["gates"]["required_approvals"] == 1
        rid = release["id"]
        await until("staged", lambda: state_of(client, rid, "staged"))
        with pytest.raises(ConflictError, match="cannot be published yet"):
            await client.publish_release(rid)
        status, approved = await command(client, "releases", "approve", rid)
        assert status == 0
        assert [a["by"] for a in approved["gates"]["approvals"]] == ["alice"]
        await until("published", lambda: state_of(client, rid, "published"))
        with pytest.raises(ConflictError, match="has no checks"):
            await client.rerun_checks(rid)
        later = await client.create_release("r2", publish_at="2099-01-01T00:00:00+00:00")
        assert later["publish_gate"].startswith("it is scheduled for 2099-01-01")
