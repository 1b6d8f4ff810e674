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
PDF_HEADER_WINDOW = 1024  # the PDF spec lets the %PDF- header start anywhere in the first 1 KiB


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


def sniff_format(head: bytes) -> str | None:
    """The format the leading bytes announce (extensions are ignored), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") or head.startswith(b"\xff\x4f\xff\x51"):
        return "JPEG2000"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:2] == b"BM" and len(head) >= 26:
        return "BMP"
    if b"%PDF-" in head[:PDF_HEADER_WINDOW]:
        return "PDF"
    return None


def holds_job_store(folder: Path | str) -> bool:
    """An output folder of ours (it has a job store): never read as input."""
    return os.path.isdir(os.path.join(folder, ".anandasky"))
