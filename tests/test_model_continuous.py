"""Continuous batching: every page gets the tokens it gets alone, and the batch stays full."""

from __future__ import annotations

import queue
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from pipeline.errors import BadArguments
from pipeline.model.continuous import plan_slots
from pipeline.model.decoder import KVCache
from pipeline.model.feeds import JobFeed
from pipeline.model.generation import (
    STOP_EOS,
    STOP_MAX_TOKENS,
    STOP_REPETITION,
    GenerationEngine,
    RepetitionGuard,
    _RepetitionTracker,
)
from pipeline.model.kv_slots import SlotCache
from pipeline.model.scheduler import Scheduler
from pipeline.model.sequence import Sequence
from pipeline.model.slot_guard import SlotRepetitionTracker
from pipeline.recognition import load_recognizer

pytestmark = [pytest.mark.compat, pytest.mark.usefixtures("one_torch_thread")]

GUARD = RepetitionGuard(max_period=8, min_repeats=3, min_span=24)
BUDGETS = [4, 70, 13, 1, 90, 25, 9, 50, 0, 33]  # one per page: a mix of lengths, one empty


@pytest.fixture(scope="module")
def recognizer(tiny_model_dir: Path):
    return load_recognizer(tiny_model_dir, device="cpu")


def pages(count: int, seed: int) -> list[Image.Image]:
    """Pages of different sizes (so prompts differ in length) with some text on them."""
    rnd = random.Random(seed)
    out = []
    for i in range(count):
        w, h = rnd.randint(40, 400), rnd.randint(40, 600)
        image = Image.new("RGB", (w, h), (250, 248, 240))
        draw = ImageDraw.Draw(image)
        for j in range(3):
            draw.text((rnd.randint(0, w - 10), rnd.randint(0, h - 10)), f"no {i}.{j}", fill=0)
        out.append(image)
    return out


@pytest.fixture(scope="module")
def mixed(recognizer):
    """Pages, budgets and a stop id under which the pages, each decoded alone, stop for every
    reason there is: their stop id, their token budget, the repetition guard."""
    images = pages(len(BUDGETS), seed=11)
    # A token the page with budget 50 writes a few steps in, that most other pages never write.
    return images, rare_token(recognizer, images, BUDGETS, GUARD, page=7, after=3)


def rare_token(recognizer, images, budgets, guard, *, page: int, after: int) -> int:
    """A token `page` writes (decoded alone) past its first `after` tokens that the fewest
    pages write at all: as a stop id it ends that page early and leaves most others alone."""
    free = [
        recognizer.recognize([im], max_new_tokens=[n], repetition_guard=guard, schedule="static")[0]
        for im, n in zip(images, budgets, strict=True)
    ]
    ids = [recognizer.tokenizer.encode(r.text) for r in free]
    counts = Counter(t for row in ids for t in set(row))
    return min(ids[page][after:], key=lambda t: counts[t])


def alone(recognizer, images, stop_ids, **kwargs):
    saved = recognizer.engine
    recognizer.engine = GenerationEngine(saved.decoder, stop_ids)
    try:
        return [
            recognizer.recognize([im], max_new_tokens=[n], schedule="static", **kwargs)[0]
            for im, n in zip(images, BUDGETS, strict=True)
        ]
    finally:
        recognizer.engine = saved


def batched(recognizer, images, stop_ids, **kwargs):
    saved = recognizer.engine
    recognizer.engine = GenerationEngine(saved.decoder, stop_ids)
    try:
        return recognizer.recognize(images, max_new_tokens=BUDGETS, **kwargs)
    finally:
        recognizer.engine = saved


