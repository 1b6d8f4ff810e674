"""What there is to evaluate: the documents and pages of a run, or of a folder of files.

A run is read through its job store (read-only, safe beside a running job), so failed and
pending pages are known and listed rather than dropped; a done page's transcription is its
ALTO in OUT/pages (its TXT when the run wrote no ALTO). A folder of predictions has no store:
each file is a document, except a file named by digits alone (`0003.txt`), which is that page
of the document named by its folder, the layout of OUT/pages itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import BadArguments
from pipeline.jobs import STATE_DIR, open_catalogue
from pipeline.jobs.records import printable
from pipeline.outputs.page_files import page_output_paths

from .readers import SUFFIXES, page_format

FORMAT_PREFERENCE = ("alto", "page", "hocr", "text")
DONE, FAILED, PENDING, MISSING = "done", "failed", "pending", "missing"


@dataclass(frozen=True)
class PredPage:
    number: int  # 1-based
    state: str  # done | failed | pending | missing
    reason: str | None = None
    file: Path | None = None  # the transcription, for a done page
    index_in_file: int = 0  # which page of `file` (0-based): a file may hold a whole document


@dataclass
class PredDocument:
    """A document to evaluate; pages are made on demand, so a run of 10^6 pages stays small."""

    name: str  # the run's input relpath (as `status` prints it), or the file's relative path
    source: str | None = None  # the input file the run read (page image for thumbnails)
    state: str = "ok"  # ok | failed (unreadable document)
    reason: str | None = None
    page_count: int = 0
    files: dict[int, Path] = field(default_factory=dict)  # folder mode: page -> file
    whole_file: Path | None = None  # folder mode: one file holding the whole document
    _run: tuple | None = None  # run mode: (OUT, relpath, {number: PageState})

    def page(self, number: int) -> PredPage | None:
        """The page's state and file; None when the document has no such page."""
        if self.state == FAILED:
            return PredPage(number, FAILED, f"document failed: {self.reason or ''}")
        if self._run is not None:
            if not 1 <= number <= self.page_count:
                return None
            out, relpath, states = self._run
            return _run_page(out, relpath, number, states.get(number))
        file = self.files.get(number)
        return None if file is None else PredPage(number, DONE, file=file)


def run_documents(out: Path, keep_pages=lambda name: True) -> Iterator[PredDocument]:
    """Every document of the run at OUT from one store snapshot; page states only for the
    documents `keep_pages(name)` accepts (the others are only listed)."""
    if not (out / STATE_DIR).is_dir():
        raise BadArguments(
            f"{out} is not the output folder of a run (no {STATE_DIR}/ in it); give a run's "
            "--out folder, or compare files directly with --pred"
        )
    with open_catalogue(out) as store:
        for doc in store.document_pages():
            name = printable(doc.relpath)
            kept = keep_pages(name)
            states = {p.page_index + 1: p for p in doc.pages} if kept else {}
            yield PredDocument(
                name,
                doc.path,
                doc.state,
                doc.reason,
                doc.page_count or 0,
                _run=(out, doc.relpath, states) if kept else None,
            )


def _run_page(out: Path, relpath: str, number: int, state) -> PredPage:
    if state is None or state.state not in (DONE, FAILED):
        return PredPage(number, PENDING)
    if state.state == FAILED:
        return PredPage(number, FAILED, state.error or "")
    paths = page_output_paths(out, relpath, number, ("alto", "txt"))
    for fmt in ("alto", "txt"):
        if paths[fmt].is_file():
            return PredPage(number, DONE, file=paths[fmt])
    reason = (
        f"done in the store but {paths['txt']} is gone; a rerun does not redo a page the store "
        "records as done: restore the files from a backup, or redo every page with `run ... "
        "--new-config`"
    )
    return PredPage(number, MISSING, reason)


def transcription_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative path with '/', path) of every file a reader accepts under `root`, sorted."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.lower().endswith(SUFFIXES) and not name.startswith("."):
                path = Path(folder, name)
                yield printable(path.relative_to(root).as_posix()), path


def strip_suffixes(name: str) -> str:
    """`a/b.page.xml` -> `a/b`, `x.gt.txt` -> `x`: the transcription suffixes, all of them."""
    while True:
        stem, dot, ext = name.rpartition(".")
        if not dot or "/" in ext or f".{ext.lower()}" not in _STRIPPED or not stem:
            return name
        name = stem


_STRIPPED = frozenset(SUFFIXES) | {".gt", ".pred", ".ocr"}


def _preferred(a: Path, b: Path) -> Path:
    def rank(p: Path) -> int:
        fmt = page_format(p)
        return FORMAT_PREFERENCE.index(fmt) if fmt in FORMAT_PREFERENCE else len(FORMAT_PREFERENCE)

    return a if rank(a) <= rank(b) else b


def folder_documents(pred: Path) -> list[PredDocument]:
    """Documents of a prediction file or folder (see the module docstring for the layout).

    A document given as one whole file gets its pages when the evaluation reads that file."""
    files = [(printable(pred.name), pred)] if pred.is_file() else list(transcription_files(pred))
    documents: dict[str, PredDocument] = {}
    for rel, path in files:
        name = strip_suffixes(rel)
        parent, _, stem = name.rpartition("/")
        if parent and stem.isdigit() and int(stem) > 0:
            doc = documents.setdefault(parent, PredDocument(parent))
            number = int(stem)
            old = doc.files.get(number)
            doc.files[number] = path if old is None else _preferred(old, path)
            doc.page_count = max(doc.page_count, number)
        else:
            doc = documents.setdefault(name, PredDocument(name))
            old = doc.whole_file
            doc.whole_file = path if old is None else _preferred(old, path)
    return sorted(documents.values(), key=lambda d: d.name)
