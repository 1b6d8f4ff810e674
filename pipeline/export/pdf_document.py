"""`--format pdf`: one searchable PDF per input document, the pages as the source has them.

- A PDF source is opened with pikepdf and kept as it is: each transcribed page gets the text
  layer (`pdf_layer`) placed over it as a Form XObject, and the file is saved without decoding
  any stream, so image streams (and every other stream) keep their bytes. Text the source
  already holds stays; nothing is re-rendered.
- An image source (JPEG, PNG, TIFF incl. multi-page, JPEG 2000, ...) becomes pages with
  img2pdf, which embeds JPEG and JPEG 2000 bytes as they are and other images losslessly, at
  the image's own size and resolution (its DPI; 96 when the file gives none), turned as its EXIF
  orientation says; an alpha channel stays, as a soft mask. An image img2pdf will not take as
  it is (32-bit or LAB pixels) is embedded as the run saw it, 8-bit RGB, without further loss.

The ALTO's page pixels map to the page as it is seen: its CropBox (MediaBox without one) turned
by its /Rotate, which is what the run rasterised (PDF) or decoded (image). Pages without a
transcription (failed, pending) stay as images without text; the export report lists them.
A document whose source is gone, changed since the run, or unreadable gets no PDF, and its
report entry says why (`pdf_error`). `--pdfa`: see `pdf_archival`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from pathlib import Path

import img2pdf
import pikepdf

from pipeline.names import escape_relpath

from .options import PDF_FILE_NAME, ExportOptions
from .pages import ExportDocument
from .pdf_archival import NotArchivable, make_pdfa
from .pdf_layer import LayerPage, text_layer
from .pdf_lines import page_lines

FILE_NAME = PDF_FILE_NAME
LAYER_NAME = "/AnandaskyText"  # the text layer's XObject name on each page
# What img2pdf refuses even as the run saw it (a mirrored EXIF orientation, a broken file, ...):
# the document gets no PDF and the report says why, rather than an image re-encoded with losses.
_IMG2PDF_ERRORS = (
    img2pdf.AlphaChannelError,
    img2pdf.ExifOrientationError,
    img2pdf.ImageOpenError,
    img2pdf.JpegColorspaceError,
    img2pdf.NegativeDimensionError,
    img2pdf.PdfTooLargeError,
    img2pdf.UnsupportedColorspaceError,
)


# img2pdf logs what it does with an alpha channel (keeps it as a soft mask) as a warning; the
# export's own summary is what the user reads.
logging.getLogger("img2pdf").setLevel(logging.ERROR)


class PdfUnavailable(Exception):
    """The document's PDF cannot be made; the message says why and what to do."""


def _read_source(doc: ExportDocument) -> bytes:
    try:
        data = Path(doc.path).read_bytes()
    except OSError as exc:
        raise PdfUnavailable(
            f"its source file cannot be read ({exc.strerror or exc}); the PDF is made from the "
            "original, so put it back where the run read it and export again"
        ) from None
    if doc.sha256 is not None and hashlib.sha256(data).hexdigest() != doc.sha256:
        raise PdfUnavailable(
            "its source file changed since the run read it; run the same `run` command again "
            "so the pages match, then export"
        )
    return data


def _as_seen(data: bytes, frames: tuple[int, ...] | None = None) -> list[bytes]:
    """Each frame (of `frames`, else all) as the run saw it (EXIF-turned, transparency on white
    paper, deep or exotic modes made 8-bit RGB by the same `to_rgb`), as PNG with the file's
    DPI: for the images img2pdf will not embed as they are, and the pages of a TIFF that also
    holds thumbnails. The pixels a reader sees are kept, without loss."""
    from PIL import Image, ImageOps

    from pipeline.ingest.images import to_rgb

    pages = []
    with Image.open(io.BytesIO(data)) as image:
        dpi = image.info.get("dpi")
        for index in frames if frames is not None else range(getattr(image, "n_frames", 1)):
            image.seek(index)
            out = io.BytesIO()
            frame = to_rgb(ImageOps.exif_transpose(image.copy()))
            frame.save(out, "PNG", **({"dpi": dpi} if dpi else {}))
            pages.append(out.getvalue())
    return pages


