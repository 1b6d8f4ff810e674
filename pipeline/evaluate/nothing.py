"""An evaluation that compared no page is not a success: one line says why, and what to do.

A script that measures a model on its GT pages must not read "CER -" with exit 0 as a result.
Two cases: no GT file matched any document (a wrong --gt folder, or GT named otherwise: a usage
error, exit 2), and GT matched documents but none of their pages could be compared (all failed,
pending, unreadable or absent from the run: nothing to do, exit 6). Both lines start with
"nothing evaluated".
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import BadArguments, NothingToDo
from pipeline.jobs.records import printable

from .evaluation import Evaluation
from .metrics import EVALUATED, STATUSES

# What to do about the pages of each status, in the order of metrics.STATUSES.
_ADVICE = {
    "no_prediction": (
        "GT names pages the documents do not have; check the page numbers in the GT names "
        "(docs/EVALUATE.md, Matching) or give --map FILE"
    ),
    "failed": "the run failed on them (anandasky-batch status OUT says why)",
    "pending": "the run has not done them yet; let it finish (anandasky-batch resume OUT)",
    "unreadable": "fix or re-export the files the report names",
}


def no_gt_matched(ev: Evaluation, gt: Path, source: Path) -> BadArguments:
    """No GT file matches a document: name both folders, an example of each, and the rule."""
    example_gt = ev.unmatched_gt[0][0] if ev.unmatched_gt else printable(gt.name)
    example_doc = ev.without_gt[0][0] if ev.without_gt else None
    gt_shown, source_shown = printable(str(gt)), printable(str(source))
    seen = (
        f"e.g. GT {example_gt} vs document {example_doc}"
        if example_doc
        else f"e.g. GT {example_gt}; no document of {source_shown} has a name like any GT file"
    )
    return BadArguments(
        f"nothing evaluated: no ground-truth file in {gt_shown} matches a document of "
        f"{source_shown} "
        f"({seen}); a GT file matches by its path without its suffixes, e.g. box1/letter.xml "
        "or box1/letter_0003.txt for document box1/letter.pdf: rename the GT files or give "
        "--map FILE (docs/EVALUATE.md, Matching)"
    )


def check_something_evaluated(ev: Evaluation) -> None:
    """Raise NothingToDo when GT matched documents but not one of its pages was compared."""
    statuses = ev.totals.statuses
    if statuses.get(EVALUATED, 0):
        return
    # Pages that have GT; `no_ground_truth` pages are their documents' other pages.
    present = [status for status in STATUSES[2:] if statuses.get(status, 0)]
    with_gt = sum(statuses[status] for status in present)
    if not with_gt:
        why = "the matched GT files hold no page text; check them"
    else:
        counts = ", ".join(f"{statuses[status]} {status}" for status in present)
        advice = "; ".join(_ADVICE[status] for status in present)
        why = f"none of the {with_gt} page(s) with GT could be compared ({counts}): {advice}"
    raise NothingToDo(
        f"nothing evaluated: ground truth matched {len(ev.documents)} document(s) but {why}"
    )
