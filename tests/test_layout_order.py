"""Regions and reading order from line boxes (no model): columns, headings, facing pages, labels.

Lines are built the way the detector returns them (unordered, page pixels), then shuffled, so
the order a test sees comes from the layout code alone.
"""

from __future__ import annotations

import pickle
import random

import pytest

from pipeline.errors import BadArguments
from pipeline.layout import HORIZONTAL, VERTICAL_RL, Line, build_layout
from pipeline.layout.geometry import bbox_polygon


def line(left: int, top: int, right: int, bottom: int) -> Line:
    box = (left, top, right, bottom)
    vertical = bottom - top > right - left
    return Line(bbox_polygon(box), box, vertical, 0.9, None)


def shuffled(lines: list[Line], seed: int = 7) -> list[Line]:
    out = list(lines)
    random.Random(seed).shuffle(out)
    return out


def column(left: int, right: int, top: int, rows: int, pitch: int = 60, height: int = 40):
    return [line(left, top + k * pitch, right, top + k * pitch + height) for k in range(rows)]


def vertical_column_block(right: int, top: int, cols: int, pitch: int = 60, width: int = 40):
    return [line(right - k * pitch - width, top, right - k * pitch, top + 600) for k in range(cols)]


def test_two_columns_read_left_column_top_to_bottom_then_right_column():
    left, right = column(100, 900, 100, 10), column(1100, 1900, 100, 10)
    layout = build_layout(shuffled(left + right), (2000, 1000))
    assert layout.reading_order == HORIZONTAL
    assert list(layout.lines) == left + right
    assert [len(r.lines) for r in layout.regions] == [10, 10]


def test_heading_over_two_columns_is_read_first_and_the_columns_do_not_interleave():
    heading = line(700, 50, 1300, 90)  # spans the gutter, 30 px above the columns
    left, right = column(100, 900, 120, 8), column(1100, 1900, 120, 8)
    layout = build_layout(shuffled([heading, *left, *right]), (2000, 1000))
    assert list(layout.lines) == [heading, *left, *right]


def test_full_width_heading_between_two_column_sections_reads_section_by_section():
    upper = column(100, 900, 100, 5), column(1100, 1900, 100, 5)
    heading = line(100, 420, 1900, 460)  # 20 px below the upper section: no clean y cut
    lower = column(100, 900, 480, 5), column(1100, 1900, 480, 5)
    expected = [*upper[0], *upper[1], heading, *lower[0], *lower[1]]
    layout = build_layout(shuffled(expected), (2000, 1000))
    assert list(layout.lines) == expected


def test_vertical_columns_read_right_to_left_each_top_to_bottom():
    cols = vertical_column_block(1000, 100, 8)  # already right to left
    # the first column is split in two pieces by a gap in the text: top piece first
    top_piece, bottom_piece = line(960, 100, 1000, 380), line(960, 420, 1000, 700)
    lines = [top_piece, bottom_piece, *cols[1:]]
    layout = build_layout(shuffled(lines), (1200, 900))
    assert layout.reading_order == VERTICAL_RL
    assert list(layout.lines) == lines
    assert all(ln.vertical and ln.baseline is None for ln in layout.lines)


def test_facing_vertical_pages_read_the_right_page_first():
    right_page = vertical_column_block(1500, 100, 6)
    left_page = vertical_column_block(700, 100, 6)
    layout = build_layout(shuffled(left_page + right_page), (1600, 900))
    assert list(layout.lines) == right_page + left_page
    assert len(layout.regions) == 2


def test_ruler_digits_and_a_label_come_after_the_main_text_and_stay_out_of_the_text_area():
    text = column(100, 900, 100, 12)
    ruler = [line(100 + 80 * k, 900, 130 + 80 * k, 930) for k in range(10)]
    layout = build_layout(shuffled(text + ruler), (1000, 1000))
    assert list(layout.lines[:12]) == text
    assert set(layout.lines[12:]) == set(ruler)
    assert [r.main for r in layout.regions] == [True] + [False] * (len(layout.regions) - 1)
    assert layout.text_area == (100, 100, 900, 100 + 11 * 60 + 40)


def test_auto_direction_follows_the_lines_shapes_and_can_be_forced():
    cols = vertical_column_block(1000, 100, 5)
    assert build_layout(cols, (1200, 900)).reading_order == VERTICAL_RL
    forced = build_layout(cols, (1200, 900), reading_order=HORIZONTAL)
    assert forced.reading_order == HORIZONTAL
    assert [ln.bbox[0] for ln in forced.lines] == sorted(ln.bbox[0] for ln in cols)


def test_unknown_reading_order_is_a_bad_argument_naming_the_choices():
    with pytest.raises(BadArguments, match="vertical-rl"):
        build_layout([], (100, 100), reading_order="rtl")


def test_no_lines_give_an_empty_layout():
    layout = build_layout([], (800, 600))
    assert layout.is_empty and layout.regions == () and layout.text_area is None
    assert (layout.width, layout.height) == (800, 600)


def test_layout_pickles_and_holds_only_plain_python_values():
    layout = build_layout(column(100, 900, 100, 3), (1000, 1000), detector="det-x", seconds=1.5)
    assert pickle.loads(pickle.dumps(layout)) == layout

    def walk(value):
        if isinstance(value, (tuple, list)):
            for v in value:
                walk(v)
        elif hasattr(value, "__dataclass_fields__"):
            for name in value.__dataclass_fields__:
                walk(getattr(value, name))
        else:
            assert type(value) in (int, float, str, bool, type(None)), type(value)

    walk(layout)
