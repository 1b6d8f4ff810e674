"""ALTO 4.4 writer: schema validity, text round trip, word confidences, unspaced scripts."""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime, timezone

from conftest import TESTDATA, assert_valid_alto
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

import pipeline
from pipeline.outputs.alto import (
    ALTO_NS,
    PageMeta,
    alto_to_text,
    build_alto,
    normalize_text,
    page_confidence,
)
from pipeline.records import Recognition

NS = {"a": ALTO_NS}
META = PageMeta(
    source_filename="box1/letter.pdf",
    page_number=3,
    width=2480,
    height=3508,
    model_name="anandasky-seed",
    model_checksum="sha256:0123abcd",
    prompt="Recognize the text in this image.",
    processing_datetime=datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc),
)


def rec(text: str, logprobs=None, ends=None) -> Recognition:
    """One token per character unless told otherwise."""
    if ends is None:
        ends = tuple(range(1, len(text) + 1))
    if logprobs is None:
        logprobs = (-0.1,) * len(ends)
    return Recognition(text, tuple(logprobs), tuple(ends), "eos")


def parse(alto: bytes):
    return etree.fromstring(alto)


def strings(alto: bytes) -> list[etree._Element]:
    return parse(alto).findall(".//a:String", NS)


def line_children(alto: bytes) -> list[list[str]]:
    """Each TextLine as a list of 'CONTENT' or ' ' for SP."""
    return [
        [" " if etree.QName(el).localname == "SP" else el.get("CONTENT") for el in line]
        for line in parse(alto).iterfind(".//a:TextLine", NS)
    ]


def assert_ids_unique(alto: bytes) -> None:
    ids = Counter(el.get("ID") for el in parse(alto).iter() if el.get("ID") is not None)
    assert not [i for i, n in ids.items() if n > 1], ids


def check(r: Recognition, meta: PageMeta = META) -> bytes:
    alto = build_alto(r, meta)
    assert_valid_alto(alto)
    assert_ids_unique(alto)
    assert alto_to_text(alto) == normalize_text(r.text)
    return alto


# ---- round trip over arbitrary text -------------------------------------------------------

any_char = st.characters(codec=None, categories=None)  # every code point, surrogates included
texts = st.one_of(
    st.text(),
    st.text(alphabet=any_char),
    st.text(
        alphabet=st.sampled_from("ab 世界。\n\r\t\u3000\x00\x0b\u2028\u0301\ufe0f\ud800\udcff ")
    ),
)


@st.composite
def recognitions(draw) -> Recognition:
    text = draw(texts)
    ends = sorted(draw(st.lists(st.integers(0, len(text)), max_size=len(text) + 3)))
    logprobs = draw(st.lists(st.floats(-30.0, 0.0), min_size=len(ends), max_size=len(ends)))
    return Recognition(text, tuple(logprobs), tuple(ends), "eos")


@settings(max_examples=300, deadline=None)
@given(recognitions())
def test_alto_reads_back_as_normalized_text_for_any_unicode(r):
    check(r)


@settings(max_examples=300, deadline=None)
@given(texts)
def test_normalize_text_is_idempotent_and_tidy(text):
    norm = normalize_text(text)
    assert normalize_text(norm) == norm
    assert not norm.startswith(("\n", " ")) and not norm.endswith(("\n", " "))
    assert "\n\n\n" not in norm and "  " not in norm
    assert " \n" not in norm and "\n " not in norm
    assert all(not ch.isspace() or ch in " \n" for ch in norm)
    norm.encode("utf-8")  # no lone surrogates left


# ---- structure ------------------------------------------------------------------------------


def test_latin_words_are_strings_separated_by_sp():
    alto = check(rec("The  quick\tbrown fox"))
    assert line_children(alto) == [["The", " ", "quick", " ", "brown", " ", "fox"]]


def test_cjk_gets_one_string_per_character_without_sp():
    alto = check(rec("天地玄黃，宇宙洪荒。"))
    assert line_children(alto) == [list("天地玄黃，宇宙洪荒。")]


def test_mixed_latin_and_cjk_keeps_latin_words_whole_and_invents_no_spaces():
    alto = check(rec("Tokyo東京2024年 ISBN978-4"))
    assert line_children(alto) == [["Tokyo", "東", "京", "2024", "年", " ", "ISBN978-4"]]
    assert alto_to_text(alto) == "Tokyo東京2024年 ISBN978-4"


def test_vertical_japanese_keeps_combining_marks_and_variation_selectors_with_their_base():
    # vertical presentation forms, kana with a combining voiced mark, a kanji with an IVS
    text = "︵吾輩は猫て\u3099ある︶\n名前はまだ無い︒\n葛\U000e0100城"
    alto = check(rec(text))
    assert line_children(alto) == [
        ["︵", "吾", "輩", "は", "猫", "て\u3099", "あ", "る", "︶"],
        ["名", "前", "は", "ま", "だ", "無", "い", "︒"],
        ["葛\U000e0100", "城"],
    ]


def test_thai_is_split_into_characters_with_their_marks():
    alto = check(rec("สวัสดีครับ"))
    assert line_children(alto)[0][:3] == ["ส", "วั", "ส"]


def test_blank_lines_separate_text_blocks_and_collapse_to_one():
    alto = check(rec("  Title  \r\n\r\n\n \t\nline one\nline two  \n\n\n\nend\n\n"))
    blocks = parse(alto).findall(".//a:TextBlock", NS)
    assert [len(b.findall("a:TextLine", NS)) for b in blocks] == [1, 2, 1]
    assert alto_to_text(alto) == "Title\n\nline one\nline two\n\nend"


