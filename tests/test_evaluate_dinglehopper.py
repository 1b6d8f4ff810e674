"""Our figures equal dinglehopper's on the same pairs: an independent implementation (uniseg
segmentation, its own readers) as the reference.

The expected values below are literal outputs of dinglehopper 0.11.0 (PyPI; Python 3.11,
rapidfuzz 3.14.6, uniseg 0.10.1), installed in a separate virtual environment and run once,
2026-12-01, as
    dinglehopper --plain-encoding utf-8 [--textequiv-level line] GT PRED NAME OUTDIR
on the files named here (tests/data/evaluate/pairs/NAME.{gt,pred}.txt and the real pairs);
the numbers are its NAME.json `cer`, `wer`, `n_characters`, `n_words`. dinglehopper itself is
never needed to run this test.
"""

from __future__ import annotations

import math

import pytest
from conftest import TESTDATA

from pipeline.evaluate import evaluate

PAIRS = TESTDATA / "evaluate" / "pairs"
REAL = TESTDATA / "evaluate" / "real"

# name: (cer, wer, n_characters, n_words) as dinglehopper 0.11.0 reported them
DINGLEHOPPER = {
    "latin": (0.18181818181818182, 0.5, 11, 2),
    "combining_nfd_vs_nfc": (0.058823529411764705, 0.3333333333333333, 17, 3),
    "combining_stacked": (0.25, 0.5, 4, 2),
    "cjk": (0.5, 0.5, 4, 4),
    "emoji": (0.25, 0, 8, 2),
    "lines": (0.047619047619047616, 0, 21, 4),
    "empty_prediction": (1.0, 1.0, 7, 2),
    "empty_gt": (math.inf, math.inf, 0, 0),
}
DINGLEHOPPER_REAL = {
    # ALTO v4 GT (--textequiv-level line) against its text with abbreviations dropped
    "btv1b84473026_f10": (
        TESTDATA / "gt/btv1b84473026_f10.alto.xml",
        (0.0176017601760176, 0.08672086720867209, 1818, 369),
    ),
    # PAGE 2013 GT (--textequiv-level line) against its text with commas and e's spoiled
    "170025120000003,0074": (
        TESTDATA / "gt/170025120000003,0074.page.xml",
        (0.04969450101832994, 0.20050125313283207, 2455, 399),
    ),
}


@pytest.mark.parametrize("name", list(DINGLEHOPPER))
def test_hand_built_pairs_equal_dinglehopper(name):
    cer, wer, n_chars, n_words = DINGLEHOPPER[name]
    t = evaluate(PAIRS / f"{name}.gt.txt", pred=PAIRS / f"{name}.pred.txt").totals
    assert (t.chars, t.words) == (n_chars, n_words)
    if math.isinf(cer):  # dinglehopper: infinite; we: no rate for a page without GT characters
        assert t.cer is None and t.wer is None and t.char_edits.insertions > 0
    else:
        assert t.cer == pytest.approx(cer, abs=1e-12)
        assert t.wer == pytest.approx(wer, abs=1e-12)


def test_real_alto_pair_equals_dinglehopper():
    gt, (cer, wer, n_chars, n_words) = DINGLEHOPPER_REAL["btv1b84473026_f10"]
    t = evaluate(gt, pred=REAL / "btv1b84473026_f10.pred.txt").totals
    assert (t.chars, t.words) == (n_chars, n_words)
    assert (t.cer, t.wer) == (pytest.approx(cer, abs=1e-12), pytest.approx(wer, abs=1e-12))


def test_real_page_pair_equals_dinglehopper_up_to_stripped_line_ends():
    """Line 6 of this GT ends in two spaces. dinglehopper counts them (2455 characters, and two
    deletions, since the prediction has no such spaces); we strip every line by convention
    (docs/EVALUATE.md), so we count 2 characters and 2 edits fewer, and the words agree."""
    gt, (cer, wer, n_chars, n_words) = DINGLEHOPPER_REAL["170025120000003,0074"]
    t = evaluate(gt, pred=REAL / "170025120000003,0074.pred.txt").totals
    dh_edits = round(cer * n_chars)
    assert (t.chars, t.char_edits.total) == (n_chars - 2, dh_edits - 2)
    assert (t.words, t.wer) == (n_words, pytest.approx(wer, abs=1e-12))