@pytest.mark.parametrize("max_batch", [1, 3, 4, 16])
def test_each_page_gets_the_tokens_it_gets_alone_whatever_stops_it(
    recognizer, mixed, max_batch, monkeypatch
) -> None:
    monkeypatch.setattr(SlotCache, "GROW_BY", 7)  # make the cache grow several times mid-run
    images, stop = mixed
    reference = alone(recognizer, images, [stop], repetition_guard=GUARD)
    reasons = Counter(r.stop_reason for r in reference)
    assert {STOP_EOS, STOP_MAX_TOKENS, STOP_REPETITION} <= set(reasons), reasons
    got = batched(recognizer, images, [stop], repetition_guard=GUARD, max_batch=max_batch)
    for page, (want, have) in enumerate(zip(reference, got, strict=True)):
        assert have.text == want.text and have.token_ends == want.token_ends, page
        assert have.stop_reason == want.stop_reason, page
        assert have.token_logprobs == pytest.approx(want.token_logprobs, abs=1e-4)


def test_static_schedule_gives_the_same_pages(recognizer, mixed) -> None:
    images, stop = mixed
    cont = batched(recognizer, images, [stop], repetition_guard=GUARD, max_batch=3)
    static = batched(
        recognizer, images, [stop], repetition_guard=GUARD, max_batch=3, schedule="static"
    )
    assert [(r.text, r.stop_reason) for r in cont] == [(r.text, r.stop_reason) for r in static]


def test_static_schedule_with_a_growing_cache_gives_the_tokens_of_each_page_alone(
    recognizer, mixed, monkeypatch
) -> None:
    """The static path stays the A/B baseline: its cache growth (KVCache) is exercised here,
    now that `recognize` runs the continuous path by default."""
    monkeypatch.setattr(KVCache, "GROW_BY", 5)
    images, stop = mixed
    reference = alone(recognizer, images, [stop], repetition_guard=GUARD)
    got = batched(recognizer, images, [stop], repetition_guard=GUARD, schedule="static")
    for want, have in zip(reference, got, strict=True):
        assert (have.text, have.stop_reason) == (want.text, want.stop_reason)


class StepLog:
    """Rows of every decode step and the moments pages were prefilled (wrapped, not replaced)."""

    def __init__(self, recognizer, monkeypatch) -> None:
        self.events: list[tuple[str, int]] = []
        self.cache_ptrs: list[tuple[int, int]] = []
        engine, dec = recognizer.engine, recognizer.engine.decoder
        step, prefill = engine.forward_step, dec.prefill

        def logged_step(cache, positions, row_lengths, tokens):
            self.events.append(("step", int(tokens.shape[0])))
            self.cache_ptrs.append((cache.k.data_ptr(), cache.k.untyped_storage().data_ptr()))
            return step(cache, positions, row_lengths, tokens)

        def logged_prefill(embeds, lengths, cache, rows=None):
            self.events.append(("prefill", len(lengths)))
            return prefill(embeds, lengths, cache, rows=rows)

        monkeypatch.setattr(engine, "forward_step", logged_step)
        monkeypatch.setattr(dec, "prefill", logged_prefill)

    def steps(self) -> list[int]:
        return [n for kind, n in self.events if kind == "step"]


def test_the_batch_stays_full_while_pages_remain(recognizer, monkeypatch) -> None:
    images = pages(9, seed=12)
    budgets = [3, 40, 5, 22, 8, 30, 2, 17, 11]
    log = StepLog(recognizer, monkeypatch)
    recognizer.recognize(images, max_new_tokens=budgets, repetition_guard=False, max_batch=3)
    last_prefill = max(i for i, (kind, _) in enumerate(log.events) if kind == "prefill")
    before = [n for kind, n in log.events[:last_prefill] if kind == "step"]
    assert before and set(before) == {3}  # full until the queue is empty
    assert sum(n for kind, n in log.events if kind == "prefill") == 9  # each page prefilled once
    # Every token but each page's last is fed back once: the steps' rows add up exactly.
    assert sum(log.steps()) == sum(n - 1 for n in budgets)
    continuous_steps = len(log.steps())
    log.events.clear()
    recognizer.recognize(
        images, max_new_tokens=budgets, repetition_guard=False, max_batch=3, schedule="static"
    )
    assert continuous_steps < len(log.steps())  # static waits for each batch's longest page


