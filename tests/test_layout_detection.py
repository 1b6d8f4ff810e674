"""Line detection on real pages with line ground truth, with the real model and onnxruntime.

Each page is detected once per module (1-4 s each on a busy 2-core machine). Recall floors: the
issue's figures measured with rapidocr's own defaults (crowded notarial hand 0.57 at IoU 0.5,
0.73 at 0.3; medieval page at least 0.85; vertical Japanese spread 0.92), raised on the notarial
page to what the tuned setting gives with a margin (0.84 / 0.98 measured; BENCHMARKS.md), so a
return to the old setting fails here.
"""

from __future__ import annotations

import pytest
from PIL import Image

from pipeline.ingest.images import load_image_page
from pipeline.layout import VERTICAL_RL, DetectorSettings, PageLayout, detect_layout
from pipeline.layout.geometry import PAGE_SIZE_KEY, bbox_of
from pipeline.layout.groundtruth import (
    baseline_offsets,
    iou,
    line_recall,
    read_gt_baselines,
    read_gt_lines,
)

PAGES = {
    "notarial": ("pages/handwriting/170025120000003,0074.jpg", "gt/170025120000003,0074.page.xml"),
    "medieval": ("pages/handwriting/btv1b84473026_f10.jpg", "gt/btv1b84473026_f10.alto.xml"),
    "ndl_spread": ("pages/vertical/ndl_3508165_9.jpg", "gt/ndl_3508165_9.layout_voc.xml"),
    "jp_vert": ("pages/vertical/jp_vert.jpg", None),
}
# page: (floor at IoU 0.5, floor at IoU 0.3)
RECALL_FLOORS = {
    "notarial": (0.80, 0.90),
    "medieval": (0.85, 0.95),
    "ndl_spread": (0.92, 0.92),
}


@pytest.fixture(scope="module")
def layouts(testdata) -> dict[str, PageLayout]:
    out = {}
    for name, (image_path, _) in PAGES.items():
        with Image.open(testdata / image_path) as image:
            out[name] = detect_layout(image.convert("RGB"), threads=2)
    return out


@pytest.mark.parametrize("page", sorted(RECALL_FLOORS))
def test_line_recall_against_ground_truth_meets_the_floor(page, layouts, testdata):
    truth = read_gt_lines(testdata / PAGES[page][1])
    found = [line.bbox for line in layouts[page].lines]
    floor_50, floor_30 = RECALL_FLOORS[page]
    recall_50, recall_30 = line_recall(found, truth, 0.5), line_recall(found, truth, 0.3)
    assert recall_50 >= floor_50, f"{page}: recall@0.5 {recall_50:.2f} < {floor_50}"
    assert recall_30 >= floor_30, f"{page}: recall@0.3 {recall_30:.2f} < {floor_30}"


