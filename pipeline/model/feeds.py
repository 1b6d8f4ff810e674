"""Feeding a continuous batch from a worker's task queue, and knowing when a job is done.

A device worker receives jobs `(job_id, images)` from the coordinator and answers one result per
job. `JobFeed` splits queued jobs into pages for `Recognizer.recognize_stream`, reading the
queue without waiting while the batch has work and waiting only when it is empty, and gathers
each page's recognition back into its job, so the worker can answer a job the moment its last
page stops, while pages of later jobs keep the batch full.
"""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Callable, Hashable

from PIL import Image

from pipeline.records import Recognition

# get_job(block) -> (job_id, images), None once no job will come (the stop sentinel), or raises
# queue.Empty when block=False and nothing is queued: `multiprocessing.Queue.get` as it is.
GetJob = Callable[[bool], "tuple[Hashable, list[Image.Image]] | None"]
PageKey = tuple[Hashable, int]


class JobFeed:
    """The `feed(n, block)` of `recognize_stream` over a queue of jobs; `finish` per result."""

    def __init__(self, get_job: GetJob) -> None:
        self.get_job = get_job
        self.ended = False
        self.pages: deque[tuple[PageKey, Image.Image]] = deque()
        self.results: dict[Hashable, list[Recognition | None]] = {}
        self.remaining: dict[Hashable, int] = {}
        self.completed: list[tuple[Hashable, list[Recognition]]] = []

    def __call__(self, n: int, block: bool) -> list[tuple[PageKey, Image.Image]] | None:
        out: list[tuple[PageKey, Image.Image]] = []
        while len(out) < n:
            if self.pages:
                out.append(self.pages.popleft())
            elif not self._take_job(block and not out):
                break
        if not out and self.ended:
            return None
        return out

    def _take_job(self, block: bool) -> bool:
        if self.ended:
            return False
        try:
            job = self.get_job(block)
        except queue.Empty:
            return False
        if job is None:
            self.ended = True
            return False
        job_id, images = job
        if not images:  # nothing to decode: complete as it arrives
            self.completed.append((job_id, []))
            return True
        self.results[job_id] = [None] * len(images)
        self.remaining[job_id] = len(images)
        self.pages.extend(((job_id, i), im) for i, im in enumerate(images))
        return True

    def finish(self, key: PageKey, recognition: Recognition) -> None:
        """Record one page's result (its job completes with its last page)."""
        job_id, index = key
        self.results[job_id][index] = recognition
        self.remaining[job_id] -= 1
        if not self.remaining[job_id]:
            del self.remaining[job_id]
            self.completed.append((job_id, self.results.pop(job_id)))

    def pop_completed(self) -> list[tuple[Hashable, list[Recognition]]]:
        """Jobs complete since the last call: `(job_id, recognitions in page order)`."""
        done, self.completed = self.completed, []
        return done

    def in_flight(self) -> list[Hashable]:
        """Jobs with pages taken but not all finished (to fail them if the batch breaks)."""
        return list(self.remaining)

    def drop(self, job_id: Hashable) -> None:
        """Forget a failed job: its unfinished pages are not fed again."""
        self.remaining.pop(job_id, None)
        self.results.pop(job_id, None)
        self.pages = deque(p for p in self.pages if p[0][0] != job_id)
