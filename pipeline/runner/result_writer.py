"""A recognised page becomes files on disk, then a done page in the work queue: in that order,
so a crash between the two redoes the page and never leaves it done without its files."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pipeline
from pipeline.jobs.backend import WorkQueue
from pipeline.jobs.connect import DB_NAME, STATE_DIR, output_access_error, store_error
from pipeline.jobs.records import printable
from pipeline.layout.geometry import PAGE_SIZE_KEY
from pipeline.outputs.alto import PageMeta, page_confidence
from pipeline.outputs.page_files import write_page_outputs
from pipeline.records import Recognition
from pipeline.runner.batching import ReadyPage
from pipeline.runner.progress import StageTimes, log_to_file_only

log = logging.getLogger("anandasky")


@dataclass(frozen=True)
class ModelStamp:
    """What every page's ALTO says about how it was made."""

    name: str
    checksum: str
    prompt: str


def release_quietly(queue: WorkQueue, page_ids: list[int]) -> None:
    """Give pages back if the store can still be written; if it cannot, the next run does it
    anyway (pages left 'running' go back to pending when a run opens OUT)."""
    with contextlib.suppress(sqlite3.Error):
        queue.release(page_ids)


class ResultWriter:
    def __init__(
        self,
        out_dir: Path,
        queue: WorkQueue,
        formats: tuple[str, ...],
        model: ModelStamp,
        stages: StageTimes,
    ) -> None:
        self.out_dir = out_dir
        self.queue = queue
        self.formats = formats
        self.model = model
        self.stages = stages

    def record(
        self, page: ReadyPage, recognition: Recognition, device: str, infer_s: float, batch: int
    ) -> None:
        """Write and complete one page; on trouble with OUT (disk full, read-only, I/O error)
        the page stays pending and the error to stop the run on is raised."""
        try:
            self._write_and_complete(page, recognition, device, infer_s, batch)
        except (OSError, sqlite3.OperationalError) as err:
            task = page.task
            error = (
                output_access_error(self.out_dir / "pages" / task.relpath, err)
                if isinstance(err, OSError)
                else store_error(err, self.out_dir / STATE_DIR / DB_NAME)
            )
            log_to_file_only(
                logging.ERROR, f"{printable(task.relpath)} page {task.page_index + 1}: {error}"
            )
            release_quietly(self.queue, [task.page_id])
            raise error from None

    def _write_and_complete(
        self, page: ReadyPage, recognition: Recognition, device: str, infer_s: float, batch: int
    ) -> None:
        task = page.task
        started = time.perf_counter()
        # The page at full resolution (the file's pixels, or the PDF at --dpi), not the copy
        # shrunk to the model's budget.
        width, height = page.image.info.get(PAGE_SIZE_KEY, page.image.size)
        meta = PageMeta(
            source_filename=task.relpath,
            page_number=task.page_index + 1,
            width=width,
            height=height,
            model_name=self.model.name,
            model_checksum=self.model.checksum,
            prompt=self.model.prompt,
            software_version=pipeline.__version__,
            processing_datetime=datetime.now(timezone.utc).replace(microsecond=0),
            layout=page.layout,
        )
        if page.layout_error:
            log.warning(
                "%s page %d: %s; recognised without line positions",
                printable(task.relpath),
                task.page_index + 1,
                page.layout_error,
            )
        write_page_outputs(
            self.out_dir, task.relpath, task.page_index + 1, recognition, meta, formats=self.formats
        )
        written = time.perf_counter()
        timings = {
            "load_s": round(page.load_s, 4),
            "detect_s": round(page.detect_s, 4),
            "infer_s": round(infer_s, 4),
            "write_s": round(written - started, 4),
            "batch_size": batch,
        }
        self.queue.complete(
            task.page_id,
            device=device,
            timings=timings,
            confidence=page_confidence(recognition),
            num_tokens=recognition.num_tokens,
            stop_reason=recognition.stop_reason,
        )
        self.stages.load_s += page.load_s
        self.stages.detect_s += page.detect_s
        self.stages.write_s += written - started
        self.stages.store_s += time.perf_counter() - written
        if recognition.stop_reason == "repetition":
            log.info(
                "%s page %d: stopped a repetition loop",
                printable(task.relpath),
                task.page_index + 1,
            )
