"""The records a job backend hands out: plain, picklable dataclasses (they travel to loader
processes and, on a cluster, to other nodes), with no SQLite or torch inside."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class KnownDocument:
    """What the store remembers about an input, so an unchanged file need not be hashed again."""

    doc_id: int
    relpath: str
    path: str
    sha256: str | None
    size: int | None
    mtime_ns: int | None
    page_count: int | None
    state: str  # ok | failed
    reason: str | None
    removed: bool = False  # its source was gone at an earlier discovery


@dataclass(frozen=True)
class SkippedFile:
    relpath: str
    reason: str


@dataclass(frozen=True)
class SkippedFiles:
    """Files of the inputs that are not pages: how many, and the first of them."""

    count: int
    files: list[SkippedFile]


@dataclass(frozen=True)
class PageTask:
    """One page to recognise; small and picklable so it can travel to loader processes."""

    page_id: int
    doc_id: int
    relpath: str
    path: str
    page_index: int  # 0-based
    page_count: int
    attempts: int
    # The document's registration, checked when the page is loaded (`pipeline.ingest.source_changes`).
    size: int | None = None
    mtime_ns: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class DonePage:
    """A finished page, as `export` needs it."""

    page_id: int
    relpath: str
    path: str
    page_index: int
    page_count: int
    device: str | None
    timings: dict
    confidence: float | None
    num_tokens: int | None
    stop_reason: str | None
    finished_at: float | None


@dataclass(frozen=True)
class PageState:
    """One page's progress, as `JobBackend.document_pages` lists it."""

    page_index: int  # 0-based
    state: str  # pending | running | done | failed
    error: str | None  # the last failure (a pending page keeps it until it is retried)
    finished_at: float | None  # when it was done, or last failed


@dataclass(frozen=True)
class DocumentPages:
    """A document and the state of every page it has: what reports like `export` list."""

    relpath: str
    path: str
    state: str  # ok | failed (unreadable: it has no pages)
    reason: str | None  # why the whole document failed
    page_count: int | None  # None for a failed document
    sha256: str | None
    size: int | None
    pages: tuple[PageState, ...]  # in page order


@dataclass(frozen=True)
class DeviceStats:
    pages_done: int
    infer_seconds: float
    detect_seconds: float = 0.0  # line detection of these pages (in the page loaders)


@dataclass(frozen=True)
class FailedDocument:
    relpath: str
    reason: str


@dataclass(frozen=True)
class FailedPage:
    relpath: str
    page_number: int  # 1-based, as users count
    error: str


@dataclass
class StoreSummary:
    """Counts for `status`. Document states: pending (work left), done, some_pages_failed, failed."""

    documents: dict[str, int]
    pages: dict[str, int]
    devices: dict[str, DeviceStats] = field(default_factory=dict)
    failed_documents: list[FailedDocument] = field(default_factory=list)
    failed_pages: list[FailedPage] = field(default_factory=list)
    skipped: SkippedFiles = field(default_factory=lambda: SkippedFiles(0, []))
    removed: list[str] = field(default_factory=list)  # relpaths whose source is gone

    @property
    def pages_total(self) -> int:
        return sum(self.pages.values())

    @property
    def pages_remaining(self) -> int:
        return self.pages["pending"] + self.pages["running"]

    @property
    def anything_failed(self) -> bool:
        return bool(self.documents["failed"] or self.pages["failed"])

    def totals(self) -> dict[str, int]:
        """Flat counts: pages per state, plus `documents` and `failed_documents`."""
        documents = sum(self.documents.values())
        return {
            **self.pages,
            "documents": documents,
            "failed_documents": self.documents["failed"],
            "skipped_files": self.skipped.count,
            "sources_removed": len(self.removed),
        }

    def to_dict(self) -> dict:
        """JSON-ready; undecodable file names are shown with backslash escapes."""
        return {
            "documents": dict(self.documents),
            "pages": dict(self.pages),
            "devices": {k: asdict(v) for k, v in self.devices.items()},
            "failed_documents": [
                {"relpath": printable(f.relpath), "reason": f.reason} for f in self.failed_documents
            ],
            "failed_pages": [
                {"relpath": printable(f.relpath), "page": f.page_number, "error": f.error}
                for f in self.failed_pages
            ],
            "skipped_files": {
                "count": self.skipped.count,
                "files": [
                    {"relpath": printable(f.relpath), "reason": f.reason}
                    for f in self.skipped.files
                ],
            },
            "sources_removed": [printable(relpath) for relpath in self.removed],
        }


# Control characters (C0, DEL, C1) and the Unicode line and paragraph separators: in a log
# line or `status` they would start a new line that names no file.
_LINE_BREAKERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(name: str) -> str:
    """A file name fit for logs and JSON, on one line: bytes that were not UTF-8 become `\\xNN`,
    control characters their Python escape (`\\n`, `\\x85`, `\\u2028`)."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return _LINE_BREAKERS.sub(lambda m: ascii(m.group())[1:-1], text)
