"""Open raster images safely and normalise every page to 8-bit RGB the model can read.

Scans reach an archive in every shape Pillow knows: CMYK and Lab, 16-bit grey, palettes with
transparency, EXIF-rotated phone photos, multi-page TIFFs, and hostile headers that promise
billions of pixels. This module turns all of them into one thing (an upright RGB image on a white
background) and refuses oversized images from their header, before any pixel is decoded.

Pages: every page of a multi-page TIFF is a page (reduced-resolution copies and transparency
masks stored as extra TIFF frames are not). GIF, WebP and PNG animations give their first frame
only: an animation's frames are states of one picture, not pages of a document. A TIFF cut or
damaged after its first pages keeps them (`pipeline.ingest.tiff_pages`).
"""

from __future__ import annotations

import io
import logging
import math
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from pipeline.errors import DocumentError, InputError, PageError
from pipeline.faults import injected_fault
from pipeline.ingest.tiff_pages import (
    Frames,
    check_page_data,
    first_header_cut,
    first_header_missing,
    libtiff_quiet,
    page_frames,
)
from pipeline.layout.geometry import PAGE_SIZE_KEY

# Pillow logs a few header rejections at ERROR; with no handler on its logger Python prints them
# bare on the terminal, beside the one-line reason we report for the same file.
logging.getLogger("PIL").addHandler(logging.NullHandler())

WHITE = (255, 255, 255)
_EXIF_ORIENTATION = 0x0112
_ORIENTATION_OPS: dict[int, tuple[Image.Transpose, ...]] = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}

# Pillow's own bomb check is a process-wide global with a lower limit than archives need
# (a 600-DPI newspaper scan passes 200 Mpx); while any call here runs, it is switched off and
# the per-call limit below is applied to every page header instead.
_LIMIT_LOCK = threading.Lock()
_limit_users = 0
_saved_limit: int | None = None


_QUARTER_TURNS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def open_error(err: OSError) -> DocumentError:
    """The one-line reason for an input file that cannot be opened."""
    if isinstance(err, FileNotFoundError):
        return DocumentError(
            "file not found", "it was moved or deleted (or is a broken link); run again"
        )
    if isinstance(err, IsADirectoryError):
        return DocumentError("not a file", "it is a folder; pass the files inside it")
    return DocumentError(
        "unreadable file", f"{err.strerror or err}; check its permissions and run again"
    )


@contextmanager
def _own_pixel_limit() -> Iterator[None]:
    global _limit_users, _saved_limit
    with _LIMIT_LOCK:
        if _limit_users == 0:
            _saved_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _limit_users += 1
    try:
        with warnings.catch_warnings():
            # Damaged EXIF blocks only cost us the orientation; they are not worth a warning.
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        with _LIMIT_LOCK:
            _limit_users -= 1
            if _limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _saved_limit


@contextmanager
def _open(path: Path, fmt: str, strip_text: bool = False) -> Iterator[Image.ImageFile.ImageFile]:
    """Open the header only, as the format the bytes say, and map failures to DocumentError.

    Pillow gets a file object, not the path: from a path it memory-maps uncompressed TIFFs, and
    on that path Pillow 13 applies the TIFF orientation tag wrongly (a flip instead of a turn).
    """
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed by `with file` below
    except OSError as err:
        raise open_error(err) from err
    with file, _own_pixel_limit():
        try:
            image = _open_image(file, fmt, strip_text)
        except Image.UnidentifiedImageError as err:
            if fmt == "TIFF" and first_header_missing(file):
                raise first_header_cut() from err
            raise DocumentError(
                "corrupt image", f"its {fmt} header cannot be parsed; export or scan it again"
            ) from err
        except Exception as err:  # hostile headers raise anything from struct.error to EOFError
            raise _decode_error(err, fmt, DocumentError) from err
        with image:
            yield image


def _open_image(file: io.BufferedReader, fmt: str, strip_text: bool) -> Image.ImageFile.ImageFile:
    """Image.open, reading a PNG without its text chunks when they are over Pillow's limit."""
    if strip_text:
        return Image.open(_png_without_text(file), formats=[fmt])
    try:
        return Image.open(file, formats=[fmt])
    except ValueError as err:
        if not _text_limit_hit(err, fmt):
            raise
    return Image.open(_png_without_text(file), formats=[fmt])


class _PngTextTooLarge(Exception):
    """A PNG text chunk after the pixels is over Pillow's limit: read the page without text."""


def _text_limit_hit(err: Exception, fmt: str) -> bool:
    """Pillow refuses PNG text chunks over MAX_TEXT_CHUNK / MAX_TEXT_MEMORY (text bombs)."""
    return fmt == "PNG" and isinstance(err, ValueError) and "MAX_TEXT_" in str(err)


_PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")


