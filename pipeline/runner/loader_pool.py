"""Page loading in CPU processes ahead of the devices: submit pages, harvest what is ready.

A loader process that dies (a decoder crashing on a hostile file) breaks the whole process pool;
the pages it held come back as retryable failures and a fresh pool takes over.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from pipeline.ingest.documents import IngestSettings
from pipeline.ingest.page_loading import (
    LayoutRequest,
    LoadedImage,
    LoadFailure,
    load_page_image,
)
from pipeline.ingest.source_changes import SourceChanged, registered_of
from pipeline.jobs.records import PageTask
from pipeline.runner.child_process import prepare_child_process

LoadResult = LoadedImage | LoadFailure | SourceChanged


class LoaderPool:
    """A bounded set of pages being loaded by a pool of CPU processes."""

    def __init__(
        self,
        processes: int,
        ingest: IngestSettings,
        max_pixels: int | None,
        on_done: Callable[[], None] = lambda: None,
        layout: LayoutRequest | None = None,
    ) -> None:
        self.processes = processes
        self.ingest = ingest
        self.max_pixels = max_pixels
        self.on_done = on_done  # wakes the scheduler when a page is ready
        self.layout = layout  # line detection (and line crops) after loading, or None
        self.ctx = mp.get_context("spawn")
        self.executor = self.new_executor()
        self._loading: dict[Future, PageTask] = {}

    def new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=self.ctx,
            initializer=prepare_child_process,
            initargs=(os.getpid(),),
        )

    def __len__(self) -> int:
        return len(self._loading)

    def load_arguments(self, task: PageTask) -> tuple:
        """What `load_page_image` is called with for `task`, here or in a Ray task on a node."""
        return (
            task.path,
            task.page_index,
            self.ingest,
            self.max_pixels,
            registered_of(task),
            self.layout,
        )

    def submit(self, task: PageTask) -> None:
        future = self.executor.submit(load_page_image, *self.load_arguments(task))
        future.add_done_callback(lambda _future: self.on_done())
        self._loading[future] = task

    def harvest(self) -> list[tuple[PageTask, LoadResult]]:
        """Pages whose loading finished, with what it gave, in no particular order."""
        finished = []
        broken = False
        for future in [f for f in self._loading if f.done()]:
            task = self._loading.pop(future)
            try:
                result = future.result()
            except BrokenProcessPool:
                broken = True
                result = LoadFailure("a page loader process died while reading this page", True)
            finished.append((task, result))
        if broken:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = self.new_executor()
        return finished

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
