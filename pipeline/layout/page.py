"""One page in, its layout out: detection, direction, regions and reading order, wired together.

This is the call the page loaders make (CPU, ahead of the devices). The detector session is kept
per process; everything returned is a plain picklable record (geometry.py).
"""

from __future__ import annotations

import time

from PIL import Image

from pipeline.layout.detector import DetectorSettings, shared_detector
from pipeline.layout.geometry import (
    HORIZONTAL,
    PAGE_SIZE_KEY,
    VERTICAL_RL,
    Line,
    PageLayout,
    Region,
    union_bbox,
)
from pipeline.layout.reading_order import (
    block_direction,
    order_lines,
    orient_lines,
    page_direction,
)
from pipeline.layout.regions import find_regions, line_thickness, main_flags


def detect_layout(
    image: Image.Image,
    settings: DetectorSettings | None = None,
    reading_order: str = "auto",
    *,
    threads: int = 0,
) -> PageLayout:
    """Detect the lines of one page and put them in regions and reading order.

    `image` is the page as loaded (upright; possibly shrunk for the model): the coordinates come
    back in the full-resolution page space that `image.info[PAGE_SIZE_KEY]` records (the
    image's own size when absent). A page without text gives a layout with no lines.
    `threads`: onnxruntime intra-op threads (0: one per core; loader processes want 1).
    """
    settings = settings or DetectorSettings()
    page_size = tuple(image.info.get(PAGE_SIZE_KEY) or image.size)
    started = time.perf_counter()
    found = shared_detector(settings, threads).detect(image, page_size)
    seconds = time.perf_counter() - started
    return build_layout(found, page_size, reading_order, settings.fingerprint(), seconds)


def build_layout(
    found: list[Line],
    page_size: tuple[int, int],
    reading_order: str = "auto",
    detector: str = "",
    seconds: float = 0.0,
) -> PageLayout:
    """Direction, orientation flags, regions and order for detected lines (no model needed)."""
    direction = page_direction(found, reading_order)
    if not found:
        direction = HORIZONTAL if reading_order == "auto" else direction
        return PageLayout(*page_size, (), (), direction, None, detector, round(seconds, 3))
    unit = line_thickness(found)
    found = orient_lines(found, direction, unit)
    groups = find_regions(found, direction)
    flags = main_flags(groups, found, direction == VERTICAL_RL, unit)
    # Main text first, then the rest (page numbers, stamps, labels): a ruler's digits or a
    # label between two facing pages must not break the flow from one page to the next.
    order = sorted(range(len(groups)), key=lambda k: not flags[k])
    groups, flags = [groups[k] for k in order], [flags[k] for k in order]
    lines: list[Line] = []
    regions: list[Region] = []
    for number, (group, main) in enumerate(zip(groups, flags, strict=True), start=1):
        # unless the order is forced, a block of horizontal labels on a vertical page reads
        # like a horizontal page
        block = direction
        if reading_order == "auto":
            block = block_direction([found[i] for i in group], direction)
        ordered = order_lines(found, group, block)
        first = len(lines)
        lines.extend(found[i] for i in ordered)
        regions.append(
            Region(
                id=f"r{number}",
                bbox=union_bbox([found[i].bbox for i in group]),
                lines=tuple(range(first, len(lines))),
                main=main,
            )
        )
    main_boxes = [r.bbox for r in regions if r.main]
    return PageLayout(
        width=page_size[0],
        height=page_size[1],
        lines=tuple(lines),
        regions=tuple(regions),
        reading_order=direction,
        text_area=union_bbox(main_boxes) if main_boxes else None,
        detector=detector,
        seconds=round(seconds, 3),
    )
