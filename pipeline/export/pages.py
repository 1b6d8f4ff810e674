"""What an export knows about one document: every page's state and, for done pages, its content.

The job store says which pages are done, failed or still to do; a done page's ALTO file in OUT
says what it holds (words, line and paragraph breaks, word confidences, image size). A run made
with `--formats txt` left no ALTO, so such a page's content comes from its TXT, without size or
confidences.

Reading happens in two steps so re-exports stay cheap: `plan_document` only stats files (enough
to tell whether anything changed since the last export), `load_document` parses them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from lxml import etree

from pipeline.export.geometry import PageGeometry, read_geometry
from pipeline.jobs.records import DocumentPages, PageState
from pipeline.outputs.alto import read_alto
from pipeline.outputs.page_files import PAGES_DIR, output_folder, page_output_paths

DONE, FAILED, PENDING, MISSING = "done", "failed", "pending", "missing"


@dataclass(frozen=True)
class Word:
    """One ALTO String: the export never splits or joins what the ALTO holds."""

    content: str
    confidence: float | None  # ALTO WC, 0..1
    space_before: bool  # an SP precedes it in its line


Line = tuple[Word, ...]
Block = tuple[Line, ...]


@dataclass(frozen=True)
class PageContent:
    """A done page's transcription, as structured as its source file allows."""

    blocks: tuple[Block, ...]
    width: int | None  # pixels of the recognised image; None without ALTO
    height: int | None
    confidence: float | None  # ALTO Page PC
    processed_at: str | None  # ISO 8601, from the ALTO or the store
    alto: bytes | None  # the ALTO file itself; None when the run wrote TXT only
    geometry: PageGeometry | None = None  # positions the ALTO gives (line detection), if any

    @property
    def text(self) -> str:
        """Same text as `alto.alto_to_text` (and the run's TXT): words, lines, paragraphs."""
        return "\n\n".join("\n".join(map(line_text, block)) for block in self.blocks)


def line_text(line: Line) -> str:
    return "".join((" " if w.space_before else "") + w.content for w in line)


@dataclass(frozen=True)
class PageSource:
    """One page as the store and the file system show it, before anything is parsed."""

    number: int  # 1-based
    state: str  # done | failed | pending
    error: str | None
    finished_at: float | None
    alto_path: Path
    txt_path: Path
    alto_stat: tuple[int, int] | None  # (size, mtime_ns) or None when absent
    txt_stat: tuple[int, int] | None


