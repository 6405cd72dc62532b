"""The package's promises: a complete public API, the two quick-start commands, the CLI."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import release_coordinator
from release_coordinator import errors
from release_coordinator.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_all_is_sorted_complete_and_importable() -> None:
    names = release_coordinator.__all__
    assert len(names) == len(set(names))

    # ruff's RUF022 (isort-style) order: CONSTANTS, then Classes, then everything else
    def category(name: str) -> int:
        return 0 if name.isupper() else 1 if name[0].isupper() else 2

    assert sorted(names, key=lambda n: (category(n), n)) == names
    for name in names:
        assert hasattr(release_coordinator, name), name
    public_classes = {
        name
        for module in (
            "errors",
            "coordinator.config",
            "coordinator.engine",
            "coordinator.kit",
            "coordinator.models",
            "coordinator.sync",
            "coordinator.wire",
            "rollout.kit",
            "rollout.manager",
            "rollout.models",
            "rollout.reports",
            "rollout.wire",
            "transports.base",
            "transports.http",
            "transports.memory",
        )
        for name, obj in vars(importlib.import_module(f"release_coordinator.{module}")).items()
        if inspect.isclass(obj)
        and not name.startswith("_")
        and obj.__module__ == f"release_coordinator.{module}"
    }
    missing = public_classes - set(names)
    assert not missing, f"public classes not exported: {sorted(missing)}"


def test_every_error_derives_from_the_root() -> None:
    for name in errors.__all__:
        obj = getattr(errors, name)
        if inspect.isclass(obj):
            assert issubclass(obj, errors.ReleaseCoordinatorError), name
            assert name in (errors.__doc__ or "") or name == "ReleaseCoordinatorError", name


def test_optional_dependencies_are_not_imported() -> None:
    code = (
        "import sys, release_coordinator; "
        "print([m for m in ('sqlalchemy', 'starlette', 'uvicorn') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, flags=re.S)
    assert len(blocks) == 2, "the quick start has exactly two commands"
    demo, tests = blocks
    assert "release-coordinator demo" in demo
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_cli_demo_publishes(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["demo", "--studies", "2", "--records", "20"]) == 0
    out = capsys.readouterr().out
    assert "is published" in out
    assert "Event timeline" in out
    assert out.count("published  100%") == 3


def test_cli_demo_failure_is_canceled_everywhere(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["demo", "--studies", "3", "--records", "10", "--fail", "file-server"]) == 0
    out = capsys.readouterr().out
    assert "is failed" in out
    assert out.count("canceled") >= 2


def test_cli_diagrams_and_python_m() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "release_coordinator", "diagrams", "task"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "stateDiagram-v2" in out
    assert "waiting --> rejected: reject" in out


def _module_imports() -> dict[str, set[str]]:
    """Every module of the package and the modules of the package it imports (anywhere in it,
    under TYPE_CHECKING and inside functions too)."""
    src = ROOT / "src"
    modules: dict[str, Path] = {}
    for path in (src / "release_coordinator").rglob("*.py"):
        name = ".".join(path.relative_to(src).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    target = full if full in modules else node.module
                    if target in modules and target != name:
                        graph[name].add(target)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name in modules)
    return graph


def test_no_module_imports_in_a_circle() -> None:
    graph = _module_imports()
    circles = []
    for start in graph:  # a path from a module back to itself
        seen: set[str] = set()
        todo = [(start, (start,))]
        while todo:
            name, path = todo.pop()
            for target in graph[name]:
                if target == start:
                    circles.append(" -> ".join((*path, start)))
                elif target not in seen:
                    seen.add(target)
                    todo.append((target, (*path, target)))
    assert not circles, circles[:5]


def test_no_module_is_over_600_lines() -> None:
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for path in (ROOT / "src" / "release_coordinator").rglob("*.py")
    }
    assert not {path: n for path, n in sizes.items() if n > 600}
