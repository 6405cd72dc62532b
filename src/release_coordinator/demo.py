"""``release-coordinator demo``: one complete data release across three task services.

The three consumers run in this process and do small but real work on a synthetic data set of
participant records, in a working directory:

- *data-portal* writes one JSON summary per study into a staging folder and, on publish, swaps
  it in as the public folder with one atomic rename;
- *search-index* builds an inverted index (term -> record ids) and publishes it by moving the
  ``current`` pointer file;
- *file-server* writes the records as files with a SHA-256 manifest and, on publish, verifies
  every checksum before making the manifest public.

The coordinator drives them through initialize -> start -> publish; the demo prints progress
while it runs, then the event timeline and the final states. ``--fail SERVICE`` makes one
service fail while staging, to show the release being canceled everywhere.

The coordinator keeps its state in a SQLite file in the working directory
(:class:`~release_coordinator.storage.sql.SQLStore`, the ``sql`` extra); ``--db URL`` names
another database, or ``memory`` for the in-memory store. Without the ``sql`` extra the demo
runs on the in-memory store and says so.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from release_coordinator.coordinator.config import CoordinatorConfig
from release_coordinator.coordinator.engine import Coordinator
from release_coordinator.coordinator.kit import KitTask, TaskServiceKit
from release_coordinator.coordinator.models import Event, EventKind, Release
from release_coordinator.errors import ReleaseCoordinatorError
from release_coordinator.storage.base import CoordinatorStore
from release_coordinator.storage.memory import MemoryStore
from release_coordinator.transports.memory import MemoryTransport

__all__ = ["run_demo"]

_WORDS = [
    "asthma",
    "cardiac",
    "neuro",
    "onco",
    "renal",
    "ortho",
    "derm",
    "gastro",
    "pulmo",
    "immuno",
    "hema",
    "endo",
    "ophtha",
    "otic",
    "sarcoma",
    "glioma",
    "leukemia",
    "lymphoma",
    "syndrome",
    "variant",
    "exome",
    "genome",
    "rna",
    "methylation",
]


def synthetic_records(study: str, count: int, seed: int) -> list[dict[str, Any]]:
    """Deterministic fake participant records for one study."""
    rng = random.Random(f"{seed}:{study}")
    return [
        {
            "id": f"{study}-PT{i:05d}",
            "study": study,
            "age": rng.randint(0, 21),
            "diagnoses": rng.sample(_WORDS, 3),
            "files": rng.randint(1, 6),
        }
        for i in range(count)
    ]


class _DemoService(TaskServiceKit):
    """Shared plumbing: a root folder per service and the synthetic data of a release."""

    def __init__(self, name: str, root: Path, records: int, seed: int, fail: bool) -> None:
        super().__init__(name, version="demo")
        self.root = root / name
        self.records = records
        self.seed = seed
        self.fail = fail
        self.root.mkdir(parents=True, exist_ok=True)

    def staging(self, task: KitTask) -> Path:
        return self.root / "staging" / task.release_id

    async def each_study(
        self, task: KitTask, work: Callable[[str, list[dict[str, Any]]], None]
    ) -> None:
        studies = task.studies or ("SD_DEMO",)
        for done, study in enumerate(studies, start=1):
            records = synthetic_records(study, self.records, self.seed)
            await asyncio.to_thread(work, study, records)
            if self.fail and done * 2 > len(studies):
                raise RuntimeError(f"{self.name}: disk quota exceeded while staging {study}")
            await task.report_progress(100 * done // len(studies) - 1)
            await asyncio.sleep(0.02)  # let the other services interleave, as real ones would

    async def cancel(self, task: KitTask) -> None:
        shutil.rmtree(self.staging(task), ignore_errors=True)


class PortalService(_DemoService):
    async def stage(self, task: KitTask) -> None:
        out = self.staging(task)
        out.mkdir(parents=True, exist_ok=True)

        def summarize(study: str, records: list[dict[str, Any]]) -> None:
            ages = [r["age"] for r in records]
            summary = {
                "study": study,
                "participants": len(records),
                "mean_age": round(sum(ages) / len(ages), 2),
                "top_diagnoses": Counter(d for r in records for d in r["diagnoses"]).most_common(5),
            }
            (out / f"{study}.json").write_text(json.dumps(summary, indent=1))

        await self.each_study(task, summarize)

    async def publish(self, task: KitTask) -> None:
        public = self.root / "public"
        old = self.root / "previous"
        shutil.rmtree(old, ignore_errors=True)
        if public.exists():
            public.rename(old)
        self.staging(task).rename(public)  # one atomic rename makes the release visible


class SearchIndexService(_DemoService):
    async def stage(self, task: KitTask) -> None:
        index: dict[str, list[str]] = defaultdict(list)

        def add(_study: str, records: list[dict[str, Any]]) -> None:
            for record in records:
                for term in record["diagnoses"]:
                    index[term].append(record["id"])

        await self.each_study(task, add)
        out = self.staging(task)
        out.mkdir(parents=True, exist_ok=True)
        (out / "index.json").write_text(json.dumps(index))

    async def publish(self, task: KitTask) -> None:
        pointer = self.root / "current"
        tmp = self.root / "current.tmp"
        tmp.write_text(str(self.staging(task) / "index.json"))
        os.replace(tmp, pointer)


class FileServerService(_DemoService):
    async def stage(self, task: KitTask) -> None:
        out = self.staging(task)
        manifest: dict[str, str] = {}

        def write(study: str, records: list[dict[str, Any]]) -> None:
            folder = out / study
            folder.mkdir(parents=True, exist_ok=True)
            for record in records:
                data = json.dumps(record).encode()
                (folder / f"{record['id']}.json").write_bytes(data)
                manifest[f"{study}/{record['id']}.json"] = hashlib.sha256(data).hexdigest()

        await self.each_study(task, write)
        (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=0))

    async def publish(self, task: KitTask) -> None:
        out = self.staging(task)
        manifest = json.loads((out / "MANIFEST.json").read_text())
        for done, (name, digest) in enumerate(manifest.items(), start=1):
            if hashlib.sha256((out / name).read_bytes()).hexdigest() != digest:
                raise RuntimeError(f"checksum mismatch for {name}")
            if done % 200 == 0:
                await task.report_progress(100 * done // len(manifest) - 1)
        (self.root / "PUBLIC_MANIFEST.json").write_text(json.dumps(manifest))


_SERVICES: dict[str, type[_DemoService]] = {
    "data-portal": PortalService,
    "search-index": SearchIndexService,
    "file-server": FileServerService,
}


#: The demo's database: a SQLite file in its working directory.
DB_FILE = "release-coordinator.db"


async def _open_store(db: str | None, workdir: Path) -> tuple[CoordinatorStore, str]:
    """The store the demo runs on, and a line that says which it is."""
    if db == "memory":
        return MemoryStore(), "in memory (--db memory)"
    try:
        from release_coordinator.storage.sql import SQLStore
    except ImportError:
        if db is not None:
            raise
        return MemoryStore(), (
            "in memory: the sql extra is not installed "
            "(pip install 'release-coordinator[sql]' to keep the state in SQLite)"
        )
    if db is None:
        path = workdir / DB_FILE
        return await SQLStore.connect(f"sqlite:///{path}"), f"SQLite, {path}"
    store = await SQLStore.connect(db)
    return store, f"SQL, {store.url}"


async def _run(
    workdir: Path,
    studies: list[str],
    records: int,
    fail: str | None,
    out: TextIO,
    db: str | None = None,
) -> Release:
    store, which = await _open_store(db, workdir)
    try:
        return await _release(store, which, workdir, studies, records, fail, out)
    finally:
        await store.close()


async def _release(
    store: CoordinatorStore,
    which: str,
    workdir: Path,
    studies: list[str],
    records: int,
    fail: str | None,
    out: TextIO,
) -> Release:
    transport = MemoryTransport(timeout=30)
    coordinator = Coordinator(
        store, transport, config=CoordinatorConfig(poll_interval=0.5, health_interval=0)
    )
    names: dict[str, str] = {}
    start = asyncio.get_running_loop().time()

    def show(event: Event) -> None:
        at = asyncio.get_running_loop().time() - start
        who = names.get(event.task_service_id or "", "coordinator")
        if event.kind is EventKind.PROGRESS:
            out.write(f"  {at:6.2f}s  {who:<13} {event.message.rsplit(' ', 1)[-1]:>4}\n")
        elif event.task_service_id or event.release_id:
            out.write(f"  {at:6.2f}s  {who:<13} {event.message}\n")

    await coordinator.subscribe(show)
    async with coordinator:
        kits = []
        # A database kept from an earlier run knows the services already.
        known = {s.name: s for s in await coordinator.list_services()}
        for name, cls in _SERVICES.items():
            kit = cls(name, workdir, records, seed=7, fail=(name == fail))
            kit.connect(coordinator.report_task_state)
            transport.add(f"memory://{name}", kit, latency=0.005)
            service = known.get(name)
            if service is None:
                service = await coordinator.register_service(name, f"memory://{name}")
            elif not service.enabled:
                service = await coordinator.enable_service(service.id)
            names[service.id] = name
            kits.append(kit)
        out.write(
            f"\nReleasing {len(studies)} studies x {records} records to {len(kits)} "
            f"task services (work in {workdir})\nStore: {which}\n\n"
        )
        release = await coordinator.create_release(
            "demo release",
            description="synthetic data",
            studies=studies,
            author="demo",
            auto_publish=True,
        )
        release = await coordinator.wait(release.id, timeout=120)
        for kit in kits:
            await kit.aclose()
        out.write("\nEvent timeline\n")
        events = await coordinator.events(release_id=release.id)
        t0 = events[0].at
        for event in events:
            who = names.get(event.task_service_id or "", "")
            out.write(
                f"  +{(event.at - t0).total_seconds():6.3f}s  {event.type.value:<7} "
                f"{who:<13} {event.message}\n"
            )
        out.write(
            f"\nRelease {release.id} '{release.name}' is {release.state.value}, "
            f"version {release.version}\n"
        )
        for task in await coordinator.list_tasks(release.id):
            out.write(
                f"  {names[task.service_id]:<13} {task.state.value:<10} "
                f"{task.progress:>3}%  {task.message}\n"
            )
        return release


def run_demo(
    *,
    workdir: str | None = None,
    studies: int = 4,
    records: int = 400,
    fail: str | None = None,
    out: TextIO | None = None,
    db: str | None = None,
) -> int:
    """Run the demo; returns a process exit code (0 when the outcome is the expected one).

    ``db`` is the store: a database URL, ``"memory"``, or ``None`` for a SQLite file in the
    working directory.
    """
    out = out or sys.stdout
    if fail is not None and fail not in _SERVICES:
        out.write(f"--fail must name one of {', '.join(_SERVICES)}\n")
        return 2
    names = [f"SD_{i:04d}" for i in range(1, studies + 1)]
    with tempfile.TemporaryDirectory(prefix="rc-demo-") as tmp:
        root = Path(workdir) if workdir else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        try:
            release = asyncio.run(_run(root, names, records, fail, out, db))
        except ImportError as error:
            out.write(f"--db {db}: {error}\n")
            return 2
        except ReleaseCoordinatorError as error:
            out.write(f"error: {error.message}\n")
            return 1
    expected = "failed" if fail else "published"
    return 0 if release.state.value == expected else 1
