"""The delivery folder DIR: which files the export owns there, and writing them incrementally.

`DIR/.anandasky-export.json` (the manifest) records, per document, a fingerprint of everything
its files were made from (store state, page files' size and mtime, options) and the files
written with their SHA-256. A re-export skips a document whose fingerprint is unchanged without
reading its pages, rewrites a file only when its bytes differ, and deletes files it wrote
earlier that are no longer part of the delivery (a document deselected, a page gone). Files in
DIR that the export did not write are never touched. One export at a time holds DIR's lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import OutputAccessError, OutputInUse
from pipeline.outputs.page_files import TEMP_PREFIX, write_atomic

MANIFEST_NAME = ".anandasky-export.json"
LOCK_NAME = ".anandasky-export.lock"
MANIFEST_VERSION = 1


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def written_by_export(to: Path, err: OSError) -> bool:
    """Whether `err` is about DIR or the DIR.zip beside it (the export's writes), or names no
    file (a full disk fails a write or fsync without one); reading OUT fails elsewhere."""
    if not err.filename:
        return True
    path = Path(os.path.abspath(os.fsdecode(err.filename)))
    return path.is_relative_to(to) or (
        path.parent == to.parent and path.name.endswith(f"{to.name}.zip")
    )


def delivery_access_error(to: Path, err: OSError) -> OutputAccessError:
    """One line for a delivery folder that cannot be written: where, why, what to do (exit 5)."""
    cause = err.strerror or str(err)
    name = err.filename2 or err.filename  # a rename's target says more than its temp file
    where = f" ({os.fsdecode(name)})" if name else ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = "free space there and export again: files already delivered are kept"
    else:
        advice = "choose a writable --to, or fix its permissions or mount, and export again"
    return OutputAccessError(
        f"the delivery folder {to} cannot be written: {cause}{where}; {advice}"
    )


@contextlib.contextmanager
def locked(to: Path) -> Iterator[None]:
    """Hold DIR's export lock (the kernel drops it if the process dies)."""
    to.mkdir(parents=True, exist_ok=True)
    fd = os.open(to / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputInUse(
                f"another export is writing to {to}; wait for it to finish, then export again"
            ) from None
        yield
    finally:
        os.close(fd)


class Delivery:
    """Files of one delivery folder, compared before writing, counted for the summary."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.written = self.unchanged = self.removed = 0
        self._old: dict[str, dict] = {}
        self._new: dict[str, dict] = {}
        self.archive_key: str | None = None
        try:
            data = json.loads((root / MANIFEST_NAME).read_bytes())
            if data.get("version") == MANIFEST_VERSION:
                self._old = data["documents"]
                self.archive_key = data.get("archive")
        except (OSError, ValueError, KeyError, AttributeError):
            pass  # no or unreadable manifest: every document is exported afresh

    def unchanged_entry(self, relpath: str, key: str) -> dict | None:
        """The stored report entry when the document's fingerprint and files are as recorded."""
        old = self._old.get(relpath)
        if old is None or old.get("key") != key:
            return None
        if not all((self.root / name).is_file() for name in old["files"]):
            return None
        self._new[relpath] = old
        self.unchanged += len(old["files"])
        return old["report"]

    def put(self, relpath: str, key: str, files: dict[str, bytes], entry: dict) -> None:
        """Make DIR hold exactly `files` (names relative to DIR) for this document."""
        for name, data in sorted(files.items()):
            if self.write(name, data):
                self.written += 1
            else:
                self.unchanged += 1
        hashes = {name: sha256(data) for name, data in files.items()}
        self._new[relpath] = {"key": key, "files": hashes, "report": entry}

    def write(self, name: str, data: bytes) -> bool:
        """Write DIR/name unless it already holds these bytes; returns whether it wrote."""
        path = self.root / name
        try:
            if path.stat().st_size == len(data) and path.read_bytes() == data:
                return False
        except OSError:
            pass
        write_atomic(path, data)
        return True

    def finish(self, archive_key: str | None) -> None:
        """Delete what earlier exports wrote and this one did not, then save the manifest."""
        keep = {name for doc in self._new.values() for name in doc["files"]}
        for doc in self._old.values():
            for name in doc["files"]:
                if name not in keep:
                    self._remove(name)
        self._old = self._new
        self.archive_key = archive_key
        manifest = {"version": MANIFEST_VERSION, "archive": archive_key, "documents": self._new}
        data = json.dumps(manifest, ensure_ascii=True, separators=(",", ":"))  # keeps key order
        self.write(MANIFEST_NAME, data.encode("ascii"))

    def members(self) -> dict[str, str]:
        """{name: SHA-256} of every document file in the delivery."""
        return {name: h for doc in self._new.values() for name, h in doc["files"].items()}

    def _remove(self, name: str) -> None:
        path = self.root / name
        try:
            path.unlink()
        except FileNotFoundError:
            return
        self.removed += 1
        folder = path.parent
        while folder != self.root:  # prune folders this left empty
            try:
                folder.rmdir()
            except OSError:
                break
            folder = folder.parent

    def remove_stale_temp_files(self) -> None:
        """`.tmp-*` files an export killed mid-write left (we hold the lock, so none is live)."""
        for root, _dirs, names in os.walk(self.root):
            for name in names:
                if name.startswith(TEMP_PREFIX):
                    Path(root, name).unlink(missing_ok=True)
