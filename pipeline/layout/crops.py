"""Cut one padded image per detected line, for recognising lines instead of whole pages.

Crops are axis-aligned boxes around the line, padded by a share of the line's thickness (the
detector's boxes hug the letters' bodies; ascenders, descenders and accents stick out), taken
from the page in its own pixels and never rotated: a vertical column stays a tall image.
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from pipeline.layout.geometry import BBox, Line, PageLayout

DEFAULT_PAD = 0.3  # of the line's thickness, on every side


def crop_box(line: Line, page_size: tuple[int, int], pad: float = DEFAULT_PAD) -> BBox:
    """The padded box of a line in page coordinates, clipped to the page."""
    pad_px = max(2, round(pad * min(line.width, line.height)))
    left, top, right, bottom = line.bbox
    return (
        max(0, left - pad_px),
        max(0, top - pad_px),
        min(page_size[0], right + pad_px),
        min(page_size[1], bottom + pad_px),
    )


def crop_line(
    image: Image.Image,
    line: Line,
    page_size: tuple[int, int] | None = None,
    pad: float = DEFAULT_PAD,
    mask: bool = False,
) -> Image.Image:
    """The line's padded crop from `image`, the page at `page_size` or at any smaller scale.

    `mask=True` paints everything outside the (padded) line polygon white, so the neighbours
    of a skewed line do not show in its corners.
    """
    page_size = page_size or image.size
    sx, sy = image.width / page_size[0], image.height / page_size[1]
    box = crop_box(line, page_size, pad)
    scaled = (
        int(box[0] * sx),
        int(box[1] * sy),
        max(int(box[0] * sx) + 1, round(box[2] * sx)),
        max(int(box[1] * sy) + 1, round(box[3] * sy)),
    )
    crop = image.crop(scaled)
    if not mask:
        return crop
    pad_px = max(2, round(pad * min(line.width, line.height)))
    keep = Image.new("L", crop.size, 0)
    outline = [((x - box[0]) * sx, (y - box[1]) * sy) for x, y in line.polygon]
    ImageDraw.Draw(keep).polygon(
        outline, fill=255, outline=255, width=max(1, round(2 * pad_px * sx))
    )
    white = Image.new(crop.mode, crop.size, "white")
    return Image.composite(crop, white, keep)


def crop_lines(
    image: Image.Image, layout: PageLayout, pad: float = DEFAULT_PAD, mask: bool = False
) -> list[Image.Image]:
    """One crop per line of `layout`, in reading order."""
    size = (layout.width, layout.height)
    return [crop_line(image, line, size, pad, mask) for line in layout.lines]
