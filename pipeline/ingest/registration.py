"""Registering a collection's files in the job store: hash and count pages of what is new.

Unchanged files (same size and mtime as recorded) are trusted without reading them, so resuming
a run over 10^5 files costs one `stat` each. New or changed files are probed in the loader
processes; a file that crashes the reader (a decoder bug on hostile input) becomes a failed
document, and the rest of the collection is still registered. Files that are not pages are
recorded as skipped; documents whose file is gone as "source removed" (outputs kept unless
`--prune`).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from pipeline.errors import NothingToDo
from pipeline.ingest.documents import (
    NOT_REGULAR,
    DocumentInfo,
    IngestSettings,
    SourceFile,
    discover,
)
from pipeline.ingest.images import open_error
from pipeline.ingest.page_loading import LoadFailure, probe
from pipeline.ingest.selection import InputFilter
from pipeline.jobs.backend import JobBackend
from pipeline.jobs.records import printable
from pipeline.outputs.page_files import output_path_too_long, remove_document_outputs

log = logging.getLogger("anandasky")  # run.log: the runner's handlers are on this logger
CRASHED_READER = "crashed the document reader (a corrupt or hostile file); check or repair it"


def _stat_failure(path: Path, exc: OSError) -> str:
    """Why a listed file cannot even be stat'ed: mostly a symlink, broken or in a loop."""
    try:
        target = printable(os.readlink(path))
    except OSError:
        return str(open_error(exc))
    if exc.errno == errno.ELOOP:
        return (
            f"link loop: it points to {target}, which leads back to itself; "
            "point it at a file or remove it"
        )
    if isinstance(exc, FileNotFoundError):
        return (
            f"broken link: it points to {target}, which does not exist; fix the link or remove it"
        )
    return str(open_error(exc))


class DocumentRegistrar:
    def __init__(
        self,
        store: JobBackend,
        out_dir: Path,
        ingest: IngestSettings,
        new_pool: Callable[[], ProcessPoolExecutor],
        probe_fn: Callable[[str, IngestSettings], DocumentInfo | LoadFailure] = probe,
        *,
        selection: InputFilter = InputFilter(),
        prune: bool = False,
    ) -> None:
        self.store = store
        self.out_dir = out_dir
        self.ingest = ingest
        self.new_pool = new_pool
        self.probe_fn = probe_fn
        self.selection = selection
        self.prune = prune

    def register(self, inputs: list[Path], pool: ProcessPoolExecutor) -> ProcessPoolExecutor:
        """Register every input file; returns the pool to go on with (replaced after a crash).

        Raises NothingToDo when the inputs hold no page file at all.
        """
        to_probe, present, skipped = [], set(), []
        for source in discover(inputs, out_dir=self.out_dir, selection=self.selection):
            if source.skipped is not None:
                skipped.append((source.relpath, str(source.path), source.skipped))
                continue
            present.add(source.relpath)
            try:
                stat = source.path.stat()
            except OSError as exc:
                self._fail(source, _stat_failure(source.path, exc), None)
                continue
            if too_long := output_path_too_long(self.out_dir, source.relpath):
                self._fail(source, too_long, stat)
                continue
            known = self.store.known_document(source.relpath)
            if (
                known is not None
                and known.state != "failed"
                and not known.removed
                and known.size == stat.st_size
                and known.mtime_ns == stat.st_mtime_ns
            ):
                continue
            to_probe.append((source, stat))
        self._note_inputs(inputs, skipped, present)
        futures = [pool.submit(self.probe_fn, str(s.path), self.ingest) for s, _ in to_probe]
        for index, ((source, stat), future) in enumerate(zip(to_probe, futures, strict=True)):
            try:
                result = future.result()
            except BrokenProcessPool:
                pool.shutdown(wait=False, cancel_futures=True)
                return self._register_one_by_one(to_probe[index:])
            self._record(source, stat, result)
        return pool

    def _note_inputs(self, inputs: list[Path], skipped: list, present: set[str]) -> None:
        """Record skipped files and removed sources; `--prune` forgets the removed."""
        self.store.replace_skipped(skipped)
        for relpath, _, reason in skipped:
            # A FIFO or device among the inputs is a surprise worth a line on the terminal.
            level = logging.WARNING if reason.startswith(NOT_REGULAR) else logging.INFO
            log.log(level, "skipped %s: %s", printable(relpath), reason)
        if skipped:
            log.info(
                "%d file(s) skipped: not pages (`anandasky-batch status OUT` lists them)",
                len(skipped),
            )
        for relpath in self.store.mark_sources_removed(present):
            log.warning(
                "%s: source removed; its outputs are kept (run with --prune to remove them)",
                printable(relpath),
            )
        if self.prune:
            for relpath in self.store.prune_removed():
                remove_document_outputs(self.out_dir, relpath)
                log.info("%s: source removed; pruned its outputs and records", printable(relpath))
        if not present:
            given = ", ".join(printable(str(p)) for p in inputs)
            found = (
                f"{len(skipped)} file(s), none of them a PDF or an image" if skipped else "no files"
            )
            raise NothingToDo(f"nothing to do: {given} holds {found}; check the input path")

    def reregister(self, source: SourceFile) -> None:
        """A file overwritten during the run: probe it again and register what it holds now."""
        try:
            stat = source.path.stat()
        except OSError as exc:
            self._fail(source, _stat_failure(source.path, exc), None)
            return
        self._register_one_by_one([(source, stat)]).shutdown(wait=False, cancel_futures=True)

    def _register_one_by_one(self, remaining: list) -> ProcessPoolExecutor:
        """After a crash every queued probe is lost; redo them alone to find the culprit."""
        pool = self.new_pool()
        for source, stat in remaining:
            try:
                result = pool.submit(self.probe_fn, str(source.path), self.ingest).result()
            except BrokenProcessPool:
                pool.shutdown(wait=False, cancel_futures=True)
                pool = self.new_pool()
                result = LoadFailure(CRASHED_READER)
            self._record(source, stat, result)
        return pool

    def _record(self, source: SourceFile, stat, result: DocumentInfo | LoadFailure) -> None:
        if isinstance(result, LoadFailure):
            self._fail(source, result.message, stat)
            return
        known = self.store.known_document(source.relpath)
        if known is not None and known.sha256 != result.sha256:
            remove_document_outputs(self.out_dir, source.relpath)
        self.store.sync_document(
            relpath=source.relpath,
            path=str(source.path),
            sha256=result.sha256,
            size=result.size,
            mtime_ns=stat.st_mtime_ns,
            kind=result.kind,
            format=result.format,
            page_count=result.page_count,
        )

    def _fail(self, source: SourceFile, reason: str, stat) -> None:
        log.warning("%s: %s", printable(source.relpath), reason)
        self.store.fail_document(
            relpath=source.relpath,
            path=str(source.path),
            reason=reason,
            size=stat.st_size if stat else None,
            mtime_ns=stat.st_mtime_ns if stat else None,
        )
