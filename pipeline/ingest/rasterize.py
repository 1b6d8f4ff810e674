"""Render one PDF page to pixels with PDFium (default) or poppler's pdftoppm.

Every call opens the document, renders exactly one page and closes it again, so a loader never
holds a whole document's pixels in memory and a crash loses one page at most. PDFium also does
the cheap work for both rasterizers (opening, password check, page count, page geometry), so the
two rasterizers agree on what a document is and differ only in the pixels they paint.

Errors are `DocumentError` (the file cannot be opened at all) or `PageError` (this page cannot be
painted); the caller knows the file and page and puts them in front of the message.
"""

from __future__ import annotations

import math
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pypdfium2 as pdfium
from PIL import Image

from pipeline.errors import DocumentError, MissingDependency, PageError
from pipeline.ingest.images import open_error, shrink_to
from pipeline.layout.geometry import PAGE_SIZE_KEY

RASTERIZERS = ("pdfium", "poppler")
POINTS_PER_INCH = 72.0
POPPLER_TIMEOUT_S = 600
"""A page that pdftoppm cannot paint in ten minutes is a hostile page, not a slow machine."""

MIN_LEGIBLE_DPI = 10.0
"""Below this even large print is a pixel or two high: a page that fits --max-image-pixels only
at a lower resolution is a damaged page size (a MediaBox of kilometres), not a page to read."""

MAX_SIDE_PT = 100 / 0.0254 * POINTS_PER_INCH
"""100 m: the longest scrolls and roll scans are tens of metres; a longer side is damage."""

_DIAGNOSE_LIMIT = 16 * 1024 * 1024
"""Read at most this much of an unloadable PDF when guessing why PDFium refused it."""

# PDFium is not thread-safe, not even across different documents: one call at a time per process.
_PDFIUM_LOCK = threading.Lock()

_FLAT_DICT = re.compile(rb"<<[^<>]*>>")
_PAGES_TYPE = re.compile(rb"/Type\s*/Pages(?![A-Za-z])")
_COUNT = re.compile(rb"/Count\s+(\d+)")


@contextmanager
def _open_pdf(path: Path, password: str | None) -> Iterator[tuple[pdfium.PdfDocument, str | None]]:
    """Open with PDFium; yield the document and the password it needed (None if none).

    No password is tried first: PDFium rejects a wrong password even on a document that needs
    none, so the user's --pdf-password is only offered to documents that refuse to open
    without it, and owner-password-only PDFs open as usual.
    """
    used = None
    with _PDFIUM_LOCK:
        try:
            doc = _load(path, None)
        except pdfium.PdfiumError as err:
            if err.err_code != pdfium.raw.FPDF_ERR_PASSWORD or password is None:
                raise _load_error(path, err, password) from err
            try:
                doc = _load(path, password)
                used = password
            except pdfium.PdfiumError as err2:
                raise _load_error(path, err2, password) from err2
    try:
        yield doc, used
    finally:
        with _PDFIUM_LOCK:
            doc.close()


def _load(path: Path, password: str | None) -> pdfium.PdfDocument:
    try:
        return pdfium.PdfDocument(str(path), password=password)
    except OSError as err:
        raise open_error(err) from err


def _load_error(path: Path, err: pdfium.PdfiumError, password: str | None) -> DocumentError:
    """Turn PDFium's load error code into a reason the user can act on."""
    code = err.err_code
    if code == pdfium.raw.FPDF_ERR_PASSWORD:
        if password is None:
            return DocumentError(
                "encrypted", "the PDF needs a user password; pass it with --pdf-password"
            )
        return DocumentError(
            "encrypted",
            "the password given with --pdf-password does not open it; pass the right one",
        )
    if code == pdfium.raw.FPDF_ERR_SECURITY:
        return DocumentError(
            "encrypted",
            "it uses a security handler PDFium does not support; decrypt it first "
            "(e.g. qpdf --decrypt) and run again",
        )
    if code == pdfium.raw.FPDF_ERR_FILE:
        return DocumentError("unreadable file", "PDFium cannot open it; check its permissions")
    reason, detail = diagnose_unloadable_pdf(path)
    return DocumentError(reason, detail)


