"""The operator's dashboard (``/ui``) and the API page (``/docs``): static pages in the package.

::

    from starlette.routing import Mount
    from release_coordinator.server.ui import dashboard_app, docs_app

    routes = [Mount("/ui", app=dashboard_app()), Mount("/docs", app=docs_app())]

- :func:`dashboard_app`: a small vanilla-JS page (``dashboard/index.html``, ``app.js``,
  ``app.css``) over the operator API of the same server: the releases (their tasks and event
  timeline) and the rollouts (stages, metrics, a map of the children drawn from their GeoJSON
  areas), polled every 1.5 s, with the operator's actions. The operator logs in with a token,
  which the page keeps in the tab's ``sessionStorage`` and sends as ``Authorization: Bearer``,
  never in a URL. ``api`` is where the API is, relative to the page (``..``: the page is at
  ``/ui/``, the API at ``/``).
- :func:`docs_app`: Swagger UI (``swagger-ui-dist``, Apache-2.0, shipped in ``apidocs/`` with
  its licence) over the server's OpenAPI document (``openapi``, relative to the page).
- :func:`ui_routes`: both, mounted at ``/ui`` and ``/docs`` (what ``release-coordinator serve``
  adds to :func:`~release_coordinator.server.serve.service_app`).

Every asset is a file of this package: nothing is fetched from another origin, and the answers
carry a ``Content-Security-Policy`` that allows nothing else. The pages need no token (they hold
no secret); the API they call does, and the token's role decides what it answers
(:mod:`~release_coordinator.server.roles`): a ``reader`` sees every view, and an action its role
does not allow is refused with the API's 403, whose message the page shows. Needs the
``server`` extra (Starlette).
"""

from __future__ import annotations

import html
from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "DASHBOARD_CSP",
    "DOCS_CSP",
    "SWAGGER_UI_VERSION",
    "dashboard_app",
    "docs_app",
    "ui_routes",
]

#: The version of ``swagger-ui-dist`` shipped in ``apidocs/``.
SWAGGER_UI_VERSION = "5.35.0"

#: The dashboard's Content-Security-Policy: its own files and its own origin, nothing else.
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: The API page's: Swagger UI also sets inline styles.
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

_PACKAGE = __name__


class _Headers:
    """Pure ASGI middleware adding ``headers`` to every HTTP answer of ``app``."""

    def __init__(self, app: ASGIApp, headers: dict[str, str]) -> None:
        self.app = app
        self.headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in self.headers}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message["headers"] = [*kept, *self.headers]
            await send(message)

        await self.app(scope, receive, sending)


def _security_headers(policy: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-cache",  # revalidated (ETag): a new version is seen at once
    }


def _page(folder: str, values: dict[str, str]) -> str:
    """``folder/index.html`` with each ``{{name}}`` replaced by ``values[name]``, escaped."""
    text = (resources.files(_PACKAGE) / folder / "index.html").read_text(encoding="utf-8")
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", html.escape(value, quote=True))
    return text


def _static_app(folder: str, values: dict[str, str], policy: str) -> ASGIApp:
    page = _page(folder, values)

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    routes: list[BaseRoute] = [
        Route("/", index, methods=["GET"]),
        Route("/index.html", index, methods=["GET"]),
        Mount("/", app=StaticFiles(packages=[(_PACKAGE, folder)])),
    ]
    return _Headers(Router(routes=routes), _security_headers(policy))


def _relative(name: str, value: str) -> str:
    if not value or any(c in value for c in "\"'<>\\") or not value.isprintable():
        raise ValueError(f"{name} must be a URL (relative to the page, or a path), not {value!r}")
    return value


def dashboard_app(*, api: str = "..", docs: str = "../docs/") -> ASGIApp:
    """The dashboard as an ASGI app to mount (``Mount("/ui", app=dashboard_app())``).

    ``api`` is the base URL of the Coordinator's and the RolloutManager's operator APIs,
    relative to the page (``..`` when the page is at ``/ui/`` and the APIs at the root) or an
    absolute path (``/rc``); ``docs`` is where the API page is (the link in its header; ``""``
    leaves the link out). Both must be served by the same origin as the page: the page's
    Content-Security-Policy lets it talk to nothing else."""
    values = {"api": _relative("api", api), "docs": docs and _relative("docs", docs)}
    return _static_app("dashboard", values, DASHBOARD_CSP)


def docs_app(*, openapi: str = "../openapi.json", dashboard: str = "../ui/") -> ASGIApp:
    """Swagger UI over the OpenAPI document at ``openapi`` (relative to the page, or a path),
    as an ASGI app to mount (``Mount("/docs", app=docs_app())``); ``dashboard`` is where the
    link in its header goes."""
    values = {
        "openapi": _relative("openapi", openapi),
        "dashboard": _relative("dashboard", dashboard),
    }
    return _static_app("apidocs", values, DOCS_CSP)


def ui_routes() -> list[BaseRoute]:
    """The dashboard at ``/ui`` and the API page at ``/docs`` (``/ui`` and ``/docs`` redirect
    to ``/ui/`` and ``/docs/``), for an app that serves the APIs at its root."""
    return [Mount("/ui", app=dashboard_app()), Mount("/docs", app=docs_app())]
