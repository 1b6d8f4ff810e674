"""The job store: which documents and pages exist, which are done, and under which settings.

One SQLite database in WAL mode per output folder (`OUT/.anandasky/jobs.sqlite`). WAL lets
`status` and `export` read a consistent snapshot while a run writes, and a commit per finished
page costs little with `synchronous=NORMAL`. One run at a time owns the folder through an OS lock
(`flock` on `OUT/.anandasky/run.lock`), which the kernel drops when the process dies, so a crash
never leaves a stale lock behind.

`JobStore` implements `pipeline.jobs.backend.JobBackend`: the work queue, the input registry and
the catalogue each live in their own module (`sqlite_queue`, `sqlite_registry`,
`sqlite_catalogue`); this one opens the store and keeps the run's settings and fingerprint.
Consumers get it through `pipeline.jobs.open_for_run` / `open_catalogue`, never by name.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from pipeline.errors import ConfigMismatch
from pipeline.jobs.backend import JobBackend
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
from pipeline.jobs.sqlite_catalogue import SqliteCatalogue
from pipeline.jobs.sqlite_queue import SqliteWorkQueue
from pipeline.jobs.sqlite_registry import SqliteRegistry


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


class JobStore(SqliteWorkQueue, SqliteRegistry, SqliteCatalogue, JobBackend):
    """SQLite job store of one output folder. Open with `JobStore.open(out_dir)`."""

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

    def check_fingerprint(
        self, fingerprint: dict, *, new_config: bool, implied: dict | None = None
    ) -> list[str]:
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
        implied = implied or {}
        # A key an older store lacks, whose value that version always had (`implied`), must
        # still have that value: a store of page-mode results is not continued in lines mode.
        same_as_implied = all(new[key] == implied.get(key, new[key]) for key in added)
        if (
            added
            and same_as_implied
            and not new_config
            and all(old[key] == new.get(key) for key in old)
        ):
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
