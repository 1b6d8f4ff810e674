"""Job store: resume semantics, crash leftovers, the run lock, fingerprints, summaries."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import REPO

from pipeline.errors import BadArguments, ConfigMismatch, ExitCode, OutputInUse, StoreDamaged
from pipeline.jobs.backend import JobBackend
from pipeline.jobs.sqlite_store import JobStore

FINGERPRINT = {
    "model_checksum": "sha256:aaaa",
    "prompt": "Recognize the text in this image.",
    "dpi": 300,
    "generation": {"max_new_tokens": 2048, "repetition_guard": True},
}


def add_doc(store: JobStore, relpath: str, pages: int, sha: str = "h1", **kw) -> int:
    fields = dict(size=100, mtime_ns=1, kind="pdf", format="PDF")
    fields.update(kw)
    return store.sync_document(
        relpath=relpath, path=f"/in/{relpath}", sha256=sha, page_count=pages, **fields
    )


def finish(store: JobStore, page_id: int, device: str = "npu:0", infer_s: float = 1.5) -> None:
    store.claim([page_id], device)
    store.complete(
        page_id,
        device=device,
        timings={"load_s": 0.1, "infer_s": infer_s},
        confidence=0.9,
        num_tokens=12,
        stop_reason="eos",
    )


def pending(store: JobStore) -> list[tuple[str, int]]:
    return [(t.relpath, t.page_index) for t in store.pending_pages()]


@pytest.fixture
def store(tmp_path):
    with JobStore.open(tmp_path) as s:
        yield s


# ---- opening --------------------------------------------------------------------------------


def test_store_lives_in_the_output_folder_in_wal_mode(tmp_path, store):
    db = tmp_path / ".anandasky" / "jobs.sqlite"
    assert db.is_file() and isinstance(store, JobBackend)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()


def test_unreadable_store_file_is_reported_as_damaged_with_the_way_forward(tmp_path):
    (tmp_path / ".anandasky").mkdir()
    (tmp_path / ".anandasky" / "jobs.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreDamaged, match="is damaged .*--recover-store"):
        JobStore.open(tmp_path)
    JobStore.open(tmp_path / "elsewhere").close()  # the failed open released the lock


def test_store_from_a_newer_version_is_refused(tmp_path):
    JobStore.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / ".anandasky" / "jobs.sqlite")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(BadArguments, match="newer anandasky-batch"):
        JobStore.open(tmp_path)


def test_status_on_a_folder_without_a_store_says_nothing_ran_there(tmp_path):
    with pytest.raises(BadArguments, match="nothing has run"):
        JobStore.open(tmp_path, exclusive=False)


# ---- fingerprint and settings ---------------------------------------------------------------


def test_first_fingerprint_is_stored_and_the_same_one_accepted_again(tmp_path):
    with JobStore.open(tmp_path) as s:
        s.check_fingerprint(FINGERPRINT, new_config=False)
    with JobStore.open(tmp_path) as s:
        s.check_fingerprint(json.loads(json.dumps(FINGERPRINT)), new_config=False)


def test_changed_fingerprint_is_refused_listing_each_difference_and_both_ways_out(store):
    store.check_fingerprint(FINGERPRINT, new_config=False)
    changed = dict(FINGERPRINT, dpi=400, prompt="Transcribe.", extra=1)
    changed["generation"] = {"max_new_tokens": 4096, "repetition_guard": True}
    with pytest.raises(ConfigMismatch) as err:
        store.check_fingerprint(changed, new_config=False)
    message = str(err.value)
    assert "dpi: 300 -> 400" in message
    assert 'prompt: "Recognize the text in this image." -> "Transcribe."' in message
    assert "generation.max_new_tokens: 2048 -> 4096" in message
    assert "extra: (not set) -> 1" in message
    assert "model_checksum" not in message
    assert f"anandasky-batch resume {store.out_dir}" in message and "--new-config" in message
    assert err.value.exit_code == ExitCode.BAD_ARGUMENTS


def test_new_config_stores_the_new_fingerprint_and_redoes_every_page(store):
    store.check_fingerprint(FINGERPRINT, new_config=False)
    add_doc(store, "a.pdf", 3)
    tasks = store.pending_pages()
    finish(store, tasks[0].page_id)
    store.fail(tasks[1].page_id, "boom", max_attempts=1)
    changed = dict(FINGERPRINT, dpi=400)
    store.check_fingerprint(changed, new_config=True)
    assert [t.attempts for t in store.pending_pages()] == [0, 0, 0]
    assert store.summary().pages == {"pending": 3, "running": 0, "done": 0, "failed": 0}
    store.check_fingerprint(changed, new_config=False)  # now the stored one


def test_unchanged_fingerprint_with_new_config_flag_keeps_progress(store):
    # Rerunning the very same command (flag included) after a crash must resume.
    store.check_fingerprint(FINGERPRINT, new_config=True)
    add_doc(store, "a.pdf", 2)
    finish(store, store.pending_pages()[0].page_id)
    store.check_fingerprint(FINGERPRINT, new_config=True)
    assert pending(store) == [("a.pdf", 1)]


def test_settings_are_stored_for_resume(tmp_path):
    with JobStore.open(tmp_path) as s:
        assert s.stored_settings() is None
        s.save_settings({"inputs": ["/in"], "dpi": 300})
        s.save_settings({"inputs": ["/in"], "dpi": 300, "device": "npu"})
    with JobStore.open(tmp_path, exclusive=False) as s:
        assert s.stored_settings() == {"inputs": ["/in"], "dpi": 300, "device": "npu"}


# ---- documents and resume -----------------------------------------------------------------------


def test_new_documents_get_pending_pages_in_document_and_page_order(store):
    add_doc(store, "b.pdf", 2)
    add_doc(store, "a/z.tif", 1)
    tasks = store.pending_pages()
    assert [(t.relpath, t.page_index, t.page_count) for t in tasks] == [
        ("a/z.tif", 0, 1),
        ("b.pdf", 0, 2),
        ("b.pdf", 1, 2),
    ]
    assert tasks[1].path == "/in/b.pdf" and tasks[1].attempts == 0
    assert [t.relpath for t in store.pending_pages(limit=2)] == ["a/z.tif", "b.pdf"]


def test_done_pages_are_never_returned_again_after_reopening(tmp_path):
    with JobStore.open(tmp_path) as s:
        add_doc(s, "a.pdf", 3)
        finish(s, s.pending_pages()[1].page_id)
    with JobStore.open(tmp_path) as s:
        add_doc(s, "a.pdf", 3)  # the next run registers the unchanged file again
        assert pending(s) == [("a.pdf", 0), ("a.pdf", 2)]


def test_unchanged_document_keeps_its_pages_and_refreshes_path_and_mtime(store):
    doc = add_doc(store, "a.pdf", 2)
    finish(store, store.pending_pages()[0].page_id)
    store.sync_document(
        relpath="a.pdf",
        path="/moved/a.pdf",
        sha256="h1",
        size=100,
        mtime_ns=99,
        kind="pdf",
        format="PDF",
        page_count=2,
    )
    known = store.known_document("a.pdf")
    assert (known.doc_id, known.path, known.mtime_ns, known.sha256) == (
        doc,
        "/moved/a.pdf",
        99,
        "h1",
    )
    assert [(t.page_index, t.path) for t in store.pending_pages()] == [(1, "/moved/a.pdf")]


def test_changed_content_redoes_the_whole_document(store):
    add_doc(store, "a.pdf", 3)
    add_doc(store, "b.pdf", 1)
    for task in store.pending_pages():
        finish(store, task.page_id)
    add_doc(store, "a.pdf", 2, sha="h2")
    assert pending(store) == [("a.pdf", 0), ("a.pdf", 1)]
    assert store.summary().pages["done"] == 1
    assert store.known_document("a.pdf").sha256 == "h2"


def test_failed_document_is_reported_and_retried_once_readable(store):
    add_doc(store, "a.pdf", 2)
    store.fail_document(relpath="a.pdf", path="/in/a.pdf", reason="encrypted PDF", size=5)
    known = store.known_document("a.pdf")
    assert (known.state, known.reason, known.size, known.sha256) == (
        "failed",
        "encrypted PDF",
        5,
        None,
    )
    assert store.pending_pages() == []
    summary = store.summary()
    assert summary.documents["failed"] == 1
    assert [(f.relpath, f.reason) for f in summary.failed_documents] == [("a.pdf", "encrypted PDF")]
    add_doc(store, "a.pdf", 1, sha="h2")
    assert pending(store) == [("a.pdf", 0)]
    assert store.summary().documents["failed"] == 0


def test_unknown_document_is_none(store):
    assert store.known_document("nope.pdf") is None


def test_undecodable_file_names_round_trip_exactly(store):
    relpath = os.fsdecode(b"d\xe9p\xf4t/lettre.pdf")
    add_doc(store, relpath, 1)
    store.fail_document(relpath=os.fsdecode(b"\xff.tif"), path="/x", reason="truncated")
    assert store.known_document(relpath).relpath == relpath
    assert store.pending_pages()[0].relpath == relpath
    assert store.pending_pages()[0].path == "/in/" + relpath
    json.dumps(store.summary().to_dict(), ensure_ascii=False).encode("utf-8")


# ---- page states -------------------------------------------------------------------------------


def test_failures_are_retried_until_max_attempts(store):
    add_doc(store, "a.pdf", 1)
    page = store.pending_pages()[0].page_id
    assert store.fail(page, "out of memory", max_attempts=3) == "pending"
    assert store.pending_pages()[0].attempts == 1
    assert store.fail(page, "out of memory", max_attempts=3) == "pending"
    assert store.fail(page, "out of memory again", max_attempts=3) == "failed"
    assert store.pending_pages() == []
    failed = store.summary().failed_pages
    assert [(f.relpath, f.page_number, f.error) for f in failed] == [
        ("a.pdf", 1, "out of memory again")
    ]


def test_fatal_failure_fails_the_page_at_once(store):
    add_doc(store, "a.pdf", 2)
    page = store.pending_pages()[1].page_id
    assert store.fail(page, "unreadable image", max_attempts=3, fatal=True) == "failed"
    assert store.summary().failed_pages[0].page_number == 2


def test_requeue_returns_running_pages_without_counting_an_attempt(store):
    add_doc(store, "a.pdf", 2)
    ids = [t.page_id for t in store.pending_pages()]
    finish(store, ids[0])
    store.claim([ids[1]], "cuda:1")
    assert store.pending_pages() == []
    store.release(ids)
    assert [(t.page_index, t.attempts) for t in store.pending_pages()] == [(1, 0)]
    assert store.summary().pages["done"] == 1


def test_pages_left_running_by_a_crash_are_pending_on_reopen(tmp_path):
    s = JobStore.open(tmp_path)
    add_doc(s, "a.pdf", 2)
    s.claim([t.page_id for t in s.pending_pages()], "npu:0")
    s.close()  # no requeue: as after a crash
    with JobStore.open(tmp_path, exclusive=False) as reader:
        assert reader.summary().pages["running"] == 2
    with JobStore.open(tmp_path) as s:
        assert pending(s) == [("a.pdf", 0), ("a.pdf", 1)]


def test_done_pages_stream_in_order_with_their_results(store):
    add_doc(store, "b.pdf", 1)
    add_doc(store, "a.pdf", 2)
    for task in reversed(store.pending_pages()):
        finish(store, task.page_id, device="npu:1", infer_s=2.0)
    done = list(store.done_pages())
    assert [(d.relpath, d.page_index, d.page_count) for d in done] == [
        ("a.pdf", 0, 2),
        ("a.pdf", 1, 2),
        ("b.pdf", 0, 1),
    ]
    assert done[0].timings == {"load_s": 0.1, "infer_s": 2.0}
    assert (done[0].device, done[0].confidence, done[0].num_tokens, done[0].stop_reason) == (
        "npu:1",
        0.9,
        12,
        "eos",
    )


def test_document_pages_list_every_page_state_from_one_snapshot_beside_a_run(tmp_path):
    with JobStore.open(tmp_path) as writer:
        add_doc(writer, "b.pdf", 3)
        add_doc(writer, "a.pdf", 2, size=7)
        add_doc(writer, "z.pdf", 1200)  # more rows than one fetch: the rest streams later
        writer.fail_document(relpath="bad.pdf", path="/in/bad.pdf", reason="not a PDF")
        tasks = {(t.relpath, t.page_index): t.page_id for t in writer.pending_pages()}
        finish(writer, tasks["b.pdf", 1])
        writer.fail(tasks["b.pdf", 2], "bad page", max_attempts=1)
        writer.fail(tasks["a.pdf", 0], "flaky", max_attempts=3)  # pending again
        writer.claim([tasks["a.pdf", 1]], "npu:0")
        with JobStore.open(tmp_path, exclusive=False) as reader:
            stream = reader.document_pages()
            first = next(stream)
            finish(writer, tasks["z.pdf", 1199])  # the run goes on meanwhile, unblocked
            docs = [first, *stream]
            assert list(reader.document_pages())[-1].pages[-1].state == "done"  # a new snapshot
    assert [d.relpath for d in docs] == ["a.pdf", "b.pdf", "bad.pdf", "z.pdf"]
    states = {d.relpath: [(p.page_index, p.state, p.error) for p in d.pages] for d in docs}
    assert states["a.pdf"] == [(0, "pending", "flaky"), (1, "running", None)]
    assert states["b.pdf"] == [(0, "pending", None), (1, "done", None), (2, "failed", "bad page")]
    assert states["bad.pdf"] == []
    assert states["z.pdf"] == [(i, "pending", None) for i in range(1200)]  # still its snapshot
    a, b, bad, _ = docs
    assert (a.path, a.state, a.reason, a.page_count, a.sha256, a.size) == (
        "/in/a.pdf",
        "ok",
        None,
        2,
        "h1",
        7,
    )
    assert (bad.state, bad.reason, bad.page_count) == ("failed", "not a PDF", None)
    assert b.pages[1].finished_at is not None and b.pages[0].finished_at is None


# ---- summary ------------------------------------------------------------------------------------


def test_summary_counts_documents_pages_and_devices(store):
    add_doc(store, "done.pdf", 2)
    add_doc(store, "partial.pdf", 2)
    add_doc(store, "todo.pdf", 2)
    add_doc(store, "mixed.pdf", 2)
    store.fail_document(relpath="bad.pdf", path="/in/bad.pdf", reason="not a PDF")
    tasks = {(t.relpath, t.page_index): t.page_id for t in store.pending_pages()}
    finish(store, tasks["done.pdf", 0], "npu:0", 1.0)
    finish(store, tasks["done.pdf", 1], "npu:1", 2.0)
    finish(store, tasks["partial.pdf", 0], "npu:0", 3.0)
    store.fail(tasks["partial.pdf", 1], "bad page", max_attempts=1)
    store.fail(tasks["mixed.pdf", 0], "bad page", max_attempts=1)
    store.claim([tasks["todo.pdf", 0]], "npu:1")
    summary = store.summary()
    assert summary.documents == {
        "pending": 2,
        "done": 1,
        "some_pages_failed": 1,
        "failed": 1,
        "source_removed": 0,
    }
    assert summary.pages == {"pending": 2, "running": 1, "done": 3, "failed": 2}
    assert {k: (v.pages_done, v.infer_seconds) for k, v in summary.devices.items()} == {
        "npu:0": (2, 4.0),
        "npu:1": (1, 2.0),
    }
    assert (summary.pages_total, summary.pages_remaining, summary.anything_failed) == (8, 3, True)
    assert summary.totals()["failed_documents"] == 1 and summary.totals()["done"] == 3
    as_json = json.loads(json.dumps(summary.to_dict()))
    assert as_json["devices"]["npu:0"] == {
        "pages_done": 2,
        "infer_seconds": 4.0,
        "detect_seconds": 0.0,
    }
    assert as_json["failed_pages"] == [
        {"relpath": "mixed.pdf", "page": 1, "error": "bad page"},
        {"relpath": "partial.pdf", "page": 2, "error": "bad page"},
    ]
    assert len(store.summary(max_failures=1).failed_pages) == 1


def test_empty_store_summary_is_all_zero(store):
    summary = store.summary()
    assert summary.pages_total == 0 and not summary.anything_failed
    assert set(summary.documents.values()) == {0}


def test_large_store_answers_nothing_pending_and_summary_quickly(tmp_path):
    with JobStore.open(tmp_path) as s:
        for d in range(100):
            add_doc(s, f"vol{d:03d}.pdf", 1000)
    conn = sqlite3.connect(tmp_path / ".anandasky" / "jobs.sqlite")
    conn.execute(
        "UPDATE pages SET state = 'done', device = 'npu:' || (id % 8), infer_s = 2.5, "
        "timings = '{\"infer_s\": 2.5}'"
    )
    conn.commit()
    conn.close()
    started = time.perf_counter()
    with JobStore.open(tmp_path) as s:
        opened = time.perf_counter()
        assert s.pending_pages() == []
        checked = time.perf_counter()
        summary = s.summary()
        summarised = time.perf_counter()
    assert summary.pages["done"] == 100_000 and summary.documents["done"] == 100
    assert sum(v.pages_done for v in summary.devices.values()) == 100_000
    assert opened - started < 1.0, "open"
    assert checked - opened < 0.2, "pending_pages"
    assert summarised - checked < 1.0, "summary"


# ---- concurrency: the run lock and readers ----------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    from pipeline.jobs.sqlite_store import JobStore
    store = JobStore.open({out!r})
    store.sync_document(relpath="a.pdf", path="/in/a.pdf", sha256="h", size=1, mtime_ns=1,
                        kind="pdf", format="PDF", page_count=2)
    store.claim([t.page_id for t in store.pending_pages()], "npu:0")
    print("holding", flush=True)
    time.sleep(120)
    """
)


