"""A worker's batches through one continuous batch (`JobStream`): each answered as
`recognize_batch` answers it, the rows full across batches, faults failing only what they hit.

Real model (the tiny checkpoint), real queues and threads; faults come from the test-only
ANANDASKY_TEST_FAULT hook the workers read (FAULT INJECTION, labelled where used).
"""

from __future__ import annotations

import queue
import random
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from pipeline.cluster.actor import ModelActor
from pipeline.errors import BadArguments
from pipeline.faults import FAULT_VARIABLE
from pipeline.model.generation import GenerationEngine
from pipeline.recognition import load_recognizer
from pipeline.runner.batching import ReadyPage
from pipeline.runner.device_plan import WorkerSlot
from pipeline.runner.job_stream import JobDone, JobFailed, JobStream
from pipeline.runner.model_session import ModelSession, WorkerOptions
from pipeline.runner.pool_events import BatchLost, BatchResult, PoolFailed, WorkerUp
from pipeline.runner.worker_pool import JOBS_PER_WORKER, LocalWorkerPool

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "Read this page."
ROWS = 4
MAX_NEW = 40


def images(count: int, seed: int, *, line: bool = False) -> list[Image.Image]:
    """Pages (or line-shaped crops) of different sizes, so prompts differ in length."""
    rnd = random.Random(seed)
    out = []
    for i in range(count):
        w, h = (rnd.randint(80, 300), rnd.randint(16, 40)) if line else (rnd.randint(40, 400),) * 2
        image = Image.new("RGB", (w, h), (250, 248, 240))
        ImageDraw.Draw(image).text((2, 2), f"no {seed}.{i}", fill=0)
        out.append(image)
    return out


@pytest.fixture(scope="module")
def recognizer(tiny_model_dir: Path):
    return load_recognizer(tiny_model_dir, device="cpu")


@dataclass
class Pool:
    """Test pages sorted by how long they decode under `stop`: short ones stop within a
    quarter of MAX_NEW tokens, long ones run to MAX_NEW or nearly."""

    stop: int
    short: list[Image.Image]
    long: list[Image.Image]

    def take(self, kinds: str) -> list[Image.Image]:
        """`kinds` like "lss": a long page, then two short ones (each page used once)."""
        return [(self.long if k == "l" else self.short).pop() for k in kinds]


@pytest.fixture(scope="module")
def stop_id(recognizer) -> int:
    """A stop id the tiny model writes early on some pages and never (or late) on others, so
    pages stop after a few or after MAX_NEW tokens, as real pages of a collection do."""
    saved = recognizer.engine
    recognizer.engine = GenerationEngine(saved.decoder, [])
    try:
        free = recognizer.recognize(
            images(40, seed=5), prompt=PROMPT, max_new_tokens=MAX_NEW, repetition_guard=False
        )
    finally:
        recognizer.engine = saved
    rows = [recognizer.tokenizer.encode(r.text) for r in free]

    def lengths(t: int) -> list[int]:
        return [row.index(t) + 1 if t in row else MAX_NEW for row in rows]

    return max({t for row in rows for t in row}, key=lambda t: statistics.pstdev(lengths(t)))


@pytest.fixture
def session(recognizer, stop_id, tiny_model_dir):
    """A worker's session whose pages stop at different lengths (see `stop_id`)."""
    saved = recognizer.engine
    recognizer.engine = GenerationEngine(saved.decoder, [stop_id])
    options = WorkerOptions(
        str(tiny_model_dir), None, "native", PROMPT, MAX_NEW, False, max_batch=ROWS
    )
    yield ModelSession(recognizer, options, 0.0)
    recognizer.engine = saved