@dataclass(frozen=True)
class DocumentSource:
    relpath: str
    path: str  # the source file as the run read it (absolute)
    page_count: int
    sha256: str | None
    size: int | None
    pages: tuple[PageSource, ...]

    def fingerprint(self, options: Mapping) -> str:
        """Changes whenever anything an export of this document depends on changes."""
        state = [
            self.relpath,
            self.path,
            self.sha256,
            self.page_count,
            dict(options),
            [
                (p.number, p.state, p.error, p.finished_at, p.alto_stat, p.txt_stat)
                for p in self.pages
            ],
        ]
        text = json.dumps(state, sort_keys=True, ensure_ascii=True, default=str)
        return hashlib.sha256(text.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class ExportPage:
    number: int
    state: str  # done | failed | pending | missing (done in the store, files unreadable)
    error: str | None
    content: PageContent | None  # set exactly when state == done


@dataclass(frozen=True)
class ExportDocument:
    relpath: str
    path: str
    page_count: int
    sha256: str | None
    size: int | None
    pages: tuple[ExportPage, ...]  # pages 1..page_count, in order


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


def export_state(page: PageState) -> tuple[str, str | None]:
    """(state, error) as the export reports a page: a running page is still pending, and only a
    failed page carries its error."""
    if page.state == FAILED:
        return FAILED, page.error or ""
    return (DONE if page.state == DONE else PENDING), None


def plan_document(out_dir: Path, doc: DocumentPages) -> DocumentSource:
    """Every page of one document as the store lists it; done pages with their files' stats."""
    by_index = {p.page_index: p for p in doc.pages}
    pages = []
    for number in range(1, (doc.page_count or 0) + 1):
        page = by_index.get(number - 1)
        state, error = export_state(page) if page is not None else (PENDING, None)
        paths = page_output_paths(out_dir, doc.relpath, number, ("alto", "txt"))
        done = state == DONE
        finished = page.finished_at if done else None
        stats = (_stat(paths["alto"]), _stat(paths["txt"])) if done else (None, None)
        pages.append(
            PageSource(number, state, error, finished, paths["alto"], paths["txt"], *stats)
        )
    return DocumentSource(
        relpath=doc.relpath,
        path=doc.path,
        page_count=doc.page_count or 0,
        sha256=doc.sha256,
        size=doc.size,
        pages=tuple(pages),
    )


# What a user can do about a done page whose files are gone: a rerun trusts the store.
NOT_REDONE = (
    "a rerun does not redo a page the store records as done: restore the files from a backup, "
    "or redo every page with `run ... --new-config`"
)


def load_document(source: DocumentSource) -> ExportDocument:
    """Parse the done pages' files; a page whose files are gone or unreadable is `missing`."""
    pages = []
    for p in source.pages:
        content, error = None, p.error
        if p.state == DONE:
            try:
                content = load_page(p)
            except (OSError, ValueError, etree.XMLSyntaxError) as exc:
                error = f"its output files in OUT cannot be read ({exc}); {NOT_REDONE}"
        state = p.state if p.state != DONE or content is not None else MISSING
        pages.append(ExportPage(p.number, state, error, content))
    return ExportDocument(
        source.relpath, source.path, source.page_count, source.sha256, source.size, tuple(pages)
    )


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def load_page(page: PageSource) -> PageContent:
    """The page's ALTO when the run wrote one, else its TXT; raises OSError when neither is."""
    if page.alto_stat is not None:
        return parse_alto(page.alto_path.read_bytes(), _iso(page.finished_at))
    text = page.txt_path.read_bytes().decode("utf-8")
    return text_content(text.removesuffix("\n"), _iso(page.finished_at))


def parse_alto(data: bytes, finished_at: str | None = None) -> PageContent:
    """Structure and confidences of an ALTO file as `pipeline.outputs.alto.build_alto` writes it."""
    root, ns = read_alto(data)
    page = root.find(f".//{{{ns}}}Page")
    if page is None:
        raise ValueError("the ALTO file has no Page")
    blocks = []
    for block in root.iter(f"{{{ns}}}TextBlock"):
        lines = []
        for line in block.iter(f"{{{ns}}}TextLine"):
            words, space = [], False
            for el in line:
                tag = etree.QName(el).localname
                if tag in ("String", "HYP"):
                    wc = el.get("WC")
                    words.append(Word(el.get("CONTENT", ""), _float(wc), space))
                    space = False
                elif tag == "SP":
                    space = True
            lines.append(tuple(words))
        if lines:
            blocks.append(tuple(lines))
    processed = root.findtext(f".//{{{ns}}}processingDateTime")
    return PageContent(
        blocks=tuple(blocks),
        width=_int(page.get("WIDTH")),
        height=_int(page.get("HEIGHT")),
        confidence=_float(page.get("PC")),
        processed_at=processed or finished_at,
        alto=data,
        geometry=read_geometry(root, ns),
    )


def text_content(text: str, finished_at: str | None = None) -> PageContent:
    """Content of a TXT-only page: paragraphs, lines and space-separated words, no geometry."""
    blocks = tuple(
        tuple(
            tuple(Word(w, None, i > 0) for i, w in enumerate(line.split(" ")))
            for line in para.split("\n")
        )
        for para in text.split("\n\n")
        if para
    )
    return PageContent(blocks, None, None, None, finished_at, None)


def _float(value: str | None) -> float | None:
    return None if value is None else float(value)


def _int(value: str | None) -> int | None:
    return None if value is None else round(float(value))


def escaped_relpath(relpath: str) -> str:
    """The document's folder under `documents/`: the same escaping as OUT/pages, so it is
    printable, stays inside DIR and never collides with another document's."""
    return output_folder(Path(), relpath).relative_to(PAGES_DIR).as_posix()
