"""An OUT folder built the way a run leaves it, for the export tests: a real JobStore, real
page outputs, pages done, failed for good and still pending, a document that failed whole.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pipeline.export.mets import METS_NS
from pipeline.jobs.sqlite_store import JobStore
from pipeline.outputs.alto import PageMeta, normalize_text, page_confidence
from pipeline.outputs.page_files import write_page_outputs
from pipeline.records import Recognition

ALL = ("txt", "alto", "mets", "page", "hocr")
XHTML = "{http://www.w3.org/1999/xhtml}"
M = f"{{{METS_NS}}}"
WHEN = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)

# relpath -> page texts; None marks a page that fails for good, ... a page still pending.
COLLECTION: dict[str, list] = {
    "box1/letter.pdf": [
        "Dear Sir,\nI write to you\tabout the  harvest.\n\nYours faithfully,\nJ. Smith",
        "第一行漢字と仮名\n第二行：句読点。",
        None,
    ],
    "box1/scroll.tif": ["天地玄黃 宇宙洪荒\n日月盈昃"],
    "box2/odd%name\u00e9.png": ["Zeile eins\nZeile zwei — Ende"],
    "box2/later.pdf": ["Begun, not finished.", ...],
    os.fsdecode(b"box2/caf\xe9.jpg"): ["Latin-1 file name"],  # not valid UTF-8
    "box2/blank.jpg": [""],  # the model saw no text: a real, empty transcription
}
UNDECODABLE = "box2/caf\\xe9.jpg"  # as the report (and `status`) print it
ERROR = "recognition failed: device lost"


def recognition(text: str, seed: int = 0) -> Recognition:
    """Tokens of up to three characters with varied log-probabilities, as the model gives."""
    ends = tuple(range(3, len(text), 3)) + ((len(text),) if text else ())
    logprobs = tuple(-0.05 * ((i + seed) % 7) for i in range(len(ends)))
    return Recognition(text, logprobs, ends, "eos")


def build_out(out: Path, collection: dict[str, list] = COLLECTION) -> JobStore:
    """An OUT folder as a run leaves it; returns the still-open (exclusive) store."""
    store = JobStore.open(out)
    for relpath, pages in collection.items():
        store.sync_document(
            relpath=relpath,
            path=f"/archive/in/{relpath}",
            sha256=f"{len(relpath):064x}",
            size=1000 + len(pages),
            mtime_ns=1,
            kind="pdf" if relpath.endswith(".pdf") else "image",
            format=relpath.rsplit(".", 1)[-1].upper(),
            page_count=len(pages),
        )
    for task in store.pending_pages():
        text = collection[task.relpath][task.page_index]
        if text is ...:
            continue
        store.claim([task.page_id], "cpu")
        if text is None:
            store.fail(task.page_id, ERROR, max_attempts=3, fatal=True)
        else:
            finish_page(out, store, task, text)
    store.fail_document(
        relpath="box3/broken.pdf", path="/archive/in/box3/broken.pdf", reason="encrypted"
    )
    return store


def finish_page(out: Path, store: JobStore, task, text: str) -> Recognition:
    rec = recognition(text, task.page_index)
    number = task.page_index + 1
    meta = PageMeta(
        task.relpath,
        number,
        1200 + number,
        1800,
        "anandasky",
        "sha256:ab",
        "Read.",
        processing_datetime=WHEN,
    )
    write_page_outputs(out, task.relpath, number, rec, meta)
    store.complete(
        task.page_id,
        device="cpu",
        timings={"infer_s": 0.5},
        confidence=page_confidence(rec),
        num_tokens=rec.num_tokens,
        stop_reason="eos",
    )
    return rec


@pytest.fixture
def run(tmp_path):
    """The run's store stays open (and locked) while the tests export: export reads beside it."""
    store = build_out(tmp_path / "out")
    yield store
    store.close()


@pytest.fixture
def out(run) -> Path:
    return run.out_dir


def transcription(relpath: str, number: int) -> str:
    """What the page holds: the model's text as `normalize_text` defines it."""
    return normalize_text(COLLECTION[relpath][number - 1])


def folder(to: Path, relpath: str) -> Path:
    report = json.loads((to / "export-report.json").read_text("utf-8"))
    (entry,) = [d for d in report["documents"] if d["relpath"] == relpath]
    return to / entry["folder"]


def files_of(root: Path) -> dict[str, tuple[int, int]]:
    """{relative name: (inode, mtime_ns)} of every file: a rewrite changes both."""
    return {
        str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".anandasky-export")
    }
