"""Text-line detection and page layout: lines with positions, regions, reading order, crops.

The page loaders call `detect_layout(image, settings, reading_order)` on CPU ahead of the
devices; the returned `PageLayout` is a plain picklable record in full-resolution page pixels.
"""

from pipeline.layout.crops import crop_line, crop_lines
from pipeline.layout.detector import DetectorSettings, LineDetector
from pipeline.layout.geometry import (
    HORIZONTAL,
    READING_ORDERS,
    VERTICAL_RL,
    BBox,
    Line,
    PageLayout,
    Point,
    Region,
)
from pipeline.layout.page import build_layout, detect_layout

__all__ = [
    "HORIZONTAL",
    "READING_ORDERS",
    "VERTICAL_RL",
    "BBox",
    "DetectorSettings",
    "Line",
    "LineDetector",
    "PageLayout",
    "Point",
    "Region",
    "build_layout",
    "crop_line",
    "crop_lines",
    "detect_layout",
]
