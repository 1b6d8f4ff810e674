"""What an export was asked for, checked once so the format writers can trust it."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from pipeline import __version__
from pipeline.errors import BadArguments

FORMATS = ("txt", "alto", "mets", "page", "hocr", "pdf")
DEFAULT_FORMATS = ("txt", "alto", "mets")
# The pdf format's file in a document folder: `pdf_document` writes it, METS lists it.
PDF_FILE_NAME = "searchable.pdf"
DEFAULT_SEPARATOR = "\f"
_ESCAPES = {"f": "\f", "n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def parse_separator(value: str) -> str:
    """`\\f`, `\\n`, `\\t`, `\\r` and `\\\\` as typed on a command line -> the characters."""
    out, chars = [], iter(value)
    for ch in chars:
        if ch != "\\":
            out.append(ch)
            continue
        nxt = next(chars, "")
        if nxt not in _ESCAPES:
            raise BadArguments(
                f"--page-separator {value!r}: unknown escape \\{nxt}; use \\f, \\n, \\t, \\r or \\\\"
            )
        out.append(_ESCAPES[nxt])
    return "".join(out)


@dataclass(frozen=True)
class ExportOptions:
    formats: tuple[str, ...]
    documents: tuple[str, ...] = ()  # glob patterns on the relpath; empty: every document
    include_failed: bool = False
    page_separator: str = DEFAULT_SEPARATOR
    per_page_txt: bool = False
    pdfa: bool = False  # pdf declared PDF/A-2b (pdf_archival)

    @classmethod
    def make(
        cls,
        formats: Iterable[str],
        documents: Iterable[str] = (),
        *,
        include_failed: bool = False,
        page_separator: str = DEFAULT_SEPARATOR,
        per_page_txt: bool = False,
        pdfa: bool = False,
    ) -> ExportOptions:
        """Validated options. `mets` points at the delivered ALTO files, so it brings `alto`."""
        wanted = {f.strip().lower() for f in formats if f.strip()}
        unknown = sorted(wanted - set(FORMATS))
        if unknown or not wanted:
            raise BadArguments(
                f"--format {','.join(unknown) or '(empty)'}: choose from {','.join(FORMATS)}"
            )
        if "mets" in wanted:
            wanted.add("alto")
        if per_page_txt and "txt" not in wanted:
            raise BadArguments("--per-page-txt needs txt among the --format list")
        if pdfa and "pdf" not in wanted:
            raise BadArguments("--pdfa needs pdf among the --format list")
        return cls(
            formats=tuple(f for f in FORMATS if f in wanted),
            documents=tuple(documents),
            include_failed=include_failed,
            page_separator=page_separator,
            per_page_txt=per_page_txt,
            pdfa=pdfa,
        )

    def selects(self, relpath: str) -> bool:
        """Shell-style match on the path `status` shows; `*` also crosses `/`."""
        return not self.documents or any(fnmatch.fnmatchcase(relpath, g) for g in self.documents)

    def fingerprint_fields(self) -> dict:
        """What a document's exported files depend on besides its pages (not the selection)."""
        return {
            "software": __version__,
            "formats": list(self.formats),
            "include_failed": self.include_failed,
            "page_separator": self.page_separator,
            "per_page_txt": self.per_page_txt,
            "pdfa": self.pdfa,
        }
