"""The documentation (docs/, mkdocs.yml) stays true to the code.

- the generated pages (state diagrams, error tree) are up to date;
- every public class, exception and configuration field is documented;
- every python example runs: the tutorial's blocks in order in one namespace, and on the other
  pages the blocks in order followed by every ``test_*`` function they define;
- every page of the nav exists, every page is in the nav, every relative link resolves.

``mkdocs build --strict`` is not run here (it is slow and mkdocs is not a test dependency).
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import re
import sys
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import pytest
import yaml

import release_coordinator
from release_coordinator import CoordinatorConfig, RetryPolicy, errors
from release_coordinator.fsm.release import RELEASE_MACHINE, TASK_MACHINE

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))

_FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
_LINK = re.compile(r"\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*#*\s*$", re.MULTILINE)


def read(page: str) -> str:
    return (DOCS / page).read_text(encoding="utf-8")


def python_blocks(page: str) -> list[str]:
    return [m["body"] for m in _FENCE.finditer(read(page)) if m["info"].strip() == "python"]


def prose(page: str) -> str:
    """The page without its fenced blocks and inline code (where links are not links)."""
    text = _FENCE.sub("", read(page))
    return re.sub(r"`[^`\n]*`", "", text)


def all_docs() -> str:
    return "\n".join(read(page) for page in PAGES)


def mentioned(name: str, text: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", text) is not None


# -- generated pages ---------------------------------------------------------------------------


def load_generator() -> ModuleType:
    path = ROOT / "scripts" / "gen_diagrams.py"
    spec = importlib.util.spec_from_file_location("gen_diagrams", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_diagrams", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    return load_generator()


def test_generated_pages_are_up_to_date(gen: ModuleType) -> None:
    stale = gen.outdated()
    assert stale == [], f"{stale} out of date: run python scripts/gen_diagrams.py"


def test_state_machine_page_holds_the_generated_diagrams() -> None:
    page = read("reference/state-machines.md")
    for machine in (RELEASE_MACHINE, TASK_MACHINE):
        assert f"```mermaid\n{machine.mermaid()}```" in page


def test_error_page_holds_the_tree_of_the_errors_docstring() -> None:
    page = read("reference/errors.md")
    assert "├── TransportError" in page
    assert "ReleaseCoordinatorError\n├── ConfigurationError" in page


def test_check_mode_finds_and_write_fixes_a_stale_page(gen: ModuleType, tmp_path: Path) -> None:
    for page in gen.PAGES:
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / page).write_text(read(page), encoding="utf-8")
    target = tmp_path / "reference/state-machines.md"
    target.write_text(
        target.read_text(encoding="utf-8").replace("waiting --> initializing", "waiting --> x"),
        encoding="utf-8",
    )
    assert gen.outdated(tmp_path) == ["reference/state-machines.md"]
    assert gen.write(tmp_path) == ["reference/state-machines.md"]
    assert gen.outdated(tmp_path) == []
    assert target.read_text(encoding="utf-8") == read("reference/state-machines.md")


def test_render_refuses_missing_markers(gen: ModuleType) -> None:
    with pytest.raises(ValueError, match="no markers"):
        gen.render("no markers here", {"release-diagram": "x"})


def test_check_mode_passes_on_the_docs(gen: ModuleType) -> None:
    assert gen.main(["--check"]) == 0


# -- what must be documented ---------------------------------------------------------------------


def public_classes() -> list[str]:
    return [
        name
        for name in release_coordinator.__all__
        if isinstance(getattr(release_coordinator, name), type)
    ]


def test_there_are_public_classes_to_check() -> None:
    assert "Coordinator" in public_classes()
    assert "TaskServiceKit" in public_classes()


@pytest.mark.parametrize("name", public_classes())
def test_every_public_class_is_documented(name: str) -> None:
    assert mentioned(name, all_docs()), f"{name} appears nowhere in docs/"


def test_the_api_page_names_every_public_name() -> None:
    page = read("reference/api.md")
    missing = [name for name in release_coordinator.__all__ if f"`{name}`" not in page]
    assert not missing, f"not on docs/reference/api.md: {missing}"


@pytest.mark.parametrize("name", errors.__all__)
def test_every_error_is_on_the_errors_page(name: str) -> None:
    assert mentioned(name, read("reference/errors.md"))


def _default_text(field: attrs.Attribute[Any]) -> str:
    default = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        default = default.factory()  # type: ignore[union-attr]
    if attrs.has(type(default)):
        return f"{type(default).__name__}()"
    return repr(default)


@pytest.mark.parametrize(
    "field",
    [*attrs.fields(CoordinatorConfig), *attrs.fields(RetryPolicy)],
    ids=lambda f: f.name,
)
def test_every_config_field_is_documented_with_its_default(field: attrs.Attribute[Any]) -> None:
    page = read("reference/configuration.md")
    rows = [line for line in page.splitlines() if line.startswith(f"| `{field.name}` |")]
    assert rows, f"no table row for {field.name} in reference/configuration.md"
    default = _default_text(field)
    assert any(f"`{default}`" in row for row in rows), f"{field.name}: default {default} missing"


# -- examples run ----------------------------------------------------------------------------------


def run_blocks(page: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "docs_" + re.sub(r"\W", "_", page)}
    for i, block in enumerate(python_blocks(page), start=1):
        code = compile(block, f"docs/{page} (python block {i})", "exec")
        exec(code, namespace)
    return namespace


def test_the_tutorial_runs() -> None:
    assert len(python_blocks("tutorial.md")) >= 5
    namespace = run_blocks("tutorial.md")
    assert "SyncCoordinator" in namespace  # it got to the end


def pages_with_examples() -> Iterator[str]:
    for page in PAGES:
        if page != "tutorial.md" and python_blocks(page):
            yield page


@pytest.mark.parametrize("page", list(pages_with_examples()))
def test_page_examples_run(page: str) -> None:
    namespace = run_blocks(page)
    for name, function in list(namespace.items()):
        if name.startswith("test_") and inspect.isfunction(function):
            result = function()
            if inspect.iscoroutine(result):
                asyncio.run(result)


def test_the_how_to_pages_define_tests_that_get_run() -> None:
    for page in ("howto/task-service.md", "howto/testing.md"):
        assert "async def test_" in "".join(python_blocks(page)), page


def test_the_quick_start_commands_are_the_readme_s() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"```sh\n(.*?)\n```", readme, flags=re.DOTALL)
    assert len(commands) == 2
    index = read("index.md")
    for command in commands:
        assert f"```sh\n{command}\n```" in index, command


# -- site structure -----------------------------------------------------------------------------


def nav_pages(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from nav_pages(item)
    elif isinstance(node, dict):
        for value in node.values():
            yield from nav_pages(value)


def mkdocs_config() -> dict[str, Any]:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert isinstance(config, dict)
    return config


def test_mkdocs_config_is_strict_and_uses_a_builtin_theme() -> None:
    config = mkdocs_config()
    assert config["strict"] is True
    assert config["theme"]["name"] in ("mkdocs", "readthedocs")
    assert not config.get("plugins")


def test_every_nav_page_exists_and_every_page_is_in_the_nav() -> None:
    listed = list(nav_pages(mkdocs_config()["nav"]))
    missing = [page for page in listed if not (DOCS / page).is_file()]
    assert missing == []
    assert sorted(listed) == PAGES


def test_extra_javascript_exists() -> None:
    for entry in mkdocs_config().get("extra_javascript", []):
        path = entry["path"] if isinstance(entry, dict) else entry
        if not re.match(r"^[a-z]+://", path):
            assert (DOCS / path).is_file(), path


def slug(title: str) -> str:
    """Python-Markdown's toc slug of a heading (the default ``slugify``)."""
    text = title.replace("`", "").replace("*", "")
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: str) -> set[str]:
    return {slug(m["title"]) for m in _HEADING.finditer(_FENCE.sub("", read(page)))}


def relative_links() -> Iterator[tuple[str, str]]:
    for page in PAGES:
        for match in _LINK.finditer(prose(page)):
            target = match["target"]
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            yield page, target


def test_there_are_links_to_check() -> None:
    assert len(list(relative_links())) > 20


def test_every_relative_link_points_to_an_existing_file_and_anchor() -> None:
    broken = []
    for page, target in relative_links():
        path, _, anchor = target.partition("#")
        if path:
            resolved = (DOCS / page).parent.joinpath(path).resolve()
            if not resolved.is_file() or DOCS.resolve() not in resolved.parents:
                broken.append(f"{page}: {target} (no such file in docs/)")
                continue
            linked = resolved.relative_to(DOCS.resolve()).as_posix()
        else:
            linked = page
        if anchor and linked.endswith(".md") and anchor not in anchors(linked):
            broken.append(f"{page}: {target} (no such heading)")
    assert broken == []
