"""Which frames of a TIFF are pages, and what a damaged multi-page TIFF still has to give.

An incomplete copy of a 400-page scan is common in archives (an interrupted transfer, a full
disk). Its first pages are intact; the file ends, or is garbled, somewhere after them. Pillow's
`n_frames` then fails (or the last page decodes as silent garbage), which made the whole file
fail. Here the frames are walked one by one instead: the pages whose headers can be read are
pages, and the first frame that cannot be read counts as one more page that fails when loaded,
so the user sees exactly which page is lost (later pages, if any, cannot even be counted).
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

from PIL import Image

from pipeline.errors import DocumentError, InputError, PageError

_TIFF_NEW_SUBFILE_TYPE = 254
_SUBFILE_REDUCED = 0x1  # a thumbnail / lower-resolution copy of another frame
_SUBFILE_MASK = 0x4  # a transparency mask for another frame
_STRIP_OFFSETS, _STRIP_BYTE_COUNTS = 273, 279
_TILE_OFFSETS, _TILE_BYTE_COUNTS = 324, 325
_COPY_AGAIN = "copy the file again from the source"


@dataclass(frozen=True)
class Frames:
    """`pages`: frame numbers that are pages (their headers read fine). `damaged`: the frame
    after them cannot be read (the file is cut or garbled there); it is one more page, which
    fails when loaded. Pages after it, if any, are beyond reach."""

    pages: tuple[int, ...]
    damaged: bool = False

    @property
    def count(self) -> int:
        return len(self.pages) + self.damaged

    def frame_of(self, page_index: int) -> int:
        """The frame to seek for page `page_index`; PageError for the damaged page."""
        if self.damaged and page_index == len(self.pages):
            raise PageError(
                "truncated image",
                "the TIFF ends or is damaged before this page (an incomplete copy?), so this "
                f"page and any after it cannot be read; {_COPY_AGAIN}",
            )
        if not 0 <= page_index < len(self.pages):
            raise PageError(
                "no such page",
                f"page {page_index + 1} was asked for but the file has {self.count}; "
                "the file changed since it was registered, run again",
            )
        return self.pages[page_index]


def page_frames(image: Image.Image) -> Frames:
    """The pages of `image`: all TIFF frames except thumbnails and masks; one for other formats.

    The chain of page headers (IFDs) is followed in the file itself first: Pillow's own walk
    reads a header cut short as a shorter one and may then decode garbage, or fails on the
    whole file (`n_frames`). Leaves `image` on its first page.
    """
    if image.format != "TIFF":
        return Frames((0,))
    complete, damaged = header_chain(image.fp)
    pages: list[int] = []
    for frame in range(complete):
        try:
            image.seek(frame)
        except EOFError:  # Pillow saw the chain end (a loop back to an earlier page)
            break
        except Exception:  # a complete header whose content is garbled
            if frame == 0:
                raise
            damaged = True
            break
        subfile = image.tag_v2.get(_TIFF_NEW_SUBFILE_TYPE, 0)
        if not (isinstance(subfile, int) and subfile & (_SUBFILE_REDUCED | _SUBFILE_MASK)):
            pages.append(frame)
    if complete == 0:
        raise first_header_cut()
    image.seek(pages[0] if pages else 0)
    if not pages:  # only thumbnails and masks: read the first frame, as before
        pages.append(0)
    return Frames(tuple(pages), damaged)


def first_header_cut() -> DocumentError:
    """The error for a TIFF cut or damaged before its first page's header ends."""
    return DocumentError(
        "truncated image",
        "the TIFF ends or is damaged before its first page is complete, so no page can be "
        "read (an incomplete copy?); " + _COPY_AGAIN,
    )


