"""A worker's jobs through one continuous batch that never drains between jobs.

The coordinator sends a device worker jobs `(job_id, items)` (one job = one batch of the
scheduler) and expects one answer per job. Decoding job after job with `recognize_batch`
drains the batch at the end of every job: its longest page decodes alone while the rows of the
others stand empty. Here every job's pages go through one `recognize_stream`, and a job is
answered the moment its last page stops, while later jobs' pages keep the rows full.

Used by the local worker process (`device_worker`) and the cluster actor (`cluster.actor`), so
a job is served the same way wherever it runs; answers are what `recognize_batch` gives.
"""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from PIL import Image

from pipeline.errors import AnandaSkyError, BadArguments, ExitCode
from pipeline.faults import injected_fault
from pipeline.model.feeds import JobFeed
from pipeline.records import Recognition
from pipeline.runner.model_session import ModelSession

# An item is a page image or (`--layout lines`) the list of a page's line crops.
Item = Image.Image | list[Image.Image]
# get_job(block) -> (job_id, items), None once no job will come, or raises queue.Empty when
# block=False and nothing is queued: `Queue.get` as it is (multiprocessing's or queue's).
GetJob = Callable[[bool], "tuple[Hashable, list[Item]] | None"]


@dataclass(frozen=True)
class JobDone:
    """One job's answer. `infer_s` and `wait_s` never overlap between answers: together they
    are the time since the previous answer, `wait_s` the part spent with an empty batch waiting
    for a job, so their sums over a run are the device's busy and idle time."""

    job_id: Hashable
    recognitions: list[Recognition]
    infer_s: float
    wait_s: float


@dataclass(frozen=True)
class JobFailed:
    job_id: Hashable
    error: str


Answer = JobDone | JobFailed


def describe_error(exc: BaseException) -> str:
    """One line for an exception: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def load_failure(exc: BaseException) -> tuple[str, int]:
    """What a worker or an actor reports when its model cannot load: the line and exit code.

    An anticipated error keeps its code and its message, written for the user (no class name);
    anything else (a driver fault, out of memory at load) is not the user's arguments, so not
    BAD_ARGUMENTS: the device is as good as lost.
    """
    if isinstance(exc, AnandaSkyError):
        return str(exc), int(exc.exit_code)
    return describe_error(exc), int(ExitCode.DEVICES_LOST)


def flatten(items: list[Item]) -> tuple[list[Image.Image], list[int | None]]:
    """The sequences of a job (every crop its own) and its shape: per item None for a page,
    else its number of crops; `regroup` undoes it."""
    images: list[Image.Image] = []
    shape: list[int | None] = []
    for item in items:
        if isinstance(item, list):
            images.extend(item)
            shape.append(len(item))
        else:
            images.append(item)
            shape.append(None)
    return images, shape


def regroup(flat: list[Recognition], shape: list[int | None]) -> list[Recognition]:
    """One `Recognition` per item, as `ModelSession.recognize_batch` groups them."""
    out: list[Recognition] = []
    taken = 0
    for count in shape:
        if count is None:
            out.append(flat[taken])
            taken += 1
        else:
            out.append(Recognition.of_lines(flat[taken : taken + count]))
            taken += count
    return out


class _SourceBroken(Exception):
    """The job source itself raised (its queue is gone): serving ends, no job is to blame."""


class _Clock:
    """Time since the last answer, split into waiting for a job (empty batch) and the rest."""

    def __init__(self) -> None:
        self.mark = time.perf_counter()
        self.blocked = 0.0

    def lap(self) -> tuple[float, float]:
        now = time.perf_counter()
        wait_s = self.blocked
        infer_s = max(0.0, now - self.mark - wait_s)
        self.mark, self.blocked = now, 0.0
        return infer_s, wait_s


class JobStream:
    """Serve jobs from `get_job` until it says no more; each answer goes to `answer`.

    Faults: an exception out of the batch (out of memory, a broken page, the test-only
    `injected_fault("batch")`) fails every job with pages in the batch (and the job whose
    taking raised), then a fresh stream serves the jobs still queued. `BadArguments` (no page
    can run under the settings) ends serving: `serve` raises it.
    """

    def __init__(
        self, session: ModelSession, get_job: GetJob, answer: Callable[[Answer], None]
    ) -> None:
        self.session = session
        self.get_job = get_job
        self.answer = answer
        self.feed = JobFeed(self._next_job)
        self.shapes: dict[Hashable, list[int | None]] = {}
        self.short: set[Hashable] = set()  # FAULT INJECTION: answer one recognition short
        self.faulted: list[Hashable] = []  # jobs whose taking raised (not in the feed)
        self.clock = _Clock()

    def serve(self) -> None:
        while True:
            try:
                for key, recognition in self.session.stream(self.feed):
                    self.feed.finish(key, recognition)
                    for job_id, flat in self.feed.pop_completed():
                        self._done(job_id, regroup(flat, self.shapes.pop(job_id)))
                return
            except BadArguments:
                raise
            except _SourceBroken as broken:
                raise broken.__cause__ from None
            except Exception as exc:  # one bad job must not take the device down
                if not self._fail_batch(describe_error(exc)):
                    raise  # no job to blame: a fresh stream would fail the same way

    def _next_job(self, block: bool) -> tuple[Hashable, list[Image.Image]] | None:
        """The feed's source: the next job with something to decode, flattened; jobs with
        nothing to decode (pages without lines) are answered as they arrive."""
        while True:
            started = time.perf_counter()
            try:
                job = self.get_job(block)
            except queue.Empty:
                raise
            except Exception as exc:
                raise _SourceBroken from exc
            finally:
                if block:  # only asked to wait while the batch is empty: the device idles
                    self.clock.blocked += time.perf_counter() - started
            if job is None:
                return None
            job_id, items = job
            try:
                fault = injected_fault("batch")
            except Exception:
                self.faulted.append(job_id)
                raise
            if fault == "short":
                self.short.add(job_id)
            images, shape = flatten(items)
            crash = injected_fault("page")  # FAULT INJECTION (tests): a page that kills us
            if crash and crash in {f"exit-{im.width}x{im.height}" for im in images}:
                os._exit(70)
            if images:
                self.shapes[job_id] = shape
                return job_id, images
            self._done(job_id, regroup([], shape))

    def _done(self, job_id: Hashable, recognitions: list[Recognition]) -> None:
        if job_id in self.short:  # FAULT INJECTION (tests): an answer one page short
            self.short.discard(job_id)
            recognitions = recognitions[:-1]
        infer_s, wait_s = self.clock.lap()
        self.answer(JobDone(job_id, recognitions, infer_s, wait_s))

    def _fail_batch(self, error: str) -> bool:
        """Answer every job the broken batch held as failed; False when it held none."""
        failed = self.faulted + self.feed.in_flight()
        self.faulted = []
        for job_id in failed:
            self.feed.drop(job_id)
            self.shapes.pop(job_id, None)
            self.short.discard(job_id)
            self.answer(JobFailed(job_id, error))
        return bool(failed)