def _png_without_text(file: io.BufferedReader) -> io.BytesIO:
    """The PNG's bytes with its text chunks left out, never decompressed.

    Text (comments, XMP, generator notes) never changes the pixels; skipping it keeps Pillow's
    protection against text bombs intact instead of raising its limits. The pixel limit still
    applies to what is left. The copy is the compressed file, read only on this rare path.
    """
    file.seek(0)
    kept = io.BytesIO(file.read(8))
    kept.seek(0, io.SEEK_END)
    while len(header := file.read(8)) == 8:
        length = int.from_bytes(header[:4], "big")
        if header[4:] in _PNG_TEXT_CHUNKS:
            file.seek(length + 4, io.SEEK_CUR)  # data and CRC
            continue
        kept.write(header + file.read(length + 4))
    kept.write(header)
    kept.seek(0)
    return kept


def _decode_error(err: Exception, fmt: str, kind: type[InputError]) -> InputError:
    message = str(err) or type(err).__name__
    if "truncated" in message or isinstance(err, EOFError):
        return kind(
            "truncated image",
            f"the {fmt} data ends early (incomplete copy?); copy it again from the source",
        )
    if "not available" in message:  # a Pillow build without this codec
        return kind(
            "missing decoder",
            f"this Pillow build cannot decode it ({message}); install Pillow with {fmt} support",
        )
    return kind("corrupt image", f"{fmt} decoding failed ({message}); export or scan it again")


def _frames_or_fail(image: Image.Image, fmt: str) -> Frames:
    """`page_frames`, with a failure on the first frame mapped to DocumentError."""
    try:
        return page_frames(image)
    except InputError:
        raise
    except Exception as err:
        raise _decode_error(err, fmt, DocumentError) from err


def _check_pixels(size: tuple[int, int], pixel_limit: int, kind: type[InputError]) -> None:
    pixels = size[0] * size[1]
    if pixels > pixel_limit:
        raise kind(
            f"too large ({pixels} pixels > {pixel_limit})",
            f"its header declares {size[0]} x {size[1]} pixels; if the scan is genuine raise "
            "--max-image-pixels, otherwise remove the file",
        )
    if pixels == 0:
        raise kind("empty image", "its header declares 0 pixels; export or scan it again")


def count_image_pages(path: Path, fmt: str, pixel_limit: int) -> int:
    """Count pages from headers alone; a single-page image that is too large fails here."""
    with _open(path, fmt) as image:
        frames = _frames_or_fail(image, fmt)
        if frames.count == 1:
            _check_pixels(image.size, pixel_limit, DocumentError)
        return frames.count


def load_image_page(
    path: Path, fmt: str, page_index: int, pixel_limit: int, max_pixels: int | None
) -> Image.Image:
    """Decode one page as upright RGB; shrink it to `max_pixels` while decoding where possible.

    A failure is a DocumentError when the file is a single page (the document is the page) and a
    PageError for one frame of a multi-page TIFF, whose other pages may still be fine.
    """
    try:
        return _load_page(path, fmt, page_index, pixel_limit, max_pixels, strip_text=False)
    except _PngTextTooLarge:
        return _load_page(path, fmt, page_index, pixel_limit, max_pixels, strip_text=True)


def _load_page(
    path: Path,
    fmt: str,
    page_index: int,
    pixel_limit: int,
    max_pixels: int | None,
    strip_text: bool,
) -> Image.Image:
    with _open(path, fmt, strip_text) as image:
        frames = _frames_or_fail(image, fmt)
        kind: type[InputError] = PageError if frames.count > 1 else DocumentError
        frame = frames.frame_of(page_index)
        try:
            image.seek(frame)
            _check_pixels(image.size, pixel_limit, kind)
            check_page_data(image, kind)
            full_size = image.size
            if max_pixels is not None:
                _decode_smaller(image, max_pixels)
            injected_fault("decode")  # test-only; see pipeline/child_process.py
            with libtiff_quiet(fmt == "TIFF"):
                image.load()
            orientation = _orientation(image)  # after load: Pillow rotates TIFFs itself there
            page = to_rgb(image)
        except InputError:
            raise
        except MemoryError as err:
            # Not the file's fault: the page is retried (page_loader), never called corrupt.
            width, height = image.size
            raise MemoryError(f"not enough memory to decode {width}x{height} px") from err
        except Exception as err:
            if not strip_text and _text_limit_hit(err, fmt):
                raise _PngTextTooLarge from err
            raise _decode_error(err, fmt, kind) from err
    if page.size != full_size and page.size[::-1] == full_size:
        full_size = page.size  # Pillow turned a TIFF upright while loading
    for op in _ORIENTATION_OPS.get(orientation, ()):
        page = page.transpose(op)
    if orientation in _QUARTER_TURNS:
        full_size = full_size[::-1]
    page = shrink_to(page, max_pixels)
    page.info[PAGE_SIZE_KEY] = full_size
    return page


def _orientation(image: Image.Image) -> int:
    """The orientation (1-8) still to apply; a damaged EXIF block counts as upright.

    Pillow applies a TIFF's orientation tag while loading and then drops the tag, but leaves
    JPEG/PNG/WebP EXIF orientation to the caller; reading it after load covers both.
    """
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
        return value if isinstance(value, int) else 1
    except Exception:
        return 1


