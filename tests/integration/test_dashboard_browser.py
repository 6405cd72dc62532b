"""The dashboard (``/ui``) and the API page (``/docs``) in a real headless Chromium.

Debian's ``/usr/bin/chromium`` driven by Playwright's Python API (no browser download), against a
real ``release-coordinator serve`` process on 127.0.0.1:

- a release over three real HTTP task services (``_kit_server.py``): logging in (a wrong token
  first), the release staging service by service, *Publish* pressed from the keyboard, the
  release published everywhere, *Run again*, and *Cancel release* of the new one;
- a rollout over a simulated fleet (SimulatedLeaf children and children that only poll, in a
  thread of this process): the map of the target (a MultiPolygon) and of the children coloured
  by status, *Abort* from the page, and the map changing (the children that had not fetched it
  withdrawn, the running ones rolled back);
- Swagger UI at ``/docs`` reading ``/openapi.json``.

Throughout: the token is never in a URL, every API request carries it as a bearer header, the
server's log never shows it, and the pages raise no JavaScript error and break no
Content-Security-Policy rule. A screenshot of each page is saved under ``tmp_path``, and copied
to ``$RC_SCREENSHOTS`` when set (``RC_SCREENSHOTS=docs/images`` regenerates the documentation's).

Without Chromium or Playwright the tests skip, except under CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import io
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from process_support import HOST, free_port, stop

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
IN_CI = os.environ.get("CI", "").lower() == "true"
READY_WITHIN = 30.0  # seconds to wait for a process (a limit, not an assertion on time)
SEEN_WITHIN = 30_000  # milliseconds Playwright waits for what the page should show (a limit)
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
WRONG = "not-the-token"
SHOTS = ("dashboard-releases", "dashboard-release", "dashboard-rollouts", "dashboard-rollout")


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} (CI=true: the browser tests must run, not skip)")
    pytest.skip(what)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright is not installed (pip install playwright; no browser download)")
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            launched.close()


class Page:
    """A browser page that records what could go wrong: JavaScript errors, console errors
    (Content-Security-Policy violations among them) and every request's URL and headers."""

    def __init__(self, browser: Any, shots: Path) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.context.clock.install()  # runs as the real one, unless a test pauses it
        self.page = self.context.new_page()
        self.shots = shots
        self.errors: list[str] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        self.page.on("console", self._console)
        self.page.on("request", lambda r: self.requests.append((r.url, r.headers)))

    def _console(self, message: Any) -> None:
        # A refused request (the wrong token's 401) is logged as "Failed to load resource".
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.errors.append(f"console: {message.text}")

    def shoot(self, name: str, *, full_page: bool = True) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        copies = os.environ.get("RC_SCREENSHOTS")
        if copies:
            target = Path(copies) if Path(copies).is_absolute() else ROOT / copies
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target / path.name)
        return path

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser: Any, tmp_path: Path) -> Iterator[Page]:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    opened = Page(browser, shots)
    yield opened
    opened.close()


