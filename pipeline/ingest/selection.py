"""Which files of an input tree are pages: names and content, `--include`/`--exclude`.

Archive folders hold more than scans: checksums, metadata, sidecar XML, thumbnails caches, a
previous run's output folder. Those are listed as skipped (not failed, exit code unchanged).
The rule: a file named like a page format (`.pdf`, `.tif`, `.jpg`, ...) is a page file and fails
visibly when it does not decode; a file with any other name (or none) is a page file exactly when
its first bytes are a page format (scanners and copies often drop or mangle extensions), and is
skipped otherwise.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PAGE_SUFFIXES = frozenset(
    (".pdf", ".tif", ".tiff", ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".jp2", ".j2k", ".j2c")
    + (".jpf", ".jpx", ".webp", ".bmp", ".dib", ".gif")
)
_SNIFF_BYTES = 1024


@dataclass(frozen=True)
class InputFilter:
    """`--include`/`--exclude` globs, matched against the path relative to the input argument.

    `*` also matches `/`; a pattern without `/` is also matched against the file name alone.
    A file is taken when it matches some include (or there are none) and no exclude.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def selects(self, relpath: str) -> bool:
        if self.include and not _matches_any(relpath, self.include):
            return False
        return not _matches_any(relpath, self.exclude)


def _matches_any(relpath: str, patterns: Iterable[str]) -> bool:
    name = relpath.rsplit("/", 1)[-1]
    for pattern in patterns:
        if fnmatch.fnmatchcase(relpath, pattern):
            return True
        if "/" not in pattern and fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def skip_reason(path: Path) -> str | None:
    """None for a page file (to be probed), else why the file is skipped.

    Unreadable files and broken links count as page files so that probing says what is wrong.
    """
    from pipeline.ingest.documents import sniff_format

    if path.suffix.lower() in PAGE_SUFFIXES:
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError:
        return None
    if sniff_format(head) is not None:
        return None
    kind = path.suffix.lower() or "no extension"
    return f"not a page file ({kind}, content is not PDF or an image)"


def holds_job_store(folder: Path | str) -> bool:
    """An output folder of ours (it has a job store): never read as input."""
    return os.path.isdir(os.path.join(folder, ".anandasky"))