def test_steps_read_the_preallocated_cache_in_place(recognizer, monkeypatch) -> None:
    images = pages(6, seed=13)
    log = StepLog(recognizer, monkeypatch)
    # Small budgets: the first allocation already holds the longest page, so nothing grows.
    recognizer.recognize(images, max_new_tokens=6, repetition_guard=False, max_batch=2)
    storages = {storage for _, storage in log.cache_ptrs}
    assert len(log.cache_ptrs) > 5 and len(storages) == 1  # one buffer, views of it, no copies
    assert {ptr for ptr, _ in log.cache_ptrs} == storages  # views start at row 0: no offset


def test_token_budget_bounds_the_rows_of_the_batch(recognizer, monkeypatch) -> None:
    images = pages(5, seed=14)
    lengths = [
        len(recognizer.processor.prompt_ids(recognizer.image_token_count(*im.size), "x"))
        for im in images
    ]
    reserved = max(lengths) + 10
    log = StepLog(recognizer, monkeypatch)
    recognizer.recognize(
        images, prompt="x", max_new_tokens=10, repetition_guard=False, token_budget=2 * reserved
    )
    assert max(log.steps()) == 2
    with pytest.raises(BadArguments, match="token-budget"):
        recognizer.recognize(images, prompt="x", max_new_tokens=10, token_budget=reserved - 1)


def test_plan_slots() -> None:
    assert plan_slots(100, 10, None, None) == 10
    assert plan_slots(100, 10, 4, None) == 4
    assert plan_slots(100, 10, 4, 250) == 2
    assert plan_slots(100, 3, 64, 10_000) == 3
    with pytest.raises(BadArguments, match="max-batch"):
        plan_slots(100, 3, 0, None)


def _seqs(n: int) -> list[Sequence]:
    return [Sequence(i, prompt_len=5, max_new_tokens=5) for i in range(n)]


def test_scheduler_gives_free_rows_to_waiting_pages_then_closes_gaps() -> None:
    seqs = _seqs(6)
    sched = Scheduler(seqs, slots=3)
    admitted, moves = sched.refill([])
    assert [s.index for s in admitted] == [0, 1, 2] and moves == []
    admitted, moves = sched.refill([0, 2])
    assert [(s.index, s.row) for s in admitted] == [(3, 0), (4, 2)] and moves == []
    admitted, moves = sched.refill([1, 2])  # one waiting page for two free rows
    assert [(s.index, s.row) for s in admitted] == [(5, 1)] and moves == []
    assert [s.index for s in sched.running] == [3, 5]
    admitted, moves = sched.refill([0])  # queue empty: the last row moves into the gap
    assert admitted == [] and moves == [(1, 0)]
    assert [(s.index, s.row) for s in sched.running] == [(5, 0)]
    sched.refill([0])
    assert sched.done


def test_scheduler_closes_several_gaps_moving_each_row_once() -> None:
    sched = Scheduler(_seqs(6), slots=6)
    sched.refill([])
    admitted, moves = sched.refill([1, 2, 5])  # rows 3 and 4 move down into 1 and 2
    assert admitted == [] and moves == [(3, 1), (4, 2)]
    assert [(s.index, s.row) for s in sched.running] == [(0, 0), (3, 1), (4, 2)]


