"""Shared by the ``_e2e_*`` server scripts of ``test_end_to_end.py``: serve an ASGI app with
uvicorn on 127.0.0.1 at a port the OS picks.

The socket is bound (port 0) before uvicorn starts, and its address is written to stderr as
``<name> listening on http://127.0.0.1:<port>``: the test reads the port from the log, so no
port is guessed and none can be taken in between. SIGTERM stops uvicorn (its own handler): the
app's lifespan shuts down on the way out.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

import uvicorn

HOST = "127.0.0.1"  # never another address


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for name in ("httpx", "httpcore"):  # not one line per request
        logging.getLogger(name).setLevel(logging.WARNING)


def listen() -> socket.socket:
    """A TCP socket bound to 127.0.0.1 at a free port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.set_inheritable(True)
    return sock


def base_url(sock: socket.socket) -> str:
    return f"http://{HOST}:{sock.getsockname()[1]}"


async def serve(app: Any, sock: socket.socket, name: str) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM/SIGINT, after announcing the address."""
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_config=None,  # configure_logging's
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    print(f"{name} listening on {base_url(sock)}", file=sys.stderr, flush=True)
    try:
        await server.serve(sockets=[sock])
    finally:
        sock.close()
