"""``POST /poll``, the request a fleet sends most, as a pure ASGI endpoint.

A child polls with the same body, poll after poll, as long as its area and its number of
children stay the same; and most polls are answered as the one before. So the endpoint keeps,
for each body it has answered (its bytes), the child it names and the answer's bytes with the
parts of it that can change between two such polls: the offer, the aborted releases and the
next-poll hint. A body seen before is answered by :meth:`RolloutManager.poll_again
<release_coordinator.rollout.manager.RolloutManager.poll_again>`, which does everything a poll
does (the child is seen, back from the lost; its offer read from the store, as fresh as any
poll's) and answers those parts: when they are what they were, the bytes kept are sent, with no
JSON decoded or encoded on the way. Anything else (a body not seen, an area or count the
manager no longer holds, another offer, a refusal) takes the full way, whose answer is then
kept. Either way the answer is byte for byte the one the full way gives.

Kept are bodies with a child id (an empty one registers a new child at every poll) whose answer
carries no new child token; at most ``max_known`` of them (beyond, the endpoint forgets them all
and starts again). Needs the ``server`` extra (Starlette).
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs
from starlette.types import Receive, Scope, Send

from release_coordinator.rollout.bodies import PollRequest
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.wire import PollAnswer
from release_coordinator.schemas import BodyDecoder
from release_coordinator.server.common import StatusFor, failure_response, json_bytes
from release_coordinator.server.request_body import decode_object, read_asgi_body

__all__ = ["DEFAULT_MAX_KNOWN", "PollEndpoint", "PollProtocol"]

#: How many poll bodies a :class:`PollEndpoint` keeps by default (one per child polling).
DEFAULT_MAX_KNOWN = 200_000

_POLL = BodyDecoder(PollRequest)
_JSON_HEADER = (b"content-type", b"application/json")


class PollProtocol(Protocol):
    """What :class:`PollEndpoint` needs of the child protocol (:class:`~release_coordinator.
    server.rollout_child.ChildProtocol`)."""

    manager: RolloutManager
    child_tokens: bool
    max_body: int

    async def poll(
        self, body: PollRequest | dict[str, Any], raw: bytes, scope: Scope
    ) -> tuple[PollAnswer, dict[str, Any]]: ...

    async def token_of(self, child_id: str, scope: Scope) -> str | None: ...


@attrs.frozen
class _Known:
    """A poll body answered before: its child and count, the parts of the answer that can
    change (offer, aborted, hint), and the answer's bytes and ``Content-Length``."""

    child_id: str
    count: int
    parts: tuple[str, tuple[str, ...], int | None]
    payload: bytes
    length: bytes


class PollEndpoint:
    """``POST /poll`` over ``protocol`` (see the module documentation); ``status_for`` maps
    the library's errors to statuses, as for every child endpoint."""

    def __init__(
        self,
        protocol: PollProtocol,
        *,
        status_for: StatusFor | None = None,
        max_known: int = DEFAULT_MAX_KNOWN,
    ) -> None:
        self.protocol = protocol
        self.status_for = status_for
        self.max_known = max_known
        self._known: dict[bytes, _Known] = {}

    def forget(self) -> None:
        """Forget every body kept (the next poll of each child takes the full way)."""
        self._known.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        protocol = self.protocol
        try:
            raw = await read_asgi_body(scope, receive, protocol.max_body)
            known = self._known.get(raw)
            if known is not None and (
                not protocol.child_tokens
                or await protocol.token_of(known.child_id, scope) is not None
            ):
                parts = await protocol.manager.poll_again(known.child_id, raw, known.count)
                if parts == known.parts:
                    await _answer(send, known.length, known.payload)
                    return
            body = decode_object(raw, _POLL)
            answer, content = await protocol.poll(body, raw, scope)
            payload = json_bytes(content)
        except Exception as error:  # what guarded() answers
            path = str(scope.get("root_path", "")) + str(scope.get("path", ""))
            response = failure_response(error, self.status_for, str(scope.get("method")), path)
            await response(scope, receive, send)
            return
        length = str(len(payload)).encode("ascii")
        if (
            isinstance(body, PollRequest)
            and body.id
            and answer.id == body.id
            and "token" not in content
        ):
            if len(self._known) >= self.max_known:
                self._known.clear()
            changing = (answer.new_release, answer.aborted, answer.next_poll)
            count = body.number_of_children or 0
            self._known[raw] = _Known(body.id, count, changing, payload, length)
        await _answer(send, length, payload)


async def _answer(send: Send, length: bytes, payload: bytes) -> None:
    """A 200 JSON answer: ``payload``, ``length`` its ``Content-Length``."""
    headers = [(b"content-length", length), _JSON_HEADER]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
