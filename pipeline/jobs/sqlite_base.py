"""The SQLite connection every part of the job store shares: one lock, short transactions."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path


class SqliteBase:
    """A connection to OUT's job store, and the write lock if this process runs OUT."""

    def __init__(self, out_dir: Path, conn: sqlite3.Connection, lock_fd: int | None) -> None:
        self.out_dir = out_dir
        self.readonly = lock_fd is None
        self.damaged_copy: Path | None = None  # where --recover-store put a damaged store
        self._conn = conn
        self._lock_fd = lock_fd
        self._mutex = threading.RLock()  # the coordinator may call from several threads

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
