"""One pass of a run over its job backend: register the inputs, start the pools, schedule
until the work is done or the run stops, then shut down and sum up."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pipeline.errors import ExitCode
from pipeline.ingest.registration import DocumentRegistrar
from pipeline.jobs.backend import JobBackend
from pipeline.jobs.connect import output_access_error
from pipeline.recognition import page_pixel_budget
from pipeline.runner.device_plan import WorkerSlot
from pipeline.runner.loader_pool import LoaderPool
from pipeline.runner.pending import PendingPages
from pipeline.runner.placement import Placement
from pipeline.runner.progress import RunProgress, StageTimes, announce, write_run_summary
from pipeline.runner.reregistration import SourceChanges
from pipeline.runner.result_writer import ModelStamp, ResultWriter, release_quietly
from pipeline.runner.scheduler import Scheduler
from pipeline.runner.settings import RunSettings
from pipeline.runner.stopping import StopControl
from pipeline.runner.worker_pool import WorkerPool, worker_options

log = logging.getLogger("anandasky")


def run_pass(
    settings: RunSettings,
    backend: JobBackend,
    slots: list[WorkerSlot],
    model: ModelStamp,
    inputs: list[Path],
    placement: Placement,
    *,
    redoing: bool = False,
) -> ExitCode:
    """Run every pending page of `backend` once; the exit code that says how it went.
    `redoing`: --new-config has just made every page pending again (their files stay until
    replaced, and are no sign of a crash)."""
    started = time.monotonic()
    stages = StageTimes()
    options = worker_options(settings, slots, model.prompt)
    workers = placement.worker_pool(slots, options)
    loaders = LoaderPool(
        settings.loader_processes(slots),
        settings.ingest,
        page_pixel_budget(settings.model_dir, settings.impl),
        on_done=workers.wake,
        layout=settings.layout_request,
    )
    page_loaders = placement.page_loaders(workers, loaders)
    progress: RunProgress | None = None
    stop = StopControl()
    scheduler = None
    with stop:
        try:
            log.info("run started: %d device worker(s): %s", len(slots), _labels(slots))
            registrar = DocumentRegistrar(
                backend,
                settings.out_path,
                settings.ingest,
                loaders.new_executor,
                selection=settings.input_filter,
                prune=settings.prune,
            )
            loaders.executor = registrar.register(inputs, loaders.executor)
            retried = backend.retry_failed()
            if retried:
                log.info("retrying %d page(s) that failed in earlier runs", retried)
            pending = PendingPages(
                backend, settings.out_path, settings.formats, files_expected=redoing
            )
            progress = RunProgress(
                total=pending.remaining,
                quiet=settings.quiet,
                loaders=page_loaders.processes,
            )
            if pending and not stop.stopping:
                announce(
                    f"loading the model ({model.name}) on {_labels(slots)} ...", settings.quiet
                )
                workers.start()
                changes = SourceChanges(
                    backend, settings.out_path, settings.ingest, loaders.new_executor
                )
                writer = ResultWriter(settings.out_path, backend, settings.formats, model, stages)
                scheduler = Scheduler(
                    backend,
                    workers,
                    page_loaders,
                    writer,
                    changes,
                    stop,
                    progress,
                    batch_size=settings.batch_size,
                    max_attempts=settings.max_attempts,
                )
                scheduler.run(pending)
        finally:
            fatal = scheduler.fatal if scheduler is not None else None
            _shut_down(backend, workers, page_loaders, kill=stop.aborting or fatal is not None)
            if progress is not None:
                progress.close()
    if fatal is not None:
        raise fatal
    return _finish(settings, backend, progress, stages, stop, time.monotonic() - started)


def _labels(slots: list[WorkerSlot]) -> str:
    return ", ".join(slot.label for slot in slots)


def _shut_down(backend: JobBackend, workers: WorkerPool, loaders: LoaderPool, *, kill: bool):
    loaders.shutdown()
    in_flight = [page.task.page_id for page in workers.shutdown(kill=kill)]
    if in_flight:
        release_quietly(backend, in_flight)


def _finish(settings, backend, progress, stages, stop, wall_s) -> ExitCode:
    totals = backend.summary().totals()
    if progress is not None:
        lines = progress.summary_lines(wall_s, totals, stages)
        if not settings.quiet:
            print("\n".join(lines))
        for line in lines:
            log.info(line)
        try:
            write_run_summary(settings.out_path, progress, stages, wall_s, totals)
        except OSError as err:
            raise output_access_error(settings.out_path / "run-summary.json", err) from None
    if stop.stopping:
        return ExitCode.INTERRUPTED
    if totals.get("failed", 0) or totals.get("failed_documents", 0):
        return ExitCode.SOME_PAGES_FAILED
    return ExitCode.OK
