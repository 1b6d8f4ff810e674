"""Export a whole output folder: read the store once, then each document, format by format."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable
from operator import attrgetter
from pathlib import Path

from pipeline.errors import BadArguments
from pipeline.job_backend import printable
from pipeline.outputs import PAGES_DIR
from pipeline.store import STATE_DIR, JobStore

from . import alto_pages, hocr, mets, page_xml, txt
from .archive import archive_path, write_archive
from .delivery import Delivery, locked, sha256
from .options import DEFAULT_FORMATS, DEFAULT_SEPARATOR, ExportOptions
from .pages import (
    PENDING,
    ExportDocument,
    escaped_relpath,
    failures_by_document,
    load_document,
    plan_document,
)
from .report import REPORT_NAME, ExportReport, document_entry

DOCUMENTS_DIR = "documents"


def render_document(doc: ExportDocument, options: ExportOptions) -> dict[str, bytes]:
    """Every file of one document, by name inside its folder; METS last, as it lists the rest.

    A document with no page to deliver gets no files at all, rather than an empty text."""
    if not options.include_failed and all(p.content is None for p in doc.pages):
        return {}
    files: dict[str, bytes] = {}
    writers = {"txt": txt, "alto": alto_pages, "page": page_xml, "hocr": hocr}
    for fmt, writer in writers.items():
        if fmt in options.formats:
            files.update(writer.render(doc, options))
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
    store: JobStore, out_dir: Path, options: ExportOptions, delivery: Delivery
) -> tuple[list[dict], list[dict], int]:
    """(document entries, documents with nothing to export, pages pending in documents that have
    no page done).

    One snapshot: `done_pages()` starts its query first, and `summary()` runs while that query
    is still open on the same read-only connection, so SQLite answers both from the same
    snapshot. (A store with fewer done pages than one fetch has been read whole by then and the
    summary is a moment newer; while a run goes on, pages only move on from pending, so a
    page that is done stays done and a failure the summary shows is a real one.)
    """
    done_pages = store.done_pages()
    first = next(done_pages, None)
    summary = store.summary()
    failures = failures_by_document(summary.failed_pages)
    entries: list[dict] = []
    pending_seen = 0
    stream = itertools.chain([first], done_pages) if first is not None else iter(())
    for relpath, group in itertools.groupby(stream, key=attrgetter("relpath")):
        done = list(group)
        failed = failures.pop(relpath, {})
        if not options.selects(relpath):
            pending_seen += done[0].page_count - len(done) - len(failed)
            continue
        source = plan_document(out_dir, done, failed, store.known_document(relpath))
        pending_seen += sum(p.state == PENDING for p in source.pages)
        key = source.fingerprint(options.fingerprint_fields())
        entry = delivery.unchanged_entry(relpath, key)
        if entry is None:
            doc = load_document(source)
            folder = f"{DOCUMENTS_DIR}/{escaped_relpath(relpath)}"
            entry = document_entry(doc, folder, options)
            files = render_document(doc, options)
            delivery.put(relpath, key, {f"{folder}/{n}": d for n, d in files.items()}, entry)
        entries.append(entry)
    not_exported = [
        {
            "relpath": printable(relpath),
            "reason": "no page done yet",
            "failed_pages": [{"page": n, "error": e} for n, e in sorted(failed.items())],
        }
        for relpath, failed in failures.items()
        if options.selects(relpath)
    ]
    not_exported += [
        {"relpath": printable(f.relpath), "reason": f"document failed: {f.reason}"}
        for f in summary.failed_documents
        if options.selects(f.relpath)
    ]
    return entries, not_exported, max(0, summary.pages_remaining - pending_seen)


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
    )
    out_dir, to = Path(os.path.abspath(out_dir)), Path(os.path.abspath(to))
    _check_destination(out_dir, to)
    report = ExportReport(out_dir, to, options)
    with JobStore.open(out_dir, exclusive=False) as store, locked(to):
        delivery = Delivery(to)
        delivery.remove_stale_temp_files()
        report.documents, report.not_exported_documents, report.pending_in_unstarted_documents = (
            _export_documents(store, out_dir, options, delivery)
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
    return report