def test_slot_tracker_matches_the_static_tracker_row_by_row() -> None:
    """Rows at different steps, reset and moved, each agree with a tracker of its own."""
    guard = RepetitionGuard(max_period=4, min_repeats=3, min_span=6)
    rnd = random.Random(3)
    streams = [[rnd.randrange(4) for _ in range(60)] for _ in range(3)]
    streams[1][20:] = [7, 8] * 20  # a loop in the middle of one stream
    solo = [_RepetitionTracker(guard, rows=1, max_steps=60) for _ in streams]
    slots = SlotRepetitionTracker(guard, slots=4, max_steps=60)
    slots.reset([3])
    rows, offsets = [3, 1, 2], [0, 5, 9]  # stream i sits in rows[i], starting late by offsets[i]
    for t in range(70):
        active = [i for i in range(3) if 0 <= t - offsets[i] < 60]
        if t == 30:  # stream 0 moves from row 3 to row 0
            slots.move(3, 0)
            rows[0] = 0
        if not active:
            continue
        steps = [t - offsets[i] for i in active]
        tokens = torch.tensor([streams[i][s] for i, s in zip(active, steps, strict=True)])
        got = slots.update([rows[i] for i in active], steps, tokens)
        for i, s, cut in zip(active, steps, got, strict=True):
            (want,) = solo[i].update(s, torch.tensor([streams[i][s]]))
            assert cut == want, (i, s)


class QueueFeed:
    """A worker's view of its task queue: requests of a few pages each, read without waiting;
    `gaps` calls answer 'nothing ready yet' before each request, as a slow coordinator would."""

    def __init__(self, requests: list[list[tuple[str, Image.Image]]], gaps: int = 0) -> None:
        self.requests = [list(r) for r in requests]
        self.gaps, self.waits = gaps, 0
        self.pending: list[tuple[str, Image.Image]] = []
        self.calls: list[tuple[int, bool]] = []

    def __call__(self, n: int, block: bool):
        self.calls.append((n, block))
        out: list[tuple[str, Image.Image]] = []
        while len(out) < n:
            if not self.pending and self.requests:
                if self.waits < self.gaps and not block:
                    self.waits += 1
                    break
                self.waits = 0
                self.pending = self.requests.pop(0)
            if not self.pending:
                break
            take = n - len(out)
            out, self.pending = out + self.pending[:take], self.pending[take:]
        return out if out or self.requests or self.pending else None


@pytest.mark.parametrize("gaps", [0, 3])
def test_a_stream_of_requests_decodes_each_page_as_alone_and_never_drains(
    recognizer, mixed, monkeypatch, gaps
) -> None:
    images, stop = mixed
    keyed = [(f"p{i}", im) for i, im in enumerate(images)]
    feed = QueueFeed([keyed[0:3], keyed[3:6], keyed[6:]], gaps=gaps)
    saved = recognizer.engine
    recognizer.engine = GenerationEngine(saved.decoder, [stop])
    log = StepLog(recognizer, monkeypatch)
    try:
        stream = recognizer.recognize_stream(
            feed, max_new_tokens=40, repetition_guard=GUARD, max_batch=4
        )
        got = dict(stream)
    finally:
        recognizer.engine = saved
    events = list(log.events)
    assert sorted(got) == sorted(k for k, _ in keyed)
    saved = recognizer.engine
    recognizer.engine = GenerationEngine(saved.decoder, [stop])
    try:
        want = [
            recognizer.recognize([im], max_new_tokens=40, repetition_guard=GUARD)[0]
            for im in images
        ]
    finally:
        recognizer.engine = saved
    for i, ref in enumerate(want):
        assert (got[f"p{i}"].text, got[f"p{i}"].stop_reason) == (ref.text, ref.stop_reason), i
    assert len({r.stop_reason for r in want}) >= 2  # pages of different lengths and endings
    if gaps == 0:  # requests follow each other: the batch is full until the last page is in
        last_prefill = max(i for i, (kind, _) in enumerate(events) if kind == "prefill")
        assert {n for kind, n in events[:last_prefill] if kind == "step"} == {4}
    else:  # 'nothing ready' answers did not stop the batch; waits only with nothing to decode
        assert feed.waits == 0 and feed.requests == []
    assert all(n <= 8 for n, _ in feed.calls)  # free rows + `max_batch` held ahead, at most


