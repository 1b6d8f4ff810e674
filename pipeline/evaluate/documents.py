"""Counting one document: each of its pages against its GT page, or the page's status.

Everything here is picklable and free of global state, so documents can be counted in worker
processes (`pool`) as well as in the calling one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.jobs.records import printable

from .metrics import EVALUATED, PageCounts, Totals, count_page
from .normalize import Normalization
from .readers import UnreadableFile, read_pages
from .records import PageText
from .sources import DONE, FAILED, MISSING, PENDING, PredDocument


@dataclass
class PageResult:
    document: str
    page: int
    status: str  # one of metrics.STATUSES
    reason: str | None = None
    gt_file: str | None = None  # relative to the GT folder
    pred_file: str | None = None
    counts: PageCounts | None = None
    gt_text: str | None = None  # normalised, kept only for the HTML report
    pred_text: str | None = None


@dataclass
class DocumentResult:
    name: str
    source: str | None
    pages: list[PageResult] = field(default_factory=list)
    totals: Totals = field(default_factory=Totals)


@dataclass
class GtPage:
    file: str
    text: PageText | None  # None: the file could not be read
    reason: str | None = None


class PredReader:
    """Reads prediction files (a page each, or a whole document in one file); a file that
    cannot be read becomes the reason string the page reports."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def rel(self, path: Path) -> str:
        if self.root is not None and path.is_relative_to(self.root):
            return printable(path.relative_to(self.root).as_posix())
        return printable(str(path))

    def whole(self, doc: PredDocument) -> list[PageText] | str:
        try:
            return [page for _, page in read_pages(doc.whole_file)]
        except UnreadableFile as exc:
            return f"prediction {self.rel(doc.whole_file)}: {exc}"

    def page(self, path: Path) -> PageText | str:
        try:
            pages = read_pages(path)
        except UnreadableFile as exc:
            return f"prediction {self.rel(path)}: {exc}"
        return pages[0][1] if pages else PageText((), "text")


@dataclass(frozen=True)
class CountSettings:
    """What counting a document needs besides the document: small, sent to worker processes."""

    normalization: Normalization
    iou_threshold: float
    keep_texts: bool  # keep the normalised texts (for the HTML report)
    pred_root: Path | None  # prediction paths are shown relative to it


def evaluate_document(
    doc: PredDocument, gt_pages: dict[int, GtPage], settings: CountSettings, confusions: Counter
) -> DocumentResult:
    """Every page of `doc` that has GT, or is in the document: counted, or given its status."""
    reader = PredReader(settings.pred_root)
    result = DocumentResult(doc.name, doc.source)
    whole = reader.whole(doc) if doc.whole_file is not None else None
    count = len(whole) if isinstance(whole, list) else doc.page_count
    for number in sorted(set(range(1, count + 1)) | set(gt_pages)):
        gt = gt_pages.get(number)
        page = PageResult(doc.name, number, "no_ground_truth", gt_file=gt and gt.file)
        if gt is not None:
            pred = _whole_page(whole, number, page, reader, doc) if doc.whole_file else None
            if doc.whole_file is None:
                pred = _pred_page(doc, number, page, reader)
            if gt.text is None:
                page.status, page.reason = "unreadable", gt.reason
            elif pred is not None:
                counts, gt_text, pred_text = count_page(
                    gt.text, pred, settings.normalization, settings.iou_threshold, confusions
                )
                page.status, page.counts = EVALUATED, counts
                if settings.keep_texts:
                    page.gt_text, page.pred_text = gt_text, pred_text
        result.pages.append(page)
        result.totals.add(page.status, page.counts)
    return result


def _whole_page(whole, number: int, page: PageResult, reader, doc) -> PageText | None:
    if isinstance(whole, str):
        page.status, page.reason = "unreadable", whole
        return None
    page.pred_file = reader.rel(doc.whole_file)
    if number > len(whole):
        page.status = "no_prediction"
        return None
    return whole[number - 1]


def _pred_page(doc: PredDocument, number: int, page: PageResult, reader) -> PageText | None:
    """The page's predicted text, or None with the page's status and reason set."""
    state = doc.page(number)
    if state is None:
        page.status = "no_prediction"
        return None
    if state.file is not None:
        page.pred_file = reader.rel(state.file)
    if state.state in (FAILED, PENDING):
        page.status, page.reason = state.state, state.reason
        return None
    if state.state == MISSING:
        page.status, page.reason = "unreadable", state.reason
        return None
    assert state.state == DONE and state.file is not None
    text = reader.page(state.file)
    if isinstance(text, str):
        page.status, page.reason = "unreadable", text
        return None
    return text
