"""The work queue read in chunks: every pending page once, in document/page order, however the
chunks fall, and what the coordinator holds stays bounded by the chunk, not the collection."""

from __future__ import annotations

from pipeline.jobs import open_for_run
from pipeline.runner.pending import PendingPages


def _register(store, relpath: str, pages: int) -> int:
    return store.sync_document(
        relpath=relpath,
        path=f"/in/{relpath}",
        sha256=relpath.encode().hex().ljust(64, "0")[:64],
        size=1,
        mtime_ns=1,
        kind="pdf",
        format="PDF",
        page_count=pages,
    )


def _keys(tasks) -> list[tuple[str, int]]:
    return [(t.relpath, t.page_index) for t in tasks]


def test_chunks_cover_every_pending_page_once_in_order_across_documents(tmp_path):
    with open_for_run(tmp_path) as store:
        for name, pages in (("b/2.pdf", 5), ("a.pdf", 3), ("b/1.pdf", 1), ("c.pdf", 4)):
            _register(store, name, pages)
        done = [t for t in store.pending_pages() if t.relpath == "b/2.pdf" and t.page_index < 2]
        for task in done:
            store.complete(task.page_id, device="cpu:0", timings={}, confidence=None,
                           num_tokens=1, stop_reason="eos")  # fmt: skip
        expected = _keys(store.pending_pages())
        assert store.count_pending() == len(expected) == 11
        for chunk in (1, 2, 3, 4, 100):
            seen, after = [], None
            while tasks := store.next_pending(after, chunk):
                assert len(tasks) <= chunk
                seen += tasks
                after = (tasks[-1].relpath, tasks[-1].page_index)
            assert _keys(seen) == expected


def test_pending_pages_hold_at_most_a_chunk_and_count_down(tmp_path):
    with open_for_run(tmp_path) as store:
        _register(store, "big.pdf", 50)
        _register(store, "small.pdf", 7)
        pending = PendingPages(store, tmp_path, ("alto", "txt"), chunk=8)
        assert pending.remaining == 57
        popped = []
        while pending:
            assert len(pending._buffer) <= 8
            popped.append(pending.pop())
        assert pending.remaining == 0
        assert _keys(popped) == _keys(store.pending_pages())
