"""Count documents in this process, or spread over worker processes for large collections.

Counting is CPU-bound Python around C (regex, rapidfuzz), so processes, not threads. Documents
go out in chunks of similar page counts and come back in order; each chunk's confusions are
summed. Worker processes are spawned (not forked) so nothing of the caller's state is shared.
They are opt-in (`--workers N`): on the shared 2-core machine of BENCHMARKS.md two processes
were slower than one (no idle core to gain, spawn and pickling to pay).
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from .documents import CountSettings, DocumentResult, GtPage, evaluate_document
from .sources import PredDocument

Job = tuple[PredDocument, dict[int, GtPage]]


def _count_chunk(jobs: list[Job], settings: CountSettings) -> tuple[list[DocumentResult], Counter]:
    confusions: Counter = Counter()
    return [evaluate_document(doc, gt, settings, confusions) for doc, gt in jobs], confusions


def _chunks(jobs: list[Job], parts: int) -> list[list[Job]]:
    """Consecutive runs of documents with about the same number of GT pages each."""
    total = sum(len(gt) for _, gt in jobs)
    size = max(1, total // parts)
    chunks, chunk, pages = [], [], 0
    for job in jobs:
        chunk.append(job)
        pages += len(job[1])
        if pages >= size:
            chunks.append(chunk)
            chunk, pages = [], 0
    if chunk:
        chunks.append(chunk)
    return chunks


def _in_processes(jobs: list[Job], settings: CountSettings, workers: int):
    chunks = _chunks(jobs, workers * 4)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(_count_chunk, chunks, [settings] * len(chunks)))


def count_documents(
    jobs: list[Job], settings: CountSettings, workers: int
) -> Iterator[tuple[DocumentResult, Counter]]:
    """(result, confusions) per document, in the order of `jobs` (a chunk's confusions come
    with its first document). Where worker processes cannot start (a caller whose main module
    cannot be re-imported, e.g. a script read from stdin), the count runs here instead."""
    chunks = None
    if workers > 1 and len(jobs) > 1:
        try:
            chunks = _in_processes(jobs, settings, workers)
        except (BrokenProcessPool, OSError):
            chunks = None
    for results, confusions in chunks or [_count_chunk(jobs, settings)]:
        for i, result in enumerate(results):
            yield result, confusions if i == 0 else Counter()
