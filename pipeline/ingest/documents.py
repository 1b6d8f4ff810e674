"""The ingest stage: find input files, identify them by content, and load one page at a time.

A collection is whatever the archivist points at: files and folder trees, with scans whose
extensions lie, names that are not UTF-8, and files that are corrupt, encrypted or hostile.
`discover` lists the files, `probe_document` says what one is (format, hash, page count) without
painting a pixel, and `load_page` produces one upright RGB page. Unusable input raises
`DocumentError` or `PageError` with a short `reason` and a `detail` saying what to do; the caller
knows which file and page it asked for and puts them in front of the message.

PDF rasterizing lives in `pipeline.ingest.rasterize`, raster images in `pipeline.ingest.images`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from pipeline.errors import BadArguments, DocumentError
from pipeline.ingest.images import count_image_pages, load_image_page, open_error
from pipeline.ingest.rasterize import RASTERIZERS, count_pdf_pages, render_pdf_page, require_poppler
from pipeline.ingest.selection import (
    PDF_HEADER_WINDOW,
    InputFilter,
    holds_job_store,
    skip_reason,
    sniff_format,
)
from pipeline.jobs.records import printable

log = logging.getLogger(__name__)

_HASH_CHUNK = 1 << 20
NOT_REGULAR = "not a regular file"  # how a skipped FIFO, socket or device's reason starts


@dataclass(frozen=True)
class SourceFile:
    """One input file: `relpath` (posix) is where its outputs go, mirroring the input tree.

    `skipped` says why a file that is not a page (by name and content, or by `--include`/
    `--exclude`, or a FIFO, socket or device) is only listed; None for a page file.
    """

    path: Path
    relpath: str
    skipped: str | None = None


@dataclass(frozen=True)
class IngestSettings:
    """How pages are produced; all of it except the password is part of a run's fingerprint."""

    dpi: int = 300
    rasterizer: str = "pdfium"
    pdf_password: str | None = None
    max_image_pixels: int = 250_000_000
    """Images whose header promises more pixels are refused undecoded (decompression bombs);
    PDF pages are painted at a lower resolution instead, since their cost is known up front
    (unless not even 10 DPI fits: `rasterize.check_size`)."""

    def __post_init__(self) -> None:
        if self.dpi <= 0:
            raise BadArguments(f"--dpi {self.dpi}: use a positive resolution, e.g. 300")
        if self.rasterizer not in RASTERIZERS:
            raise BadArguments(f"--rasterizer {self.rasterizer}: use pdfium or poppler")
        if self.max_image_pixels <= 0:
            raise BadArguments(f"--max-image-pixels {self.max_image_pixels}: use a positive limit")


@dataclass(frozen=True)
class DocumentInfo:
    kind: str  # "pdf" | "image"
    format: str  # "PDF", "TIFF", "JPEG", "PNG", "JPEG2000", "WEBP", "BMP", "GIF"
    sha256: str
    size: int
    page_count: int


# -- discovery -----------------------------------------------------------------------------------


def discover(
    inputs: Sequence[Path],
    *,
    out_dir: Path | None = None,
    selection: InputFilter = InputFilter(),
) -> Iterator[SourceFile]:
    """Every regular file under `inputs`, depth-first in sorted name order, for a stable run.

    Hidden entries (dot-names) inside folders are skipped, as are symlinks that lead back to a
    folder being walked, `out_dir` and any other folder holding a job store (our own outputs are
    never inputs); FIFOs, sockets and devices are listed as skipped and never opened (reading
    one would hang). A broken symlink is listed
    so that it fails visibly as a document instead of vanishing. Files that are not pages, or
    that `selection` leaves out, are listed with `skipped` set. Missing inputs are reported
    before anything is listed.
    """
    roots: list[Path] = []
    for given in inputs:
        path = Path(os.path.abspath(os.fspath(given)))
        if not os.path.lexists(path):
            raise BadArguments(f"input not found: {given}; check the path")
        if path not in roots:
            roots.append(path)
    prefixes = _root_prefixes(roots) if len(roots) > 1 else [None] * len(roots)
    walk = _Walk(_folder_key(out_dir) if out_dir is not None else None, selection)
    return walk.roots(roots, prefixes)