def start_holder(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(repo=str(REPO), out=str(out))],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_second_run_on_the_same_folder_is_refused_until_the_holder_is_killed(tmp_path):
    proc = start_holder(tmp_path)
    try:
        with pytest.raises(OutputInUse) as err:
            JobStore.open(tmp_path)
        assert f"pid {proc.pid}" in str(err.value) and str(tmp_path) in str(err.value)
        assert err.value.exit_code == ExitCode.OUTPUT_IN_USE
        with JobStore.open(tmp_path, exclusive=False) as reader:  # status works meanwhile
            assert reader.summary().pages["running"] == 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    with JobStore.open(tmp_path) as s:  # no stale lock; its running pages come back
        assert pending(s) == [("a.pdf", 0), ("a.pdf", 1)]


def test_reader_sees_committed_progress_and_cannot_write(tmp_path):
    with JobStore.open(tmp_path) as writer:
        add_doc(writer, "a.pdf", 2)
        with JobStore.open(tmp_path, exclusive=False) as reader:
            assert reader.summary().pages["pending"] == 2
            finish(writer, writer.pending_pages()[0].page_id)
            assert reader.summary().pages["done"] == 1
            assert [d.page_index for d in reader.done_pages()] == [0]
            with pytest.raises(RuntimeError, match="exclusive=False"):
                reader.release([1])


def test_reader_snapshot_is_consistent_and_does_not_block_the_writer(tmp_path):
    with JobStore.open(tmp_path) as writer:
        add_doc(writer, "a.pdf", 50)
        finish(writer, writer.pending_pages()[0].page_id)
        with JobStore.open(tmp_path, exclusive=False) as reader:
            with reader._read() as db:  # e.g. `status` in the middle of its queries
                count = "SELECT COUNT(*) FROM pages WHERE state = 'done'"
                assert db.execute(count).fetchone()[0] == 1
                started = time.perf_counter()
                for task in writer.pending_pages():
                    finish(writer, task.page_id)
                assert time.perf_counter() - started < 5
                assert db.execute(count).fetchone()[0] == 1  # still its snapshot
            assert reader.summary().pages["done"] == 50
