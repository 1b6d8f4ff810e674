"""Where a page's files go, and how they get there without ever being half-written.

Page `n` of input `rel/path/a.pdf` goes to `OUT/pages/rel/path/a.pdf/000n.alto.xml` and
`.../000n.txt`: the input file name becomes a folder, so `a.pdf` and `a.tif` never collide and
a file never shares a name with a folder. Name components that are not valid UTF-8 (or are
control characters) are escaped as `%XX`, with `%` itself as `%25`, so the mapping is
injective, every output name is printable, and no input name can lead outside OUT.

Files are written to a `.tmp-*` sibling, fsynced, renamed over the final name and the folder
fsynced: a crash leaves the old file or the new one, plus at worst a stale temp file that
`remove_stale_temp_files` recognises.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.names import escape_component
from pipeline.outputs.alto import PageMeta, build_alto, lines_text, normalize_text
from pipeline.outputs.alto_layout import lines_mode
from pipeline.records import Recognition

__all__ = ["escape_component"]  # defined in .names, which alto.py can import without a cycle

PAGES_DIR = "pages"
TEMP_PREFIX = ".tmp-"
SUFFIXES = {"alto": ".alto.xml", "txt": ".txt"}
DEFAULT_FORMATS = ("alto", "txt")


def output_folder(out_dir: Path, relpath: str) -> Path:
    """`OUT/pages/<escaped relpath components>`; refuses names that could leave OUT."""
    if not relpath or relpath.startswith("/"):
        raise ValueError(f"input path {relpath!r} must be relative to its input folder")
    parts = relpath.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise ValueError(f"input path {relpath!r} has an empty, '.' or '..' component")
    return Path(out_dir, PAGES_DIR, *(escape_component(p) for p in parts))


# The longest name a page folder holds: the temp file of a page numbered past 9999.
_LONGEST_NAME = len(f"{TEMP_PREFIX}{secrets.token_hex(6)}-{10**6:04d}{SUFFIXES['alto']}")


def output_path_too_long(out_dir: Path, relpath: str) -> str | None:
    """Why the page files of input `relpath` cannot be written, when their paths would pass the
    system's limit (a deep input tree under a deeper OUT); None when they fit. Checked when the
    input is registered, so that input fails alone instead of the write stopping the run."""
    folder = output_folder(out_dir, relpath)
    try:
        limit = os.pathconf(out_dir, "PC_PATH_MAX")  # bytes, its terminating NUL included
    except (OSError, ValueError):
        limit = 4096
    needed = len(os.fsencode(folder)) + 1 + _LONGEST_NAME
    if needed < limit:
        return None
    return (
        f"output path too long: its page files need paths of {needed} bytes, over the system's "
        f"limit of {limit - 1}; move it to a shallower folder or choose a shorter --out"
    )


def page_output_paths(
    out_dir: Path, relpath: str, page_number: int, formats: Iterable[str] = DEFAULT_FORMATS
) -> dict[str, Path]:
    """{format: path} for page `page_number` (1-based) of input `relpath`."""
    if page_number < 1:
        raise ValueError(f"page numbers start at 1, got {page_number}")
    folder = output_folder(out_dir, relpath)
    paths = {}
    for fmt in formats:
        if fmt not in SUFFIXES:
            raise ValueError(f"unknown output format {fmt!r}; known: {', '.join(SUFFIXES)}")
        paths[fmt] = folder / f"{page_number:04d}{SUFFIXES[fmt]}"
    return paths


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(folder: Path) -> None:
    """mkdir -p, fsyncing each parent that gained an entry, so the new path survives a crash."""
    if folder.is_dir():
        return
    _make_dirs(folder.parent)
    try:
        folder.mkdir()
    except FileExistsError:
        if not folder.is_dir():
            raise
        return
    fsync_dir(folder.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` all at once: readers and crashes see old or new, never half."""
    path = Path(path)
    _make_dirs(path.parent)
    tmp = path.with_name(f"{TEMP_PREFIX}{secrets.token_hex(6)}-{path.name}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def remove_stale_temp_files(out_dir: Path, relpath: str | None = None) -> int:
    """Delete `.tmp-*` files a crashed run left under OUT/pages (or under one input's folder,
    which is cheaper on huge collections); returns how many.

    Call only while holding the run lock: a live run's temp files look the same.
    """
    top = Path(out_dir, PAGES_DIR) if relpath is None else output_folder(out_dir, relpath)
    removed = 0
    for root, _dirs, files in os.walk(top):
        for name in files:
            if name.startswith(TEMP_PREFIX):
                Path(root, name).unlink(missing_ok=True)
                removed += 1
    return removed


def remove_document_outputs(out_dir: Path, relpath: str) -> bool:
    """Delete every output of one input (its folder under OUT/pages), e.g. when its content
    changed and its page count may have shrunk; returns whether there was anything to delete.

    The folder is named after the input file, so it holds only that document's pages.
    """
    folder = output_folder(out_dir, relpath)
    if not folder.is_dir() or folder.is_symlink():
        return False
    shutil.rmtree(folder)
    fsync_dir(folder.parent)
    return True


def page_text(recognition: Recognition, layout: Any = None) -> bytes:
    """The TXT file's bytes: the normalised text and a final newline, UTF-8; a page read line by
    line holds its lines' texts in reading order, exactly as its ALTO reads back."""
    if lines_mode(recognition, layout):
        return (lines_text(recognition, layout) + "\n").encode("utf-8")
    return (normalize_text(recognition.text) + "\n").encode("utf-8")


def write_page_outputs(
    out_dir: Path,
    relpath: str,
    page_number: int,
    recognition: Recognition,
    page_meta: PageMeta,
    formats: Iterable[str] = DEFAULT_FORMATS,
) -> list[Path]:
    """Write every requested file of one page atomically; returns their paths.

    Mark the page done in the job store only after this returns.
    """
    if page_meta.page_number != page_number:
        raise ValueError(f"page_meta is for page {page_meta.page_number}, not {page_number}")
    paths = page_output_paths(out_dir, relpath, page_number, formats)
    for fmt, path in paths.items():
        if fmt == "alto":
            data = build_alto(recognition, page_meta)
        else:
            data = page_text(recognition, page_meta.layout)
        write_atomic(path, data)
    return list(paths.values())


def page_outputs_complete(
    out_dir: Path, relpath: str, page_number: int, formats: Iterable[str] = DEFAULT_FORMATS
) -> bool:
    """True when every requested file of the page exists and is not empty."""
    for path in page_output_paths(out_dir, relpath, page_number, formats).values():
        try:
            if path.stat().st_size == 0:
                return False
        except FileNotFoundError:
            return False
    return True
