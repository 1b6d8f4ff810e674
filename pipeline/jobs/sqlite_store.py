"""The job store: which documents and pages exist, which are done, and under which settings.

One SQLite database in WAL mode per output folder (`OUT/.anandasky/jobs.sqlite`). WAL lets
`status` and `export` read a consistent snapshot while a run writes, and a commit per finished
page costs little with `synchronous=NORMAL`. One run at a time owns the folder through an OS lock
(`flock` on `OUT/.anandasky/run.lock`), which the kernel drops when the process dies, so a crash
never leaves a stale lock behind.

`JobBackend` (in `job_backend.py`) is the interface the run coordinator talks to; `JobStore` is
its SQLite implementation. A Ray or remote backend implements the same methods.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from operator import itemgetter
from pathlib import Path

from pipeline.errors import ConfigMismatch
from pipeline.jobs import input_records as store_inputs
from pipeline.jobs.backend import (
    DeviceStats,
    DocumentPages,
    DonePage,
    FailedDocument,
    FailedPage,
    JobBackend,
    KnownDocument,
    PageState,
    PageTask,
    StoreSummary,
)
from pipeline.jobs.connect import (
    DB_NAME,
    LOCK_NAME,
    STATE_DIR,
    check_not_emptied,
    connect_readonly,
    connect_writer,
    ensure_writable_folder,
    set_aside_damaged_store,
    store_error,
    take_run_lock,
)
from pipeline.names import db_text as _db_text
from pipeline.names import py_text as _py_text

PAGE_STATES = ("pending", "running", "done", "failed")
INFER_KEY = "infer_s"  # the timings key whose sum `summary()` reports per device


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _show(value: object, missing: bool = False) -> str:
    text = "(not set)" if missing else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def describe_differences(old: dict, new: dict) -> list[str]:
    """`key: old -> new` for every (nested, dotted) key whose value differs."""
    a, b = _flatten(old), _flatten(json.loads(json.dumps(new)))
    return [
        f"{k}: {_show(a.get(k), k not in a)} -> {_show(b.get(k), k not in b)}"
        for k in sorted(a.keys() | b.keys())
        if a.get(k, ...) != b.get(k, ...)
    ]


class JobStore(JobBackend):
    """SQLite job store of one output folder. Open with `JobStore.open(out_dir)`."""

    def __init__(self, out_dir: Path, conn: sqlite3.Connection, lock_fd: int | None) -> None:
        self.out_dir = out_dir
        self.readonly = lock_fd is None
        self.damaged_copy: Path | None = None  # where --recover-store put a damaged store
        self._conn = conn
        self._lock_fd = lock_fd
        self._mutex = threading.RLock()  # the coordinator may call from several threads

    # ---- opening and closing -------------------------------------------------------------

    @classmethod
    def open(
        cls, out_dir: Path | str, *, exclusive: bool = True, recover: bool = False
    ) -> JobStore:
        """Open the store of `out_dir`.

        exclusive=True is for runs: creates the store if needed, takes the run lock (else
        OutputInUse) and puts pages a crashed run left 'running' back to 'pending'.
        exclusive=False is for `status`/`export` beside a live run: read-only, never blocks it.
        recover=True first moves a store that is damaged (or emptied) aside, so a fresh one
        is built; the pages are then redone.
        """
        out_dir = Path(out_dir)
        state_dir = out_dir / STATE_DIR
        db_path = state_dir / DB_NAME
        if not exclusive:
            return cls(out_dir, connect_readonly(out_dir, db_path), None)
        ensure_writable_folder(out_dir)
        lock_fd = take_run_lock(out_dir, state_dir / LOCK_NAME)
        try:
            set_aside = set_aside_damaged_store(db_path) if recover else None
            check_not_emptied(out_dir, db_path)
            conn = connect_writer(db_path)
            store = cls(out_dir, conn, lock_fd)
            store.damaged_copy = set_aside
            with store._write():
                conn.execute(
                    "UPDATE pages SET state = 'pending', started_at = NULL WHERE state = 'running'"
                )
        except sqlite3.Error as err:
            os.close(lock_fd)
            raise store_error(err, db_path) from None
        except BaseException:
            os.close(lock_fd)
            raise
        return store

    def close(self) -> None:
        with self._mutex:
            if self._conn is not None:
                self._conn.close()
                self._conn = None  # type: ignore[assignment]
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction; readers in other processes keep their snapshot meanwhile."""
        if self.readonly:
            raise RuntimeError("this JobStore was opened with exclusive=False and cannot write")
        with self._mutex:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # also when COMMIT itself failed (disk full)
                    self._conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """Several queries that must see one snapshot (a deferred transaction)."""
        with self._mutex:
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    # ---- run configuration ---------------------------------------------------------------

    def _config_row(self) -> tuple[str | None, str | None] | None:
        with self._mutex:
            return self._conn.execute(
                "SELECT fingerprint, settings FROM run_config WHERE id = 1"
            ).fetchone()

    def _set_config(self, db: sqlite3.Connection, column: str, value: dict) -> None:
        now, text = time.time(), json.dumps(value, sort_keys=True, ensure_ascii=False)
        db.execute(
            f"INSERT INTO run_config (id, {column}, created_at, updated_at) VALUES (1, ?, ?, ?) "
            f"ON CONFLICT (id) DO UPDATE SET {column} = excluded.{column}, "
            "updated_at = excluded.updated_at",
            (text, now, now),
        )

    def check_fingerprint(self, fingerprint: dict, *, new_config: bool) -> list[str]:
        """Refuse to mix results made under different settings in one output folder.

        With new_config=True a different fingerprint replaces the stored one and every page is
        redone, in one transaction. An unchanged fingerprint never resets anything, so rerunning
        the same command (flag included) after a crash resumes instead of starting over.

        A store made by an older version lacks keys added to the fingerprint since (dtype, impl,
        code_checksum): if every key it has still matches, the new keys are recorded from now on
        and returned, for the caller to say so; its pages are kept, as that version kept them.
        """
        row = self._config_row()
        old = json.loads(row[0]) if row and row[0] else None
        new = json.loads(json.dumps(fingerprint, sort_keys=True))
        if old == new:
            return []
        added = sorted(new.keys() - old.keys()) if old is not None else []
        if added and not new_config and all(old[key] == new.get(key) for key in old):
            with self._write() as db:
                self._set_config(db, "fingerprint", fingerprint)
            return added
        if old is not None and not new_config:
            changes = "; ".join(describe_differences(old, fingerprint))
            raise ConfigMismatch(
                f"{self.out_dir} holds results made with different settings ({changes}). "
                f"To continue with the settings it was started with, run "
                f"`anandasky-batch resume {self.out_dir}`; to redo every page under the new "
                "settings, run again with --new-config (existing results are overwritten)."
            )
        with self._write() as db:
            self._set_config(db, "fingerprint", fingerprint)
            if old is not None:
                db.execute(
                    "UPDATE pages SET state = 'pending', attempts = 0, device = NULL, "
                    "error = NULL, timings = NULL, infer_s = NULL, confidence = NULL, "
                    "num_tokens = NULL, stop_reason = NULL, started_at = NULL, finished_at = NULL"
                )
        return []

    def save_settings(self, settings: dict) -> None:
        with self._write() as db:
            self._set_config(db, "settings", settings)

    def stored_settings(self) -> dict | None:
        row = self._config_row()
        return json.loads(row[1]) if row and row[1] else None

    # ---- documents -----------------------------------------------------------------------

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
            store_inputs.replace_skipped(db, skipped)

    def mark_sources_removed(self, present: set[str]) -> list[str]:
        with self._write() as db:
            return store_inputs.mark_sources_removed(db, present)

    def prune_removed(self) -> list[str]:
        with self._write() as db:
            return store_inputs.prune_removed(db)

    # ---- pages ---------------------------------------------------------------------------

    def pending_pages(
        self, limit: int | None = None, *, doc_id: int | None = None
    ) -> list[PageTask]:
        """Pending pages (of one document if `doc_id`) in document (relpath) and page order,
        with their document's registration; `limit` bounds the list."""
        with self._mutex:
            rows = self._conn.execute(
                "SELECT p.id, p.doc_id, d.relpath, d.path, p.page_index, d.page_count, p.attempts, "
                "d.size, d.mtime_ns, d.sha256 FROM pages p JOIN documents d ON d.id = p.doc_id "
                "WHERE p.state = 'pending' AND (?1 IS NULL OR p.doc_id = ?1) "
                "ORDER BY d.relpath, p.page_index LIMIT ?2",
                (doc_id, -1 if limit is None else limit),
            ).fetchall()
        return [PageTask(r[0], r[1], _py_text(r[2]), _py_text(r[3]), *r[4:]) for r in rows]

    def mark_running(self, page_ids: Iterable[int], device: str) -> None:
        now = time.time()
        with self._write() as db:
            db.executemany(
                "UPDATE pages SET state = 'running', device = ?, started_at = ?, "
                "finished_at = NULL WHERE id = ?",
                ((device, now, pid) for pid in page_ids),
            )

    def mark_done(
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

    def record_failure(
        self, page_id: int, error: str, *, max_attempts: int, fatal: bool = False
    ) -> str:
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

    def requeue(self, page_ids: Iterable[int]) -> None:
        """Give running pages back without counting an attempt (graceful stop, lost worker)."""
        with self._write() as db:
            db.executemany(
                "UPDATE pages SET state = 'pending', started_at = NULL "
                "WHERE id = ? AND state = 'running'",
                ((pid,) for pid in page_ids),
            )

    def retry_failed_pages(self) -> int:
        """A new run gives every failed page of a readable document a fresh set of attempts."""
        with self._write() as db:
            return db.execute(
                "UPDATE pages SET state = 'pending', attempts = 0 WHERE state = 'failed'"
            ).rowcount

    # ---- reports -------------------------------------------------------------------------

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
            inputs = store_inputs.input_notes(db, limit)
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
                dev or "?": DeviceStats(n, secs or 0.0)
                for dev, n, secs in db.execute(
                    "SELECT device, COUNT(*), SUM(infer_s) FROM pages WHERE state = 'done' "
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


def _insert_pages(
    db: sqlite3.Connection, doc_id: int, page_count: int, *, missing_only: bool = False
) -> None:
    verb = "INSERT OR IGNORE" if missing_only else "INSERT"
    db.executemany(
        f"{verb} INTO pages (doc_id, page_index) VALUES (?, ?)",
        ((doc_id, i) for i in range(page_count)),
    )