def diagnose_unloadable_pdf(path: Path) -> tuple[str, str]:
    """Guess why PDFium called a file with a PDF header a format error.

    PDFium reports one code for truncated, page-less and otherwise broken files alike; a look
    at the raw bytes separates the first two, which have different remedies.
    """
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - 2048))
            tail = f.read()
            f.seek(0)
            data = f.read(_DIAGNOSE_LIMIT) if size <= _DIAGNOSE_LIMIT else b""
    except OSError:
        data = tail = b""
    if b"%%EOF" not in tail:
        return (
            "truncated PDF",
            "the file stops before its end-of-file marker (incomplete download or copy?); "
            "copy it again from the source",
        )
    counts = [
        int(m.group(1))
        for d in _FLAT_DICT.findall(data)
        if _PAGES_TYPE.search(d) and (m := _COUNT.search(d))
    ]
    if counts and max(counts) == 0:
        return "no pages", "the PDF's page tree is empty; check the source or remove the file"
    return (
        "corrupt PDF",
        "PDFium cannot parse its structure; repair it (e.g. qpdf, or export it again) and run again",
    )


def count_pdf_pages(path: Path, password: str | None) -> int:
    """Open the document to count its pages; nothing is rendered."""
    with _open_pdf(path, password) as (doc, _), _PDFIUM_LOCK:
        count = len(doc)
    if count == 0:
        raise DocumentError("no pages", "the PDF has no pages; check the source or remove it")
    return count


def render_pdf_page(
    path: Path,
    page_index: int,
    *,
    dpi: int,
    rasterizer: str,
    password: str | None,
    pixel_limit: int,
    page_limit: int | None = None,
) -> Image.Image:
    """Paint one page as RGB at `dpi`, or at the lower resolution that fits `pixel_limit`.

    Lowering the resolution before painting (rather than shrinking a full-DPI bitmap) keeps
    memory and time proportional to what the caller will keep. With `page_limit`
    (--max-image-pixels), a page too large to be legible within it is refused (`check_size`).
    """
    if rasterizer not in RASTERIZERS:
        raise ValueError(f"unknown rasterizer {rasterizer!r}; expected one of {RASTERIZERS}")
    if rasterizer == "poppler":
        require_poppler()
    with _open_pdf(path, password) as (doc, used_password):
        with _PDFIUM_LOCK:
            count = len(doc)
        if not 0 <= page_index < count:
            raise PageError(
                "no such page",
                f"page {page_index + 1} was asked for but the PDF has {count}; "
                "the file changed since it was registered, run again",
            )
        with _PDFIUM_LOCK:
            try:
                width_pt, height_pt = doc.get_page_size(page_index)
            except pdfium.PdfiumError as err:
                raise PageError(
                    "unreadable page", f"PDFium cannot read the page's size ({err}); repair the PDF"
                ) from err
        if page_limit is not None:
            check_size(width_pt, height_pt, page_limit)
        render_dpi = fit_dpi(width_pt, height_pt, dpi, pixel_limit)
        if rasterizer == "pdfium":
            image = _render_pdfium(doc, page_index, render_dpi)
    if rasterizer == "poppler":  # after PDFium has let go of the document
        image = _render_poppler(path, page_index, render_dpi, used_password)
    if image.mode != "RGB":
        image = image.convert("RGB")
    # The engines round page edges differently; a pixel row or column too many is shaved here.
    page = shrink_to(image, pixel_limit)
    # A page under a pixel at `dpi` still renders as one; a 0 x 0 page has no space for its lines.
    page.info[PAGE_SIZE_KEY] = (
        max(1, round(width_pt * dpi / 72)),
        max(1, round(height_pt * dpi / 72)),
    )
    return page


def check_size(width_pt: float, height_pt: float, page_limit: int) -> None:
    """Refuse a page with a side over MAX_SIDE_PT, or that fits `page_limit` pixels only below
    MIN_LEGIBLE_DPI.

    Such a page would be painted as a blur, and its ALTO would declare a page of millions of
    pixels (positions are in page pixels at --dpi). The limit is the user's: a genuine
    oversized page (a long roll scan) gets through by raising --max-image-pixels.
    """
    size = f"{width_pt:,.0f} x {height_pt:,.0f} pt ({_length(width_pt)} x {_length(height_pt)})"
    if max(width_pt, height_pt) > MAX_SIDE_PT:
        raise PageError(
            "page too large",
            f"it declares {size}, longer than any scroll or roll scan "
            f"({_length(MAX_SIDE_PT)} at most): its page size (MediaBox) is damaged; "
            "repair it and run again",
        )
    legible = fit_dpi(width_pt, height_pt, MIN_LEGIBLE_DPI, page_limit)
    if legible >= MIN_LEGIBLE_DPI:
        return
    raise PageError(
        "page too large",
        f"it declares {size}, which fits "
        f"--max-image-pixels {page_limit} only at {legible:.2g} DPI, too coarse for any text; "
        "if the page is genuine raise --max-image-pixels, otherwise repair its page size "
        "(MediaBox) and run again",
    )