@pytest.mark.parametrize("page", ["notarial", "medieval"])
def test_estimated_baselines_lie_near_the_ground_truth_baselines(page, layouts, testdata):
    """Baselines are estimates (the lower edge of the detector's text kernel); on both
    handwritten pages they lie within a tenth of a line's height of the annotated ones."""
    layout = layouts[page]
    truth = read_gt_baselines(testdata / PAGES[page][1])
    offsets = baseline_offsets(list(layout.lines), truth)
    assert len(offsets) >= 0.8 * len(truth)
    heights = sorted(ln.height for ln in layout.lines if not ln.vertical)
    typical = heights[len(heights) // 2]
    assert sum(abs(o) for o in offsets) / len(offsets) < 0.1 * typical


@pytest.mark.parametrize("page", ["jp_vert", "ndl_spread"])
def test_vertical_pages_are_found_vertical_and_read_right_to_left(page, layouts):
    layout = layouts[page]
    assert layout.reading_order == VERTICAL_RL
    for region in layout.regions:
        if not region.main:
            continue
        lines = layout.region_lines(region)
        assert all(line.vertical for line in lines)
        for before, after in zip(lines, lines[1:], strict=False):
            overlap = min(before.bbox[2], after.bbox[2]) - max(before.bbox[0], after.bbox[0])
            same_column = overlap > 0.5 * min(before.width, after.width)
            if same_column:
                assert after.center[1] > before.center[1]  # down the column
            else:
                assert after.center[0] < before.center[0]  # next column to the left


def test_modern_vertical_page_gives_one_line_per_column(layouts):
    # kba/ocr-fileformat-samples' ground truth for this page has 23 columns
    main = [
        ln
        for r in layouts["jp_vert"].regions
        if r.main
        for ln in layouts["jp_vert"].region_lines(r)
    ]
    assert 20 <= len(main) <= 26


def test_facing_pages_read_right_page_fully_before_the_left_one(layouts):
    layout = layouts["ndl_spread"]
    middle = layout.width / 2
    main = [ln for r in layout.regions if r.main for ln in layout.region_lines(r)]
    sides = ["right" if ln.center[0] > middle else "left" for ln in main]
    assert sides == sorted(sides, reverse=True), sides  # all "right" before any "left"
    # the colour chart, ruler and library labels along the bottom stay out of the text area
    assert layout.text_area is not None and layout.text_area[3] < 1100


def test_two_column_manuscript_reads_left_column_then_right_without_interleaving(layouts):
    layout = layouts["medieval"]
    body = [ln for ln in layout.lines if ln.bbox[1] > 300]  # below the running title
    sides = ["L" if ln.center[0] < layout.width / 2 else "R" for ln in body]
    assert sides == sorted(sides)  # every left-column line before any right-column line
    left = [ln.center[1] for ln in body if ln.center[0] < layout.width / 2]
    assert left == sorted(left)


@pytest.mark.parametrize("page", sorted(PAGES))
def test_lines_have_consistent_geometry_inside_the_page(page, layouts):
    layout = layouts[page]
    assert layout.lines and layout.detector == DetectorSettings().fingerprint()
    for line in layout.lines:
        assert line.bbox == bbox_of(line.polygon)
        assert all(0 <= x < layout.width and 0 <= y < layout.height for x, y in line.polygon)
        if line.vertical:
            assert line.baseline is None
        elif line.baseline is not None:
            (x0, y0), (x1, y1) = line.baseline
            left, top, right, bottom = line.bbox
            assert left <= x0 < x1 < right and top < y0 < bottom and top < y1 < bottom
    covered = sorted(i for r in layout.regions for i in r.lines)
    assert covered == list(range(len(layout.lines)))


def test_blank_page_gives_no_lines_and_no_error():
    layout = detect_layout(Image.new("RGB", (1240, 1754), "white"), threads=2)
    assert layout.is_empty and layout.regions == () and layout.text_area is None
    assert (layout.width, layout.height) == (1240, 1754)


def test_exif_rotated_shrunk_page_gives_coordinates_in_the_upright_full_page(
    layouts, testdata, tmp_path
):
    """The page stored sideways with EXIF orientation 6, loaded (turned upright) and shrunk to a
    quarter of its pixels as the loaders do for the model: the lines come back where they are
    on the upright page at full resolution."""
    with Image.open(testdata / PAGES["jp_vert"][0]) as upright:
        upright = upright.convert("RGB")
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
        sideways = tmp_path / "sideways.jpg"
        upright.transpose(Image.Transpose.ROTATE_90).save(sideways, quality=95, exif=exif)
    pixels = upright.width * upright.height
    page = load_image_page(sideways, "JPEG", 0, pixels * 2, max_pixels=pixels // 4)
    assert page.info[PAGE_SIZE_KEY] == upright.size and page.width < upright.width
    layout = detect_layout(page, threads=2)
    assert (layout.width, layout.height) == upright.size
    reference = [ln.bbox for ln in layouts["jp_vert"].lines]
    found = [ln.bbox for ln in layout.lines]
    assert line_recall(found, reference, 0.5) >= 0.85
    best = [max(iou(f, r) for r in reference) for f in found]
    assert sum(b >= 0.5 for b in best) >= 0.85 * len(found)


def test_pdf_page_painted_small_gives_coordinates_at_the_requested_dpi(testdata):
    """A PDF page painted under a pixel budget (as the loaders do for the model) gives lines in
    the page's pixel space at --dpi, where the same page painted at full size puts them."""
    from pipeline.ingest.documents import IngestSettings, load_page

    pdf = testdata / "pages/pdf/vicksburg_sample_ocr_6p.pdf"
    settings = IngestSettings(dpi=150)
    full = load_page(pdf, 1, settings)
    small = load_page(pdf, 1, settings, max_pixels=full.width * full.height // 4)
    assert small.info[PAGE_SIZE_KEY] == full.size and small.width < full.width
    reference, layout = detect_layout(full, threads=2), detect_layout(small, threads=2)
    assert (layout.width, layout.height) == full.size
    assert len(reference.lines) >= 10
    found, truth = [ln.bbox for ln in layout.lines], [ln.bbox for ln in reference.lines]
    assert line_recall(found, truth, 0.5) >= 0.85
