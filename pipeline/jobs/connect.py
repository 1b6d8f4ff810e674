"""Opening the job store's SQLite file, and saying exactly why when that fails.

Archives keep finished runs on read-only or write-once media, disks fill up in the middle of
10^6-page runs, and files get damaged: each of these must end in one line that names the path
and the cause, with its own exit code, and never in advice to throw away a healthy store.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib.resources
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import (
    AnandaSkyError,
    BadArguments,
    OutputAccessError,
    OutputInUse,
    StoreDamaged,
)

SCHEMA_VERSION = 2  # 2 added skipped_files and removed_sources; 1 stays readable
STATE_DIR = ".anandasky"
DB_NAME = "jobs.sqlite"
LOCK_NAME = "run.lock"
# Below this much free space an I/O failure is reported as "disk full": SQLite often says only
# "disk I/O error" when it cannot grow its -wal or -shm file.
_LOW_SPACE_BYTES = 1 << 20
_ACCESS_ERRNOS = {
    errno.EROFS: "is on a read-only file system",
    errno.EACCES: "cannot be written: permission denied",
    errno.EPERM: "cannot be written: operation not permitted",
    errno.ENOSPC: "cannot be written: the disk is full",
    errno.EDQUOT: "cannot be written: the disk quota is exceeded",
    errno.ENOTDIR: "is not a folder (a file is in the way)",
    errno.EEXIST: "exists and is not a folder",
    errno.EIO: "cannot be written: input/output error on the device",
}


def _low_on_space(path: Path) -> bool:
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free < _LOW_SPACE_BYTES
            except OSError:
                return False
    return False


def output_access_error(
    path: Path, err: OSError, what: str = "the output folder"
) -> AnandaSkyError:
    """One line for an OSError on OUT: the path, the cause in words, what to do."""
    code = err.errno
    if code not in (errno.ENOSPC, errno.EDQUOT) and _low_on_space(path):
        code = errno.ENOSPC
    cause = _ACCESS_ERRNOS.get(code or -1, f"cannot be written ({err.strerror or err})")
    if code in (errno.ENOSPC, errno.EDQUOT):
        advice = "free space there, then run the same command again: finished pages are kept"
    elif code in (errno.ENOTDIR, errno.EEXIST):
        advice = "choose another --out"
    else:
        advice = "choose a writable --out, or fix its permissions or mount"
    return OutputAccessError(f"{what} {path} {cause}; {advice}")


def ensure_writable_folder(out_dir: Path) -> None:
    """Create OUT and its state folder, or fail with the reason (exit 5)."""
    for folder in (out_dir, out_dir / STATE_DIR):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise output_access_error(folder, err) from None
        if not folder.is_dir():
            raise output_access_error(folder, FileExistsError(errno.EEXIST, "exists"))


def store_error(err: sqlite3.Error, db_path: Path) -> AnandaSkyError:
    """Classify an SQLite failure: disk full / not writable / damaged / not a store."""
    name = getattr(err, "sqlite_errorname", "") or ""
    text = str(err)
    if name.startswith("SQLITE_FULL") or "disk is full" in text or _low_on_space(db_path):
        return output_access_error(db_path, OSError(errno.ENOSPC, "disk full"), "the job store")
    if name.startswith("SQLITE_READONLY") or "readonly" in text:
        return output_access_error(db_path, OSError(errno.EROFS, "read-only"), "the job store")
    if name.startswith(("SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")):
        return output_access_error(db_path, OSError(errno.EACCES, text), "the job store")
    if name.startswith("SQLITE_IOERR"):
        return output_access_error(db_path, OSError(errno.EIO, text), "the job store")
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text:
        return StoreDamaged(
            f"the job store {db_path} is damaged ({text}): the record of which pages are done is "
            f"lost, the page files under pages/ are not. {_recover_advice(db_path)} to keep the "
            "damaged copy beside it and rebuild the store (every page is then redone)"
        )
    return BadArguments(f"{db_path} could not be read as an anandasky-batch job store ({text})")


def check_not_emptied(out_dir: Path, db_path: Path) -> None:
    """A 0-byte store beside page outputs lost its data: say so instead of starting afresh.

    SQLite creates the file empty and writes its header with the first transaction, so a run
    killed in between leaves 0 bytes legitimately; then no page output exists either.
    """
    try:
        empty = db_path.stat().st_size == 0
    except FileNotFoundError:
        return
    pages_dir = out_dir / "pages"
    if empty and pages_dir.is_dir() and any(pages_dir.iterdir()):
        raise StoreDamaged(
            f"the job store {db_path} is empty (0 bytes) but {pages_dir} holds page outputs: the "
            f"record of which pages are done was lost. {_recover_advice(db_path)} to rebuild "
            "it (pages are then redone), or restore the file from a backup"
        )


def _recover_advice(db_path: Path) -> str:
    """Only `run` has --recover-store, and `status`, `export`, `evaluate` and `resume` show
    this damage too: the advice spells out the `run` command, which fits every one of them."""
    out_dir = db_path.parent.parent
    return (
        f"Run `anandasky-batch run INPUTS --out {out_dir} --recover-store` (the same inputs and "
        "options as the first run)"
    )


def take_run_lock(out_dir: Path, lock_path: Path) -> int:
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise output_access_error(out_dir, err) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise OutputInUse(
            f"{out_dir} is in use by another anandasky-batch run{who}. Wait for it to finish or "
            f"stop it, then run again; `anandasky-batch status {out_dir}` shows its progress "
            "meanwhile. To run something else at the same time, choose another output folder."
        ) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as err:
        os.close(fd)
        raise output_access_error(out_dir, err) from None
    return fd


def _check_version(conn: sqlite3.Connection, db_path: Path) -> int:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise BadArguments(
            f"{db_path} was written by a newer anandasky-batch (job store version {version}, "
            f"this one reads up to {SCHEMA_VERSION}). Upgrade anandasky-batch to use this "
            "output folder."
        )
    return version


def connect_writer(db_path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as err:
        raise store_error(err, db_path) from None
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        if _check_version(conn, db_path) < SCHEMA_VERSION:
            ddl = importlib.resources.files("pipeline.schemas").joinpath("jobstore.sql")
            conn.executescript(
                f"BEGIN;\n{ddl.read_text(encoding='utf-8')}\n"
                f"PRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;"
            )
    except sqlite3.Error as err:
        conn.close()
        raise store_error(err, db_path) from None
    except BaseException:
        conn.close()
        raise
    return conn


def _open_readonly(db_path: Path, immutable: bool) -> sqlite3.Connection:
    uri = db_path.resolve().as_uri() + ("?immutable=1" if immutable else "?mode=ro")
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        if _check_version(conn, db_path) == 0:  # older versions read fine; their new tables
            raise BadArguments(  # simply do not exist yet
                f"{db_path} is not finished being created; run again once the run has started."
            )
    except BaseException:
        conn.close()
        raise
    return conn


def connect_readonly(out_dir: Path, db_path: Path) -> sqlite3.Connection:
    """Read beside a live run (`mode=ro`), or on read-only media where no run can be writing.

    A WAL database opened `mode=ro` needs its -shm file, which cannot be created on read-only
    media; there (and only there) the store is opened immutable, which is safe because nothing
    can change it.
    """
    if not db_path.is_file():
        raise BadArguments(
            f"{out_dir} holds no anandasky-batch job store ({db_path} is missing): nothing has "
            "run into this folder yet. Check the path, or start a run with it as output folder."
        )
    check_not_emptied(out_dir, db_path)  # else it reads as a store still being created
    try:
        return _open_readonly(db_path, immutable=False)
    except sqlite3.Error as err:
        if not os.access(db_path.parent, os.W_OK) or _on_readonly_mount(db_path):
            try:
                return _open_readonly(db_path, immutable=True)
            except sqlite3.Error as second:
                raise store_error(second, db_path) from None
        raise store_error(err, db_path) from None


def _on_readonly_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _damage(out_dir: Path, db_path: Path) -> str | None:
    """Why the store at `db_path` is unusable, or None when it is healthy (or absent)."""
    try:
        check_not_emptied(out_dir, db_path)
    except StoreDamaged:
        return "empty (0 bytes) beside page outputs"
    if not db_path.is_file():
        return None
    try:
        conn = sqlite3.connect(db_path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            verdict = conn.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        return str(err)
    return None if verdict == "ok" else verdict


def set_aside_damaged_store(db_path: Path) -> Path | None:
    """`--recover-store`: move a damaged store (and its -wal/-shm) aside; a healthy one stays.

    Returns where the damaged copy went, or None when there was nothing to recover.
    """
    out_dir = db_path.parent.parent
    if _damage(out_dir, db_path) is None:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = db_path.with_name(f"{db_path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{db_path}{suffix}")
        if source.exists():
            source.rename(Path(f"{target}{suffix}"))
    return target


@contextlib.contextmanager
def reported_store_errors(out_dir: Path) -> Iterator[None]:
    """Turn an SQLite failure anywhere inside into its one-line, exit-coded error."""
    try:
        yield
    except sqlite3.Error as err:
        raise store_error(err, Path(out_dir) / STATE_DIR / DB_NAME) from err
