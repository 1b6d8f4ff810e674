"""An input overwritten while a run reads it: noticed when a page is loaded, redone from its new
content under a new registration, never written under the old one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TESTDATA, assert_valid_alto
from test_registration import new_pool

from pipeline.errors import ExitCode
from pipeline.ingest.documents import IngestSettings
from pipeline.ingest.page_loading import LoadedImage, load_page_image
from pipeline.ingest.registration import DocumentRegistrar
from pipeline.ingest.source_changes import Registered, SourceChanged
from pipeline.jobs.sqlite_store import JobStore
from pipeline.runner.pending import PendingPages
from pipeline.runner.reregistration import SourceChanges

JPG_A = TESTDATA / "pages/vertical/jp_vert.jpg"
JPG_B = TESTDATA / "pages/vertical/ndl_3508165_9.jpg"
PDF_6 = TESTDATA / "pages/pdf/vicksburg_sample_ocr_6p.pdf"
PDF_3 = TESTDATA / "pages/pdf/olmocr_mattsnotes_3p.pdf"


def registered(path: Path) -> Registered:
    info = path.stat()
    return Registered(info.st_size, info.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())


def test_a_page_of_an_overwritten_file_is_reported_changed_not_loaded(tmp_path):
    page = tmp_path / "scan.jpg"
    shutil.copyfile(JPG_A, page)
    identity = registered(page)
    shutil.copyfile(JPG_B, page)  # overwritten in place with another scan
    result = load_page_image(str(page), 0, IngestSettings(dpi=100), None, identity)
    assert isinstance(result, SourceChanged)


def test_a_touched_file_with_the_same_content_still_loads(tmp_path):
    page = tmp_path / "scan.jpg"
    shutil.copyfile(JPG_A, page)
    identity = registered(page)
    os.utime(page, ns=(identity.mtime_ns + 10**9, identity.mtime_ns + 10**9))
    result = load_page_image(str(page), 0, IngestSettings(dpi=100), None, identity)
    assert isinstance(result, LoadedImage)


def _done_pages(out: Path) -> int:
    return _pages(out).get("done", 0)


def _pages(out: Path) -> dict[str, int]:
    """Pages per state in OUT's store, read beside the run ({} before the store exists)."""
    try:
        with JobStore.open(out, exclusive=False) as store:
            return store.summary().pages
    except Exception:
        return {}


@pytest.mark.slow
def test_a_document_overwritten_during_the_run_is_redone_from_its_new_content(
    tmp_path, tiny_model_dir
):
    scans = tmp_path / "scans"
    scans.mkdir()
    doc = scans / "doc.pdf"
    shutil.copyfile(PDF_6, doc)
    out = tmp_path / "out"
    slow = ["--max-new-tokens", "150", "--no-repetition-guard", "--batch-size", "1"]
    args = ["run", str(scans), "--out", str(out), "--model", str(tiny_model_dir), "--quiet"]
    args += ["--device", "cpu", "--workers", "1", "--loaders", "1", "--dpi", "60", *slow]
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        # Replaced as soon as its 6 pages are registered, long before the first is done (the
        # model is still loading): the loads after that see the new file. Waiting for a done
        # page raced with the loaders, which could have read every page by then (1 run in 9).
        deadline = time.monotonic() + 300
        while sum(_pages(out).values()) < 6:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "doc.pdf not registered in 300 s"
            time.sleep(0.02)
        assert _done_pages(out) == 0
        replacement = tmp_path / "new.pdf"
        shutil.copyfile(PDF_3, replacement)
        os.replace(replacement, doc)  # as a sync tool delivers a corrected file
        _, stderr = process.communicate(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    assert process.returncode == ExitCode.OK, stderr
    assert "doc.pdf changed while this run was reading it" in (out / "run.log").read_text()
    files = sorted(p.name for p in (out / "pages/doc.pdf").iterdir())
    assert files == [f"000{n}{ext}" for n in (1, 2, 3) for ext in (".alto.xml", ".txt")]
    for n in (1, 2, 3):
        alto = (out / f"pages/doc.pdf/000{n}.alto.xml").read_bytes()
        assert_valid_alto(alto)
        # Every page was made from the new file (510x669 px at 60 DPI; the old one's are 360x540).
        assert b'WIDTH="510" HEIGHT="669"' in alto
    with JobStore.open(out, exclusive=False) as store:
        known = store.known_document("doc.pdf")
        summary = store.summary()
    assert known.sha256 == hashlib.sha256(PDF_3.read_bytes()).hexdigest()
    assert known.page_count == 3
    assert summary.pages == {"pending": 0, "running": 0, "done": 3, "failed": 0}
    status = json.loads(
        subprocess.run(
            [sys.executable, "-m", "cli", "status", str(out), "--json"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        ).stdout
    )
    assert status["documents"]["done"] == 1 and status["documents"]["failed"] == 0


@contextlib.contextmanager
def registered_pdf(tmp_path: Path) -> Iterator[tuple[JobStore, SourceChanges, Path, Path]]:
    """scans/doc.pdf (3 pages) registered in OUT's store as a run does: the store, the
    coordinator's side of source changes, the document and OUT."""
    scans, out = tmp_path / "scans", tmp_path / "out"
    scans.mkdir()
    doc = scans / "doc.pdf"
    shutil.copyfile(PDF_3, doc)
    ingest = IngestSettings(dpi=60)
    with JobStore.open(out) as store:
        registrar = DocumentRegistrar(store, out, ingest, new_pool)
        registrar.register([scans], new_pool()).shutdown()
        yield store, SourceChanges(store, out, ingest, new_pool), doc, out


def drained(pending: PendingPages) -> list:
    """Every page left in `pending`, in the order loaders would get them."""
    pages = []
    while pending:
        pages.append(pending.pop())
    return pages


def test_the_coordinator_side_requeues_new_pages_and_drops_stale_ones(tmp_path):
    with registered_pdf(tmp_path) as (store, changes, doc, out):
        old = store.pending_pages()

        def handled_then_drained() -> list:
            """The first page goes to a loader, which finds its file changed; what follows."""
            pending = PendingPages(store, out, ("alto", "txt"))
            first = pending.pop()
            changes.handle(first, pending)
            return drained(pending)

        # Changed back (same content, new mtime) before it was read: the page simply goes on.
        os.utime(doc, ns=(old[0].mtime_ns + 10**9,) * 2)
        assert handled_then_drained() == old and not changes.is_stale(old[0])
        # Really overwritten: six new pages replace the three of the old registration.
        shutil.copyfile(PDF_6, doc)
        pending = handled_then_drained()
        assert [t.page_index for t in pending] == [0, 1, 2, 3, 4, 5]
        assert all(changes.is_stale(t) for t in old)
        assert not any(changes.is_stale(t) for t in pending)
        assert pending[0].sha256 == hashlib.sha256(PDF_6.read_bytes()).hexdigest()
