"""Line geometry's settings and records without a full run: what goes into the fingerprint,
what is refused, how a page's line results join, what ModelSession returns for a batch that
mixes whole pages and pages of line crops, and a loader whose detector fails."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import TESTDATA
from PIL import Image

from pipeline.errors import BadArguments
from pipeline.ingest.documents import IngestSettings
from pipeline.ingest.page_loading import LayoutRequest, LoadedImage, load_page_image
from pipeline.layout import DetectorSettings
from pipeline.records import Recognition
from pipeline.runner.settings import RunSettings

VERTICAL = TESTDATA / "pages" / "vertical" / "jp_vert.jpg"


def settings(**overrides) -> RunSettings:
    return RunSettings(inputs=("in",), out_dir="out", model_dir="model", **overrides)


def fingerprint(s: RunSettings) -> dict:
    return s.fingerprint("m", "p", device_type="cpu", code_checksum="c")


def test_layout_reading_order_and_detector_settings_are_in_the_fingerprint():
    base = fingerprint(settings())
    assert base["layout"] == "page" and base["reading_order"] == "auto"
    assert base["detector"] == DetectorSettings().fingerprint()
    for change in (
        {"layout": "lines"},
        {"reading_order": "vertical-rl"},
        {"detector_max_side": 1280},
        {"detector": "none"},
    ):
        assert fingerprint(settings(**change)) != base, change
    assert fingerprint(settings(detector="none"))["detector"] == "none"
    stored = settings(layout="lines", reading_order="horizontal").to_stored()
    assert RunSettings.from_stored(stored).layout_request == LayoutRequest(
        DetectorSettings(), "horizontal", crops=True
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"layout": "words"},
        {"reading_order": "vertical-lr"},
        {"detector": "kraken"},
        {"layout": "lines", "detector": "none"},
        {"detector_max_side": 10},
    ],
)
def test_bad_layout_options_are_refused(bad):
    with pytest.raises(BadArguments):
        settings(**bad)


def test_a_pages_lines_join_into_one_result_with_token_offsets_in_the_joined_text():
    a = Recognition("ab c", (-0.1, -0.2), (2, 4), "eos")
    b = Recognition("d", (-0.3,), (1,), "max_new_tokens")
    page = Recognition.of_lines([a, b])
    assert page.text == "ab c\nd" and page.lines == (a, b)
    assert page.token_ends == (2, 4, 6) and page.token_logprobs == (-0.1, -0.2, -0.3)
    assert page.text[4 + 1 : page.token_ends[2]] == "d"
    assert page.stop_reason == "max_new_tokens"
    empty = Recognition.of_lines([])
    assert (empty.text, empty.lines, empty.stop_reason) == ("", (), "eos")


def test_model_session_answers_a_mixed_batch_page_by_page(tiny_model_dir, one_torch_thread):
    """Whole pages and pages of line crops in one batch (what a local worker and a cluster
    actor both send): one page-level result per item, each crop recognised as in a batch."""
    from pipeline.runner.model_session import ModelSession, WorkerOptions

    options = WorkerOptions(str(tiny_model_dir), "float32", "native", "Read.", 4, True)
    session = ModelSession.load(options, "cpu")
    page = Image.open(VERTICAL).convert("RGB").resize((200, 280))
    crops = [page.crop((150, 10, 170, 250)), page.crop((120, 10, 140, 200))]
    results = session.recognize_batch([page, crops, [], [crops[0]]])
    assert len(results) == 4
    assert results[0].lines is None
    assert [len(r.lines) for r in results[1:]] == [2, 0, 1]
    alone = session.recognize_batch(crops)  # the same crops, batched differently

    def same(a: Recognition, b: Recognition) -> bool:  # batch composition moves the last bits
        return (a.text, a.token_ends) == (b.text, b.token_ends) and a.token_logprobs == (
            pytest.approx(b.token_logprobs, abs=1e-4)
        )

    assert all(same(a, b) for a, b in zip(results[1].lines, alone, strict=True))
    assert same(results[3].lines[0], alone[0])
    assert results[2].text == "" and results[2].num_tokens == 0


def test_a_loader_whose_detector_fails_gives_the_page_without_positions(tmp_path):
    """FAULT INJECTION: a detection model name the rapidocr wheel does not hold."""
    broken = dataclasses.replace(DetectorSettings(), model="no_such_detector")
    request = LayoutRequest(broken, "auto", crops=True)
    result = load_page_image(str(VERTICAL), 0, IngestSettings(), 200_000, None, request)
    assert isinstance(result, LoadedImage)
    assert result.layout is None and result.crops is None
    assert "line detection failed" in result.layout_error
    assert result.image.width * result.image.height <= 200_000  # the model's copy, as in page mode
    assert result.image.info["anandasky_page_size"] == (826, 1169)


@pytest.mark.parametrize("vertical", [False, True])
def test_estimated_string_boxes_stay_inside_their_line_in_reading_order(vertical):
    from pipeline.outputs.alto_layout import string_boxes

    line = (800, 10, 826, 40) if not vertical else (10, 1150, 30, 1169)  # at the page's edge
    words = [[(c * n, 0, n)] for n, c in ((1, "a"), (7, "b"), (1, "c"), (30, "d"))]
    boxes = [b for word in string_boxes(line, words, vertical) for b in word]
    key, size = ("VPOS", "HEIGHT") if vertical else ("HPOS", "WIDTH")
    starts = [int(b[key]) for b in boxes]
    ends = [int(b[key]) + int(b[size]) for b in boxes]
    lo, hi = (line[1], line[3]) if vertical else (line[0], line[2])
    assert starts == sorted(starts) and all(
        lo <= s < e <= hi for s, e in zip(starts, ends, strict=True)
    )
    assert ends[-1] == hi  # the last String reaches the line's end
