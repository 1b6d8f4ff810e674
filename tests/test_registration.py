"""Registering inputs: a file that crashes the reader process fails alone; the rest register."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from pipeline.ingest.documents import IngestSettings
from pipeline.ingest.page_loading import probe
from pipeline.ingest.registration import CRASHED_READER, DocumentRegistrar
from pipeline.jobs.sqlite_store import JobStore


def probe_that_dies_on_poison(path: str, settings: IngestSettings):
    """The real probe, except that a file named poison* kills its process like a segfault would."""
    if Path(path).name.startswith("poison"):
        os._exit(139)
    return probe(path, settings)


def new_pool() -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))


def test_a_document_that_kills_the_reader_fails_alone_and_the_rest_register(tmp_path, testdata):
    inputs = tmp_path / "scans"
    inputs.mkdir()
    for name in ("a.jpg", "poison.jpg", "z.jpg"):
        shutil.copy(testdata / "pages/vertical/jp_vert.jpg", inputs / name)
    out = tmp_path / "out"
    with JobStore.open(out) as store:
        registrar = DocumentRegistrar(
            store, out, IngestSettings(), new_pool, probe_fn=probe_that_dies_on_poison
        )
        pool = registrar.register([inputs], new_pool())
        pool.shutdown()
        summary = store.summary()
        pending = [(task.relpath, task.page_index) for task in store.pending_pages()]
    assert pending == [("a.jpg", 0), ("z.jpg", 0)]
    assert [(doc.relpath, doc.reason) for doc in summary.failed_documents] == [
        ("poison.jpg", CRASHED_READER)
    ]


def probe_that_always_dies(path: str, settings: IngestSettings):
    os._exit(139)


def test_unchanged_files_are_not_probed_again(tmp_path, testdata):
    inputs = tmp_path / "scans"
    inputs.mkdir()
    shutil.copy(testdata / "pages/vertical/jp_vert.jpg", inputs / "a.jpg")
    out = tmp_path / "out"
    with JobStore.open(out) as store:
        DocumentRegistrar(store, out, IngestSettings(), new_pool).register([inputs], new_pool())
        # Any probe now kills its process: an unchanged file must be trusted by its stat alone.
        registrar = DocumentRegistrar(
            store, out, IngestSettings(), new_pool, probe_fn=probe_that_always_dies
        )
        registrar.register([inputs], new_pool()).shutdown()
        assert store.summary().failed_documents == []
        # Touching the file (new mtime) makes it a candidate again: now it is probed.
        os.utime(inputs / "a.jpg", ns=(0, 0))
        registrar.register([inputs], new_pool()).shutdown()
        failed = [doc.relpath for doc in store.summary().failed_documents]
    assert failed == ["a.jpg"]
