"""Which ground-truth file belongs to which document and page (docs/EVALUATE.md, "Matching").

A GT file's name, without its transcription suffixes (`.xml`, `.page.xml`, `.gt.txt`, ...),
is compared with every document's name, with and without the document's own extension:

1. `box1/letter` (or `box1/letter.pdf`): the whole document, its pages in order;
2. `box1/letter/0003` (or `box1/letter.pdf/0003`, the layout of OUT/pages): page 3;
3. `box1/letter_0003`, `box1/letter-p3`, `box1/letter.0003`: page 3.

Each rule is tried on the full relative path first, then on the file name alone when exactly
one document has that name. A mapping file (`--map`) says it explicitly for collections named
otherwise: CSV with a header `gt,document,page` (page empty: the whole document).
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import BadArguments

from .sources import strip_suffixes

_PAGE_SUFFIX = re.compile(r"^(.+?)(?:[_.-]p(?:age)?|[_.-])(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Match:
    document: str
    page: int | None  # None: the file holds the whole document, page 1 first


def _forms(name: str) -> set[str]:
    stem, dot, _ = name.rpartition(".")
    return {name, stem} if dot and stem and "/" not in name[len(stem) :] else {name}


class Matcher:
    """Resolves GT file names (relative to the GT folder) to documents."""

    def __init__(self, documents: list[str], mapping: dict[str, Match] | None = None) -> None:
        self.mapping = mapping or {}
        self.full: dict[str, str] = {}
        base: dict[str, set[str]] = defaultdict(set)
        for doc in documents:
            for form in _forms(doc):
                self.full.setdefault(form, doc)
                base[form.rsplit("/", 1)[-1]].add(doc)
        self.base = {k: next(iter(v)) for k, v in base.items() if len(v) == 1}

    def _lookup(self, name: str) -> Match | None:
        for table in (self.full, self.base):
            key = name if table is self.full else name.rsplit("/", 1)[-1]
            if key in table:
                return Match(table[key], None)
            parent, _, stem = name.rpartition("/")
            pkey = parent if table is self.full else parent.rsplit("/", 1)[-1]
            if parent and stem.isdigit() and pkey in table:
                return Match(table[pkey], int(stem))
            m = _PAGE_SUFFIX.match(key)
            if m and m.group(1) in table and int(m.group(2)) > 0:
                return Match(table[m.group(1)], int(m.group(2)))
        return None

    def match(self, gt_relpath: str) -> Match | None:
        if gt_relpath in self.mapping:
            return self.mapping[gt_relpath]
        return self._lookup(strip_suffixes(gt_relpath))


def could_match(gt_relpaths: list[str], mapping: dict[str, Match]):
    """A test `name -> bool` that is False for every document no GT file can match.

    Lets a run of 10^6 pages keep page states only for the documents that have GT, while the
    store is read once (the full matching needs every document's name first)."""
    keys = {m.document for m in mapping.values()}
    for rel in gt_relpaths:
        name = strip_suffixes(rel)
        keys.add(name)
        parent, _, stem = name.rpartition("/")
        if parent and stem.isdigit():
            keys.add(parent)
        if m := _PAGE_SUFFIX.match(name):
            keys.add(m.group(1))
    keys |= {k.rsplit("/", 1)[-1] for k in keys}

    def test(document: str) -> bool:
        return any(f in keys or f.rsplit("/", 1)[-1] in keys for f in _forms(document))

    return test


def read_mapping(path: Path) -> dict[str, Match]:
    """{gt relpath: Match} from a `gt,document,page` CSV; one bad row names its line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadArguments(f"--map {path}: cannot be read ({exc})") from None
    rows = csv.reader(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    header = [h.strip().lower() for h in next(rows, [])]
    if header[:2] != ["gt", "document"]:
        raise BadArguments(
            f"--map {path}: the first line must be the header `gt,document,page`, got {header}"
        )
    mapping: dict[str, Match] = {}
    for number, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        gt, doc = (row + ["", ""])[:2]
        page = row[2].strip() if len(row) > 2 else ""
        if not gt.strip() or not doc.strip() or (page and not page.isdigit()) or page == "0":
            raise BadArguments(
                f"--map {path}, row {number}: expected `gt,document,page` with a GT file, a "
                f"document and an optional page number from 1, got {row}"
            )
        mapping[gt.strip()] = Match(doc.strip(), int(page) if page else None)
    return mapping
