"""Plain text: one UTF-8 file per document, pages in order, a separator between pages.

The default separator is a form feed, the page break of plain text (`pdftotext` uses it too);
page text never holds one (`alto.normalize_text` removes it). `{page}` in a separator becomes
the number of the page that follows, so e.g. `\\n--- page {page} ---\\n` labels each break.

A page without a transcription is left out, so a reader counting form feeds must check the
export report. With `--include-failed` it is a marker line instead, worded so it cannot pass for
recognised text, and listed in the report like every placeholder:
`[anandasky-batch: page 3 not transcribed (failed)]`.
"""

from __future__ import annotations

from .options import ExportOptions
from .pages import ExportDocument, ExportPage

DOCUMENT_FILE = "text.txt"
PAGE_FOLDER = "txt"


def placeholder_line(page: ExportPage) -> str:
    return f"[anandasky-batch: page {page.number} not transcribed ({page.state})]"


def _page_text(page: ExportPage, options: ExportOptions) -> str | None:
    if page.content is not None:
        return page.content.text
    return placeholder_line(page) if options.include_failed else None


def render(doc: ExportDocument, options: ExportOptions) -> dict[str, bytes]:
    """{name inside the document folder: bytes}: the document text and, if asked, each page."""
    files: dict[str, bytes] = {}
    parts: list[str] = []
    for page in doc.pages:
        text = _page_text(page, options)
        if text is None:
            continue
        if parts:
            parts.append(options.page_separator.replace("{page}", str(page.number)))
        parts.append(text + "\n")
        if options.per_page_txt:
            files[f"{PAGE_FOLDER}/{page.number:04d}.txt"] = (text + "\n").encode("utf-8")
    files[DOCUMENT_FILE] = "".join(parts).encode("utf-8")
    return files
