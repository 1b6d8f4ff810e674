"""Counts per page, and their sums per document and for the collection.

Rates are fractions (0.05 is 5%). The collection and document CER is micro-averaged: all
character edits over all ground-truth characters, so a long page weighs more; the mean of the
page CERs is given beside it. A page whose ground truth is empty has no CER of its own (its
insertions still count in the sums). Pages that were not evaluated (failed, pending, no
ground truth...) are counted by status and never enter the rates.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .align import Edits, count_edits
from .lines import LineCounts, match_lines
from .normalize import Normalization, graphemes, words
from .records import PageText

EVALUATED = "evaluated"
STATUSES = (
    EVALUATED,
    "no_ground_truth",  # the page has a prediction (or is in the run) but no GT
    "no_prediction",  # GT exists, the run or PRED has no such page
    "failed",  # GT exists, the run failed on the page or its document
    "pending",  # GT exists, the run has not done the page yet
    "unreadable",  # a GT or prediction file (or a done page's output) cannot be read
)


@dataclass
class PageCounts:
    chars: int
    char_edits: Edits
    words: int
    word_edits: Edits
    lines: LineCounts | None  # None unless both sides have line boxes
    pred_chars: int = 0

    @property
    def cer(self) -> float | None:
        return self.char_edits.total / self.chars if self.chars else None

    @property
    def wer(self) -> float | None:
        return self.word_edits.total / self.words if self.words else None


def count_page(
    gt: PageText,
    pred: PageText,
    norm: Normalization,
    iou_threshold: float,
    confusions: Counter | None = None,
) -> tuple[PageCounts, str, str]:
    """(counts, normalised GT text, normalised predicted text)."""
    gt_text, pred_text = norm.apply(gt.text), norm.apply(pred.text)
    gt_chars, pred_chars = graphemes(gt_text), graphemes(pred_text)
    char_edits = count_edits(gt_chars, pred_chars, confusions)
    gt_words = words(gt_text)
    word_edits = count_edits(gt_words, words(pred_text))
    lines = None
    if gt.has_coords and pred.has_coords:
        lines = match_lines(
            [ln.box for ln in gt.lines], [ln.box for ln in pred.lines], iou_threshold
        )
    counts = PageCounts(len(gt_chars), char_edits, len(gt_words), word_edits, lines)
    counts.pred_chars = len(pred_chars)
    return counts, gt_text, pred_text


@dataclass
class Totals:
    """Sums over evaluated pages, plus how many pages each status has."""

    chars: int = 0
    char_edits: Edits = Edits()
    words: int = 0
    word_edits: Edits = Edits()
    lines: LineCounts = LineCounts()
    line_pages: int = 0
    cer_sum: float = 0.0
    cer_pages: int = 0
    wer_sum: float = 0.0
    wer_pages: int = 0
    statuses: Counter = field(default_factory=Counter)

    def add(self, status: str, counts: PageCounts | None) -> None:
        self.statuses[status] += 1
        if counts is None:
            return
        self.chars += counts.chars
        self.char_edits += counts.char_edits
        self.words += counts.words
        self.word_edits += counts.word_edits
        if counts.lines is not None:
            self.lines += counts.lines
            self.line_pages += 1
        if counts.cer is not None:
            self.cer_sum += counts.cer
            self.cer_pages += 1
        if counts.wer is not None:
            self.wer_sum += counts.wer
            self.wer_pages += 1

    def merge(self, other: Totals) -> None:
        self.chars += other.chars
        self.char_edits += other.char_edits
        self.words += other.words
        self.word_edits += other.word_edits
        self.lines += other.lines
        self.line_pages += other.line_pages
        self.cer_sum += other.cer_sum
        self.cer_pages += other.cer_pages
        self.wer_sum += other.wer_sum
        self.wer_pages += other.wer_pages
        self.statuses.update(other.statuses)

    @property
    def cer(self) -> float | None:
        return self.char_edits.total / self.chars if self.chars else None

    @property
    def wer(self) -> float | None:
        return self.word_edits.total / self.words if self.words else None

    @property
    def cer_page_mean(self) -> float | None:
        return self.cer_sum / self.cer_pages if self.cer_pages else None

    @property
    def wer_page_mean(self) -> float | None:
        return self.wer_sum / self.wer_pages if self.wer_pages else None
