"""One HTTP exchange through httpx, with httpx's errors translated at the edge.

Shared by :mod:`release_coordinator.transports.http` (task services) and
:mod:`release_coordinator.transports.http` (a relay's parent), so that both judge answers
and failures alike.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from release_coordinator.errors import (
    BadGatewayError,
    MalformedAnswerError,
    PeerAnswerError,
    PeerTimeoutError,
    PeerUnreachableError,
    TransportError,
)

__all__ = ["exchange", "url_shown"]


async def exchange(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    peer: str,
    what: str,
    headers: Mapping[str, str],
    content: bytes | None = None,
    params: Mapping[str, str] | None = None,
    limit: int,
) -> bytes:
    """The body of a 200 answer to one request, read up to ``limit`` bytes.

    A 502/504 is :class:`BadGatewayError`, judged before the body (which may be anything); any
    other non-200 is :class:`PeerAnswerError`; a body past ``limit`` is
    :class:`MalformedAnswerError` (refused without reading it all); time-outs, refused or
    dropped connections are :class:`PeerTimeoutError`/:class:`PeerUnreachableError`; anything
    else httpx raises is :class:`TransportError`. ``what`` names the request in messages.
    """
    try:
        async with client.stream(
            method, url, content=content, headers=headers, params=params
        ) as response:
            status = response.status_code
            if status in (502, 504):
                raise BadGatewayError(f"{peer} answered {status} to {what} (gateway)", peer=peer)
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise MalformedAnswerError(
                        f"{peer} answered {what} with more than {limit} bytes",
                        peer=peer,
                        status_code=status,
                    )
                chunks.append(chunk)
    except httpx.TimeoutException as error:
        raise PeerTimeoutError(f"{peer} did not answer {what} in time", peer=peer) from error
    except (httpx.NetworkError, httpx.RemoteProtocolError) as error:
        raise PeerUnreachableError(
            f"cannot reach {peer} for {what}: {type(error).__name__}", peer=peer
        ) from error
    except httpx.HTTPError as error:
        raise TransportError(
            f"{what} to {peer} failed: {type(error).__name__}", peer=peer
        ) from error
    raw = b"".join(chunks)
    if status != 200:
        raise PeerAnswerError(
            f"{peer} answered {status} to {what}",
            peer=peer,
            status_code=status,
            body=raw[:500].decode("utf-8", errors="replace"),
        )
    return raw


def url_shown(url: str) -> str:
    """``url`` with the password of its user part (if any) shown as ``***``: what the API, the
    event log and the errors of the transports show of a peer's URL (every operator, a reader
    too, reads them)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:  # (stored URLs were checked: not expected)
        return url
    if not parsed.password:
        return url
    return str(parsed.copy_with(username=parsed.username, password="***"))
