"""The printed summary: one row per document, the collection, and what was not evaluated."""

from __future__ import annotations

from .evaluation import Evaluation
from .metrics import EVALUATED, STATUSES, Totals
from .report_json import confusions

MAX_LISTED = 20  # pages not evaluated, printed one per line; the JSON has them all


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _row(name: str, t: Totals) -> str:
    e = t.char_edits
    lines = "-" if not t.line_pages else f"{_pct(t.lines.recall)}/{_pct(t.lines.precision)}"
    return (
        f"{name[:40]:<40} {t.statuses.get(EVALUATED, 0):>5} {t.chars:>9} {_pct(t.cer):>8} "
        f"{_pct(t.wer):>8} {e.substitutions:>6} {e.insertions:>6} {e.deletions:>6} {lines:>15}"
    )


def render_table(ev: Evaluation) -> str:
    out = [
        f"{'document':<40} {'pages':>5} {'chars':>9} {'CER':>8} {'WER':>8} "
        f"{'sub':>6} {'ins':>6} {'del':>6} {'lines R/P':>15}"
    ]
    out += [_row(d.name, d.totals) for d in ev.documents]
    out.append("-" * len(out[0]))
    out.append(_row("collection (micro-averaged)", ev.totals))
    t = ev.totals
    out.append(f"mean page CER {_pct(t.cer_page_mean)}, mean page WER {_pct(t.wer_page_mean)}")
    out.append(
        f"normalisation: {', '.join(ev.normalization.names)}; line IoU >= {ev.iou_threshold}"
    )
    skipped = {s: n for s in STATUSES[1:] if (n := t.statuses.get(s, 0))}
    if skipped:
        out.append("not evaluated: " + ", ".join(f"{n} {s}" for s, n in skipped.items()))
        listed = [
            p for d in ev.documents for p in d.pages if p.status not in (EVALUATED, STATUSES[1])
        ]
        for p in listed[:MAX_LISTED]:
            out.append(
                f"  {p.document} page {p.page}: {p.status}" + (f" ({p.reason})" if p.reason else "")
            )
        if len(listed) > MAX_LISTED:
            out.append(f"  ... and {len(listed) - MAX_LISTED} more (see --json)")
    if ev.without_gt:
        out.append(f"{len(ev.without_gt)} documents have no ground truth (see --json)")
    for file, reason in ev.unmatched_gt[:MAX_LISTED]:
        out.append(f"GT not used: {file}: {reason}")
    top = confusions(ev, 10)
    if top:
        pairs = ", ".join(f"{c['gt'] or '∅'!r}->{c['pred'] or '∅'!r} {c['count']}" for c in top)
        out.append(f"most frequent confusions (gt->pred): {pairs}")
    return "\n".join(out)
