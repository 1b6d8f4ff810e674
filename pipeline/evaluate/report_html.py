"""A self-contained HTML report: the figures, then each page's GT and prediction side by side
with a character-level diff (grapheme clusters, as counted), and the page image's thumbnail
when the run's source file is still there. One file, no scripts, no external resources.
"""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path

from .align import opcodes
from .evaluation import Evaluation, PageResult
from .metrics import EVALUATED, STATUSES, Totals
from .normalize import graphemes
from .report_json import confusions

THUMBNAIL_PIXELS = 220 * 320
_STYLE = """
body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
td:first-child,th:first-child{text-align:left}
.page{display:flex;gap:1em;margin:1em 0;border-top:1px solid #ddd;padding-top:.5em}
.page img{max-width:220px;max-height:320px;border:1px solid #ccc}
.text{flex:1;white-space:pre-wrap;font-family:monospace;font-size:14px}
.sub{background:#ffe08a}.del{background:#f7b0b0}.ins{background:#b3e6b3}
.note{color:#a00}
"""


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _totals_row(name: str, t: Totals) -> str:
    e = t.char_edits
    cells = [
        escape(name),
        str(t.statuses.get(EVALUATED, 0)),
        str(t.chars),
        _pct(t.cer),
        _pct(t.wer),
        str(e.substitutions),
        str(e.insertions),
        str(e.deletions),
    ]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def diff_html(gt_text: str, pred_text: str) -> tuple[str, str]:
    """(GT side, prediction side) as HTML: substitutions, deletions and insertions marked."""
    gt, pred = graphemes(gt_text), graphemes(pred_text)
    left, right = [], []
    for tag, g0, g1, p0, p1 in opcodes(gt, pred):
        a, b = escape("".join(gt[g0:g1])), escape("".join(pred[p0:p1]))
        if tag == "equal":
            left.append(a)
            right.append(b)
        elif tag == "replace":
            left.append(f'<span class="sub">{a}</span>')
            right.append(f'<span class="sub">{b}</span>')
        elif tag == "delete":
            left.append(f'<span class="del">{a}</span>')
        else:
            right.append(f'<span class="ins">{b}</span>')
    return "".join(left), "".join(right)


def thumbnail(source: str | None, page: int) -> str | None:
    """A small JPEG of the page as a data URI, or None when the source cannot be rendered.

    Any failure only costs the picture (the source may be moved, damaged or need a
    password), so every exception is swallowed here on purpose."""
    if not source or not Path(source).is_file():
        return None
    try:
        from pipeline.ingest.documents import IngestSettings, load_page

        image = load_page(Path(source), page - 1, IngestSettings(dpi=40), THUMBNAIL_PIXELS)
        image.thumbnail((220, 320))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=70)
    except Exception:  # noqa: BLE001 - see docstring
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _page_html(page: PageResult, source: str | None, thumbnails: bool) -> str:
    title = f"page {page.page}: {page.status}"
    if page.counts is not None:
        title += f", CER {_pct(page.counts.cer)}, WER {_pct(page.counts.wer)}"
    parts = [f'<div class="page" id="{escape(page.document)}-{page.page}">']
    uri = thumbnail(source, page.page) if thumbnails else None
    if uri:
        parts.append(f'<img alt="page {page.page}" src="{uri}">')
    if page.gt_text is not None and page.pred_text is not None:
        left, right = diff_html(page.gt_text, page.pred_text)
        parts.append(f'<div class="text"><b>ground truth</b> ({escape(page.gt_file or "")})\n')
        parts.append(f"{left}</div>")
        parts.append(f'<div class="text"><b>prediction</b> ({escape(page.pred_file or "")})\n')
        parts.append(f"{right}</div>")
    else:
        note = escape(page.reason or "")
        parts.append(f'<div class="text"><span class="note">{escape(title)}</span> {note}</div>')
    parts.append("</div>")
    return f"<h3>{escape(title)}</h3>" + "".join(parts)


def _summary(ev: Evaluation) -> str:
    """Pages not evaluated, by status, and the most frequent confusions."""
    statuses = ev.totals.statuses
    left_out = [f"{n} {s}" for s in STATUSES[1:] if (n := statuses.get(s, 0))]
    parts = [f"<p>not evaluated: {escape(', '.join(left_out))}</p>"] if left_out else []
    rows = [
        f"<tr><td>{escape(c['gt']) or '&#8709;'}</td><td>{escape(c['pred']) or '&#8709;'}</td>"
        f"<td>{c['count']}</td></tr>"
        for c in confusions(ev)
    ]
    if rows:
        parts.append(
            '<table class="confusions"><tr><th>GT</th><th>prediction</th><th>count</th></tr>'
        )
        parts += rows
        parts.append("</table>")
    return "\n".join(parts)


def render_html(ev: Evaluation, *, thumbnails: bool = True) -> str:
    """The whole report; pages without ground truth are counted, not shown."""
    head = ["document", "pages", "chars", "CER", "WER", "sub", "ins", "del"]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>anandasky-batch evaluation</title>',
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Evaluation against ground truth</h1>",
        f"<p>ground truth: {escape(str(ev.gt))}; predictions: "
        f"{escape(str(ev.run or ev.pred))}; normalisation: "
        f"{escape(', '.join(ev.normalization.names))}; counted on grapheme clusters.</p>",
        "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>",
        _totals_row("collection", ev.totals),
        *(_totals_row(d.name, d.totals) for d in ev.documents),
        "</table>",
        _summary(ev),
        '<p class="legend"><span class="sub">substituted</span> '
        '<span class="del">deleted (in GT only)</span> '
        '<span class="ins">inserted (in prediction only)</span></p>',
    ]
    for doc in ev.documents:
        out.append(f"<h2>{escape(doc.name)}</h2>")
        out += [
            _page_html(p, doc.source, thumbnails)
            for p in doc.pages
            if p.status != "no_ground_truth"
        ]
    out.append("</body></html>")
    return "\n".join(out) + "\n"
