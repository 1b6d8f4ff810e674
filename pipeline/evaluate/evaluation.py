"""Evaluate a run (or a folder of predictions) against a folder of ground truth.

Order of work: list the GT files (few), list the documents (from the store, streamed), match
names, read the GT, then count only the documents that have ground truth (`documents`, in
worker processes for large collections: `pool`). Every page that has a GT file or belongs to a
document with one gets a `PageResult` with a status, so failed, pending, unreadable and
unmatched pages are reported instead of vanishing from the rates.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import BadArguments
from pipeline.jobs.records import printable

from .documents import CountSettings, DocumentResult, GtPage, PageResult
from .matching import Match, Matcher, could_match, read_mapping
from .metrics import Totals
from .normalize import Normalization
from .pool import count_documents
from .readers import UnreadableFile, read_pages
from .sources import folder_documents, run_documents, transcription_files

__all__ = ["DocumentResult", "Evaluation", "PageResult", "evaluate"]


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


def _gt_files(gt: Path) -> list[tuple[str, Path]]:
    if gt.is_file():
        return [(printable(gt.name), gt)]
    files = list(transcription_files(gt))
    if not files:
        raise BadArguments(
            f"--gt {gt} holds no ground-truth files (.xml, .txt, .html, .hocr); see "
            "docs/EVALUATE.md for the formats and names it reads"
        )
    return files


def _collect_gt(
    files: list[tuple[str, Path]], matcher: Matcher | None, single_doc: str | None, result
) -> dict[str, dict[int, GtPage]]:
    """{document: {page: GT}} for every GT file that matches a document."""
    by_doc: dict[str, dict[int, GtPage]] = {}
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
            pages.setdefault(match.page or 1, GtPage(rel, None, f"GT file {rel}: {exc}"))
            continue
        if match.page is not None:
            read = [(match.page, read[0][1])] if read else []
        for i, (stated, text) in enumerate(read, start=1):
            number = stated or i
            if number in pages:
                other = pages[number].file
                result.unmatched_gt.append((rel, f"page {number} already has GT {other}"))
                continue
            pages[number] = GtPage(rel, text)
    return by_doc


def evaluate(
    gt: Path | str,
    *,
    run: Path | str | None = None,
    pred: Path | str | None = None,
    mapping: Path | str | None = None,
    normalization: Normalization | None = None,
    iou_threshold: float = 0.5,
    keep_texts: bool = False,
    workers: int = 1,
) -> Evaluation:
    """Compare a run's pages (`run`=OUT) or prediction files (`pred`) with the GT at `gt`.

    `workers` > 1 counts in that many worker processes; the figures do not depend on it."""
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
    jobs = []
    for doc in documents:
        if doc.name in by_doc:
            jobs.append((doc, by_doc[doc.name]))
        else:
            ev.without_gt.append((doc.name, doc.page_count or None))
    settings = CountSettings(
        ev.normalization, iou_threshold, keep_texts, pred if pred and pred.is_dir() else None
    )
    for result, confusions in count_documents(jobs, settings, max(1, workers)):
        ev.documents.append(result)
        ev.totals.merge(result.totals)
        ev.confusions.update(confusions)
    known = {doc.name for doc in documents}
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
    if run is None and pred is None:
        raise BadArguments("nothing to evaluate: give a run's output folder OUT, or --pred PRED")
    if run is not None and pred is not None:
        raise BadArguments("give either a run's output folder OUT or --pred PRED, not both")
    if not gt.exists():
        raise BadArguments(f"--gt {gt} does not exist; give the folder of ground-truth files")
    source = run or pred
    if not source.exists():
        raise BadArguments(f"{source} does not exist")
    if not 0 < iou <= 1:
        raise BadArguments(f"--iou {iou}: give a threshold above 0 and at most 1, e.g. 0.5")
