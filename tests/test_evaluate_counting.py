"""Counting on grapheme clusters: hand-built pairs whose edits are known by construction."""

from __future__ import annotations

import unicodedata
from collections import Counter

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import BadArguments
from pipeline.evaluate.align import Edits, count_edits, opcodes
from pipeline.evaluate.lines import iou, match_lines
from pipeline.evaluate.metrics import count_page
from pipeline.evaluate.normalize import Normalization, graphemes, words
from pipeline.evaluate.records import PageText, TextLine

NFC = Normalization()


def page(*lines: str, boxes=None) -> PageText:
    boxes = boxes or [None] * len(lines)
    return PageText(tuple(TextLine(t, b) for t, b in zip(lines, boxes, strict=True)), "text")


def counts(gt: str, pred: str, norm: Normalization = NFC):
    return count_page(page(*gt.split("\n")), page(*pred.split("\n")), norm, 0.5)[0]


@pytest.mark.parametrize(
    ("gt", "pred", "chars", "edits"),
    [
        ("Hello world", "Hallo world!", 11, Edits(1, 1, 0)),
        # the same letters, decomposed in the GT and precomposed in the prediction: no edit
        ("Ame\u0301lie cafe\u0301", "Amélie café", 11, Edits()),
        # q with dot above and below has no precomposed form: one cluster, one substitution
        ("q\u0307\u0323x", "qx", 2, Edits(1, 0, 0)),
        ("義禮說選", "義礼說", 4, Edits(1, 0, 1)),
        # heart + variation selector and thumbs up + skin tone are one character each
        ("I \u2764\ufe0f \U0001f44d\U0001f3fd", "I \u2764 \U0001f44d", 5, Edits(2, 0, 0)),
        # Devanagari conjunct (ksha): four code points, one cluster (UAX #29 InCB)
        ("\u0915\u094d\u0937", "\u0915", 1, Edits(1, 0, 0)),
        ("abc", "", 3, Edits(0, 0, 3)),
        ("", "abc", 0, Edits(0, 3, 0)),
        ("Zeile eins\nZeile zwei", "Zeile eins Zeile zwei", 21, Edits(1, 0, 0)),
    ],
    ids=[
        "latin",
        "nfd-vs-nfc",
        "stacked-marks",
        "cjk",
        "emoji",
        "conjunct",
        "empty-pred",
        "empty-gt",
        "line-break",
    ],
)
def test_hand_built_pairs_count_known_edits(gt, pred, chars, edits):
    c = counts(gt, pred)
    assert (c.chars, c.char_edits) == (chars, edits)
    assert c.cer == (edits.total / chars if chars else None)


def test_empty_ground_truth_page_has_no_rate_but_keeps_its_insertions():
    c = counts("", "abc")
    assert c.cer is None and c.wer is None
    assert c.char_edits.insertions == 3 and c.word_edits.insertions == 1


def test_cjk_words_are_single_ideographs_and_punctuation_is_not_a_word():
    assert words("義禮說選。") == ["義", "禮", "說", "選"]
    assert words("Monatsschrift . vom 12ten Jan.") == ["Monatsschrift", "vom", "12ten", "Jan"]
    assert counts("Monatsschrift.", "Monatsschrift .").wer == 0.0


def test_confusions_name_the_pairs_and_missing_sides():
    confusions: Counter = Counter()
    count_edits(graphemes(NFC.apply("abcé")), graphemes(NFC.apply("abxe\u0301z")), confusions)
    assert confusions == Counter({("c", "x"): 1, ("", "z"): 1})


@pytest.mark.parametrize(
    ("option", "gt", "pred"),
    [
        ("case", "Straße Haus", "STRASSE haus"),
        ("whitespace", "one\ntwo  three", "one two\nthree"),
        ("punctuation", "Hello, world!", "Hello world"),
        ("historic", "Laſt ﬁne ſchöne", "Last fine schöne"),
    ],
)
def test_each_normalisation_removes_exactly_its_difference(option, gt, pred):
    assert counts(gt, pred).char_edits.total > 0
    assert counts(gt, pred, Normalization.parse(option)).char_edits.total == 0


def test_unknown_normalisation_is_a_bad_argument():
    with pytest.raises(BadArguments, match="--normalize"):
        Normalization.parse("case,lowercase")
    assert Normalization.parse("case, historic").names == ["nfc", "case", "historic"]


def test_a_umlaut_with_e_above_reads_as_a_umlaut_under_historic():
    assert counts("a\u0364", "ä", Normalization(historic=True)).char_edits.total == 0


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_fast_path_gives_the_same_clusters_as_full_segmentation(text):
    assert list(graphemes(text)) == regex.findall(r"\X", text)


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet="abé\u0301 義👍\U0001f3fd\n", max_size=30),
    st.text(alphabet="abé\u0301 義👍\n", max_size=30),
)
def test_edit_counts_agree_with_alignment_identity_and_distance(gt, pred):
    a, b = graphemes(gt), graphemes(pred)
    e = count_edits(a, b)
    # every GT cluster is kept, substituted or deleted; every predicted one kept, substituted or inserted
    assert len(a) - e.deletions == len(b) - e.insertions
    kept = sum(g1 - g0 for tag, g0, g1, _, _ in opcodes(a, b) if tag == "equal")
    assert kept + e.substitutions + e.deletions == len(a)


def test_line_detection_matches_one_to_one_at_the_threshold():
    gt = [(0, 0, 100, 20), (0, 30, 100, 50), (0, 60, 100, 80)]
    pred = [(0, 0, 100, 20), (0, 0, 100, 21), (0, 35, 100, 55), (500, 500, 510, 510)]
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    c = match_lines(gt, pred, 0.5)
    assert (c.gt, c.pred, c.matched) == (3, 4, 2)  # line 3 missed; the near-duplicate unmatched
    assert c.recall == pytest.approx(2 / 3) and c.precision == pytest.approx(0.5)
    assert match_lines(gt, pred, 0.9).matched == 1


def test_line_detection_needs_boxes_on_both_sides():
    boxed = page("a", "b", boxes=[(0, 0, 10, 10), (0, 20, 10, 30)])
    assert count_page(boxed, boxed, NFC, 0.5)[0].lines.matched == 2
    assert count_page(boxed, page("a", "b"), NFC, 0.5)[0].lines is None


def _is_word_by_category(segment: str) -> bool:
    """dinglehopper's rule, spelled with unicodedata: not only M, P, Z, S, Cc, Cf."""
    return any(
        unicodedata.category(c)[0] not in "MPZS" and unicodedata.category(c) not in ("Cc", "Cf")
        for c in segment
    )


# Characters unassigned in Python's Unicode tables are left out: `regex` may know a newer
# Unicode version, in which they are symbols.
@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(exclude_categories=("Cn", "Cs")), max_size=40))
def test_words_keep_exactly_the_segments_with_a_letter_digit_or_similar(text):
    segments = regex.split(r"(?wV1)\b", text)
    assert words(text) == [s for s in segments if s and _is_word_by_category(s)]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=" \t\n\u00a0\u2003ab.", max_size=30))
def test_default_whitespace_rule_is_strip_collapse_and_drop_empty_lines(text):
    lines = (" ".join(line.split()) for line in text.split("\n"))
    assert NFC.apply(text) == "\n".join(line for line in lines if line)