def _decode_smaller(image: Image.Image, max_pixels: int) -> None:
    """Ask JPEG and JPEG 2000 decoders for a reduced image (DCT scaling, resolution levels)."""
    width, height = image.size
    if width * height <= max_pixels:
        return
    scale = math.sqrt(max_pixels / (width * height))
    if image.format in ("JPEG", "MPO"):
        # draft() never goes below the size asked for; the exact fit happens afterwards.
        image.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))
    elif image.format == "JPEG2000":
        wanted = max(0, math.floor(math.log2(1 / scale)))
        # Asking for more halvings than the codestream has resolution levels fails the decode.
        image.reduce = min(wanted, _jpeg2000_levels(image))


def _jpeg2000_levels(image: Image.Image) -> int:
    """Decomposition levels from the codestream's COD marker (0: none found, never reduce)."""
    try:
        position = image.fp.tell()
        image.fp.seek(0)
        head = image.fp.read(1 << 16)
        image.fp.seek(position)
    except (AttributeError, OSError, ValueError):
        return 0
    start = head.find(b"\xff\x4f\xff\x51")  # SOC then SIZ: the codestream, in .jp2 or .j2k
    cod = head.find(b"\xff\x52", start) if start >= 0 else -1
    # COD: marker, Lcod (2), Scod, progression order, layers (2), MCT, then the levels.
    return head[cod + 9] if cod >= 0 and cod + 9 < len(head) else 0


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB without losing what a reader would see."""
    mode = image.mode
    if (mode == "P" and "transparency" in image.info) or mode == "PA":
        return _on_white(image.convert("RGBA"))
    if mode in ("RGBA", "RGBa", "LA", "La"):
        return _on_white(image)
    if mode == "CMYK":
        return _cmyk_to_rgb(image)
    if mode == "LAB":
        return _lab_to_rgb(image)
    if mode.startswith("I") or mode == "F":
        return _deep_to_gray(image).convert("RGB")
    return image.convert("RGB")


def _on_white(image: Image.Image) -> Image.Image:
    """Composite on white: transparent parts of a scan are paper, not black."""
    rgba = image.convert("RGBA")
    page = Image.new("RGB", rgba.size, WHITE)
    page.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return page


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    """Use the embedded ICC profile when there is one; Pillow's formula is only a fallback.

    Pillow's JPEG reader already undoes Adobe's inverted CMYK, so both paths see true ink values.
    """
    icc = image.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(
                image, source, ImageCms.createProfile("sRGB"), outputMode="RGB"
            )
        except Exception:  # no LittleCMS in this Pillow, or a broken profile
            pass
    return image.convert("RGB")


def _lab_to_rgb(image: Image.Image) -> Image.Image:
    """CIELAB through LittleCMS; without it, the lightness channel alone still reads well."""
    try:
        from PIL import ImageCms

        transform = ImageCms.buildTransform(
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
        )
        return ImageCms.applyTransform(image, transform)
    except ImportError:
        return image.getchannel("L").convert("RGB")


def _deep_to_gray(image: Image.Image) -> Image.Image:
    """Scale 16/32-bit and float grey to 8 bits linearly instead of clipping at 255.

    Integer data is scaled by the smallest common sensor depth (8, 10, 12, 14 or 16 bits) that
    holds its brightest pixel: 12-bit scanner data stored in a 16-bit file would otherwise come
    out almost black, while full-range 16-bit data keeps its exact tones. Float data in 0..1 is
    scaled by 255; anything else is stretched between its darkest and brightest pixel.
    """
    deep = image.convert("F") if image.mode == "F" else image.convert("I")
    low, high = deep.getextrema()
    if deep.mode == "I" and low >= 0 and high <= 0xFFFF:
        depth = next(bits for bits in (8, 10, 12, 14, 16) if high < 1 << bits)
        factor = 255 / ((1 << depth) - 1)
        offset = 0.0
    elif deep.mode == "F" and low >= 0 and high <= 1:
        factor, offset = 255.0, 0.0
    else:
        span = (high - low) or 1
        factor, offset = 255 / span, -low * 255 / span
    return deep.point(lambda v: v * factor + offset + 0.5).convert("L")


def fit_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest size with the same aspect ratio that has at most `max_pixels` pixels."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    new = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    while new[0] * new[1] > max_pixels and new[0] * new[1] > 1:
        new = max(1, new[0] - (new[0] >= new[1])), max(1, new[1] - (new[1] > new[0]))
    return new


def shrink_to(image: Image.Image, max_pixels: int | None) -> Image.Image:
    """Shrink (never enlarge) to at most `max_pixels`, keeping the aspect ratio, with Lanczos."""
    if max_pixels is None or image.width * image.height <= max_pixels:
        return image
    return image.resize(
        fit_size(image.width, image.height, max_pixels), Image.Resampling.LANCZOS, reducing_gap=3.0
    )
