"""The job store's record of the inputs themselves: skipped files and removed sources.

Kept apart from `store.py` (pages and documents); each function runs inside the caller's
write transaction. Both tables came with schema version 2: a version-1 store opened read-only
has neither, and `input_notes` then reports nothing.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline.jobs.records import SkippedFile, SkippedFiles
from pipeline.names import db_text, py_text


@dataclass(frozen=True)
class InputNotes:
    skipped: SkippedFiles = SkippedFiles(0, [])
    removed: list[str] = field(default_factory=list)
    removed_ok: int = 0
    removed_failed: int = 0
    not_removed: str = ""  # SQL that leaves removed documents out, where the table exists


def replace_skipped(db: sqlite3.Connection, skipped: Iterable[tuple[str, str, str]]) -> None:
    """This discovery's (relpath, path, reason) of files that are not pages."""
    now = time.time()
    db.execute("DELETE FROM skipped_files")
    db.executemany(
        "INSERT OR REPLACE INTO skipped_files (relpath, path, reason, updated_at) "
        "VALUES (?, ?, ?, ?)",
        ((db_text(rel), db_text(path), reason, now) for rel, path, reason in skipped),
    )
    # A file an older version recorded as a failed document is now only skipped.
    db.execute(
        "DELETE FROM documents WHERE state = 'failed' "
        "AND relpath IN (SELECT relpath FROM skipped_files)"
    )


def mark_sources_removed(db: sqlite3.Connection, present: set[str]) -> list[str]:
    """Documents not in `present` become "source removed"; returns the newly removed.

    Their done pages stay; pages not done are dropped (nothing can do them), and come back
    pending if the file reappears (`JobStore.sync_document`).
    """
    rows = db.execute(
        "SELECT id, relpath FROM documents WHERE id NOT IN (SELECT doc_id FROM removed_sources)"
    ).fetchall()
    gone = [(doc_id, py_text(rel)) for doc_id, rel in rows if py_text(rel) not in present]
    now = time.time()
    db.executemany(
        "INSERT INTO removed_sources (doc_id, removed_at) VALUES (?, ?)",
        ((doc_id, now) for doc_id, _ in gone),
    )
    db.executemany(
        "DELETE FROM pages WHERE doc_id = ? AND state != 'done'", ((doc_id,) for doc_id, _ in gone)
    )
    return [rel for _, rel in gone]


def prune_removed(db: sqlite3.Connection) -> list[str]:
    """`--prune`: forget documents whose source is gone; returns their relpaths."""
    rows = db.execute(
        "SELECT relpath FROM documents WHERE id IN (SELECT doc_id FROM removed_sources)"
    ).fetchall()
    db.execute("DELETE FROM documents WHERE id IN (SELECT doc_id FROM removed_sources)")
    return [py_text(row[0]) for row in rows]


def input_notes(db: sqlite3.Connection, limit: int) -> InputNotes:
    """Skipped files (the first `limit`) and removed sources, for `summary()`."""
    try:
        removed_ok, removed_failed = db.execute(
            "SELECT COALESCE(SUM(d.state = 'ok'), 0), COALESCE(SUM(d.state = 'failed'), 0) "
            "FROM removed_sources r JOIN documents d ON d.id = r.doc_id"
        ).fetchone()
    except sqlite3.OperationalError:  # no such table: a version-1 store, read-only
        return InputNotes()
    removed = [
        py_text(row[0])
        for row in db.execute(
            "SELECT d.relpath FROM removed_sources r JOIN documents d ON d.id = r.doc_id "
            "ORDER BY d.relpath"
        )
    ]
    count = db.execute("SELECT COUNT(*) FROM skipped_files").fetchone()[0]
    files = [
        SkippedFile(py_text(rel), reason)
        for rel, reason in db.execute(
            "SELECT relpath, reason FROM skipped_files ORDER BY relpath LIMIT ?", (limit,)
        )
    ]
    return InputNotes(
        SkippedFiles(count, files),
        removed,
        removed_ok,
        removed_failed,
        "AND id NOT IN (SELECT doc_id FROM removed_sources)",
    )
