"""Evaluate a run (or a folder of predictions) against a folder of ground truth.

Order of work: list the GT files (few), list the documents (from the store, streamed), match
names, then read and count only the documents that have ground truth. Every page that has a GT
file or belongs to a document with one gets a `PageResult` with a status, so failed, pending,
unreadable and unmatched pages are reported instead of vanishing from the rates.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import BadArguments

from .matching import Match, Matcher, could_match, read_mapping
from .metrics import EVALUATED, PageCounts, Totals, count_page
from .normalize import Normalization
from .readers import UnreadableFile, read_pages
from .records import PageText
from .sources import (
    DONE,
    FAILED,
    MISSING,
    PENDING,
    PredDocument,
    folder_documents,
    run_documents,
    transcription_files,
)


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
class Evaluation:
    gt: Path
    run: Path | None
    pred: Path | None
    normalization: Normalization
    iou_threshold: float
    documents: list[DocumentResult] = field(default_factory=list)
    without_gt: list[tuple[str, int | None]] = field(default_factory=list)
    unmatched_gt: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    totals: Totals = field(default_factory=Totals)
    confusions: Counter = field(default_factory=Counter)
    seconds: float = 0.0


@dataclass
class _GtPage:
    file: str
    text: PageText | None  # None: the file could not be read
    reason: str | None = None


def _gt_files(gt: Path) -> list[tuple[str, Path]]:
    if gt.is_file():
        return [(gt.name, gt)]
    files = list(transcription_files(gt))
    if not files:
        raise BadArguments(
            f"--gt {gt} holds no ground-truth files (.xml, .txt, .html, .hocr); see "
            "docs/EVALUATE.md for the formats and names it reads"
        )
    return files


def _collect_gt(
    files: list[tuple[str, Path]], matcher: Matcher | None, single_doc: str | None, result
) -> dict[str, dict[int, _GtPage]]:
    """{document: {page: GT}} for every GT file that matches a document."""
    by_doc: dict[str, dict[int, _GtPage]] = {}
    for rel, path in files:
        match = Match(single_doc, None) if single_doc else matcher.match(rel)
        if match is None:
            why = "no document is named like it (docs/EVALUATE.md, Matching; or use --map)"
            result.unmatched_gt.append((rel, why))
            continue
        pages = by_doc.setdefault(match.document, {})
        try:
            read = read_pages(path)
        except UnreadableFile as exc:
            pages.setdefault(match.page or 1, _GtPage(rel, None, f"GT file {rel}: {exc}"))
            continue
        if match.page is not None:
            read = [(match.page, read[0][1])] if read else []
        for i, (stated, text) in enumerate(read, start=1):
            number = stated or i
            if number in pages:
                other = pages[number].file
                result.unmatched_gt.append((rel, f"page {number} already has GT {other}"))
                continue
            pages[number] = _GtPage(rel, text)
    return by_doc


class _PredReader:
    """Reads prediction files once, also when one file holds a whole document."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def rel(self, path: Path) -> str:
        if self.root is not None and path.is_relative_to(self.root):
            return path.relative_to(self.root).as_posix()
        return str(path)

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


def _evaluate_document(
    doc: PredDocument, gt_pages: dict[int, _GtPage], ev: Evaluation, reader: _PredReader, keep
) -> DocumentResult:
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
                    gt.text, pred, ev.normalization, ev.iou_threshold, ev.confusions
                )
                page.status, page.counts = EVALUATED, counts
                if keep:
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


def evaluate(
    gt: Path | str,
    *,
    run: Path | str | None = None,
    pred: Path | str | None = None,
    mapping: Path | str | None = None,
    normalization: Normalization | None = None,
    iou_threshold: float = 0.5,
    keep_texts: bool = False,
) -> Evaluation:
    """Compare a run's pages (`run`=OUT) or prediction files (`pred`) with the GT at `gt`."""
    started = time.perf_counter()
    gt, run, pred = Path(gt), run and Path(run), pred and Path(pred)
    _check_arguments(gt, run, pred, iou_threshold)
    ev = Evaluation(gt, run, pred, normalization or Normalization(), iou_threshold)
    gt_files = _gt_files(gt)
    names = read_mapping(Path(mapping)) if mapping else {}
    if run:
        documents = list(run_documents(run, could_match([r for r, _ in gt_files], names)))
    else:
        documents = folder_documents(pred)
    single = documents[0].name if pred and pred.is_file() and gt.is_file() else None
    matcher = Matcher([d.name for d in documents], names)
    by_doc = _collect_gt(gt_files, matcher, single, ev)
    reader = _PredReader(pred if pred and pred.is_dir() else None)
    known = set()
    for doc in documents:
        known.add(doc.name)
        if doc.name not in by_doc:
            ev.without_gt.append((doc.name, doc.page_count or None))
            continue
        result = _evaluate_document(doc, by_doc[doc.name], ev, reader, keep_texts)
        ev.documents.append(result)
        ev.totals.merge(result.totals)
    for name in sorted(set(by_doc) - known):  # mapped to a document the run does not have
        result = DocumentResult(name, None)
        for number, gt_page in sorted(by_doc[name].items()):
            result.pages.append(PageResult(name, number, "no_prediction", gt_file=gt_page.file))
            result.totals.add("no_prediction", None)
        ev.documents.append(result)
        ev.totals.merge(result.totals)
    ev.seconds = time.perf_counter() - started
    return ev


def _check_arguments(gt: Path, run: Path | None, pred: Path | None, iou: float) -> None:
    if (run is None) == (pred is None):
        raise BadArguments("give either a run's output folder OUT or --pred PRED, not both")
    if not gt.exists():
        raise BadArguments(f"--gt {gt} does not exist; give the folder of ground-truth files")
    source = run or pred
    if not source.exists():
        raise BadArguments(f"{source} does not exist")
    if not 0 < iou <= 1:
        raise BadArguments(f"--iou {iou}: give a threshold above 0 and at most 1, e.g. 0.5")