def header_chain(fp: IO[bytes]) -> tuple[int, bool]:
    """How many page headers (IFDs) lie complete in the file, and whether the chain breaks
    (a header, or the next one it points to, runs past the end of the file, or it points back
    at a header already read: a loop, which no intact TIFF has, hides the pages after it)."""
    position = fp.tell()
    try:
        layout = _Layout.read(fp)
        offset, complete, seen = layout.first, 0, set()
        while offset:
            if offset in seen:
                return complete, True
            seen.add(offset)
            fp.seek(offset)
            raw = fp.read(layout.count_size)
            if len(raw) < layout.count_size:
                return complete, True
            entries = struct.unpack(layout.order + layout.count_fmt, raw)[0]
            link_at = offset + len(raw) + entries * layout.entry_size
            if link_at + layout.link_size > layout.size:
                return complete, True
            fp.seek(link_at)
            offset = struct.unpack(layout.order + layout.link_fmt, fp.read(layout.link_size))[0]
            complete += 1
        return complete, False
    finally:
        fp.seek(position)


def first_header_missing(fp: IO[bytes]) -> bool:
    """The file ends before its first page header starts: cut in page 1's data (writers such
    as libtiff put each header after its page's pixels). A header present but garbled, or cut
    within, is not told apart from a hostile one: Pillow's reason for refusing it stands."""
    position = fp.tell()
    try:
        layout = _Layout.read(fp)
        return layout.first + layout.count_size > layout.size
    finally:
        fp.seek(position)


@dataclass(frozen=True)
class _Layout:
    """Byte order and field sizes of a classic or Big TIFF, the first header's offset, the
    file's size."""

    order: str
    count_fmt: str
    entry_size: int
    link_fmt: str
    first: int
    size: int

    @property
    def count_size(self) -> int:
        return struct.calcsize(self.count_fmt)

    @property
    def link_size(self) -> int:
        return struct.calcsize(self.link_fmt)

    @classmethod
    def read(cls, fp: IO[bytes]) -> _Layout:
        size = fp.seek(0, os.SEEK_END)
        fp.seek(0)
        head = fp.read(16).ljust(16, b"\0")
        order = "<" if head[:2] == b"II" else ">"
        if struct.unpack(order + "H", head[2:4])[0] == 43:  # BigTIFF
            first = struct.unpack(order + "Q", head[8:16])[0]
            return cls(order, "Q", 20, "Q", first, size)
        return cls(order, "H", 12, "I", struct.unpack(order + "I", head[4:8])[0], size)


def check_page_data(image: Image.Image, kind: type[InputError]) -> None:
    """Refuse a TIFF page whose pixel data (strips or tiles) runs past the end of the file.

    Compressed pages of a cut file otherwise decode without an error into a half-blank page
    (libtiff fills what is missing), and the model would transcribe it as if it were whole.
    """
    if image.format != "TIFF":
        return
    size = _file_size(image)
    tags = image.tag_v2
    for offsets_tag, counts_tag in (
        (_STRIP_OFFSETS, _STRIP_BYTE_COUNTS),
        (_TILE_OFFSETS, _TILE_BYTE_COUNTS),
    ):
        offsets, counts = tags.get(offsets_tag), tags.get(counts_tag)
        if size is None or offsets is None or counts is None:
            continue
        offsets = offsets if isinstance(offsets, tuple) else (offsets,)
        counts = counts if isinstance(counts, tuple) else (counts,)
        end = max((o + c for o, c in zip(offsets, counts, strict=False)), default=0)
        if end > size:
            raise kind(
                "truncated image",
                f"the TIFF ends {end - size} bytes before this page's pixel data does "
                f"(an incomplete copy?); {_COPY_AGAIN}",
            )


def _file_size(image: Image.Image) -> int | None:
    try:
        return os.fstat(image.fp.fileno()).st_size
    except (AttributeError, OSError, ValueError):
        return None


@contextmanager
def libtiff_quiet(is_tiff: bool) -> Iterator[None]:
    """Keep libtiff's own messages off stderr while a TIFF page decodes.

    Decoding a page of a cut or garbled file, libtiff prints straight to file descriptor 2
    ("TIFFAdvanceDirectory: ... Error fetching directory count.", "LZWDecode: ... Strip 0 not
    terminated with EOI code."), a second line beside the one the run reports for the page.
    A page file either decodes or fails with that line, so what libtiff says adds nothing.
    The redirection holds for the whole process while the page decodes: loaders decode one page
    at a time, so only that page's messages are lost.
    """
    if not is_tiff:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
