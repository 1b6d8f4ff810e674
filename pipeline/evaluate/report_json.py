"""The evaluation as JSON: stable keys, documented in docs/EVALUATE.md and pinned by
schemas/evaluate.schema.json. `cer` and `wer` of the collection sit at the top, as fractions.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

from pipeline import __version__
from pipeline.jobs.records import printable

from .align import Edits
from .evaluation import DocumentResult, Evaluation, PageResult
from .metrics import STATUSES, Totals

SCHEMA_VERSION = 1
TOP_CONFUSIONS = 20


def _rate(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def _edits(edits: Edits) -> dict:
    return {
        "substitutions": edits.substitutions,
        "insertions": edits.insertions,
        "deletions": edits.deletions,
        "total": edits.total,
    }


def _lines(totals: Totals) -> dict | None:
    if not totals.line_pages:
        return None
    lines = totals.lines
    return {
        "pages": totals.line_pages,
        "gt": lines.gt,
        "pred": lines.pred,
        "matched": lines.matched,
        "recall": _rate(lines.recall),
        "precision": _rate(lines.precision),
    }


def totals_dict(totals: Totals) -> dict:
    return {
        "cer": _rate(totals.cer),
        "wer": _rate(totals.wer),
        "cer_page_mean": _rate(totals.cer_page_mean),
        "wer_page_mean": _rate(totals.wer_page_mean),
        "characters": totals.chars,
        "character_edits": _edits(totals.char_edits),
        "words": totals.words,
        "word_edits": _edits(totals.word_edits),
        "lines": _lines(totals),
        "pages": {status: totals.statuses.get(status, 0) for status in STATUSES},
    }


def page_dict(page: PageResult) -> dict:
    c = page.counts
    entry = {
        "page": page.page,
        "status": page.status,
        "reason": page.reason,
        "gt_file": page.gt_file,
        "pred_file": page.pred_file,
        "cer": _rate(c and c.cer),
        "wer": _rate(c and c.wer),
        "characters": c.chars if c else None,
        "predicted_characters": c.pred_chars if c else None,
        "character_edits": _edits(c.char_edits) if c else None,
        "words": c.words if c else None,
        "word_edits": _edits(c.word_edits) if c else None,
        "lines": None,
    }
    if c is not None and c.lines is not None:
        lines = c.lines
        entry["lines"] = {
            "gt": lines.gt,
            "pred": lines.pred,
            "matched": lines.matched,
            "recall": _rate(lines.recall),
            "precision": _rate(lines.precision),
        }
    return entry


def document_dict(doc: DocumentResult) -> dict:
    return {
        "document": doc.name,
        **totals_dict(doc.totals),
        "page_results": [page_dict(p) for p in doc.pages],
    }


def confusions(ev: Evaluation, top: int = TOP_CONFUSIONS) -> list[dict]:
    """Most frequent (gt, pred) character pairs; "" is the missing side."""
    ranked = sorted(ev.confusions.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [{"gt": g, "pred": p, "count": n} for (g, p), n in ranked]


def to_dict(ev: Evaluation) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "cer": _rate(ev.totals.cer),
        "wer": _rate(ev.totals.wer),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "software": f"anandasky-batch {__version__}",
        "ground_truth": printable(str(ev.gt)),
        "run": None if ev.run is None else printable(str(ev.run)),
        "predictions": None if ev.pred is None else printable(str(ev.pred)),
        "settings": {
            "normalization": ev.normalization.names,
            "iou_threshold": ev.iou_threshold,
            "unit": "grapheme cluster",
        },
        "collection": totals_dict(ev.totals),
        "confusions": confusions(ev),
        "documents": [document_dict(d) for d in ev.documents],
        "documents_without_ground_truth": [
            {"document": name, "pages": pages} for name, pages in ev.without_gt
        ],
        "unmatched_ground_truth": [{"file": f, "reason": r} for f, r in ev.unmatched_gt],
        "seconds": round(ev.seconds, 3),
    }


def to_json(ev: Evaluation) -> str:
    return json.dumps(to_dict(ev), ensure_ascii=False, indent=2) + "\n"
