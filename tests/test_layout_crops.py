"""Line crops and detector settings: padded crops in the page's pixels, fingerprints that move."""

from __future__ import annotations

import dataclasses

import pytest
from PIL import Image, ImageDraw

from pipeline.errors import MissingDependency
from pipeline.layout import DetectorSettings, Line, build_layout, crop_line, crop_lines
from pipeline.layout.detector import input_size, model_path
from pipeline.layout.geometry import bbox_polygon


def _line(box, vertical=False) -> Line:
    return Line(bbox_polygon(box), box, vertical, 0.9, None)


def _page_with_bars(size, boxes) -> Image.Image:
    page = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(page)
    for box in boxes:
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill="black")
    return page


def test_vertical_line_crop_stays_tall_and_holds_the_line_with_padding():
    box = (400, 100, 440, 900)
    page = _page_with_bars((1000, 1000), [box])
    crop = crop_line(page, _line(box, vertical=True), pad=0.5)
    assert crop.size == (40 + 2 * 20, 800 + 2 * 20)  # 0.5 x thickness 40 on every side
    assert crop.getpixel((crop.width // 2, crop.height // 2)) == (0, 0, 0)
    assert crop.getpixel((2, 2)) == (255, 255, 255)


def test_crop_at_the_page_edge_is_clipped_to_the_page():
    box = (0, 960, 600, 1000)
    crop = crop_line(_page_with_bars((1000, 1000), [box]), _line(box))
    assert crop.size == (600 + 12, 40 + 12)  # padding only where the page has room


def test_crop_from_a_shrunk_page_scales_the_page_coordinates():
    box = (200, 400, 1800, 480)  # full-resolution coordinates of a 2000x2000 page
    small = _page_with_bars((500, 500), [(50, 100, 450, 120)])
    crop = crop_line(small, _line(box), page_size=(2000, 2000), pad=0.25)
    assert crop.size == (410, 30)  # (1600 + 2*20) / 4, (80 + 2*20) / 4
    assert crop.getpixel((crop.width // 2, crop.height // 2)) == (0, 0, 0)


def test_masked_crop_whitens_what_lies_outside_a_skewed_line():
    polygon = ((100, 100), (900, 300), (900, 340), (100, 140))  # a line falling to the right
    line = Line(polygon, (100, 100, 901, 341), False, 0.9, None)
    page = Image.new("RGB", (1000, 1000), "black")
    plain, masked = crop_line(page, line), crop_line(page, line, mask=True)
    assert plain.getpixel((plain.width - 3, 2)) == (0, 0, 0)
    assert masked.getpixel((masked.width - 3, 2)) == (255, 255, 255)  # top-right corner
    assert masked.getpixel((masked.width // 2, masked.height // 2)) == (0, 0, 0)  # on the line


def test_crop_lines_follow_the_reading_order():
    boxes = [(100, 100 + 60 * k, 900, 140 + 60 * k) for k in range(4)]
    page = _page_with_bars((1000, 600), boxes)
    layout = build_layout([_line(b) for b in reversed(boxes)], page.size)
    crops = crop_lines(page, layout)
    assert [c.size for c in crops] == [(800 + 2 * 12, 40 + 2 * 12)] * 4
    assert [ln.bbox for ln in layout.lines] == boxes


def test_settings_fingerprint_changes_with_every_output_setting_only():
    base = DetectorSettings()
    assert base.fingerprint() == DetectorSettings().fingerprint()
    changed = {
        dataclasses.replace(base, max_side=2000).fingerprint(),
        dataclasses.replace(base, unclip_ratio=1.6).fingerprint(),
        dataclasses.replace(base, bin_thresh=0.4).fingerprint(),
    }
    assert len(changed) == 3 and base.fingerprint() not in changed
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.max_side = 10  # type: ignore[misc]


def test_input_size_keeps_the_long_side_within_max_side_in_multiples_of_32():
    settings = DetectorSettings(max_side=1536)
    assert input_size(2743, 3965, settings) == (1056, 1536)
    assert input_size(826, 1169, settings) == (832, 1184)  # no enlargement past the page
    small = input_size(300, 400, settings)  # short side brought up to min_side
    assert small == (736, 992) and all(v % 32 == 0 for v in small)


def test_unknown_model_name_is_a_missing_dependency_with_an_install_hint():
    with pytest.raises(MissingDependency, match="pip install"):
        model_path("no_such_model")
