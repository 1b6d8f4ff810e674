"""Export a whole output folder: read the store once, then each document, format by format."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from pipeline.errors import BadArguments
from pipeline.jobs import STATE_DIR, open_catalogue, reported_store_errors
from pipeline.jobs.backend import JobBackend
from pipeline.jobs.records import printable
from pipeline.outputs.page_files import PAGES_DIR

from . import alto_pages, hocr, mets, page_xml, txt
from .archive import archive_path, write_archive
from .delivery import Delivery, delivery_access_error, locked, sha256, written_by_export
from .options import DEFAULT_FORMATS, DEFAULT_SEPARATOR, ExportOptions
from .pages import DONE, ExportDocument, escaped_relpath, load_document, plan_document
from .report import REPORT_NAME, ExportReport, document_entry, not_started_entry

DOCUMENTS_DIR = "documents"


def render_document(
    doc: ExportDocument, options: ExportOptions, entry: dict | None = None
) -> dict[str, bytes]:
    """Every file of one document, by name inside its folder; METS last, as it lists the rest.

    A document with no page to deliver gets no files at all, rather than an empty text. A PDF
    that cannot be made (its source gone or changed) is left out and said in `entry`."""
    if not options.include_failed and all(p.content is None for p in doc.pages):
        return {}
    files: dict[str, bytes] = {}
    writers = {"txt": txt, "alto": alto_pages, "page": page_xml, "hocr": hocr}
    for fmt, writer in writers.items():
        if fmt in options.formats:
            files.update(writer.render(doc, options))
    if "pdf" in options.formats:
        from . import pdf_document  # pikepdf and fpdf2 take 0.4 s to import: only when asked

        try:
            files.update(pdf_document.render(doc, options))
        except pdf_document.PdfUnavailable as exc:
            if entry is not None:
                entry["pdf_error"] = f"no PDF: {exc}"
    if "mets" in options.formats:
        files.update(mets.render(doc, options, files))
    return files


def _check_destination(out: Path, to: Path) -> None:
    if to == out or any(to.is_relative_to(out / d) for d in (PAGES_DIR, STATE_DIR)):
        raise BadArguments(
            f"--to {to}: choose a folder of its own for the delivery, not {out} itself or a "
            f"folder inside its {PAGES_DIR}/ or {STATE_DIR}/"
        )
    if to.exists() and not to.is_dir():
        raise BadArguments(f"--to {to} is a file; give a folder (it is created if missing)")


def _export_documents(
    store: JobBackend, out_dir: Path, options: ExportOptions, delivery: Delivery
) -> tuple[list[dict], list[dict]]:
    """(document entries, selected documents with nothing to export).

    One snapshot: `document_pages()` is a single query, so every document and page state comes
    from the same moment even while a run goes on; a page that finishes meanwhile is picked up
    by the next export.
    """
    entries: list[dict] = []
    not_started: list[dict] = []
    failed: list[dict] = []
    for doc in store.document_pages():
        if not options.selects(doc.relpath):
            continue
        if doc.state == "failed":
            reason = f"document failed: {doc.reason or ''}"
            failed.append({"relpath": printable(doc.relpath), "reason": reason})
            continue
        if not any(p.state == DONE for p in doc.pages):
            if doc.pages:
                not_started.append(not_started_entry(doc))
            continue
        source = plan_document(out_dir, doc)
        key = source.fingerprint(options.fingerprint_fields())
        entry = delivery.unchanged_entry(doc.relpath, key)
        if entry is None:
            loaded = load_document(source)
            folder = f"{DOCUMENTS_DIR}/{escaped_relpath(doc.relpath)}"
            entry = document_entry(loaded, folder, options)
            files = render_document(loaded, options, entry)
            if "pdf_error" in entry:
                key = ""  # no fingerprint matches: the next export tries the PDF again
            delivery.put(doc.relpath, key, {f"{folder}/{n}": d for n, d in files.items()}, entry)
        entries.append(entry)
    return entries, not_started + failed


def export_collection(
    out_dir: Path | str,
    to: Path | str,
    *,
    formats: Iterable[str] = DEFAULT_FORMATS,
    documents: Iterable[str] = (),
    include_failed: bool = False,
    zip_archive: bool = False,
    page_separator: str = DEFAULT_SEPARATOR,
    per_page_txt: bool = False,
    pdfa: bool = False,
) -> ExportReport:
    """Write (or bring up to date) the delivery of OUT's results in `to`; safe beside a run.

    Reads the store read-only, so it never blocks a run and a run never blocks it; pages that
    finish meanwhile are picked up by the next export, which rewrites only what changed.
    """
    options = ExportOptions.make(
        formats,
        documents,
        include_failed=include_failed,
        page_separator=page_separator,
        per_page_txt=per_page_txt,
        pdfa=pdfa,
    )
    out_dir, to = Path(os.path.abspath(out_dir)), Path(os.path.abspath(to))
    _check_destination(out_dir, to)
    report = ExportReport(out_dir, to, options)
    try:
        _deliver(out_dir, to, options, report, zip_archive)
    except OSError as err:
        if not written_by_export(to, err):
            raise
        raise delivery_access_error(to, err) from None
    return report


def _deliver(
    out_dir: Path, to: Path, options: ExportOptions, report: ExportReport, zip_archive: bool
) -> None:
    """Bring `to` up to date and fill in `report`; an OSError here may be DIR's (see caller)."""
    with (
        reported_store_errors(out_dir),
        open_catalogue(out_dir) as store,
        locked(to),
    ):
        delivery = Delivery(to)
        delivery.remove_stale_temp_files()
        report.documents, report.not_exported_documents = _export_documents(
            store, out_dir, options, delivery
        )
        if options.documents and not (report.documents or report.not_exported_documents):
            raise BadArguments(  # before finish(), which would delete the earlier delivery
                f"--documents {' '.join(options.documents)}: no document of {out_dir} matches "
                "(a glob matches the input path below the input folder, e.g. 'box1/*.pdf'; "
                f"`*` crosses folders); nothing in {to} was changed"
            )
        report_bytes = report.to_json()
        delivery.write(REPORT_NAME, report_bytes)
        archive_key, target = None, archive_path(to)
        if zip_archive:
            members = {**delivery.members(), REPORT_NAME: sha256(report_bytes)}
            archive_key = sha256(json.dumps(sorted(members.items())).encode("ascii"))
            if archive_key != delivery.archive_key or not target.is_file():
                write_archive(to, members, target)
            report.archive = target
        elif delivery.archive_key is not None and target.is_file():
            target.unlink()  # the archive an earlier export wrote no longer matches DIR
            delivery.removed += 1
        delivery.finish(archive_key)
    report.written, report.unchanged, report.removed = (
        delivery.written,
        delivery.unchanged,
        delivery.removed,
    )
