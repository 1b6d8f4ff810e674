"""Inputs overwritten while a run reads them: the run registers the file again.

Its old outputs and pages go, its new pages are queued, and pages of the old registration still
in flight are dropped instead of written (the loaders notice the change:
`pipeline.ingest.source_changes`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.ingest.documents import IngestSettings, SourceFile
from pipeline.ingest.registration import DocumentRegistrar
from pipeline.jobs.backend import JobBackend
from pipeline.jobs.records import PageTask, printable
from pipeline.runner.pending import PendingPages

log = logging.getLogger("anandasky")


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

    def handle(self, task: PageTask, pending: PendingPages) -> None:
        """Register `task`'s file again and queue its new pages in place of the old ones."""
        log.warning(
            "%s changed while this run was reading it; doing it again from its new content",
            printable(task.relpath),
        )
        before = self.store.known_document(task.relpath)
        registrar = DocumentRegistrar(self.store, self.out_dir, self.ingest, self.new_pool)
        registrar.reregister(SourceFile(Path(task.path), task.relpath))
        after = self.store.known_document(task.relpath)
        if before and after and after.state == "ok" and after.sha256 == before.sha256:
            pending.give_back(task)  # changed back before it was read again: nothing to redo
            return
        fresh = self.store.pending_pages(doc_id=task.doc_id)
        self.current[task.doc_id] = after.sha256 if after and after.state == "ok" else None
        pending.replace_document(task.doc_id, fresh)
