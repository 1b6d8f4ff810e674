"""Fixed-shape decode steps (the shapes a GPU captures as graphs), run eagerly on the CPU.

Rows are rounded up to a power of two with free cache slots and keys to a multiple of
`KEY_BUCKET` behind the key mask; every page must still get the tokens it gets decoded alone,
whatever stops it, and the steps must come from a handful of shapes over one cache that never
moves.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from test_model_continuous import pages, rare_token

from pipeline.model import runner as runner_module
from pipeline.model.fixed_shapes import KEY_BUCKET, graph_api, key_bucket, row_bucket
from pipeline.model.generation import (
    STOP_EOS,
    STOP_MAX_TOKENS,
    STOP_REPETITION,
    GenerationEngine,
    RepetitionGuard,
)
from pipeline.recognition import load_recognizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GUARD = RepetitionGuard(max_period=8, min_repeats=3, min_span=24)
BUDGETS = [5, 300, 13, 1, 90, 280, 9, 60, 2, 33, 140]


@pytest.fixture(scope="module")
def recognizer(tiny_model_dir: Path):
    return load_recognizer(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def mixed(recognizer):
    """Pages and a stop id under which pages decoded alone stop for every reason there is."""
    images = pages(len(BUDGETS), seed=23)
    return images, rare_token(recognizer, images, BUDGETS, GUARD, page=1, after=40)


def with_engine(recognizer, images, stop: int, fixed_shapes: bool, **kwargs):
    saved = recognizer.engine
    recognizer.engine = GenerationEngine(saved.decoder, [stop], fixed_shapes=fixed_shapes)
    try:
        return recognizer.recognize(images, max_new_tokens=BUDGETS, **kwargs)
    finally:
        recognizer.engine = saved


def test_buckets() -> None:
    assert [row_bucket(n, 64) for n in (1, 2, 3, 5, 8, 9, 33, 64)] == [1, 2, 4, 8, 8, 16, 64, 64]
    assert row_bucket(5, 6) == 6  # never more rows than the batch has
    assert key_bucket(1, 10_000) == KEY_BUCKET
    assert key_bucket(KEY_BUCKET, 10_000) == KEY_BUCKET
    assert key_bucket(KEY_BUCKET + 1, 10_000) == 2 * KEY_BUCKET
    assert key_bucket(KEY_BUCKET + 1, 300) == 300  # never past the cache
    assert graph_api(torch.device("cpu")) is None  # the CPU runs the same shapes eagerly


@pytest.mark.parametrize("max_batch", [1, 3, 5, 16])
def test_each_page_gets_the_tokens_it_gets_alone(recognizer, mixed, max_batch) -> None:
    images, stop = mixed
    saved = recognizer.engine
    recognizer.engine = GenerationEngine(saved.decoder, [stop])
    try:
        reference = [
            recognizer.recognize(
                [im], max_new_tokens=[n], repetition_guard=GUARD, schedule="static"
            )[0]
            for im, n in zip(images, BUDGETS, strict=True)
        ]
    finally:
        recognizer.engine = saved
    reasons = Counter(r.stop_reason for r in reference)
    assert {STOP_EOS, STOP_MAX_TOKENS, STOP_REPETITION} <= set(reasons), reasons
    got = with_engine(recognizer, images, stop, True, repetition_guard=GUARD, max_batch=max_batch)
    for page, (want, have) in enumerate(zip(reference, got, strict=True)):
        assert have.text == want.text and have.token_ends == want.token_ends, page
        assert have.stop_reason == want.stop_reason, page
        assert have.token_logprobs == pytest.approx(want.token_logprobs, abs=1e-4)


def test_steps_come_from_a_few_shapes_over_one_cache(recognizer, mixed, monkeypatch) -> None:
    images, stop = mixed
    runners = []
    original = runner_module.BatchRunner._decode

    def watched(self):
        runners.append((self, self.cache.k.data_ptr(), len(self.sched.running)))
        return original(self)

    monkeypatch.setattr(runner_module.BatchRunner, "_decode", watched)
    with_engine(recognizer, images, stop, True, repetition_guard=False, max_batch=6)
    batch = runners[0][0]
    step = batch.fixed_step
    assert step is not None and step.graphs is None  # CPU: the same shapes, run eagerly
    assert {ptr for _, ptr, _ in runners} == {batch.cache.k.data_ptr()}  # never grown or moved
    assert batch.cache is step.cache
    assert batch.cache.capacity == batch.cache.max_capacity >= batch.max_capacity  # whole at once
    live = Counter(n for _, _, n in runners)
    assert len(live) >= 4, live  # rows came and went ...
    shapes = set(step.steps)
    assert {rows for rows, _ in shapes} <= {1, 2, 4, 6}  # ... but ran at bucketed shapes only
    assert all(keys % KEY_BUCKET == 0 or keys == batch.cache.capacity for _, keys in shapes)
    assert len(shapes) <= 4 * (batch.max_capacity // KEY_BUCKET + 1)


def test_the_cache_and_its_shapes_are_kept_from_call_to_call(recognizer, mixed) -> None:
    images, stop = mixed
    engine = GenerationEngine(recognizer.engine.decoder, [stop], fixed_shapes=True)
    saved, recognizer.engine = recognizer.engine, engine
    try:
        first = recognizer.recognize(images[:4], max_new_tokens=BUDGETS[:4], max_batch=4)
        kept = engine.fixed_step.step
        shapes = set(kept.steps)
        again = recognizer.recognize(images[:4], max_new_tokens=BUDGETS[:4], max_batch=4)
        assert engine.fixed_step.step is kept and set(kept.steps) == shapes  # nothing rebuilt
        assert [r.text for r in again] == [r.text for r in first]
        recognizer.recognize(images[:3], max_new_tokens=BUDGETS[:3], max_batch=2)
        assert engine.fixed_step.step is not kept  # other rows: a cache of their own
        assert engine.fixed_step.step.slots == 2
    finally:
        recognizer.engine = saved


def test_without_fixed_shapes_the_cache_grows_as_before(recognizer, mixed, monkeypatch) -> None:
    images, stop = mixed
    seen = []
    original = runner_module.BatchRunner._decode

    def watched(self):
        seen.append((self.fixed_step, self.cache.capacity, self.max_capacity))
        return original(self)

    monkeypatch.setattr(runner_module.BatchRunner, "_decode", watched)
    with_engine(recognizer, images, stop, False, repetition_guard=False, max_batch=6)
    assert all(step is None for step, _, _ in seen)
    assert seen[0][1] < seen[0][2]  # the first stretch only; grown in chunks as rows run long


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_cuda_graphs_give_the_tokens_of_eager_fixed_shapes(tiny_model_dir: Path) -> None:
    rec = load_recognizer(tiny_model_dir, device="cuda", dtype="float32")
    images = pages(len(BUDGETS), seed=23)
    rec.engine = GenerationEngine(rec.engine.decoder, (), fixed_shapes=False)
    eager = rec.recognize(images, max_new_tokens=BUDGETS, repetition_guard=False, max_batch=5)
    rec.engine = GenerationEngine(rec.engine.decoder, (), fixed_shapes=True)
    graphs = rec.recognize(images, max_new_tokens=BUDGETS, repetition_guard=False, max_batch=5)
    for page, (want, have) in enumerate(zip(eager, graphs, strict=True)):
        assert have.text == want.text, page
