"""The dashboard (``/ui``) and the API page (``/docs``) as files and answers, without a browser
(``tests/integration/test_dashboard_browser.py`` runs them in Chromium)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from importlib import resources

import httpx
import pytest

from release_coordinator import Coordinator, MemoryRolloutStore, MemoryStore, RolloutManager
from release_coordinator.server.serve import service_app
from release_coordinator.server.ui import (
    DASHBOARD_CSP,
    DOCS_CSP,
    SWAGGER_UI_VERSION,
    dashboard_app,
    docs_app,
)

UI = resources.files("release_coordinator.server.ui")
OPS = {"Authorization": "Bearer ops-secret-token"}


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = service_app(
        Coordinator(MemoryStore()),
        RolloutManager(MemoryRolloutStore()),
        operator_tokens={"ops": "ops-secret-token"},
        lifespan=False,
        access_log=False,
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://rc.test") as client:
        yield client


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "kind", "policy"),
    [
        ("/ui/", "text/html", DASHBOARD_CSP),
        ("/ui/index.html", "text/html", DASHBOARD_CSP),
        ("/ui/app.js", "text/javascript", DASHBOARD_CSP),
        ("/ui/app.css", "text/css", DASHBOARD_CSP),
        ("/docs/", "text/html", DOCS_CSP),
        ("/docs/swagger-ui-bundle.js", "text/javascript", DOCS_CSP),
        ("/docs/swagger-ui.css", "text/css", DOCS_CSP),
        ("/docs/docs.js", "text/javascript", DOCS_CSP),
        ("/docs/LICENSE", "", DOCS_CSP),
    ],
)
async def test_the_pages_and_their_assets_are_served_without_a_token(
    client: httpx.AsyncClient, path: str, kind: str, policy: str
) -> None:
    answer = await client.get(path)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith(kind)
    assert answer.headers["content-security-policy"] == policy
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert (await client.get("/releases")).status_code == 401  # the API still wants one
    assert (await client.get("/releases", headers=OPS)).status_code == 200


@pytest.mark.anyio
async def test_the_index_pages_point_at_the_api(client: httpx.AsyncClient) -> None:
    for path, target in (("/ui", "http://rc.test/ui/"), ("/docs", "http://rc.test/docs/")):
        answer = await client.get(path)
        assert (answer.status_code, answer.headers["location"]) == (307, target)
    page = (await client.get("/ui/")).text
    assert '<meta name="rc-api" content="..">' in page
    assert '<meta name="rc-docs" content="../docs/">' in page
    assert "{{" not in page
    docs = (await client.get("/docs/")).text
    assert '<meta name="rc-openapi" content="../openapi.json">' in docs
    assert 'href="../ui/"' in docs


@pytest.mark.anyio
async def test_refusals_under_the_pages_are_the_api_s_json(client: httpx.AsyncClient) -> None:
    missing = await client.get("/ui/nothing-here.js")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = await client.post("/ui/", json={})
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"
    for outside in (
        "/ui/%2e%2e/__init__.py",
        "/ui/..%2fapidocs/LICENSE",
        "/docs/%2e%2e/__init__.py",
    ):
        answer = await client.get(outside)  # no file outside the page's own folder
        assert answer.status_code == 404, outside


def test_values_are_escaped_and_what_is_not_a_url_is_refused() -> None:
    for bad in ("", '"><script>alert(1)</script>', "a\nb", "x'y", "a\\b"):
        with pytest.raises(ValueError, match="URL"):
            dashboard_app(api=bad)
        with pytest.raises(ValueError, match="URL"):
            docs_app(openapi=bad)
    dashboard_app(api="/rc", docs="")  # no link to the API page
    docs_app(openapi="/rc/openapi.json", dashboard="/rc/ui/")


@pytest.mark.anyio
async def test_an_ampersand_in_a_path_is_escaped_in_the_page() -> None:
    app = dashboard_app(api="/a&b")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://rc.test") as client:
        page = (await client.get("/")).text
    assert '<meta name="rc-api" content="/a&amp;b">' in page


_REFERENCE = re.compile(r"""(?:src|href)="([^"#{][^"]*)\"""")


@pytest.mark.parametrize("folder", ["dashboard", "apidocs"])
def test_every_asset_ships_in_the_package_and_none_comes_from_elsewhere(folder: str) -> None:
    page = (UI / folder / "index.html").read_text(encoding="utf-8")
    references = _REFERENCE.findall(page)
    assert references
    for reference in references:
        assert not re.match(r"^(?:[a-z]+:)?//", reference), reference  # no CDN, no other site
        if not reference.startswith(".."):  # ../docs/, ../ui/, ../openapi.json: the server's
            assert (UI / folder / reference).is_file(), reference
    scripts = [name for name in references if name.endswith(".js")]
    for name in scripts:
        text = (UI / folder / name).read_text(encoding="utf-8")
        if name != "swagger-ui-bundle.js":  # (its URLs are specs' ids and links, never fetched)
            assert not re.findall(r"https?://(?!www\.w3\.org/2000/svg)", text), name


def test_swagger_ui_ships_with_its_licence() -> None:
    folder = UI / "apidocs"
    assert "Apache License" in (folder / "LICENSE").read_text(encoding="utf-8")
    assert "SmartBear" in (folder / "NOTICE").read_text(encoding="utf-8")
    assert (folder / "swagger-ui-bundle.js.LICENSE.txt").is_file()
    assert SWAGGER_UI_VERSION in (folder / "README.md").read_text(encoding="utf-8")
    assert "validatorUrl: null" in (folder / "docs.js").read_text(encoding="utf-8")


def test_the_token_is_kept_per_tab_and_sent_as_a_header_only() -> None:
    script = (UI / "dashboard" / "app.js").read_text(encoding="utf-8")
    assert "sessionStorage.setItem(TOKEN_KEY, token)" in script
    assert "localStorage" not in script
    assert "headers.Authorization = `Bearer ${token}`" in script
    assert "innerHTML" not in script  # nothing from the API is parsed as HTML
    page = (UI / "dashboard" / "index.html").read_text(encoding="utf-8")
    field = re.search(r"<input id=\"token\"[^>]*>", page, flags=re.S)
    assert field is not None
    assert "name=" not in field[0]  # a form submitted without the script sends no token
    assert 'method="post"' in page