def _length(points: float) -> str:
    metres = points / POINTS_PER_INCH * 0.0254
    return f"{metres / 1000:.3g} km" if metres >= 1000 else f"{metres:.3g} m"


def fit_dpi(width_pt: float, height_pt: float, dpi: float, pixel_limit: int) -> float:
    """The highest resolution up to `dpi` at which the page needs at most `pixel_limit` pixels."""
    if not (width_pt > 0 and height_pt > 0 and math.isfinite(width_pt * height_pt)):
        raise PageError(
            "invalid page size",
            f"the page declares {width_pt} x {height_pt} points; repair the PDF and run again",
        )
    scale = dpi / POINTS_PER_INCH
    if _pixels(width_pt, height_pt, scale) <= pixel_limit:
        return dpi
    scale = math.sqrt(pixel_limit / (width_pt * height_pt))
    while scale > 0 and _pixels(width_pt, height_pt, scale) > pixel_limit:
        scale *= 0.995
    return scale * POINTS_PER_INCH


def _pixels(width_pt: float, height_pt: float, scale: float) -> int:
    return math.ceil(width_pt * scale) * math.ceil(height_pt * scale)


def _render_pdfium(doc: pdfium.PdfDocument, page_index: int, dpi: float) -> Image.Image:
    with _PDFIUM_LOCK:
        page = None
        try:
            page = doc[page_index]
            # pypdfium2 rounds the bitmap size up; without the nudge 432 pt at 300 DPI would be
            # 1801 pixels (432 * 300 / 72 = 1800.0000000000002), one more than poppler paints.
            scale = dpi / POINTS_PER_INCH * (1 - 1e-9)
            bitmap = page.render(scale=scale, rev_byteorder=True)
            image = bitmap.to_pil()
            # Pillow copies a 3-byte RGB bitmap into its own memory; other modes would share
            # PDFium's buffer, and convert() copies them before the bitmap is freed.
            return image if image.mode == "RGB" else image.convert("RGB")
        except pdfium.PdfiumError as err:
            raise PageError(
                "render failed",
                f"PDFium could not paint the page ({err}); try --rasterizer poppler",
            ) from err
        finally:
            if page is not None:
                page.close()


def require_poppler() -> None:
    """Fail the run early and clearly when the poppler rasterizer was asked for but is absent."""
    missing = [tool for tool in ("pdftoppm", "pdfinfo") if shutil.which(tool) is None]
    if missing:
        raise MissingDependency(
            f"the poppler rasterizer needs {' and '.join(missing)} on PATH; install poppler-utils "
            "(e.g. apt-get install poppler-utils) or use the default rasterizer pdfium"
        )


def _render_poppler(path: Path, page_index: int, dpi: float, password: str | None) -> Image.Image:
    import pdf2image
    from pdf2image import exceptions as p2i

    try:
        images = pdf2image.convert_from_path(
            str(path),
            dpi=dpi,
            first_page=page_index + 1,
            last_page=page_index + 1,
            userpw=password,
            use_cropbox=True,  # PDFium paints the crop box; so must poppler, for the same page
            timeout=POPPLER_TIMEOUT_S,
        )
    except p2i.PDFPopplerTimeoutError as err:
        raise PageError(
            "render timed out",
            f"pdftoppm took over {POPPLER_TIMEOUT_S} s; try --rasterizer pdfium",
        ) from err
    except p2i.PDFInfoNotInstalledError as err:
        raise MissingDependency(
            f"poppler's pdfinfo could not be started ({err}); install poppler-utils"
        ) from err
    except FileNotFoundError as err:  # the tool vanished, or the PDF did
        require_poppler()
        raise DocumentError(
            "file not found", "it was moved or deleted while being read; run again"
        ) from err
    except (p2i.PDFPageCountError, p2i.PDFSyntaxError, OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PageError(
            "render failed",
            f"poppler could not paint the page ({first_line}); try --rasterizer pdfium",
        ) from err
    if len(images) != 1:
        raise PageError(
            "render failed", "pdftoppm produced no image for the page; try --rasterizer pdfium"
        )
    return images[0]
