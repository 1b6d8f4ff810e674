"""A whole run over a collection: register documents, feed loaders and device workers, record.

The coordinator (this process) owns the job store and the output folder; loader processes turn
documents into page images ahead of time; device workers only run the model. A page counts as
done only after its files are complete on disk and the store says so.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing as mp
import os
import queue
import signal
import sqlite3
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime, timezone
from pathlib import Path

import pipeline
from pipeline.errors import AnandaSkyError, BadArguments, CheckpointError, DevicesLost, ExitCode
from pipeline.ingest.images import PAGE_SIZE_KEY
from pipeline.ingest.page_loading import LoadFailure, load_page_image
from pipeline.ingest.rasterize import require_poppler
from pipeline.ingest.registration import DocumentRegistrar
from pipeline.ingest.source_changes import SourceChanged, SourceChanges, registered_of
from pipeline.jobs.connect import (
    DB_NAME,
    STATE_DIR,
    ensure_writable_folder,
    output_access_error,
    reported_store_errors,
    store_error,
)
from pipeline.jobs.sqlite_store import JobStore
from pipeline.model import DEFAULT_PROMPT, checkpoint_checksum
from pipeline.model.checkpoint import check_weight_files
from pipeline.model.config import AnandaSkyConfig
from pipeline.outputs.alto import PageMeta, page_confidence
from pipeline.outputs.page_files import (
    output_folder,
    page_outputs_complete,
    remove_stale_temp_files,
    write_page_outputs,
)
from pipeline.records import Recognition
from pipeline.runner.batching import ReadyPage, ReadyPages
from pipeline.runner.child_process import prepare_child_process
from pipeline.runner.device_plan import WorkerSlot, check_device_runtime, plan_workers
from pipeline.runner.device_worker import (
    BatchDone,
    BatchFailed,
    DeviceWorker,
    WorkerFailed,
    WorkerOptions,
    WorkerReady,
)
from pipeline.runner.progress import (
    RunProgress,
    StageTimes,
    announce,
    close_run_log,
    log,
    log_to_file_only,
    setup_run_log,
    write_run_summary,
)
from pipeline.runner.settings import RunSettings, model_code_checksum

# A device whose worker keeps dying (driver fault, out of memory at load) is given up on.
MAX_WORKER_RESTARTS = 3
_POLL_S = 0.05
# After the first Ctrl-C, batches in flight get this long to finish; a hung one is killed.
STOP_GRACE_S = 5.0


def _image_pixel_budget(model_dir: str, impl: str) -> int | None:
    """Pages travel between processes no larger than the model will look at.

    Only a native config states that size (read without importing torch: a resumed run with
    nothing to do must stay quick); a remote-code model's own processor resizes, so its pages
    travel as rendered. The worker checks the tensors themselves when it loads them.
    """
    if impl == "remote":
        return None
    try:
        return AnandaSkyConfig.load(Path(model_dir) / "config.json").max_image_pixels
    except CheckpointError:
        if impl == "native":
            raise
        return None


def run_collection(settings: RunSettings) -> ExitCode:
    """Run (or resume) `settings` and return the exit code that describes the outcome."""
    inputs = [Path(p) for p in settings.inputs]
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        raise BadArguments(f"input not found: {', '.join(missing)}")
    out_dir = settings.out_path
    ensure_writable_folder(out_dir)
    check_device_runtime(settings.device)
    slots = plan_workers(settings.device, settings.devices, settings.workers)
    if settings.rasterizer == "poppler":
        require_poppler()
    with (
        reported_store_errors(out_dir),
        JobStore.open(out_dir, recover=settings.recover_store) as store,
    ):
        setup_run_log(out_dir, settings.quiet)
        if store.damaged_copy is not None:
            log.warning(
                "the damaged job store was kept as %s; a new one is built and pages are redone",
                store.damaged_copy,
            )
        elif settings.recover_store:
            log.info("--recover-store: the job store is healthy; nothing to recover")
        try:
            with reported_store_errors(out_dir):
                return _run_with_store(settings, store, inputs, slots)
        except AnandaSkyError as exc:
            log_to_file_only(logging.ERROR, str(exc))  # why a run did not start, or stopped
            raise
        finally:
            close_run_log()


def _run_with_store(settings: RunSettings, store: JobStore, inputs, slots) -> ExitCode:
    # The checkpoint is checked here, in seconds, so a bad one never gets as far as the workers
    # and the reason is in the run log.
    model_checksum = checkpoint_checksum(
        settings.model_dir, cache_file=settings.out_path / STATE_DIR / "model-checksum.json"
    )
    check_weight_files(settings.model_dir)
    prompt = settings.prompt or DEFAULT_PROMPT
    fingerprint = settings.fingerprint(
        model_checksum,
        prompt,
        device_type=slots[0].device_type,
        code_checksum=model_code_checksum(settings.model_dir),
    )
    for key in store.check_fingerprint(fingerprint, new_config=settings.new_config):
        log.warning(
            "this output folder was started by a version that did not record %s; recorded "
            "now as %s. Pages done earlier are kept: if they were made with another %s, run "
            "again with --new-config",
            key,
            fingerprint[key],
            key,
        )
    store.save_settings(settings.to_stored())
    coordinator = Coordinator(settings, store, slots, prompt, model_checksum)
    return coordinator.run(inputs)


class Coordinator:
    def __init__(
        self,
        settings: RunSettings,
        store: JobStore,
        slots: list[WorkerSlot],
        prompt: str,
        model_checksum: str,
    ) -> None:
        self.settings = settings
        self.store = store
        self.slots = slots
        self.prompt = prompt
        self.model_checksum = model_checksum
        self.model_name = Path(settings.model_dir).resolve().name
        self.out_dir = settings.out_path
        self.changes = SourceChanges(store, settings.out_path, settings.ingest, self._new_pool)
        self.max_pixels = _image_pixel_budget(settings.model_dir, settings.impl)
        self.ctx = mp.get_context("spawn")
        self.stopping = False
        self.stop_deadline = math.inf
        self.aborting = False
        self.fatal: AnandaSkyError | None = None
        self.progress_stages = StageTimes()

    # -- the run loop ----------------------------------------------------------------------

    def run(self, inputs: list[Path]) -> ExitCode:
        started = time.monotonic()
        pool = self._new_pool()
        workers: dict[int, DeviceWorker] = {}
        progress: RunProgress | None = None
        previous_handler = signal.signal(signal.SIGINT, self._on_interrupt)
        try:
            log.info("run started: %d device worker(s): %s", len(self.slots), self._slot_list())
            registrar = DocumentRegistrar(
                self.store,
                self.out_dir,
                self.settings.ingest,
                self._new_pool,
                selection=self.settings.input_filter,
                prune=self.settings.prune,
            )
            pool = registrar.register(inputs, pool)
            retried = self.store.retry_failed_pages()
            if retried:
                log.info("retrying %d page(s) that failed in earlier runs", retried)
            pending = deque(self.store.pending_pages())
            # Temp files can only be left where a page was being written and is still pending.
            for relpath in {task.relpath for task in pending}:
                remove_stale_temp_files(self.out_dir, relpath)
            self._report_unrecorded_outputs(pending)
            progress = RunProgress(total=len(pending), quiet=self.settings.quiet)
            if pending and not self.stopping:
                results = self.ctx.Queue()
                workers = self._start_workers(results)
                pool = self._process(pending, pool, workers, results, progress)
        finally:
            signal.signal(signal.SIGINT, previous_handler)
            self._shutdown(pool, workers)
            if progress is not None:
                progress.close()
        if self.fatal is not None:
            raise self.fatal
        return self._finish(progress, time.monotonic() - started)

    def _report_unrecorded_outputs(self, pending) -> None:
        """Say so when pending pages already have their files: nothing is redone silently.

        A run stopped between writing a page and recording it leaves this for one page per
        worker; many more mean the job store lost writes (a missing or damaged WAL file, an
        emptied or rebuilt store).
        """
        folders: dict[str, bool] = {}
        found = 0
        for task in pending:
            if task.relpath not in folders:
                folders[task.relpath] = output_folder(self.out_dir, task.relpath).is_dir()
            if folders[task.relpath] and page_outputs_complete(
                self.out_dir, task.relpath, task.page_index + 1, self.settings.formats
            ):
                found += 1
        if found:
            log.warning(
                "%d page(s) already have output files in %s but the job store does not record "
                "them as done (a run stopped between writing and recording them, or the store "
                "lost its latest writes); they are redone and their files replaced",
                found,
                self.out_dir / "pages",
            )

    def _process(self, pending, pool, workers, results, progress) -> ProcessPoolExecutor:
        settings = self.settings
        loading: dict[Future, object] = {}
        ready = ReadyPages()
        prefetch = settings.batch_size * len(workers) * 2 + settings.loader_processes
        self._next_batch = 0
        while not self.aborting and self.fatal is None:
            if not self.stopping:
                while pending and len(loading) + len(ready) < prefetch:
                    task = pending.popleft()
                    future = pool.submit(
                        load_page_image,
                        task.path,
                        task.page_index,
                        settings.ingest,
                        self.max_pixels,
                        registered_of(task),
                    )
                    future.add_done_callback(lambda _f: results.put(None))
                    loading[future] = task
            pool = self._harvest_loads(loading, ready, pending, pool, progress)
            if not self.stopping:
                self._dispatch(workers, ready, remaining=len(pending) + len(loading) + len(ready))
            outstanding = any(w.outstanding for w in workers.values())
            if not outstanding and (self.stopping or not (pending or loading or ready)):
                break
            if time.monotonic() > self.stop_deadline:
                log.warning("batches in flight did not finish; they stay pending")
                break
            try:
                message = results.get(timeout=_POLL_S)
            except queue.Empty:
                message = None
            if message is not None:
                self._handle(message, workers, ready, progress)
            self._check_workers(workers, ready, results, progress)
        return pool

    def _harvest_loads(self, loading, ready, pending, pool, progress) -> ProcessPoolExecutor:
        broken = False
        for future in [f for f in loading if f.done()]:
            task = loading.pop(future)
            try:
                result = future.result()
            except BrokenProcessPool:
                broken = True
                result = LoadFailure("a page loader process died while reading this page", True)
            if self.changes.is_stale(task):
                continue  # its file was registered again since; its new pages are queued
            if isinstance(result, SourceChanged):
                self.changes.handle(task, pending)
            elif isinstance(result, LoadFailure):
                log.warning("%s page %d: %s", task.relpath, task.page_index + 1, result.message)
                state = self.store.record_failure(
                    task.page_id,
                    result.message,
                    max_attempts=self.settings.max_attempts,
                    fatal=not result.retry,  # out of memory, a dead loader: not the file's fault
                )
                if state == "pending":
                    pending.appendleft(task)
                else:
                    progress.page_failed()
            else:
                ready.add(ReadyPage(task, result.image, result.load_s))
        if broken:
            pool.shutdown(wait=False, cancel_futures=True)
            pool = self._new_pool()
        return pool

    def _dispatch(self, workers: dict[int, DeviceWorker], ready: ReadyPages, remaining: int):
        live = sum(1 for worker in workers.values() if not worker.dead) or 1
        # Near the end of the work, share what is left instead of handing it all to one device.
        batch_size = max(1, min(self.settings.batch_size, math.ceil(remaining / live)))
        more_coming = remaining > len(ready)
        for worker in sorted(workers.values(), key=lambda w: len(w.outstanding)):
            if not ready:
                return
            if not worker.ready or worker.dead or len(worker.outstanding) >= 2:
                continue
            # A worker already computing gets a second batch only when it is a full one.
            if worker.outstanding and len(ready) < batch_size and more_coming:
                continue
            # Pages of a file registered again since they were loaded are dropped, not sent: their
            # ids may already belong to the new registration's pages.
            batch = [p for p in ready.take_batch(batch_size) if not self.changes.is_stale(p.task)]
            if not batch:
                continue
            self.store.mark_running([page.task.page_id for page in batch], worker.slot.label)
            self._next_batch += 1
            worker.send(self._next_batch, batch, [page.image for page in batch])

    def _handle(self, message, workers, ready: ReadyPages, progress: RunProgress) -> None:
        worker = workers.get(getattr(message, "worker_id", -1))
        if worker is None:
            return
        stats = progress.device(worker.slot.label)
        if isinstance(message, WorkerReady):
            worker.ready = True
            stats.load_s = message.load_s
            log.info(
                "worker %s ready on %s (pid %d, visible devices %s) after %.1f s",
                message.label,
                message.device,
                message.pid,
                message.visible_devices if message.visible_devices is not None else "-",
                message.load_s,
            )
        elif isinstance(message, WorkerFailed):
            self.fatal = AnandaSkyError(
                f"worker {message.label} could not load the model: {message.message}"
            )
            self.fatal.exit_code = ExitCode(message.exit_code)
        elif isinstance(message, BatchDone):
            pages = worker.finished(message.batch_id)
            stats.busy_s += message.infer_s
            stats.idle_s += message.wait_s
            per_page_s = message.infer_s / max(len(pages), 1)
            if len(message.recognitions) != len(pages):
                # Which answer belongs to which page is unknown: none is recorded, and no page
                # may stay "running" in a run that ends well.
                error = f"{len(message.recognitions)} result(s) for a batch of {len(pages)} pages"
                log.error("batch on %s: %s", worker.slot.label, error)
                self._retry_or_fail(pages, error, ready, progress)
                return
            for page, recognition in zip(pages, message.recognitions, strict=True):
                if self._record_page(page, recognition, worker.slot.label, per_page_s, len(pages)):
                    stats.pages += 1
                    progress.page_done()
        elif isinstance(message, BatchFailed):
            pages = worker.finished(message.batch_id)
            log.error("batch on %s failed: %s", worker.slot.label, message.error)
            self._retry_or_fail(pages, message.error, ready, progress)

    def _record_page(
        self, page: ReadyPage, recognition: Recognition, device, infer_s, batch
    ) -> bool:
        """Write the page's files, then mark it done; False (page pending) when OUT fails."""
        if self.changes.is_stale(page.task):
            return False  # its file changed since it was loaded: never written
        if self.fatal is not None:
            self._requeue_quietly([page.task.page_id])
            return False
        try:
            self._write_and_mark_done(page, recognition, device, infer_s, batch)
        except (OSError, sqlite3.OperationalError) as err:
            # Disk full, read-only remount, I/O error: no further page can be finished, so the
            # run stops taking pages; this one stays pending and the next run redoes it.
            where = self.out_dir / "pages" / page.task.relpath
            self.fatal = (
                output_access_error(where, err)
                if isinstance(err, OSError)
                else store_error(err, self.out_dir / STATE_DIR / DB_NAME)
            )
            task = page.task
            log_to_file_only(
                logging.ERROR, f"{task.relpath} page {task.page_index + 1}: {self.fatal}"
            )
            self._requeue_quietly([page.task.page_id])
            return False
        return True

    def _requeue_quietly(self, page_ids: list[int]) -> None:
        """Put pages back to pending if the store can still be written; if it cannot, the next
        run does it anyway (pages left 'running' go back to pending when a run opens OUT)."""
        with contextlib.suppress(sqlite3.Error):
            self.store.requeue(page_ids)

    def _write_and_mark_done(
        self, page: ReadyPage, recognition: Recognition, device, infer_s, batch
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
            model_name=self.model_name,
            model_checksum=self.model_checksum,
            prompt=self.prompt,
            software_version=pipeline.__version__,
            processing_datetime=datetime.now(timezone.utc).replace(microsecond=0),
        )
        write_page_outputs(
            self.out_dir,
            task.relpath,
            task.page_index + 1,
            recognition,
            meta,
            formats=self.settings.formats,
        )
        written = time.perf_counter()
        timings = {
            "load_s": round(page.load_s, 4),
            "infer_s": round(infer_s, 4),
            "write_s": round(written - started, 4),
            "batch_size": batch,
        }
        self.store.mark_done(
            task.page_id,
            device=device,
            timings=timings,
            confidence=page_confidence(recognition),
            num_tokens=recognition.num_tokens,
            stop_reason=recognition.stop_reason,
        )
        stages = self.progress_stages
        stages.load_s += page.load_s
        stages.write_s += written - started
        stages.store_s += time.perf_counter() - written
        if recognition.stop_reason == "repetition":
            log.info("%s page %d: stopped a repetition loop", task.relpath, task.page_index + 1)

    def _retry_or_fail(self, pages: list[ReadyPage], error: str, ready, progress) -> None:
        for page in pages:
            if self.changes.is_stale(page.task):
                continue
            state = self.store.record_failure(
                page.task.page_id, error, max_attempts=self.settings.max_attempts
            )
            if state == "pending" and not self.stopping:
                page.solo = True
                ready.add(page)
            elif state == "failed":
                log.warning(
                    "%s page %d: failed: %s", page.task.relpath, page.task.page_index + 1, error
                )
                progress.page_failed()
            else:
                self.store.requeue([page.task.page_id])

    def _check_workers(self, workers, ready, results, progress) -> None:
        timeout_s = self.settings.batch_timeout_s
        for worker_id, worker in list(workers.items()):
            if worker.dead:
                description = worker.exit_description()
            elif worker.overdue(timeout_s) and not self.stopping:
                description = f"took longer than --batch-timeout {timeout_s:g} s; killed"
                worker.kill()
            else:
                continue
            stats = progress.device(worker.slot.label)
            pages = [page for batch in worker.outstanding.values() for page in batch]
            worker.outstanding.clear()
            log.error(
                "worker %s %s; %d page(s) in flight", worker.slot.label, description, len(pages)
            )
            self._retry_or_fail(pages, f"worker {worker.slot.label} {description}", ready, progress)
            worker.kill()
            if self.stopping or worker.restarts >= MAX_WORKER_RESTARTS:
                del workers[worker_id]
                log.error("giving up on device %s", worker.slot.label)
                continue
            replacement = DeviceWorker.start(
                self.ctx, worker_id, worker.slot, self._worker_options(), results
            )
            replacement.restarts = worker.restarts + 1
            stats.restarts = replacement.restarts
            workers[worker_id] = replacement
        if not workers and not self.stopping and self.fatal is None:
            self.fatal = DevicesLost(
                "every device worker died; see run.log. Unfinished pages stay pending: "
                "fix the cause and run the same command again"
            )

    # -- set-up and tear-down --------------------------------------------------------------

    def _worker_options(self) -> WorkerOptions:
        cpu_slots = sum(slot.device_type == "cpu" for slot in self.slots)
        threads = None
        if cpu_slots:
            threads = max(1, (mp.cpu_count() - self.settings.loader_processes) // cpu_slots)
        return WorkerOptions(
            model_dir=str(Path(self.settings.model_dir).resolve()),
            dtype=self.settings.dtype,
            impl=self.settings.impl,
            prompt=self.prompt,
            max_new_tokens=self.settings.max_new_tokens,
            repetition_guard=self.settings.repetition_guard,
            torch_threads=threads,
        )

    def _start_workers(self, results) -> dict[int, DeviceWorker]:
        options = self._worker_options()
        announce(
            f"loading the model ({self.model_name}) on {self._slot_list()} ...",
            self.settings.quiet,
        )
        return {
            worker_id: DeviceWorker.start(self.ctx, worker_id, slot, options, results)
            for worker_id, slot in enumerate(self.slots)
        }

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.settings.loader_processes,
            mp_context=self.ctx,
            initializer=prepare_child_process,
            initargs=(os.getpid(),),
        )

    def _slot_list(self) -> str:
        return ", ".join(slot.label for slot in self.slots)

    def _on_interrupt(self, signum, frame) -> None:
        if self.stopping:
            self.aborting = True
            log.warning("stopping now; unfinished pages stay pending for the next run")
        else:
            self.stopping = True
            self.stop_deadline = time.monotonic() + STOP_GRACE_S
            log.warning(
                "stopping after the pages in flight, %g s at most (Ctrl-C again to stop at once)",
                STOP_GRACE_S,
            )

    def _shutdown(self, pool: ProcessPoolExecutor, workers: dict[int, DeviceWorker]) -> None:
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in workers.values():
            in_flight = [
                page.task.page_id for batch in worker.outstanding.values() for page in batch
            ]
            if in_flight:
                self._requeue_quietly(in_flight)
            if self.aborting or self.fatal is not None:
                worker.kill()
            else:
                worker.stop()

    def _finish(self, progress: RunProgress | None, wall_s: float) -> ExitCode:
        summary = self.store.summary()
        totals = summary.totals()
        if progress is not None:
            lines = progress.summary_lines(wall_s, totals, self.progress_stages)
            if not self.settings.quiet:
                print("\n".join(lines))
            for line in lines:
                log.info(line)
            try:
                write_run_summary(self.out_dir, progress, self.progress_stages, wall_s, totals)
            except OSError as err:
                raise output_access_error(self.out_dir / "run-summary.json", err) from None
        if self.stopping:
            return ExitCode.INTERRUPTED
        if totals.get("failed", 0) or totals.get("failed_documents", 0):
            return ExitCode.SOME_PAGES_FAILED
        return ExitCode.OK


def resume_collection(out_dir: Path, *, quiet: bool = False, **overrides) -> ExitCode:
    """`resume OUT`: the same run again, with the settings its first run stored."""
    out_dir = Path(out_dir)
    if not (out_dir / ".anandasky").is_dir():
        raise BadArguments(
            f"{out_dir} holds no run to resume: start one with `anandasky-batch run`"
        )
    with JobStore.open(out_dir, exclusive=False) as store:
        stored = store.stored_settings()
    if stored is None:
        raise BadArguments(
            f"{out_dir} has no stored settings: start it again with `anandasky-batch run`"
        )
    settings = RunSettings.from_stored(stored, quiet=quiet, **overrides)
    return run_collection(settings)
