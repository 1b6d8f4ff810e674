"""Inputs overwritten while a run reads them: noticed when a page is loaded, redone afresh.

A page is loaded long after its file was registered (hashed, pages counted). If the file now
holds other content, the page would be transcribed from the new content but written under the
old registration, or not exist at all. So each load first compares the file with its
registration (size and mtime, cheaply; the hash only when they differ). What the run does then
is `pipeline.runner.reregistration`'s business.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.jobs.records import PageTask

_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Registered:
    """What a page's file held when it was registered."""

    size: int
    mtime_ns: int
    sha256: str


@dataclass(frozen=True)
class SourceChanged:
    """A loader's answer: the file no longer holds the content it was registered with."""

    message: str = "the file changed since it was registered"


def registered_of(task: PageTask) -> Registered | None:
    if task.size is None or task.mtime_ns is None or task.sha256 is None:
        return None
    return Registered(task.size, task.mtime_ns, task.sha256)


def source_changed(path: Path, expect: Registered | None) -> SourceChanged | None:
    """None while `path` still holds the registered content (a touched file still does)."""
    if expect is None:
        return None
    try:
        info = os.stat(path)
        if (info.st_size, info.st_mtime_ns) == (expect.size, expect.mtime_ns):
            return None
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    except OSError:
        return None  # gone or unreadable: loading the page says so
    return None if digest.hexdigest() == expect.sha256 else SourceChanged()
