"""The export report: what the delivery holds and, page by page, what it lacks and why.

`export-report.json` in DIR describes the delivery, not the act of exporting: it holds no
timestamps or counts of files written, so re-exporting unchanged results leaves it unchanged.
Those counts are on the returned `ExportReport` and in the printed summary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import SOFTWARE_NAME, __version__
from pipeline.errors import ExitCode
from pipeline.jobs.records import DocumentPages, printable

from .options import ExportOptions
from .pages import PENDING, ExportDocument, export_state

REPORT_NAME = "export-report.json"
_NEEDS_ALTO = ("alto", "page", "mets")
_SHOWN = 50


def document_entry(doc: ExportDocument, folder: str, options: ExportOptions) -> dict:
    """One exported document: where it is and every page it does not deliver as text."""
    needs_alto = any(f in options.formats for f in _NEEDS_ALTO)
    absent = [
        {"page": p.number, "state": p.state, **({"error": p.error} if p.error else {})}
        for p in doc.pages
        if p.content is None
    ]
    entry = {
        "relpath": printable(doc.relpath),
        "folder": folder,
        "source": printable(doc.path),
        "pages": doc.page_count,
        "exported": doc.page_count - len(absent),
        "placeholders": len(absent) if options.include_failed else 0,
        "not_exported": absent,
    }
    without_alto = [p.number for p in doc.pages if p.content and p.content.alto is None]
    if needs_alto and without_alto:
        entry["without_alto"] = without_alto  # the run wrote TXT only for these
    return entry


def not_started_entry(doc: DocumentPages) -> dict:
    """A document with no page done: nothing of it is delivered; every page is listed."""
    absent = []
    for page in doc.pages:
        state, error = export_state(page)
        absent.append(
            {"page": page.page_index + 1, "state": state, **({"error": error} if error else {})}
        )
    return {
        "relpath": printable(doc.relpath),
        "reason": "no page done yet",
        "pages": doc.page_count,
        "not_exported": absent,
    }


def _page_states(entry: dict) -> str:
    """` (1 failed, 2 pending)` for a not-exported document that lists its pages."""
    states = [p["state"] for p in entry.get("not_exported", ())]
    counts = ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(sorted(states)))
    return f" ({counts})" if counts else ""


@dataclass
class ExportReport:
    """Returned by `export_collection`; `to_json()` is the file, `summary()` the printout."""

    out_dir: Path
    to: Path
    options: ExportOptions
    archive: Path | None = None
    documents: list[dict] = field(default_factory=list)
    not_exported_documents: list[dict] = field(default_factory=list)
    written: int = 0
    unchanged: int = 0
    removed: int = 0

    @property
    def pending_in_unstarted_documents(self) -> int:
        """Pending pages of the selected documents that have no page done."""
        return sum(
            p["state"] == PENDING
            for d in self.not_exported_documents
            for p in d.get("not_exported", ())
        )

    def totals(self) -> dict[str, int]:
        states = [p["state"] for d in self.documents for p in d["not_exported"]]
        return {
            "documents": len(self.documents),
            "documents_not_exported": len(self.not_exported_documents),
            "pages_exported": sum(d["exported"] for d in self.documents),
            "pages_failed": states.count("failed"),
            "pages_pending": states.count("pending") + self.pending_in_unstarted_documents,
            "pages_missing_output": states.count("missing"),
            "pages_without_alto": sum(len(d.get("without_alto", ())) for d in self.documents),
            "placeholders": sum(d["placeholders"] for d in self.documents),
            "documents_without_pdf": sum("pdf_error" in d for d in self.documents),
        }

    @property
    def complete(self) -> bool:
        totals = self.totals()
        return not any(v for k, v in totals.items() if k not in ("documents", "pages_exported"))

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK if self.complete else ExitCode.SOME_PAGES_FAILED

    def to_dict(self) -> dict:
        o = self.options
        return {
            "software": f"{SOFTWARE_NAME} {__version__}",
            "source": printable(str(self.out_dir)),
            "formats": list(o.formats),
            "documents_selected": list(o.documents) or ["*"],
            "include_failed": o.include_failed,
            "complete": self.complete,
            "totals": self.totals(),
            "pending_in_documents_not_started": self.pending_in_unstarted_documents,
            "documents": self.documents,
            "not_exported_documents": self.not_exported_documents,
        }

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    def summary(self) -> str:
        """A few lines for the terminal; the JSON file has every page."""
        t = self.totals()
        lines = [
            f"exported {_n(t['documents'], 'document')} ({_n(t['pages_exported'], 'page')}) "
            f"to {printable(str(self.to))} [{','.join(self.options.formats)}]: {_n(self.written, 'file')} "
            f"written, {self.unchanged} unchanged, {self.removed} removed"
        ]
        if not self.complete:
            counts = [
                (t["pages_failed"], "page", "failed"),
                (t["pages_pending"], "page", "still to do"),
                (t["pages_missing_output"], "page", "with unreadable output files"),
                (t["pages_without_alto"], "page", "without ALTO (the run wrote txt only)"),
                (t["documents_not_exported"], "document", "with nothing to export"),
                (t["documents_without_pdf"], "document", "without PDF"),
            ]
            lines.append(
                "not delivered: " + ", ".join(f"{_n(n, w)} {why}" for n, w, why in counts if n)
            )
            if t["placeholders"]:
                lines.append(f"{_n(t['placeholders'], 'placeholder')} written, marked as such")
            problems = [
                f"  {d['relpath']} page {p['page']}: {p['state']}"
                + (f": {p['error']}" if p.get("error") else "")
                for d in self.documents
                for p in d["not_exported"]
            ]
            problems += [
                f"  {d['relpath']}: {d['pdf_error']}" for d in self.documents if "pdf_error" in d
            ]
            problems += [
                f"  {d['relpath']}: {d['reason']}{_page_states(d)}"
                for d in self.not_exported_documents
            ]
            lines += problems[:_SHOWN]
            if len(problems) > _SHOWN:
                lines.append(f"  ... ({len(problems) - _SHOWN} more in the report)")
            if self.pending_in_unstarted_documents:
                lines.append(
                    f"  {_n(self.pending_in_unstarted_documents, 'page')} of documents with no "
                    "page done yet (`anandasky-batch status OUT` shows progress)"
                )
        lines.append(f"report: {printable(str(self.to / REPORT_NAME))}")
        if self.archive is not None:
            lines.append(f"archive: {printable(str(self.archive))}")
        return "\n".join(lines)


def _n(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")
