"""A request handed to an ASGI app exactly as a server would: for the tests of body limits and
malformed requests that an HTTP client refuses to send (a lying Content-Length, a client that
disconnects)."""

from __future__ import annotations

from typing import Any

__all__ = ["asgi_post"]


async def asgi_post(
    app: Any,
    path: str,
    chunks: list[bytes],
    headers: list[tuple[bytes, bytes]],
    *,
    host: bytes = b"edge.test",
) -> tuple[int, dict[str, str], bytes]:
    """A POST to ``app`` as a server hands it over: the body in ``chunks`` (none: the client
    disconnects instead); the answer's status, headers and body."""
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ] or [{"type": "http.disconnect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", host), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    start = sent[0]
    assert start["type"] == "http.response.start"
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body
