"""Inputs overwritten while a run reads them: noticed when a page is loaded, redone afresh.

A page is loaded long after its file was registered (hashed, pages counted). If the file now
holds other content, the page would be transcribed from the new content but written under the
old registration, or not exist at all. So each load first compares the file with its
registration (size and mtime, cheaply; the hash only when they differ), and the coordinator
registers a changed file again: its old outputs and pages go, its new pages are queued, and
pages of the old registration still in flight are dropped instead of written.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.ingest.documents import IngestSettings, SourceFile
from pipeline.jobs.backend import JobBackend, PageTask, printable
from pipeline.runner.progress import log

_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Registered:
    """What a page's file held when it was registered."""

    size: int
    mtime_ns: int
    sha256: str


@dataclass(frozen=True)
class SourceChanged:
    """A loader's answer: the file no longer holds the content it was registered with."""

    message: str = "the file changed since it was registered"


def registered_of(task: PageTask) -> Registered | None:
    if task.size is None or task.mtime_ns is None or task.sha256 is None:
        return None
    return Registered(task.size, task.mtime_ns, task.sha256)


def source_changed(path: Path, expect: Registered | None) -> SourceChanged | None:
    """None while `path` still holds the registered content (a touched file still does)."""
    if expect is None:
        return None
    try:
        info = os.stat(path)
        if (info.st_size, info.st_mtime_ns) == (expect.size, expect.mtime_ns):
            return None
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    except OSError:
        return None  # gone or unreadable: loading the page says so
    return None if digest.hexdigest() == expect.sha256 else SourceChanged()


@dataclass
class SourceChanges:
    """The coordinator's side: re-register a changed document, tell stale pages apart."""

    store: JobBackend
    out_dir: Path
    ingest: IngestSettings
    new_pool: Callable[[], ProcessPoolExecutor]
    # doc id -> the content it is registered with now (None: no longer readable). Page ids may
    # be reused by the new registration, so staleness is told by content, not by id.
    current: dict[int, str | None] = field(default_factory=dict)

    def is_stale(self, task: PageTask) -> bool:
        """A page of a registration that has since been replaced: never written."""
        return task.doc_id in self.current and task.sha256 != self.current[task.doc_id]

    def handle(self, task: PageTask, pending: deque) -> None:
        """Register `task`'s file again and queue its new pages in place of the old ones."""
        from pipeline.ingest.registration import DocumentRegistrar

        log.warning(
            "%s changed while this run was reading it; doing it again from its new content",
            printable(task.relpath),
        )
        before = self.store.known_document(task.relpath)
        registrar = DocumentRegistrar(self.store, self.out_dir, self.ingest, self.new_pool)
        registrar.reregister(SourceFile(Path(task.path), task.relpath))
        after = self.store.known_document(task.relpath)
        if before and after and after.state == "ok" and after.sha256 == before.sha256:
            pending.appendleft(task)  # changed back before it was read again: nothing to redo
            return
        fresh = self.store.pending_pages(doc_id=task.doc_id)
        self.current[task.doc_id] = after.sha256 if after and after.state == "ok" else None
        kept = [t for t in pending if t.doc_id != task.doc_id]
        pending.clear()
        pending.extend(fresh + kept)