def _folder_key(folder: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(folder)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


@dataclass(frozen=True)
class _Walk:
    out_key: tuple[int, int] | None
    selection: InputFilter

    def roots(self, roots: list[Path], prefixes: list[str | None]) -> Iterator[SourceFile]:
        for root, prefix in zip(roots, prefixes, strict=True):
            if root.is_dir():
                for path, rel in self._walk_dir(root, (), set()):
                    relpath = "/".join((prefix, *rel) if prefix else rel)
                    yield self._source(path, "/".join(rel), relpath)
            elif _is_listable_file(root) or special_file_kind(root):
                yield self._source(root, root.name, prefix or root.name)

    def _source(self, path: Path, rel: str, relpath: str) -> SourceFile:
        if not self.selection.selects(rel):
            return SourceFile(path, relpath, "left out by --include/--exclude")
        if kind := special_file_kind(path):  # listed, never opened: reading one would hang
            return SourceFile(path, relpath, f"{NOT_REGULAR} ({kind}); left out")
        return SourceFile(path, relpath, skip_reason(path))

    def _walk_dir(
        self, folder: Path, rel: tuple[str, ...], ancestors: set[tuple[int, int]]
    ) -> Iterator[tuple[Path, tuple[str, ...]]]:
        try:
            info = folder.stat()
            names = sorted(os.listdir(folder))
        except OSError as err:
            log.warning("skipping folder %s: %s", printable(str(folder)), err.strerror or err)
            return
        key = (info.st_dev, info.st_ino)
        if key in ancestors:
            log.warning("skipping %s: it links back to a folder above it", printable(str(folder)))
            return
        if key == self.out_key or holds_job_store(folder):
            log.info("not reading %s: it is an output folder", printable(str(folder)))
            return
        ancestors = ancestors | {key}
        for name in names:
            if name.startswith("."):
                continue
            path = folder / name
            if path.is_dir():
                yield from self._walk_dir(path, (*rel, name), ancestors)
            elif _is_listable_file(path) or special_file_kind(path):
                yield path, (*rel, name)


def _root_prefixes(roots: list[Path]) -> list[str]:
    """Each input's own name; inputs sharing a name get `NAME~PARENT` instead.

    Independent of the order of the inputs: enough parent folders are added (joined by `~`)
    to tell the same-named inputs apart. Names are compared case-insensitively so that two
    inputs never share an output folder on a case-insensitive file system; whatever still
    collides gets a hash of its absolute path.
    """
    names = [root.name or "input" for root in roots]
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        groups.setdefault(name.casefold(), []).append(index)
    prefixes = list(names)
    for members in groups.values():
        if len(members) > 1:
            for index in members:
                others = [roots[j] for j in members if j != index]
                prefixes[index] = _qualified(roots[index], others)
    counts: dict[str, int] = {}
    for prefix in prefixes:
        counts[prefix.casefold()] = counts.get(prefix.casefold(), 0) + 1
    for index, prefix in enumerate(prefixes):
        if counts[prefix.casefold()] > 1:
            raw = os.fsencode(roots[index])
            prefixes[index] = f"{prefix}~{hashlib.sha256(raw).hexdigest()[:8]}"
    return prefixes


def _qualified(root: Path, others: list[Path]) -> str:
    parents = root.parent.parts[1:]
    for k in range(1, len(parents) + 1):
        tail = [p.casefold() for p in parents[-k:]]
        if all([p.casefold() for p in other.parent.parts[1:][-k:]] != tail for other in others):
            return "~".join((root.name, *parents[-k:]))
    return root.name  # no parent tells them apart: the collision check hashes it


def special_file_kind(path: Path) -> str | None:
    """'a FIFO', 'a socket' or 'a ... device' for what must never be opened, else None.

    Such inputs are listed as skipped (with this kind) so that every input given is accounted
    for; opening one would hang (a FIFO with no writer) or never end (/dev/zero).
    """
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    for test, kind in _SPECIAL_KINDS:
        if test(mode):
            return kind
    return None


_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _is_listable_file(path: Path) -> bool:
    """Regular files and broken symlinks; never FIFOs, sockets or devices."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except FileNotFoundError:
        return path.is_symlink()
    except OSError:
        return True  # unreadable: let probe_document report why


# -- identification ------------------------------------------------------------------------------


def _read_identity(path: Path) -> tuple[str, str, int]:
    """Format, sha256 and size in one streamed pass over the file."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            head = f.read(PDF_HEADER_WINDOW)
            fmt = _format_of(path, head)
            digest.update(head)
            size = len(head)
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError as err:
        raise open_error(err) from err
    return fmt, digest.hexdigest(), size


def _sniff(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            return _format_of(path, f.read(PDF_HEADER_WINDOW))
    except OSError as err:
        raise open_error(err) from err


def _format_of(path: Path, head: bytes) -> str:
    if not head:
        raise DocumentError("empty file", "it has 0 bytes; copy it again from the source")
    fmt = sniff_format(head)
    if fmt is None:
        suffix = path.suffix.lower()
        named = f" although it is named {suffix}" if suffix else ""
        raise DocumentError(
            "unsupported format",
            f"its content is not PDF, TIFF, JPEG, PNG, JPEG 2000, WebP, BMP or GIF{named}; "
            "convert it to one of them or remove it",
        )
    return fmt


def probe_document(path: Path, settings: IngestSettings) -> DocumentInfo:
    """Identify, hash and count pages without painting any page."""
    fmt, sha256, size = _read_identity(path)
    if fmt == "PDF":
        if settings.rasterizer == "poppler":
            require_poppler()
        pages = count_pdf_pages(path, settings.pdf_password)
        return DocumentInfo("pdf", fmt, sha256, size, pages)
    pages = count_image_pages(path, fmt, settings.max_image_pixels)
    return DocumentInfo("image", fmt, sha256, size, pages)


def load_page(
    path: Path, page_index: int, settings: IngestSettings, max_pixels: int | None = None
) -> Image.Image:
    """One page (0-based) as an upright RGB image of at most `max_pixels` pixels."""
    fmt = _sniff(path)
    if fmt == "PDF":
        limit = settings.max_image_pixels
        if max_pixels is not None:
            limit = min(limit, max_pixels)
        return render_pdf_page(
            path,
            page_index,
            dpi=settings.dpi,
            rasterizer=settings.rasterizer,
            password=settings.pdf_password,
            pixel_limit=limit,
            page_limit=settings.max_image_pixels,
        )
    return load_image_page(path, fmt, page_index, settings.max_image_pixels, max_pixels)
