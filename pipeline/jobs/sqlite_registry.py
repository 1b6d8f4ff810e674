"""The job store's record of the input documents: registered, failed, skipped, removed."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable

import pipeline.jobs.input_records as input_records
from pipeline.jobs.records import KnownDocument
from pipeline.jobs.sqlite_base import SqliteBase
from pipeline.names import db_text as _db_text
from pipeline.names import py_text as _py_text


class SqliteRegistry(SqliteBase):
    """`InputRegistry` on SQLite."""

    def known_document(self, relpath: str) -> KnownDocument | None:
        with self._mutex:
            row = self._conn.execute(
                "SELECT id, relpath, path, sha256, size, mtime_ns, page_count, state, reason, "
                "id IN (SELECT doc_id FROM removed_sources) FROM documents WHERE relpath = ?",
                (_db_text(relpath),),
            ).fetchone()
        if row is None:
            return None
        return KnownDocument(row[0], _py_text(row[1]), _py_text(row[2]), *row[3:9], bool(row[9]))

    def sync_document(
        self,
        *,
        relpath: str,
        path: str | os.PathLike,
        sha256: str,
        size: int,
        mtime_ns: int,
        kind: str,
        format: str,
        page_count: int,
    ) -> int:
        """Register a readable document; returns its id.

        Same content as before: its pages keep their state (only path/mtime are refreshed).
        New, changed, or previously failed: all its pages are (re)created pending.
        """
        values = (_db_text(path), sha256, size, mtime_ns, kind, format, page_count, time.time())
        with self._write() as db:
            row = db.execute(
                "SELECT id, sha256, state, page_count FROM documents WHERE relpath = ?",
                (_db_text(relpath),),
            ).fetchone()
            if row is None:
                doc_id = db.execute(
                    "INSERT INTO documents (path, sha256, size, mtime_ns, kind, format, "
                    "page_count, updated_at, relpath) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*values, _db_text(relpath)),
                ).lastrowid
                _insert_pages(db, doc_id, page_count)
                return doc_id
            doc_id = row[0]
            unchanged = row[1:] == (sha256, "ok", page_count)
            db.execute("DELETE FROM removed_sources WHERE doc_id = ?", (doc_id,))
            db.execute(
                "UPDATE documents SET path = ?, sha256 = ?, size = ?, mtime_ns = ?, kind = ?, "
                "format = ?, page_count = ?, updated_at = ?, state = 'ok', reason = NULL "
                "WHERE id = ?",
                (*values, doc_id),
            )
            if not unchanged:
                db.execute("DELETE FROM pages WHERE doc_id = ?", (doc_id,))
            # Back after being removed: the pages dropped then come back pending.
            _insert_pages(db, doc_id, page_count, missing_only=unchanged)
            return doc_id

    def fail_document(
        self,
        *,
        relpath: str,
        path: str | os.PathLike,
        reason: str,
        sha256: str | None = None,
        size: int | None = None,
        mtime_ns: int | None = None,
    ) -> None:
        """Record an unreadable document; pages it had belong to content that is gone."""
        with self._write() as db:
            db.execute(
                "INSERT INTO documents (relpath, path, sha256, size, mtime_ns, state, reason, "
                "updated_at) VALUES (?, ?, ?, ?, ?, 'failed', ?, ?) "
                "ON CONFLICT (relpath) DO UPDATE SET path = excluded.path, "
                "sha256 = excluded.sha256, size = excluded.size, mtime_ns = excluded.mtime_ns, "
                "kind = NULL, format = NULL, page_count = NULL, state = 'failed', "
                "reason = excluded.reason, updated_at = excluded.updated_at",
                (_db_text(relpath), _db_text(path), sha256, size, mtime_ns, reason, time.time()),
            )
            db.execute(
                "DELETE FROM pages WHERE doc_id = (SELECT id FROM documents WHERE relpath = ?)",
                (_db_text(relpath),),
            )
            db.execute(
                "DELETE FROM removed_sources WHERE doc_id = "
                "(SELECT id FROM documents WHERE relpath = ?)",
                (_db_text(relpath),),
            )

    def replace_skipped(self, skipped: Iterable[tuple[str, str, str]]) -> None:
        with self._write() as db:
            input_records.replace_skipped(db, skipped)

    def mark_sources_removed(self, present: set[str]) -> list[str]:
        with self._write() as db:
            return input_records.mark_sources_removed(db, present)

    def prune_removed(self) -> list[str]:
        with self._write() as db:
            return input_records.prune_removed(db)


def _insert_pages(
    db: sqlite3.Connection, doc_id: int, page_count: int, *, missing_only: bool = False
) -> None:
    verb = "INSERT OR IGNORE" if missing_only else "INSERT"
    db.executemany(
        f"{verb} INTO pages (doc_id, page_index) VALUES (?, ?)",
        ((doc_id, i) for i in range(page_count)),
    )
