"""Whether an app's background loops run: the warning when they do not, and the lifespan
that runs them.

Both apps (:func:`~release_coordinator.server.coordinator_app.coordinator_app`,
:func:`~release_coordinator.server.rollout_app.rollout_app`) have loops that time alone drives
(resuming releases, health checks; ticks, lost children, time-outs, a relay's rounds). With
``lifespan=True`` the app's lifespan runs them; a mounted app's lifespan never runs, so the
host runs them in its own (``docs/howto/embedding.md``), and :class:`BackgroundCheck` says so
when it does not.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["EMBEDDING_DOC", "BackgroundCheck"]

#: Where the warning of :class:`BackgroundCheck` sends the reader.
EMBEDDING_DOC = "docs/howto/embedding.md"


class BackgroundCheck:
    """Whether an app's background loops run when requests arrive: the first request that
    finds them stopped logs one WARNING to ``logger``, saying why they may not run and how to
    run them (``fix``); nothing else changes (the request is served).

    Why a warning and not a refusal: the requests themselves are served correctly without the
    loops (only what time alone decides waits: resuming releases, health checks, lost
    children, time-outs), refusing them would turn a host's oversight into an outage of every
    client (a whole fleet of polling children), and a host may tick on its own schedule.

    ``app`` names the app, ``what`` what does not run; ``is_running`` tells whether it runs;
    ``lifespan`` is the app's option (the app sets :attr:`lifespan_ran` when its lifespan
    runs, which a mounted app's never does).
    """

    def __init__(
        self,
        app: str,
        what: str,
        fix: str,
        *,
        is_running: Callable[[], bool],
        lifespan: bool,
        logger: logging.Logger,
    ) -> None:
        self.app = app
        self.what = what
        self.fix = fix
        self.is_running = is_running
        self.lifespan = lifespan
        self.logger = logger
        self.lifespan_ran = False
        self.warned = False

    def problem(self) -> str | None:
        """The warning's text while the loops do not run, else None."""
        if self.is_running():
            return None
        if self.lifespan and not self.lifespan_ran:
            why = (
                "the app was made with lifespan=True but its lifespan never ran "
                "(a mounted app's lifespan does not run)"
            )
        elif self.lifespan:
            why = "they were stopped after the app's lifespan started them"
        else:
            why = "the app was made without lifespan=True, so the host runs them, and does not"
        return (
            f"{self.app}'s {self.what} not running: {why}; run `{self.fix}` in the host's "
            f"lifespan (see {EMBEDDING_DOC})"
        )

    def check(self) -> None:
        """Warn (once) if the loops do not run."""
        if self.warned:
            return
        message = self.problem()
        if message is not None:
            self.warned = True
            self.logger.warning("%s", message)

    def middleware(self) -> Middleware:
        """The ASGI middleware that calls :meth:`check` at every request until it warned."""
        return Middleware(_Watch, check=self)

    def app_lifespan(
        self, running: Callable[[], AbstractAsyncContextManager[Any]]
    ) -> Callable[[Any], AbstractAsyncContextManager[None]]:
        """The app's lifespan: with the app's ``lifespan`` option, ``running()`` for the
        lifespan's length (and :attr:`lifespan_ran` set); without it, nothing."""

        @contextlib.asynccontextmanager
        async def run(_app: Any) -> AsyncIterator[None]:
            if not self.lifespan:
                yield
                return
            self.lifespan_ran = True
            async with running():
                yield

        return run


class _Watch:
    """ASGI middleware: :meth:`BackgroundCheck.check` before each HTTP or WebSocket request
    (a flag test once it warned)."""

    def __init__(self, app: ASGIApp, *, check: BackgroundCheck) -> None:
        self.app = app
        self.background = check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.background.warned and scope["type"] != "lifespan":
            self.background.check()
        await self.app(scope, receive, send)
