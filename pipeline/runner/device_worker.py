"""Device worker processes: one per device, each loads the model once and recognises batches
(all of them through one continuous batch that never drains between them: `job_stream`).

A worker owns nothing but its device: it receives page images, returns `Recognition`s, and
reports how long it computed and how long it waited. Writing outputs and recording results is
the coordinator's job, so a worker that dies loses nothing that was already reported.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass, field

from PIL import Image

from pipeline.errors import BadArguments
from pipeline.records import Recognition
from pipeline.runner.child_process import prepare_child_process
from pipeline.runner.device_plan import WorkerSlot, pin_to_slot
from pipeline.runner.job_stream import JobDone, JobFailed, JobStream, load_failure
from pipeline.runner.model_session import ModelSession, WorkerOptions


@dataclass(frozen=True)
class WorkerReady:
    worker_id: int
    label: str
    device: str  # the torch device the model runs on inside the worker
    visible_devices: str | None  # the pinning variable's value as the worker saw it
    pid: int
    load_s: float
    decode: str = "eager"  # ModelSession.decode_mode


@dataclass(frozen=True)
class WorkerFailed:
    """The model could not be loaded, or no page can run under the settings: no point in
    restarting this worker."""

    worker_id: int
    label: str
    message: str
    exit_code: int
    loading: bool = True  # False: the model loaded, the settings are what fails


@dataclass(frozen=True)
class BatchDone:
    worker_id: int
    batch_id: int
    recognitions: list[Recognition]
    infer_s: float
    # Since the worker's previous answer: computing (`infer_s`) and waiting with nothing to
    # decode (`wait_s`); batches overlap in the stream, these never do (`JobDone`).
    wait_s: float


@dataclass(frozen=True)
class BatchFailed:
    worker_id: int
    batch_id: int
    error: str


def device_worker_main(
    worker_id: int,
    slot: WorkerSlot,
    options: WorkerOptions,
    tasks: mp.Queue,
    results: mp.Queue,
    parent_pid: int,
) -> None:
    """Entry point of a worker process (spawned, so nothing is inherited but the arguments)."""
    prepare_child_process(parent_pid)
    pin_to_slot(slot)
    try:
        session = ModelSession.load(options, slot.torch_device)
    except Exception as exc:  # reported to the coordinator, which stops the run
        results.put(WorkerFailed(worker_id, slot.label, *load_failure(exc)))
        return
    visible = os.environ.get(slot.visible_variable) if slot.visible_variable else None
    results.put(
        WorkerReady(
            worker_id,
            slot.label,
            session.device,
            visible,
            os.getpid(),
            session.load_s,
            session.decode_mode,
        )
    )

    def answer(done: JobDone | JobFailed) -> None:
        if isinstance(done, JobDone):
            results.put(
                BatchDone(worker_id, done.job_id, done.recognitions, done.infer_s, done.wait_s)
            )
        else:
            results.put(BatchFailed(worker_id, done.job_id, done.error))

    # One continuous batch for every batch sent, answered batch by batch as each one's last
    # page stops; the None sentinel ends it once the batches taken are answered.
    stream = JobStream(session, lambda block: tasks.get(block=block), answer)
    try:
        stream.serve()
    except BadArguments as exc:  # settings no page can run under (--token-budget too small)
        results.put(WorkerFailed(worker_id, slot.label, str(exc), int(exc.exit_code), False))


@dataclass
class DeviceWorker:
    """The coordinator's handle on one worker process and the batches it holds."""

    worker_id: int
    slot: WorkerSlot
    process: mp.process.BaseProcess
    tasks: mp.Queue
    ready: bool = False
    outstanding: dict[int, list] = field(default_factory=dict)
    restarts: int = 0
    # Since when an answer is due: the worker's last answer, or the moment work was sent to it
    # idle (its batches overlap in one stream, so any answer shows it is alive).
    busy_since: float | None = None

    @classmethod
    def start(
        cls,
        ctx: mp.context.BaseContext,
        worker_id: int,
        slot: WorkerSlot,
        options: WorkerOptions,
        results: mp.Queue,
    ) -> DeviceWorker:
        tasks = ctx.Queue()
        process = ctx.Process(
            target=device_worker_main,
            args=(worker_id, slot, options, tasks, results, os.getpid()),
            name=f"anandasky-worker-{slot.label}",
            daemon=True,
        )
        process.start()
        return cls(worker_id, slot, process, tasks)

    def send(self, batch_id: int, pages: list, images: list[Image.Image]) -> None:
        if not self.outstanding:
            self.busy_since = time.monotonic()
        self.outstanding[batch_id] = pages
        self.tasks.put((batch_id, images))

    def finished(self, batch_id: int) -> list:
        """The pages of a batch the worker answered; the next answer is due from now."""
        pages = self.outstanding.pop(batch_id, [])
        self.busy_since = time.monotonic() if self.outstanding else None
        return pages

    def overdue(self, timeout_s: float) -> bool:
        """No answer for `timeout_s` while batches are out: the worker is hung."""
        return self.busy_since is not None and time.monotonic() - self.busy_since > timeout_s

    @property
    def dead(self) -> bool:
        return self.process.exitcode is not None

    def exit_description(self) -> str:
        code = self.process.exitcode
        if code is not None and code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with code {code}"

    def stop(self, timeout: float = 3.0) -> None:
        """Ask an idle worker to finish; kill it if it does not (or if it still computes)."""
        if self.process.exitcode is None and not self.outstanding:
            with contextlib.suppress(OSError, ValueError):
                self.tasks.put(None)
            self.process.join(timeout)
        self.kill()

    def kill(self) -> None:
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join(5)
        self.tasks.cancel_join_thread()
        self.tasks.close()
