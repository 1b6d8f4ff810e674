"""The job store read as a catalogue: counts for `status`, pages for `export`, streamed."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from operator import itemgetter

from pipeline.jobs.input_records import input_notes
from pipeline.jobs.records import (
    DeviceStats,
    DocumentPages,
    DonePage,
    FailedDocument,
    FailedPage,
    PageState,
    StoreSummary,
)
from pipeline.jobs.sqlite_base import SqliteBase
from pipeline.names import py_text as _py_text

PAGE_STATES = ("pending", "running", "done", "failed")


class SqliteCatalogue(SqliteBase):
    """`Catalogue` on SQLite: every report reads one snapshot."""

    def summary(self, *, max_failures: int | None = None) -> StoreSummary:
        """Counts from one snapshot; every query runs off an index, not a scan of done pages."""
        limit = -1 if max_failures is None else max_failures
        with self._read() as db:
            pages = dict.fromkeys(PAGE_STATES, 0)
            pages.update(db.execute("SELECT state, COUNT(*) FROM pages GROUP BY state"))
            docs_ok, docs_failed = db.execute(
                "SELECT COALESCE(SUM(state = 'ok'), 0), COALESCE(SUM(state = 'failed'), 0) "
                "FROM documents"
            ).fetchone()
            inputs = input_notes(db, limit)
            docs_ok -= inputs.removed_ok
            docs_failed -= inputs.removed_failed
            unfinished = db.execute(
                "SELECT COUNT(DISTINCT doc_id) FROM pages WHERE state IN ('pending', 'running')"
            ).fetchone()[0]
            with_failed = db.execute(
                "SELECT COUNT(DISTINCT doc_id) FROM pages WHERE state = 'failed' AND doc_id NOT IN "
                "(SELECT doc_id FROM pages WHERE state IN ('pending', 'running'))"
            ).fetchone()[0]
            devices = {
                dev or "?": DeviceStats(n, secs or 0.0, detect or 0.0)
                for dev, n, secs, detect in db.execute(
                    "SELECT device, COUNT(*), SUM(infer_s), "
                    "SUM(json_extract(timings, '$.detect_s')) FROM pages WHERE state = 'done' "
                    "GROUP BY device ORDER BY device"
                )
            }
            failed_docs = [
                FailedDocument(_py_text(rel), reason or "")
                for rel, reason in db.execute(
                    "SELECT relpath, reason FROM documents WHERE state = 'failed' "
                    f"{inputs.not_removed} ORDER BY relpath LIMIT ?",
                    (limit,),
                )
            ]
            failed_pages = [
                FailedPage(_py_text(rel), index + 1, error or "")
                for rel, index, error in db.execute(
                    "SELECT d.relpath, p.page_index, p.error FROM pages p "
                    "JOIN documents d ON d.id = p.doc_id WHERE p.state = 'failed' "
                    "ORDER BY d.relpath, p.page_index LIMIT ?",
                    (limit,),
                )
            ]
        documents = {
            "pending": unfinished,
            "done": docs_ok - unfinished - with_failed,
            "some_pages_failed": with_failed,
            "failed": docs_failed,
            "source_removed": len(inputs.removed),
        }
        return StoreSummary(
            documents, pages, devices, failed_docs, failed_pages, inputs.skipped, inputs.removed
        )

    def done_pages(self) -> Iterator[DonePage]:
        """Done pages in document/page order, streamed (one snapshot, no list of millions)."""
        with self._mutex:
            cursor = self._conn.cursor()
            cursor.execute(
                "SELECT p.id, d.relpath, d.path, p.page_index, d.page_count, p.device, p.timings, "
                "p.confidence, p.num_tokens, p.stop_reason, p.finished_at "
                "FROM pages p JOIN documents d ON d.id = p.doc_id "
                "WHERE p.state = 'done' ORDER BY d.relpath, p.page_index"
            )
        try:
            while rows := cursor.fetchmany(1000):
                for r in rows:
                    timings = json.loads(r[6]) if r[6] else {}
                    yield DonePage(
                        r[0], _py_text(r[1]), _py_text(r[2]), r[3], r[4], r[5], timings, *r[7:]
                    )
        finally:
            cursor.close()

    def document_pages(self) -> Iterator[DocumentPages]:
        """Every document with its pages' states: one statement, so one snapshot, streamed a
        document at a time (an index walk in relpath/page order, no sort of the pages)."""
        with self._mutex:
            cursor = self._conn.execute(
                "SELECT d.id, d.relpath, d.path, d.state, d.reason, d.page_count, d.sha256, "
                "d.size, p.page_index, p.state, p.error, p.finished_at "
                "FROM documents d LEFT JOIN pages p ON p.doc_id = d.id "
                "ORDER BY d.relpath, p.page_index"
            )
        try:
            rows = itertools.chain.from_iterable(iter(lambda: cursor.fetchmany(1000), []))
            for _, group in itertools.groupby(rows, key=itemgetter(0)):
                r, *more = group
                pages = tuple(PageState(*p[8:]) for p in (r, *more) if p[8] is not None)
                yield DocumentPages(_py_text(r[1]), _py_text(r[2]), *r[3:8], pages)
        finally:
            cursor.close()