def test_a_worker_queue_of_jobs_is_answered_job_by_job_with_pages_as_alone(recognizer) -> None:
    """A real queue.Queue of jobs (a worker's task queue), a stop sentinel, jobs of 0-4 pages."""
    images = pages(9, seed=16)
    jobs = {"a": images[0:4], "b": [], "c": images[4:5], "d": images[5:9]}
    tasks: queue.Queue = queue.Queue()
    for item in jobs.items():
        tasks.put(item)
    tasks.put(None)
    waits: list[bool] = []

    def get_job(block: bool):
        waits.append(block)
        return tasks.get(block=block)

    feed = JobFeed(get_job)
    answered = []
    for key, result in recognizer.recognize_stream(
        feed, max_new_tokens=12, repetition_guard=False, max_batch=3
    ):
        feed.finish(key, result)
        answered += feed.pop_completed()
    answered += feed.pop_completed()
    assert sorted(job for job, _ in answered) == sorted(jobs) and feed.in_flight() == []
    for job, results in answered:
        want = recognizer.recognize(jobs[job], max_new_tokens=12, repetition_guard=False)
        assert [r.text for r in results] == [r.text for r in want]
    assert waits[0] is True and waits.count(True) <= 2  # waited only with an empty batch


def test_a_broken_job_fails_the_jobs_in_flight_and_the_next_stream_goes_on(recognizer) -> None:
    """Fault injection: a page with no pixels makes the stream raise; the worker's recipe is
    to fail (or requeue) `in_flight()`, `drop` them, and start a new stream on the same feed."""
    images = pages(8, seed=17)
    tasks: queue.Queue = queue.Queue()
    for item in [("ok1", images[:2]), ("bad", [images[2], Image.new("RGB", (0, 0))])]:
        tasks.put(item)
    # Taken with the first four pages: 4 rows and 4 pages held ahead, so they are in flight.
    tasks.put(("held1", images[3:5]))
    tasks.put(("held2", images[5:7]))
    tasks.put(("ok2", images[7:]))  # still queued when the stream breaks
    tasks.put(None)
    feed = JobFeed(lambda block: tasks.get(block=block))
    answered: dict = {}

    def drain() -> None:
        for key, result in recognizer.recognize_stream(
            feed, max_new_tokens=5, repetition_guard=False, max_batch=4
        ):
            feed.finish(key, result)
            answered.update(feed.pop_completed())

    with pytest.raises(ValueError, match="no pixels"):
        drain()
    failed = feed.in_flight()
    assert "bad" in failed and "ok2" not in failed
    for job in failed:
        feed.drop(job)
    drain()
    answered.update(feed.pop_completed())
    assert set(answered) == {"ok2"} | ({"ok1", "held1", "held2"} - set(failed))
    want = recognizer.recognize(images[7:], max_new_tokens=5, repetition_guard=False)
    assert [r.text for r in answered["ok2"]] == [r.text for r in want]


def test_stream_rows_are_bounded_by_the_token_budget(recognizer, monkeypatch) -> None:
    """Rows are sized for the largest prompt the image budget allows plus max_new_tokens."""
    images = pages(6, seed=18)
    longest = len(
        recognizer.processor.prompt_ids(recognizer.config.image.max_tokens, "Read this page.")
    )
    feed = QueueFeed([[(i, im) for i, im in enumerate(images)]])
    log = StepLog(recognizer, monkeypatch)
    got = dict(
        recognizer.recognize_stream(
            feed,
            prompt="Read this page.",
            max_new_tokens=8,
            repetition_guard=False,
            max_batch=5,
            token_budget=2 * (longest + 8),
        )
    )
    assert len(got) == 6 and max(log.steps()) == 2
    with pytest.raises(BadArguments, match="token-budget"):
        next(
            recognizer.recognize_stream(
                feed, prompt="Read this page.", max_new_tokens=8, token_budget=longest + 7
            )
        )


def test_unknown_schedule_is_refused(recognizer) -> None:
    with pytest.raises(BadArguments, match="schedule"):
        recognizer.recognize(pages(1, seed=19), schedule="dynamic")
