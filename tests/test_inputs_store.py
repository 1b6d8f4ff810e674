"""The job store's record of inputs: removed sources and skipped files, on real SQLite."""

from __future__ import annotations

import sqlite3

import pytest

from pipeline.jobs.sqlite_store import JobStore


def add(store: JobStore, relpath: str, pages: int, sha: str = "h1") -> int:
    return store.sync_document(
        relpath=relpath,
        path=f"/in/{relpath}",
        sha256=sha,
        size=10,
        mtime_ns=1,
        kind="pdf",
        format="PDF",
        page_count=pages,
    )


@pytest.fixture
def store(tmp_path):
    with JobStore.open(tmp_path) as s:
        yield s


def test_a_removed_source_keeps_done_pages_and_gets_the_rest_back_when_it_returns(store):
    add(store, "a.pdf", 3)
    add(store, "b.pdf", 1)
    store.fail_document(relpath="bad.pdf", path="/in/bad.pdf", reason="empty file")
    first = store.pending_pages(doc_id=store.known_document("a.pdf").doc_id)[0]
    store.claim([first.page_id], "cpu:0")
    store.complete(
        first.page_id, device="cpu:0", timings={}, confidence=None, num_tokens=1, stop_reason="eos"
    )
    assert store.mark_sources_removed({"b.pdf"}) == ["a.pdf", "bad.pdf"]
    assert store.mark_sources_removed({"b.pdf"}) == []  # reported once as newly removed
    summary = store.summary()
    assert summary.removed == ["a.pdf", "bad.pdf"]
    assert summary.pages == {"pending": 1, "running": 0, "done": 1, "failed": 0}
    assert summary.documents["failed"] == 0 and summary.documents["source_removed"] == 2
    assert summary.documents["pending"] == 1  # b.pdf only
    assert [t.relpath for t in store.pending_pages()] == ["b.pdf"]
    assert store.known_document("a.pdf").removed
    add(store, "a.pdf", 3)  # back, same content
    assert not store.known_document("a.pdf").removed
    assert store.summary().pages == {"pending": 3, "running": 0, "done": 1, "failed": 0}


def test_prune_forgets_removed_documents_and_their_pages(store):
    add(store, "a.pdf", 2)
    add(store, "b.pdf", 1)
    store.mark_sources_removed({"b.pdf"})
    assert store.prune_removed() == ["a.pdf"]
    assert store.known_document("a.pdf") is None
    summary = store.summary()
    assert summary.removed == [] and summary.pages_total == 1


def test_skipped_files_replace_the_last_list_and_retire_old_failures(store):
    store.fail_document(relpath="notes.txt", path="/in/notes.txt", reason="unsupported format")
    store.replace_skipped([("x.md5", "/in/x.md5", "not a page"), ("notes.txt", "/in/n", "nope")])
    store.replace_skipped([("notes.txt", "/in/notes.txt", "not a page file (.txt)")])
    summary = store.summary()
    assert summary.skipped.count == 1
    assert [(f.relpath, f.reason) for f in summary.skipped.files] == [
        ("notes.txt", "not a page file (.txt)")
    ]
    assert summary.documents["failed"] == 0 and store.known_document("notes.txt") is None


def test_a_version_1_store_reads_without_the_new_tables_and_gains_them_on_the_next_run(tmp_path):
    with JobStore.open(tmp_path) as store:
        add(store, "a.pdf", 1)
    db = sqlite3.connect(tmp_path / ".anandasky/jobs.sqlite")
    db.executescript(
        "DROP TABLE skipped_files; DROP TABLE removed_sources; PRAGMA user_version = 1;"
    )
    db.close()
    with JobStore.open(tmp_path, exclusive=False) as reader:
        summary = reader.summary()
    assert summary.removed == [] and summary.skipped.count == 0 and summary.pages_total == 1
    with JobStore.open(tmp_path) as store:
        assert store.mark_sources_removed(set()) == ["a.pdf"]