@pytest.fixture
def pool(session, stop_id) -> Pool:
    candidates = images(40, seed=5) + images(40, seed=6, line=True)
    got = session.recognizer.recognize(
        candidates, prompt=PROMPT, max_new_tokens=MAX_NEW, repetition_guard=False
    )
    short = [im for im, r in zip(candidates, got, strict=True) if r.num_tokens <= MAX_NEW // 4]
    long = [im for im, r in zip(candidates, got, strict=True) if r.num_tokens >= MAX_NEW - 5]
    assert len(short) >= 20 and len(long) >= 8, (len(short), len(long))
    return Pool(stop_id, short, long)


def job_source(jobs: list, *, end: bool = True):
    tasks: queue.Queue = queue.Queue()
    for job in jobs:
        tasks.put(job)
    if end:
        tasks.put(None)
    return tasks


def serve(session: ModelSession, jobs: list, get_job=None) -> list:
    answers: list = []
    tasks = job_source(jobs)
    JobStream(session, get_job or (lambda block: tasks.get(block=block)), answers.append).serve()
    return answers


def same(have, want) -> None:
    """The same recognition: texts, tokens, stop reason, lines; confidences to 1e-4."""
    assert (have.text, have.token_ends, have.stop_reason) == (
        want.text,
        want.token_ends,
        want.stop_reason,
    )
    assert have.token_logprobs == pytest.approx(want.token_logprobs, abs=1e-4)
    assert (have.lines is None) == (want.lines is None)
    for a, b in zip(have.lines or (), want.lines or (), strict=True):
        same(a, b)


def test_answers_equal_recognize_batch_and_come_as_each_jobs_last_page_stops(session, pool):
    jobs = [
        (1, pool.take("lss")),
        (2, [pool.take("ss"), *pool.take("s"), [], pool.take("l")]),  # lines, page, no lines
        (3, [[], []]),  # nothing to decode: answered as it arrives
        (4, pool.take("s")),
        (5, [pool.take("sls"), *pool.take("ss")]),
    ]
    stopped: list = []
    stream = session.stream

    def recording(feed):
        for key, recognition in stream(feed):
            stopped.append(key)
            yield key, recognition

    session.stream = recording
    answers = serve(session, jobs)
    assert all(isinstance(a, JobDone) for a in answers)
    assert sorted(a.job_id for a in answers) == [1, 2, 3, 4, 5]  # each exactly once
    for answer in answers:
        want = session.recognize_batch(dict(jobs)[answer.job_id])
        assert len(answer.recognitions) == len(want)
        for have, ref in zip(answer.recognitions, want, strict=True):
            same(have, ref)
    assert [r.text for r in dict((a.job_id, a.recognitions) for a in answers)[3]] == ["", ""]
    last_stop = {job: i for i, (job, _) in enumerate(stopped)}
    decoded = [a.job_id for a in answers if a.job_id in last_stop]
    assert decoded == sorted(last_stop, key=last_stop.get)
    assert decoded != sorted(decoded)  # jobs overlapped: a later one finished first


class StepLog:
    """Rows of every decode step, and prefills, of the session's engine (wrapped, not replaced)."""

    def __init__(self, recognizer, monkeypatch) -> None:
        self.events: list[tuple[str, int]] = []
        engine, dec = recognizer.engine, recognizer.engine.decoder
        step, prefill = engine.forward_step, dec.prefill

        def logged_step(cache, positions, row_lengths, tokens):
            self.events.append(("step", int(tokens.shape[0])))
            return step(cache, positions, row_lengths, tokens)

        def logged_prefill(embeds, lengths, cache, **kwargs):
            self.events.append(("prefill", len(lengths)))
            return prefill(embeds, lengths, cache, **kwargs)

        monkeypatch.setattr(engine, "forward_step", logged_step)
        monkeypatch.setattr(dec, "prefill", logged_prefill)

    def steps_while_pages_waited(self) -> list[int]:
        """Rows of the steps before the last page was prefilled (pages were still queued)."""
        last = max(i for i, (kind, _) in enumerate(self.events) if kind == "prefill")
        return [n for kind, n in self.events[:last] if kind == "step"]


def test_the_batch_never_drains_between_jobs(session, pool, monkeypatch):
    jobs = [(j, pool.take("lss")) for j in range(8)]
    log = StepLog(session.recognizer, monkeypatch)
    answers = serve(session, jobs)
    assert sorted(a.job_id for a in answers) == list(range(8))
    full = log.steps_while_pages_waited()
    assert len(full) > MAX_NEW and set(full) == {ROWS}
    # The same jobs one `recognize_batch` at a time drain at each job's end: the check above
    # would fail for them.
    log.events.clear()
    lengths = Counter()
    for _, items in jobs:
        session.recognize_batch(items)
    lengths.update(n for kind, n in log.events if kind == "step")
    assert set(lengths) - {ROWS}, lengths


@pytest.mark.parametrize("fault", ["error", "memory"])
def test_fault_injection_a_failing_job_fails_the_jobs_in_its_batch_and_the_rest_are_served(
    session, pool, tmp_path, monkeypatch, fault
):
    """FAULT INJECTION: the test-only hook raises when job 3 is taken, mid-stream."""
    marker = tmp_path / "fired"
    marker.touch()  # armed only when job 3 is handed out
    monkeypatch.setenv(FAULT_VARIABLE, f"batch:{fault}:{marker}")
    jobs = [(j, pool.take("lss")) for j in range(6)]
    tasks = job_source(jobs)

    def get_job(block):
        job = tasks.get(block=block)
        if job is not None and job[0] == 3:
            marker.unlink()
        return job

    answers = serve(session, jobs, get_job)
    failed = {a.job_id: a.error for a in answers if isinstance(a, JobFailed)}
    done = {a.job_id: a.recognitions for a in answers if isinstance(a, JobDone)}
    assert sorted([*failed, *done]) == list(range(6))  # every job answered, once
    kind = "MemoryError" if fault == "memory" else "RuntimeError"
    assert failed[3] == f"{kind}: injected by {FAULT_VARIABLE}"
    assert 2 in failed  # its pages were decoding when job 3 was taken
    assert {4, 5} <= set(done)  # a fresh stream served the jobs still queued
    for job_id, recognitions in done.items():
        want = session.recognize_batch(dict(jobs)[job_id])
        for have, ref in zip(recognitions, want, strict=True):
            same(have, ref)


def test_a_broken_page_fails_the_jobs_in_its_batch_and_later_jobs_are_served(session, pool):
    """A page without pixels makes the stream raise (not the hook: any exception); job "d" is
    only handed out once the failure is answered, so a fresh stream must serve it."""
    blank = Image.new("RGB", (0, 0))
    jobs = [("a", pool.take("lss")), ("bad", [*pool.take("s"), blank]), ("c", pool.take("ss"))]
    d = pool.take("sls")
    later = [("d", d), None]
    tasks = job_source(jobs, end=False)
    answers: list = []

    def get_job(block):
        if not tasks.empty():
            return tasks.get()
        if block or any(isinstance(a, JobFailed) for a in answers):
            return later.pop(0)
        raise queue.Empty

    JobStream(session, get_job, answers.append).serve()
    by_job = {a.job_id: a for a in answers}
    assert len(answers) == 4 and set(by_job) == {"a", "bad", "c", "d"}
    failed = {a.job_id: a.error for a in answers if isinstance(a, JobFailed)}
    assert "bad" in failed and set(failed.values()) == {"ValueError: image has no pixels (0x0)"}
    assert isinstance(by_job["d"], JobDone)
    for job_id, items in [*jobs, ("d", d)]:
        if job_id in failed:
            continue
        want = session.recognize_batch(items)
        for have, ref in zip(by_job[job_id].recognitions, want, strict=True):
            same(have, ref)


def test_fault_injection_short_answers_that_job_one_recognition_short(
    session, pool, tmp_path, monkeypatch
):
    """FAULT INJECTION: the hook's "short" fires once, for the first job taken."""
    monkeypatch.setenv(FAULT_VARIABLE, f"batch:short:{tmp_path / 'once'}")
    answers = serve(session, [("a", pool.take("ls")), ("b", pool.take("sss"))])
    counts = {a.job_id: len(a.recognitions) for a in answers}
    assert counts == {"a": 1, "b": 3}


def test_settings_no_page_fits_end_serving_with_bad_arguments(session, tiny_model_dir):
    options = WorkerOptions(
        str(tiny_model_dir), None, "native", PROMPT, MAX_NEW, False, max_batch=2, token_budget=10
    )
    answers: list = []
    tasks = job_source([(1, images(2, seed=26))])
    stream = JobStream(ModelSession(session.recognizer, options, 0.0), tasks.get, answers.append)
    with pytest.raises(BadArguments, match="token-budget"):
        stream.serve()
    assert answers == []


def test_every_job_is_answered_while_no_further_job_comes(session, pool):
    """As a worker at the end of a run: the queue stays open and empty after the last job, so
    the stream waits for more; the jobs it holds must be answered before it waits."""
    jobs = [(j, pool.take(kinds)) for j, kinds in enumerate(["lss", "s", "sl"])]
    tasks = job_source(jobs, end=False)
    answers: queue.Queue = queue.Queue()
    thread = threading.Thread(target=JobStream(session, tasks.get, answers.put).serve, daemon=True)
    thread.start()
    got = [answers.get(timeout=60) for _ in jobs]
    assert sorted(a.job_id for a in got) == [0, 1, 2]
    assert thread.is_alive()  # still waiting for jobs
    tasks.put(None)
    thread.join(30)
    assert not thread.is_alive()


def test_timings_do_not_overlap_and_add_up_to_the_time_served(session, pool):
    """infer_s + wait_s of all answers is the wall time served; jobs overlapped, so per-job
    durations would add up to more."""
    jobs = [(j, pool.take("lss")) for j in range(5)]
    tasks = job_source(jobs)
    gap = 0.15
    taken: dict = {}
    answered: dict = {}
    answers: list = []

    def get_job(block):
        if block:
            time.sleep(gap)  # the batch is empty: the device idles while no job comes
        job = tasks.get(block=block)
        if job is not None:
            taken[job[0]] = time.perf_counter()
        return job

    def answer(a):
        answered[a.job_id] = time.perf_counter()
        answers.append(a)

    started = time.perf_counter()
    JobStream(session, get_job, answer).serve()
    served = max(answered.values()) - started
    infer = sum(a.infer_s for a in answers)
    wait = sum(a.wait_s for a in answers)
    assert len(answers) == 5 and all(a.infer_s >= 0 and a.wait_s >= 0 for a in answers)
    assert infer + wait == pytest.approx(served, abs=0.02)
    assert gap <= wait <= served - infer + 0.02
    spans = sum(answered[j] - taken[j] for j in answered)
    assert spans > infer + 0.01  # the jobs did overlap in the stream


def test_the_actor_answers_concurrent_batches_through_one_stream(session, pool):
    """The cluster actor's logic without Ray: `recognize` calls from several threads (as a
    threaded actor runs them), one stream thread, each call answered as `recognize_batch`."""
    actor = ModelActor(session.options, "cpu", "NPU")
    actor.session = session
    threading.Thread(target=actor._serve, daemon=True).start()
    batches = [pool.take("lsss"), pool.take("s"), [pool.take("sls"), *pool.take("s")]]
    batches.append(pool.take("lss"))
    results: dict = {}

    def call(i):
        results[i] = actor.recognize(batches[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    actor.jobs.put(None)  # ends the stream thread
    assert sorted(results) == [0, 1, 2, 3]
    for i, result in results.items():
        assert result[0] == "done" and result[2] >= 0 and result[3] >= 0
        for have, want in zip(result[1], session.recognize_batch(batches[i]), strict=True):
            same(have, want)
    deadline = time.monotonic() + 30
    while actor.refusal is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert actor.recognize(pool.take("s"))[0] == "failed"  # its stream has ended


def test_an_actor_whose_settings_fit_no_page_fails_every_batch(session, tiny_model_dir):
    options = WorkerOptions(
        str(tiny_model_dir), None, "native", PROMPT, MAX_NEW, False, max_batch=2, token_budget=10
    )
    actor = ModelActor(options, "cpu", "NPU")
    actor.session = ModelSession(session.recognizer, options, 0.0)
    actor._serve()  # refuses at once: no page fits the rows
    status, error = actor.recognize(images(1, seed=29))
    assert status == "failed" and error.startswith("BadArguments: --token-budget 10")


def test_the_remote_code_recognizer_serves_jobs_the_same_way(tiny_model_dir, pool, tmp_path):
    """impl=remote: its stream drains between chunks, but jobs are answered as with
    `recognize_batch`, including after the queue has gone quiet."""
    from remote_fixture import build_remote_checkpoint

    folder = build_remote_checkpoint(tiny_model_dir, tmp_path / "remote")
    remote = load_recognizer(folder, "cpu", "float32", impl="remote")
    options = WorkerOptions(str(folder), "float32", "remote", PROMPT, 12, False, max_batch=3)
    remote_session = ModelSession(remote, options, 0.0)
    jobs = [(1, pool.take("lss")), (2, [pool.take("ss"), [], *pool.take("s")]), (3, [[]])]
    tasks = job_source(jobs, end=False)
    answers: queue.Queue = queue.Queue()
    stream = JobStream(remote_session, tasks.get, answers.put)
    thread = threading.Thread(target=stream.serve, daemon=True)
    thread.start()
    got = {a.job_id: a for a in (answers.get(timeout=120) for _ in jobs)}
    tasks.put(None)
    thread.join(30)
    assert sorted(got) == [1, 2, 3] and not thread.is_alive()
    for job_id, items in jobs:
        want = remote_session.recognize_batch(items)
        for have, ref in zip(got[job_id].recognitions, want, strict=True):
            same(have, ref)


def wait_events(workers: LocalWorkerPool, kind: type, count: int) -> list:
    """The first `count` events of `kind` from the pool; fails on a lost batch or worker."""
    got: list = []
    deadline = time.monotonic() + 180
    while len(got) < count and time.monotonic() < deadline:
        for event in workers.events(0.2):
            assert not isinstance(event, (BatchLost, PoolFailed)), event
            if isinstance(event, kind):
                got.append(event)
    assert len(got) == count, got
    return got


@pytest.mark.slow
def test_a_real_worker_process_takes_four_batches_and_answers_each_as_recognize_batch(
    session, pool, tiny_model_dir
):
    """The local pool and a spawned worker: JOBS_PER_WORKER batches out at once, each answered
    once as `recognize_batch` answers it, times adding up to no more than the worker's life."""
    options = WorkerOptions(str(tiny_model_dir), None, "native", PROMPT, 8, True, stream_rows=4)
    workers = LocalWorkerPool([WorkerSlot("cpu:0", "cpu", None, None)], options, 120.0)
    started = time.perf_counter()
    workers.start()
    try:
        up = wait_events(workers, WorkerUp, 1)[0]
        batches = [
            [ReadyPage(j, im, 0.0) for im in pool.take("sl" if j % 2 else "s")]
            for j in range(JOBS_PER_WORKER)
        ]
        for batch in batches:
            (worker,) = workers.takers()
            workers.send(worker, batch)
        assert workers.takers() == []  # full: JOBS_PER_WORKER batches out
        results = wait_events(workers, BatchResult, JOBS_PER_WORKER)
        lived = time.perf_counter() - started - up.load_s
    finally:
        workers.shutdown(kill=False)
    local = ModelSession(load_recognizer(tiny_model_dir, device="cpu"), options, 0.0)
    assert sorted(r.pages[0].task for r in results) == list(range(JOBS_PER_WORKER))
    for result in results:
        want = local.recognize_batch([p.image for p in result.pages])
        assert [(r.text, r.stop_reason) for r in result.recognitions] == [
            (r.text, r.stop_reason) for r in want
        ]
    assert sum(r.infer_s + r.wait_s for r in results) <= lived
    assert not workers.busy()