class Serve:
    """``release-coordinator serve`` on 127.0.0.1, port 0, in memory, its stderr in a file."""

    def __init__(self, tmp_path: Path, env: dict[str, str], *extra: str) -> None:
        self.log = tmp_path / "serve.log"
        self.out = self.log.open("wb")
        command = [sys.executable, "-m", "release_coordinator", "serve", "--host", HOST]
        options = ["--port", "0", "--db", "memory", "--poll-interval", "0.2"]
        self.process = subprocess.Popen(
            [*command, *options, "--tick-interval", "0.2", "--lost-after", "600", *extra],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.out,
        )
        deadline = time.monotonic() + READY_WITHIN
        while time.monotonic() < deadline and self.process.poll() is None:
            found = LISTENING.search(self.stderr())
            if found:
                self.base = f"http://{HOST}:{found[1]}"
                return
            time.sleep(0.05)
        self.close()
        raise AssertionError(f"serve did not start:\n{self.stderr()}")

    def stderr(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def close(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.out.close()
        return self.process.returncode


@pytest.fixture
def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RC_")}


def wait_ready(url: str, check: Callable[[], bool] = lambda: True) -> None:
    deadline = time.monotonic() + READY_WITHIN
    while time.monotonic() < deadline and check():
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} never answered")


def log_in(page: Page, base: str, operator: str) -> None:
    """Open the dashboard and log in: a wrong token first (refused), then ``operator``."""
    from playwright.sync_api import expect

    p = page.page
    p.goto(f"{base}/ui/")
    expect(p.get_by_role("heading", name="Log in")).to_be_visible()
    p.get_by_label("Operator token").fill(WRONG)
    p.get_by_role("button", name="Log in").click()
    expect(p.get_by_role("alert")).to_contain_text("refused")
    # the keyboard is enough: the field, the token, Enter
    p.get_by_label("Operator token").focus()
    p.keyboard.type(operator)
    p.keyboard.press("Enter")
    expect(p.get_by_role("heading", name="Releases", exact=True)).to_be_visible()
    assert p.evaluate("() => Object.values(sessionStorage)") == [operator]
    assert operator not in p.url


def check_the_token_stayed_secret(page: Page, serve: Serve, operator: str, base: str) -> None:
    assert page.errors == [], page.errors
    api = [(url, headers) for url, headers in page.requests if url.startswith(base)]
    assert api, "the page made no request"
    for url, _ in page.requests:
        assert operator not in url, url
    for url, headers in api:
        path = url[len(base) :]
        if path.startswith(("/releases", "/rollouts", "/children", "/events", "/task-services")):
            # (GET /releases without a token at the start, to see whether one is needed, and
            # with the wrong token that log_in tries first)
            sent = headers.get("authorization")
            assert sent in (f"Bearer {operator}", f"Bearer {WRONG}", None), url
    with_token = [u for u, h in api if h.get("authorization") == f"Bearer {operator}"]
    assert len(with_token) > 5, with_token
    assert operator not in serve.stderr()
    assert "Traceback" not in serve.stderr(), serve.stderr()[-4000:]


# -- releases ------------------------------------------------------------------------------------


@pytest.fixture
def kits(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Three task services (``_kit_server.py``) in a uvicorn process: ``(base URL, token)``."""
    token = secrets.token_urlsafe(16)
    port = free_port()
    out = (tmp_path / "kits.log").open("wb")
    command = [sys.executable, "-m", "uvicorn", "_kit_server:create_app", "--factory"]
    process = subprocess.Popen(
        [
            *command,
            "--app-dir",
            str(HERE),
            "--host",
            HOST,
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env={**os.environ, "RC_TEST_KITS": "3", "RC_TEST_TOKEN": token},
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://{HOST}:{port}"
        deadline = time.monotonic() + READY_WITHIN
        while time.monotonic() < deadline and process.poll() is None:
            try:
                answer = httpx.get(
                    f"{base}/svc0/status", headers={"Authorization": f"Bearer {token}"}
                )
                if answer.status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            raise AssertionError((tmp_path / "kits.log").read_text(errors="replace"))
        yield base, token
    finally:
        stop(process)
        out.close()


def test_a_release_staged_published_run_again_and_canceled_from_the_page(
    page: Page, kits: tuple[str, str], tmp_path: Path, env: dict[str, str]
) -> None:
    from playwright.sync_api import expect

    kit_base, kit_token = kits
    operator = secrets.token_urlsafe(24)
    env.update(RC_OPERATOR_TOKENS=f"alice={operator}", RC_TASK_SERVICE_TOKEN=kit_token)
    serve = Serve(tmp_path, env)
    try:
        base = serve.base
        ops = {"Authorization": f"Bearer {operator}"}
        wait_ready(f"{base}/status")
        with httpx.Client(base_url=base, headers=ops, timeout=10.0) as api:
            for name in ("svc0", "svc1", "svc2"):
                answer = api.post(
                    "/task-services", json={"name": name, "url": f"{kit_base}/{name}"}
                )
                assert answer.status_code == 201, answer.text
            older = api.post("/releases", json={"name": "2026-11", "studies": ["SD_1"]})
            assert older.status_code == 201, older.text
            api.post(f"/releases/{older.json()['id']}/cancel", json={"reason": "superseded"})

            log_in(page, base, operator)
            p = page.page
            # a new release, made while the operator looks at the list: it shows up there
            created = api.post(
                "/releases",
                json={
                    "name": "2026-12",
                    "studies": [f"SD_{i}" for i in range(40)],  # each kit stages them one by one
                    "tags": ["monthly"],
                    "description": "The December data release.",
                },
            )
            assert created.status_code == 201, created.text
            release_id = created.json()["id"]
            row = p.get_by_role("row").filter(has_text="2026-12")
            expect(row).to_be_visible(timeout=SEEN_WITHIN)
            expect(p.get_by_role("row").filter(has_text="2026-11")).to_contain_text("canceled")
            expect(row).to_contain_text(re.compile(r"running|staged|initializing|waiting"))
            # the list redraws when a release comes, and the focus stays on the same link
            row.get_by_role("link", name="2026-12").focus()
            side = api.post("/releases", json={"name": "hotfix", "studies": ["SD_9"]})
            assert side.status_code == 201, side.text
            expect(p.get_by_role("link", name="hotfix")).to_be_visible(timeout=SEEN_WITHIN)
            focused = p.evaluate("() => document.activeElement.dataset.key")
            assert focused == f"release:{release_id}"
            page.shoot(SHOTS[0])

            row.get_by_role("link", name="2026-12").click()
            expect(p.get_by_role("heading", name="Release 2026-12")).to_be_visible()
            assert p.url.endswith(f"#/releases/{release_id}")
            tasks = p.locator("#tasks tbody tr")
            expect(tasks).to_have_count(3, timeout=SEEN_WITHIN)
            for i, name in enumerate(("svc0", "svc1", "svc2")):
                expect(tasks.nth(i).locator("th")).to_have_text(name)
            # staged everywhere: the coordinator waits for the operator
            publish = p.get_by_role("button", name="Publish")
            expect(publish).to_be_visible(timeout=SEEN_WITHIN)
            for i in range(3):
                expect(tasks.nth(i)).to_contain_text("staged")
                expect(tasks.nth(i)).to_contain_text("100%")
            expect(p.locator("#release-summary")).to_contain_text("staged")
            assert api.get(f"/releases/{release_id}").json()["state"] == "staged"

            publish.focus()
            p.keyboard.press("Enter")
            expect(p.locator("#release-summary")).to_contain_text("published", timeout=SEEN_WITHIN)
            expect(p.get_by_role("status")).to_contain_text("published")
            for i in range(3):
                expect(tasks.nth(i)).to_contain_text("published")
            timeline = p.locator("#timeline li")
            expect(timeline.filter(has_text="published").first).to_be_visible()
            assert timeline.count() >= 6  # created, transitions of the release and its tasks
            assert api.get(f"/releases/{release_id}").json()["state"] == "published"
            page.shoot(SHOTS[1])

            # run it again: the page shows the new release, which the operator cancels
            p.get_by_role("button", name="Run again").click()
            # the old summary names release_id too: wait for the new page, the one whose
            # "Runs again" row links back to the release run again
            expect(p).not_to_have_url(re.compile(f"{re.escape(release_id)}$"), timeout=SEEN_WITHIN)
            expect(
                p.locator("#release-summary").get_by_role("link", name=release_id)
            ).to_be_visible(timeout=SEEN_WITHIN)
            again_id = p.url.rsplit("/", 1)[-1]
            assert again_id != release_id
            assert api.get(f"/releases/{again_id}").json()["cloned_from"] == release_id
            p.get_by_role("button", name="Cancel release").click()
            p.get_by_label("Reason").fill("not this month")
            p.get_by_role("button", name="Confirm cancel").click()
            expect(p.locator("#release-summary")).to_contain_text("canceled", timeout=SEEN_WITHIN)
            expect(p.get_by_role("button", name="Run again")).to_be_visible()
            events = api.get("/events", params={"release_id": again_id, "limit": 1000}).json()
            assert any("not this month" in e["message"] for e in events["items"]), events

            # a refusal of the API is shown with its message: the page's clock stops (no more
            # rounds), the release is canceled behind its back, and the operator presses Publish
            third = api.post("/releases", json={"name": "2027-01"}).json()["id"]
            p.goto(f"{base}/ui/#/releases/{third}")
            expect(p.get_by_role("button", name="Publish")).to_be_visible(timeout=SEEN_WITHIN)
            p.clock.pause_at(datetime.datetime.now() + datetime.timedelta(hours=1))
            expect(p.locator('html[data-refreshing="false"]')).to_have_count(1)
            assert api.post(f"/releases/{third}/cancel").status_code == 200
            p.get_by_role("button", name="Publish").click()
            alert = p.get_by_role("alert")
            expect(alert).to_contain_text("Publish failed: ")
            refusal = api.post(f"/releases/{third}/publish").json()["error"]["message"]
            expect(alert).to_contain_text(refusal)
            p.clock.resume()
            expect(p.get_by_role("button", name="Publish")).to_have_count(0, timeout=SEEN_WITHIN)
            expect(p.get_by_role("button", name="Run again")).to_be_visible(timeout=SEEN_WITHIN)

            # a release that needs an approval: the page says what it waits for, and the
            # operator (an admin, alice) approves it: it publishes by itself
            gated = api.post(
                "/releases", json={"name": "2027-02", "required_approvals": 1, "auto_publish": True}
            ).json()["id"]
            p.goto(f"{base}/ui/#/releases/{gated}")
            summary = p.locator("#release-summary")
            expect(summary).to_contain_text("0 of 1", timeout=SEEN_WITHIN)
            expect(summary).to_contain_text("it needs 1 more approval(s)")
            p.get_by_role("button", name="Approve").click()
            expect(summary).to_contain_text("1 of 1: alice", timeout=SEEN_WITHIN)
            expect(p.get_by_role("button", name="Approve")).to_have_count(0)
            expect(summary).to_contain_text("published", timeout=SEEN_WITHIN)
            assert api.get(f"/releases/{gated}").json()["state"] == "published"

            # an unknown release: the API's 404, said on the page
            p.goto(f"{base}/ui/#/releases/RE_NOSUCHTHING")
            expect(p.get_by_role("alert")).to_contain_text("Not found: ")
            expect(p.get_by_role("alert")).to_contain_text("RE_NOSUCHTHING")
            # logging out forgets the token
            p.get_by_role("button", name="Log out").click()
            expect(p.get_by_role("heading", name="Log in")).to_be_visible()
            assert p.evaluate("() => sessionStorage.length") == 0
            p.reload()
            expect(p.get_by_label("Operator token")).to_be_visible()
    finally:
        serve.close()
    check_the_token_stayed_secret(page, serve, operator, base)


# -- rollouts ------------------------------------------------------------------------------------

ROLLOUT_ID = "checkout-v2"
STRATEGY = f"""\
id: "{ROLLOUT_ID}"
name: checkout v2
type: minor
functions:
  - name: checkout
    base_version: {{path: fns/checkout_v1, env: python}}
    new_version: {{path: fns/checkout_v2, env: python}}
stages:
  - name: canary
    type: WaitForSignal
    func_name: checkout
    variants:
      - {{name: base_version, trafficPercentage: 90}}
      - {{name: new_version, trafficPercentage: 10}}
    metrics_conditions: [{{name: errorRate, threshold: "<=0.05"}}]
    end_conditions: [{{name: minCalls, threshold: "40"}}]
    end_action: {{onSuccess: ab, onFailure: rollback}}
  - name: ab
    type: A/B
    func_name: checkout
    variants:
      - {{name: base_version, trafficPercentage: 50}}
      - {{name: new_version, trafficPercentage: 50}}
    metrics_conditions: [{{name: errorRate, threshold: "<=0.05"}}]
    end_conditions: [{{name: minCalls, threshold: "100"}}]
    end_action: {{onSuccess: rollout, onFailure: rollback}}
rollback: {{action: {{function: base_version}}}}
"""


def square(lon: float, lat: float, size: float = 1.0) -> dict[str, Any]:
    ring = [[lon, lat], [lon + size, lat], [lon + size, lat + size], [lon, lat + size], [lon, lat]]
    return {"type": "Polygon", "coordinates": [ring]}


# The target: two regions with a gap between them.
TARGET = {
    "type": "MultiPolygon",
    "coordinates": [square(0, 40, 4)["coordinates"], square(6, 40, 4)["coordinates"]],
}
LEAVES = {f"west-{i}": square(0.4 + 1.2 * (i % 3), 40.6 + 1.6 * (i // 3)) for i in range(6)}
IDLE = {f"east-{i}": square(6.4 + 1.2 * i, 41.5) for i in range(3)}  # poll, never fetch
OUTSIDE = {f"gap-{i}": square(4.5, 40.5 + 2 * i) for i in range(2)}  # between the regions


def archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for version in ("v1", "v2"):
            info = zipfile.ZipInfo(f"fns/checkout_{version}/fn.py", date_time=(2020, 1, 1, 0, 0, 0))
            zf.writestr(info, f"def handler(request):\n    return {version!r}\n")
    return buffer.getvalue()


class Fleet:
    """The children, in a thread of this process: SimulatedLeaf nodes playing the rollout
    (:data:`LEAVES`), and children that only poll (:data:`IDLE`, :data:`OUTSIDE`)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.stopping = threading.Event()
        self.failures: list[str] = []
        self.outcomes: dict[str, str] = {}
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()

    async def _run(self) -> None:
        from release_coordinator.rollout.kit import SimulatedLeaf
        from release_coordinator.transports.http import HttpParent

        async with HttpParent(self.base, timeout=5.0) as parent:
            leaves = [
                SimulatedLeaf(
                    parent, area, leaf_id=name, error_rate=0.0, seed=zlib.crc32(name.encode())
                )
                for name, area in LEAVES.items()
            ]
            while not self.stopping.is_set():
                for leaf in leaves:
                    try:
                        await leaf.step()
                    except Exception as error:  # the test reads them
                        self.failures.append(f"{leaf.id}: {error!r}")
                    if leaf.outcome:
                        self.outcomes[leaf.id] = leaf.outcome
                for name, area in {**IDLE, **OUTSIDE}.items():
                    try:
                        await parent.poll(name, area, 0)
                    except Exception as error:
                        self.failures.append(f"{name}: {error!r}")
                await asyncio.sleep(0.3)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=20)


def test_a_rollout_s_map_changes_when_the_operator_aborts_it(
    page: Page, tmp_path: Path, env: dict[str, str]
) -> None:
    from playwright.sync_api import expect

    operator = secrets.token_urlsafe(24)
    env["RC_OPERATOR_TOKENS"] = f"ops={operator}"
    serve = Serve(tmp_path, env)
    fleet: Fleet | None = None
    try:
        base = serve.base
        wait_ready(f"{base}/status")
        fleet = Fleet(base)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {operator}"}) as api:
            expected = len(LEAVES) + len(IDLE) + len(OUTSIDE)
            deadline = time.monotonic() + READY_WITHIN
            while len(api.get("/children").json()["items"]) < expected:
                assert time.monotonic() < deadline, api.get("/children").text
                time.sleep(0.1)
            draft = api.post(
                "/rollouts",
                json={
                    "strategy": STRATEGY,
                    "archive": base64.b64encode(archive()).decode("ascii"),
                    "target": TARGET,
                    "name": "checkout v2",
                    "start": False,
                    "policy": {"approvals": ["canary"]},  # offered once an operator approves
                },
            )
            assert draft.status_code == 201, draft.text

            log_in(page, base, operator)
            p = page.page
            p.get_by_role("link", name="Rollouts").click()
            row = p.get_by_role("row").filter(has_text=ROLLOUT_ID)
            expect(row).to_contain_text("draft")
            page.shoot(SHOTS[2])

            row.get_by_role("link", name="checkout v2").click()
            expect(p.get_by_role("heading", name="Rollout checkout v2")).to_be_visible()
            p.get_by_role("button", name="Start").click()
            expect(p.locator("#rollout-summary")).to_contain_text("active", timeout=SEEN_WITHIN)
            # its first stage waits for an operator's approval: nobody is offered it before
            expect(p.locator("#rollout-summary")).to_contain_text("canary waits for approval")
            assert api.get(f"/rollouts/{ROLLOUT_ID}/children").json()["items"] == []
            p.get_by_role("button", name="Approve canary").click()
            confirm = "Confirm: children of checkout v2 may start stage canary"
            p.get_by_role("button", name=confirm).click()
            expect(p.locator("#rollout-summary")).to_contain_text(
                "canary approved", timeout=SEEN_WITHIN
            )
            expect(p.get_by_role("button", name="Approve canary")).to_have_count(0)
            # the leaves fetch it and wait at the canary's barrier (the idle ones never fetch)
            children = p.locator("#rollout-map path.child")
            doing = p.locator('#rollout-map path[data-status="Doing"]')
            expect(doing).to_have_count(len(LEAVES), timeout=SEEN_WITHIN)
            expect(p.locator('#rollout-map path[data-status="Todo"]')).to_have_count(len(IDLE))
            expect(p.locator('#rollout-map path[data-status="none"]')).to_have_count(len(OUTSIDE))
            expect(children).to_have_count(expected)
            expect(
                p.get_by_role("img", name="Map of rollout checkout v2", exact=True)
            ).to_be_visible()
            expect(p.locator("#rollout-map-desc")).to_contain_text(f"{len(LEAVES)} running")
            stages = p.locator("#stages tbody tr")
            expect(stages.first).to_contain_text("canary")
            expect(p.locator("#metrics tbody tr").first).to_contain_text(
                "canary", timeout=SEEN_WITHIN
            )
            expect(p.locator("#children tbody tr")).to_have_count(len(LEAVES) + len(IDLE))
            expect(p.locator('.legend li[data-status="Doing"]')).to_contain_text(f"({len(LEAVES)})")
            # each child is drawn from its own area, inside the viewBox
            drawn = {
                c: p.locator(f'#rollout-map path[data-child="{c}"]').get_attribute("d") or ""
                for c in (*LEAVES, *IDLE, *OUTSIDE)
            }
            assert len(set(drawn.values())) == expected, drawn
            width, height = map(
                float, (p.locator("#rollout-map").get_attribute("viewBox") or "").split()[2:]
            )
            for d in drawn.values():
                xs = [float(v) for v in re.findall(r"[-\d.]+", d)]
                assert all(0 <= x <= max(width, height) for x in xs), d
            p.mouse.move(0, 0)
            page.shoot(SHOTS[3] + "-before-abort")

            # the leaves wait at the barrier the idle children hold: the operator may end the
            # stage now (not done here: the leaves would go on)
            expect(p.get_by_role("button", name="Promote canary")).to_be_visible(
                timeout=SEEN_WITHIN
            )
            p.get_by_role("button", name="Pause").click()
            expect(p.get_by_role("button", name="Resume")).to_be_visible(timeout=SEEN_WITHIN)
            expect(p.get_by_role("button", name="Promote canary")).to_have_count(0)  # paused
            p.get_by_role("button", name="Resume").click()
            abort = p.get_by_role("button", name="Abort")
            expect(abort).to_be_visible(timeout=SEEN_WITHIN)
            abort.click()
            p.get_by_label("Reason").fill("error budget spent")
            p.get_by_role("button", name="Confirm abort of checkout v2").click()
            summary = p.locator("#rollout-summary")
            expect(summary).to_contain_text("aborted", timeout=SEEN_WITHIN)
            expect(summary).to_contain_text("error budget spent")
            expect(p.get_by_role("status")).to_contain_text("aborted")
            # the map changes: the idle children are withdrawn, the leaves roll back
            expect(p.locator('#rollout-map path[data-status="Todo"]')).to_have_count(0)
            expect(doing).to_have_count(0, timeout=SEEN_WITHIN)
            expect(p.locator('#rollout-map path[data-status="Failed"]')).to_have_count(len(LEAVES))
            expect(p.locator('#rollout-map path[data-status="none"]')).to_have_count(
                len(IDLE) + len(OUTSIDE)
            )
            expect(children).to_have_count(expected)
            for name in IDLE:
                status = p.locator(f'#rollout-map path[data-child="{name}"]')
                expect(status).to_have_attribute("data-status", "none")
            expect(p.locator('.legend li[data-status="Failed"]')).to_contain_text(
                f"({len(LEAVES)})"
            )
            expect(p.get_by_role("button", name="Abort")).to_have_count(0)
            p.mouse.move(0, 0)
            page.shoot(SHOTS[3])
            rows = api.get(f"/rollouts/{ROLLOUT_ID}/children").json()["items"]
            assert {r["child_id"]: r["status"] for r in rows} == dict.fromkeys(LEAVES, "Failed")
    finally:
        if fleet is not None:
            fleet.close()
        serve.close()
    assert fleet.failures == [], fleet.failures[:5]
    assert set(fleet.outcomes) == set(LEAVES), fleet.outcomes
    check_the_token_stayed_secret(page, serve, operator, base)


def test_a_server_without_tokens_shows_the_dashboard_without_a_login(
    page: Page, tmp_path: Path, env: dict[str, str]
) -> None:
    from playwright.sync_api import expect

    serve = Serve(tmp_path, env, "--allow-anonymous")
    try:
        wait_ready(f"{serve.base}/status")
        p = page.page
        p.goto(f"{serve.base}/ui/")
        expect(p.get_by_role("heading", name="Releases", exact=True)).to_be_visible()
        expect(p.get_by_text("No release yet.")).to_be_visible()
        expect(p.get_by_role("heading", name="Log in")).to_be_hidden()
        expect(p.get_by_role("button", name="Log out")).to_be_hidden()
        p.get_by_role("link", name="Rollouts").click()
        expect(p.get_by_text("No rollout yet.")).to_be_visible()
        assert all("authorization" not in h for _, h in page.requests)
    finally:
        serve.close()
    assert page.errors == [], page.errors


# -- the API page --------------------------------------------------------------------------------


def test_the_api_page_renders_the_openapi_document(
    page: Page, tmp_path: Path, env: dict[str, str]
) -> None:
    from playwright.sync_api import expect

    env["RC_OPERATOR_TOKENS"] = secrets.token_urlsafe(24)
    serve = Serve(tmp_path, env)
    try:
        wait_ready(f"{serve.base}/status")
        p = page.page
        p.goto(f"{serve.base}/docs/")
        expect(p.locator(".swagger-ui .info .title")).to_contain_text(
            "release_coordinator", timeout=SEEN_WITHIN
        )
        expect(
            p.locator(".opblock-summary-path", has_text="/releases/{release_id}/publish")
        ).to_be_visible()
        expect(
            p.locator(".opblock-summary-path", has_text="/rollouts/{rollout_id}/abort")
        ).to_be_visible()
        expect(p.get_by_role("button", name=re.compile("Authorize"))).to_be_visible()
        page.shoot("api-docs", full_page=False)
        # every asset came from the server itself
        assert all(url.startswith(serve.base) for url, _ in page.requests), page.requests
        assert any(url == f"{serve.base}/openapi.json" for url, _ in page.requests)
    finally:
        serve.close()
    assert page.errors == [], page.errors