def test_unicode_line_separators_end_lines():
    assert normalize_text("a\u2028b\x85c\rd") == "a\nb\nc\nd"


def test_empty_and_whitespace_only_text_give_a_valid_page_without_blocks():
    for text in ("", " \n\t\n\u3000", "\x00\x01"):
        alto = check(rec(text))
        assert parse(alto).find(".//a:TextBlock", NS) is None
        assert alto_to_text(alto) == ""


def test_xml_illegal_control_characters_are_removed():
    alto = check(rec("a\x00b\x07c\x1b[0m d\ud800e\ufffe\x0c"))
    assert alto_to_text(alto) == "abc[0m de"


def test_ids_are_unique_and_carry_the_page_number():
    alto = check(rec("one two\nthree\n\n四五"))
    ids = [el.get("ID") for el in parse(alto).iter() if el.get("ID")]
    assert all(i == "proc1" or i.startswith("p3") for i in ids)


# ---- metadata and geometry ----------------------------------------------------------------------


def test_description_records_source_software_model_and_prompt():
    root = parse(check(rec("x")))
    assert root.get("SCHEMAVERSION") == "4.4"
    assert root.findtext("a:Description/a:MeasurementUnit", namespaces=NS) == "pixel"
    assert root.findtext(".//a:sourceImageInformation/a:fileName", namespaces=NS) == (
        "box1/letter.pdf"
    )
    step = root.find("a:Description/a:Processing", NS)
    assert step.findtext("a:processingDateTime", namespaces=NS) == "2024-05-01T12:30:00+00:00"
    software = step.find("a:processingSoftware", NS)
    assert software.findtext("a:softwareName", namespaces=NS) == "anandasky-batch"
    assert software.findtext("a:softwareVersion", namespaces=NS) == pipeline.__version__
    settings_text = step.findtext("a:processingStepSettings", namespaces=NS)
    for value in ("anandasky-seed", "sha256:0123abcd", "Recognize the text in this image."):
        assert value in settings_text


def test_page_has_true_size_and_no_invented_coordinates():
    root = parse(check(rec("a b\n\nc")))
    page = root.find(".//a:Page", NS)
    assert (page.get("WIDTH"), page.get("HEIGHT"), page.get("PHYSICAL_IMG_NR")) == (
        "2480",
        "3508",
        "3",
    )
    for el in page.iter():
        if el is not page:
            assert not {"HPOS", "VPOS", "WIDTH", "HEIGHT"} & set(el.attrib), el.tag


def test_undecodable_file_names_keep_their_escaped_bytes_and_stay_valid():
    meta = PageMeta(
        source_filename="caf\udce9/\x01scan.tif",
        page_number=1,
        width=10,
        height=10,
        model_name="m\x00",
        model_checksum="c",
        prompt="Read\x0b this",
    )
    root = parse(check(rec("x"), meta))
    # The output folders' escaping: the undecodable byte and the control character as %XX.
    assert root.findtext(".//a:fileName", namespaces=NS) == "caf%E9/%01scan.tif"


# ---- confidences --------------------------------------------------------------------------------


def word_confidences(alto: bytes) -> dict[str, float | None]:
    return {s.get("CONTENT"): (float(s.get("WC")) if s.get("WC") else None) for s in strings(alto)}


def test_word_confidence_is_exp_of_mean_logprob_of_overlapping_tokens():
    # tokens: "Hel" "lo" " wo" "rld"  -> Hello = tokens 0,1 ; world = tokens 2,3
    r = rec("Hello world", logprobs=(-0.1, -0.3, -1.0, -2.0), ends=(3, 5, 8, 11))
    wc = word_confidences(check(r))
    assert wc["Hello"] == round(math.exp(-0.2), 3)
    assert wc["world"] == round(math.exp(-1.5), 3)


def test_cjk_character_confidence_counts_partial_byte_tokens():
    # a byte-level tokenizer spends 3 tokens on 漢: two decode to nothing (end stays at 0)
    r = rec("漢字", logprobs=(-2.0, -2.0, -2.0, -0.01), ends=(0, 0, 1, 2))
    wc = word_confidences(check(r))
    assert wc == {"漢": round(math.exp(-2.0), 3), "字": round(math.exp(-0.01), 3)}


def test_strings_without_tokens_have_no_confidence_and_bad_logprobs_stay_in_range():
    assert word_confidences(check(rec("no tokens", logprobs=(), ends=()))) == {
        "no": None,
        "tokens": None,
    }
    r = rec("a b c", logprobs=(-math.inf, math.nan, 0.5, 0.0, -1e9), ends=(1, 2, 3, 4, 5))
    wc = word_confidences(check(r))
    assert wc["a"] == 0.0 and 0.0 <= wc["b"] <= 1.0 and wc["c"] == 0.0


def test_page_confidence_is_exp_of_mean_token_logprob():
    assert page_confidence(rec("ab", logprobs=(-1.0, -3.0))) == round(math.exp(-2.0), 3)
    assert page_confidence(rec("", logprobs=(), ends=())) is None
    page = parse(check(rec("ab", logprobs=(-1.0, -3.0)))).find(".//a:Page", NS)
    assert page.get("PC") == str(round(math.exp(-2.0), 3))


# ---- reading ALTO from other tools ----------------------------------------------------------------


def test_alto_to_text_reads_other_tools_alto():
    sample = (TESTDATA / "alto" / "altoxml_glyph_sample_chinese.alto.xml").read_bytes()
    assert alto_to_text(sample) == "義禮說選"
    tess = (TESTDATA / "alto" / "tesseract410_testfile.alto.xml").read_bytes()
    assert alto_to_text(tess).startswith("LEVEL 2 HEADING\n\nLEVEL 3 HEADING")
