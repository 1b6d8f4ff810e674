"""The job store as a work queue: pending pages read in chunks, claimed, completed, failed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from pipeline.jobs.records import PageTask
from pipeline.jobs.sqlite_base import SqliteBase
from pipeline.names import db_text as _db_text
from pipeline.names import py_text as _py_text

INFER_KEY = "infer_s"  # the timings key whose sum `summary()` reports per device
_TASK_COLUMNS = (
    "p.id, p.doc_id, d.relpath, d.path, p.page_index, d.page_count, p.attempts, "
    "d.size, d.mtime_ns, d.sha256"
)


def _task(row: tuple) -> PageTask:
    return PageTask(row[0], row[1], _py_text(row[2]), _py_text(row[3]), *row[4:])


class SqliteWorkQueue(SqliteBase):
    """`WorkQueue` on SQLite; every state change is one short transaction."""

    def pending_pages(
        self, limit: int | None = None, *, doc_id: int | None = None
    ) -> list[PageTask]:
        """Pending pages (of one document if `doc_id`) in document (relpath) and page order,
        with their document's registration; `limit` bounds the list."""
        with self._mutex:
            rows = self._conn.execute(
                f"SELECT {_TASK_COLUMNS} FROM pages p JOIN documents d ON d.id = p.doc_id "
                "WHERE p.state = 'pending' AND (?1 IS NULL OR p.doc_id = ?1) "
                "ORDER BY d.relpath, p.page_index LIMIT ?2",
                (doc_id, -1 if limit is None else limit),
            ).fetchall()
        return [_task(r) for r in rows]

    def count_pending(self) -> int:
        with self._mutex:
            return self._conn.execute(
                "SELECT COUNT(*) FROM pages WHERE state = 'pending'"
            ).fetchone()[0]

    def next_pending(self, after: tuple[str, int] | None, limit: int) -> list[PageTask]:
        """A keyset page of the pending pages: the rest of the document `after` is in, then the
        documents after it, walking the relpath index (no sort), so a call costs O(limit)."""
        relpath, index = after if after is not None else ("", -1)
        columns = f"SELECT {_TASK_COLUMNS} FROM documents d CROSS JOIN pages p ON p.doc_id = d.id"
        with self._mutex:
            rows = self._conn.execute(
                f"{columns} WHERE d.relpath = ?1 AND p.state = 'pending' AND p.page_index > ?2 "
                "ORDER BY p.page_index LIMIT ?3",
                (_db_text(relpath), index, limit),
            ).fetchall()
            if len(rows) < limit:
                rows += self._conn.execute(
                    f"{columns} WHERE d.relpath > ?1 AND p.state = 'pending' "
                    "ORDER BY d.relpath, p.page_index LIMIT ?2",
                    (_db_text(relpath), limit - len(rows)),
                ).fetchall()
        return [_task(r) for r in rows]

    def claim(self, page_ids: Iterable[int], device: str) -> None:
        now = time.time()
        with self._write() as db:
            db.executemany(
                "UPDATE pages SET state = 'running', device = ?, started_at = ?, "
                "finished_at = NULL WHERE id = ?",
                ((device, now, pid) for pid in page_ids),
            )

    def complete(
        self,
        page_id: int,
        *,
        device: str,
        timings: dict,
        confidence: float | None,
        num_tokens: int,
        stop_reason: str,
    ) -> None:
        """Call only after the page's files are on disk (see outputs.write_atomic)."""
        infer = timings.get(INFER_KEY)
        with self._write() as db:
            db.execute(
                "UPDATE pages SET state = 'done', device = ?, timings = ?, infer_s = ?, "
                "confidence = ?, num_tokens = ?, stop_reason = ?, error = NULL, "
                "finished_at = ? WHERE id = ?",
                (
                    device,
                    json.dumps(timings, sort_keys=True),
                    infer,
                    confidence,
                    num_tokens,
                    stop_reason,
                    time.time(),
                    page_id,
                ),
            )

    def fail(self, page_id: int, error: str, *, max_attempts: int, fatal: bool = False) -> str:
        """Count a failed attempt; returns the page's new state, 'pending' (retry) or 'failed'."""
        with self._write() as db:
            row = db.execute("SELECT attempts FROM pages WHERE id = ?", (page_id,)).fetchone()
            if row is None:
                raise KeyError(f"no page with id {page_id} in the job store")
            attempts = row[0] + 1
            state = "failed" if fatal or attempts >= max_attempts else "pending"
            db.execute(
                "UPDATE pages SET state = ?, attempts = ?, error = ?, finished_at = ? WHERE id = ?",
                (state, attempts, error, time.time(), page_id),
            )
        return state

    def release(self, page_ids: Iterable[int]) -> None:
        """Give running pages back without counting an attempt (graceful stop, lost worker)."""
        with self._write() as db:
            db.executemany(
                "UPDATE pages SET state = 'pending', started_at = NULL "
                "WHERE id = ? AND state = 'running'",
                ((pid,) for pid in page_ids),
            )

    def retry_failed(self) -> int:
        """A new run gives every failed page of a readable document a fresh set of attempts."""
        with self._write() as db:
            return db.execute(
                "UPDATE pages SET state = 'pending', attempts = 0 WHERE state = 'failed'"
            ).rowcount
