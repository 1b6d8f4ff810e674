"""Pending pages read from the work queue in bounded chunks, so memory does not grow with the
collection: a run over 10^7 pages holds a few thousand tasks at a time, not 10^7.

Each chunk is readied as it arrives: temp files a crash left in its documents' folders are
removed, and pages that already have complete files (a run stopped between writing a page and
recording it, or a store that lost its latest writes) are counted, so nothing is redone
silently.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from pipeline.jobs.backend import WorkQueue
from pipeline.jobs.records import PageTask
from pipeline.outputs.page_files import (
    output_folder,
    page_outputs_complete,
    remove_stale_temp_files,
)

log = logging.getLogger("anandasky")
CHUNK_PAGES = 4096


def _key(task: PageTask) -> tuple[str, int]:
    return task.relpath, task.page_index


class PendingPages:
    """The pages still to hand to loaders: a window onto the queue plus pages given back."""

    def __init__(
        self,
        queue: WorkQueue,
        out_dir: Path,
        formats,
        chunk: int = CHUNK_PAGES,
        *,
        files_expected: bool = False,
    ) -> None:
        self.queue = queue
        # --new-config made done pages pending again: their files are expected, not a crash's.
        self.files_expected = files_expected
        self.out_dir = out_dir
        self.formats = formats
        self.chunk = chunk
        self._buffer: deque[PageTask] = deque()
        self._cursor: tuple[str, int] | None = None
        self._exhausted = False
        self.remaining = queue.count_pending()  # what is left to pop; kept up to date

    def __bool__(self) -> bool:
        self._refill()
        return bool(self._buffer)

    def pop(self) -> PageTask:
        self._refill()
        self.remaining -= 1
        return self._buffer.popleft()

    def give_back(self, task: PageTask) -> None:
        """A page to load again before the rest (a retry after its loader died)."""
        self._buffer.appendleft(task)
        self.remaining += 1

    def replace_document(self, doc_id: int, fresh: Iterable[PageTask]) -> None:
        """A document registered again: its old pages go, its new ones up to the read position
        come first (those after it arrive with later chunks; once the queue has been read to its
        end there are no later chunks, so all of them come now)."""
        before = len(self._buffer)
        self._buffer = deque(task for task in self._buffer if task.doc_id != doc_id)
        seen = [t for t in fresh if self._exhausted or self._read_past(t)]
        self._buffer.extendleft(reversed(seen))
        self.remaining += len(self._buffer) - before

    def _read_past(self, task: PageTask) -> bool:
        return self._cursor is not None and _key(task) <= self._cursor

    def _refill(self) -> None:
        if self._buffer or self._exhausted:
            return
        tasks = self.queue.next_pending(self._cursor, self.chunk)
        if not tasks:
            self._exhausted = True
            return
        self._cursor = _key(tasks[-1])
        self._ready(tasks)
        self._buffer.extend(tasks)

    def _ready(self, tasks: list[PageTask]) -> None:
        folders: dict[str, bool] = {}
        unrecorded = 0
        for task in tasks:
            relpath = task.relpath
            if relpath not in folders:
                folders[relpath] = output_folder(self.out_dir, relpath).is_dir()
                if folders[relpath]:  # temp files exist only where a crash stopped a write
                    remove_stale_temp_files(self.out_dir, relpath)
            if (
                folders[relpath]
                and not self.files_expected
                and page_outputs_complete(self.out_dir, relpath, task.page_index + 1, self.formats)
            ):
                unrecorded += 1
        if unrecorded:
            log.warning(
                "%d page(s) already have output files in %s but the job store does not record "
                "them as done (a run stopped between writing and recording them, or the store "
                "lost its latest writes); they are redone and their files replaced",
                unrecorded,
                self.out_dir / "pages",
            )