def _base_pdf(data: bytes) -> pikepdf.Pdf:
    """The pages to put text on: the source PDF itself, or the images made into pages."""
    try:
        if data.startswith(b"%PDF") or b"%PDF-" in data[:1024]:
            return pikepdf.open(io.BytesIO(data))
        pages = _tiff_pages(data)
        if pages is not None:  # thumbnails or masks beside the pages: the pages alone
            return pikepdf.open(io.BytesIO(img2pdf.convert(_as_seen(data, pages), nodate=True)))
        try:
            return pikepdf.open(io.BytesIO(img2pdf.convert(data, nodate=True)))
        except (img2pdf.AlphaChannelError, img2pdf.UnsupportedColorspaceError, ValueError):
            # img2pdf's ValueError: "unknown colorspace" (LAB), "more than 8 bits per sample"
            return pikepdf.open(io.BytesIO(img2pdf.convert(_as_seen(data), nodate=True)))
    except (pikepdf.PdfError, *_IMG2PDF_ERRORS, ValueError, OSError) as exc:
        raise PdfUnavailable(f"its source cannot be made into PDF pages ({exc})") from None


def _tiff_pages(data: bytes) -> tuple[int, ...] | None:
    """For a TIFF that holds frames other than pages (thumbnails, masks), the frames that are
    pages; None for any other file. A TIFF cut or damaged after its first pages (which the run
    kept) cannot become a PDF of all its pages: PdfUnavailable says so."""
    if not data.startswith((b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")):
        return None
    from PIL import Image

    from pipeline.ingest.tiff_pages import page_frames

    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as image:
            warnings.simplefilter("ignore")  # Pillow's "Truncated File Read" on a cut file
            frames = page_frames(image)
            count = len(frames.pages)
            every = count == getattr(image, "n_frames", count) if not frames.damaged else False
    except Exception:
        return None  # img2pdf's own reading reports what is wrong
    if frames.damaged:
        raise PdfUnavailable(
            f"its source TIFF is cut or damaged after page {count} (the run read only the "
            "pages before the damage); copy the file again from the source, run again, then "
            "export"
        )
    return None if every else frames.pages


def seen_size(page: pikepdf.Page) -> tuple[float, float]:
    """Width and height in points of the page as displayed: CropBox turned by /Rotate."""
    box = [float(v) for v in page.cropbox]
    width, height = abs(box[2] - box[0]), abs(box[3] - box[1])
    return (height, width) if page.rotation % 180 == 90 else (width, height)


def _overlay(target: pikepdf.Page, layer_page: pikepdf.Page) -> None:
    """Draw the layer page over `target`, as pikepdf's add_overlay does, but under a fixed
    resource name (add_overlay picks a random one), so the same pages give the same bytes.
    qpdf fits the layer to the CropBox and undoes the page's /Rotate: it lies upright on the
    page as seen."""
    form = layer_page.as_form_xobject()
    taken = set(target.resources.get("/XObject", {}).keys())
    name = next(n for i in range(len(taken) + 1) if (n := f"{LAYER_NAME}{i or ''}") not in taken)
    placed = target.add_resource(form, pikepdf.Name.XObject, pikepdf.Name(name))
    ops = target.calc_form_xobject_placement(form, placed, pikepdf.Rectangle(target.cropbox))
    target.contents_add(b"q\n", prepend=True)
    target.contents_add(b"Q\n" + ops)
    target.contents_coalesce()


def build_pdf(doc: ExportDocument, *, pdfa: bool = False) -> bytes:
    """The document's searchable PDF (declared PDF/A-2b if asked); raises PdfUnavailable."""
    base = _base_pdf(_read_source(doc))
    if len(base.pages) != doc.page_count:
        raise PdfUnavailable(
            f"its source now has {len(base.pages)} pages where the run counted "
            f"{doc.page_count}; run the same `run` command again, then export"
        )
    targets, layers = [], []
    for page in doc.pages:
        if page.content is None:
            continue
        target = base.pages[page.number - 1]
        width, height = seen_size(target)
        layers.append(LayerPage(width, height, page_lines(page.content, (width, height))))
        targets.append(target)
    if layers:
        layer = pikepdf.open(io.BytesIO(text_layer(layers)))
        for target, layer_page in zip(targets, layer.pages, strict=True):
            _overlay(target, layer_page)
    if pdfa:
        try:
            make_pdfa(base, escape_relpath(doc.relpath))  # as the other formats name it
        except NotArchivable as exc:
            raise PdfUnavailable(str(exc)) from None
    out = io.BytesIO()
    base.save(
        out,
        deterministic_id=True,
        stream_decode_level=pikepdf.StreamDecodeLevel.none,  # streams keep their bytes,
        compress_streams=False,  # uncompressed ones included
        recompress_flate=False,
    )
    return out.getvalue()


def render(doc: ExportDocument, options: ExportOptions) -> dict[str, bytes]:
    """{searchable.pdf: bytes}; raises PdfUnavailable (the caller reports it)."""
    # The PDF holds transcribed pages only: placeholders (--include-failed) have no place in it.
    return {FILE_NAME: build_pdf(doc, pdfa=options.pdfa)}
