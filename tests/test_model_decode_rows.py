"""Row-by-row decode attention (CPU); a stream's per-page token budgets and encoding ahead.

A continuous batch mixes rows of very different lengths; one masked attention call reads every
row's keys up to the longest row. On the CPU, when that padding is large, each row attends over
exactly its own keys instead (`attend_row_by_row`). Either way every page must get the tokens it
gets decoded alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_model_continuous import pages

from pipeline.model import decoder as decoder_module
from pipeline.model import generation
from pipeline.model.attention import decode_attention, decode_attention_rows
from pipeline.model.generation import GenerationEngine, attend_row_by_row
from pipeline.recognition import load_recognizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BUDGETS = [3, 90, 12, 1, 60, 7, 40, 25]


@pytest.fixture(scope="module")
def recognizer(tiny_model_dir: Path):
    rec = load_recognizer(tiny_model_dir, device="cpu")
    rec.engine = GenerationEngine(rec.engine.decoder, ())  # pages run to their budgets
    return rec


def test_row_by_row_attention_is_each_rows_own_call_and_matches_the_masked_one() -> None:
    torch.manual_seed(3)
    rows, heads, kv_heads, dim, capacity = 5, 8, 2, 16, 64
    lengths = [64, 3, 17, 40, 1]
    q = torch.randn(rows, heads, 1, dim)
    k = torch.randn(rows, kv_heads, capacity, dim)
    v = torch.randn(rows, kv_heads, capacity, dim)
    got = decode_attention_rows(q, k, v, lengths)
    longest = max(lengths)
    mask = (torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :]
    masked = decode_attention(q, k[:, :, :longest], v[:, :, :longest], mask)
    torch.testing.assert_close(got, masked, rtol=1e-5, atol=1e-6)
    for i, n in enumerate(lengths):  # exactly the call the row gets when it is decoded alone
        alone = decode_attention(q[i : i + 1], k[i : i + 1, :, :n], v[i : i + 1, :, :n])
        assert torch.equal(got[i : i + 1], alone)


def test_row_by_row_only_where_padding_outweighs_the_extra_calls() -> None:
    cache = torch.zeros(1, 4, 4, 8, 64)  # seed model's kv dims: 2 KiB per key+value, float32
    assert not attend_row_by_row([300, 300, 300, 300], cache, 300)  # no padding
    assert not attend_row_by_row([600], cache, 600)  # one row
    assert not attend_row_by_row([600, 590, 580, 570], cache, 600)  # 15 keys of padding per row
    assert attend_row_by_row([600, 100, 120, 90], cache, 600)  # ~370 keys per row
    on_meta = torch.zeros(1, 4, 4, 8, 64, device="meta")  # not the CPU: one call, always
    assert not attend_row_by_row([600, 100, 120, 90], on_meta, 600)


@pytest.mark.parametrize("threshold", [0, 10**12])
def test_pages_get_their_tokens_alone_with_and_without_row_by_row(
    recognizer, monkeypatch, threshold
) -> None:
    images = pages(len(BUDGETS), seed=5)
    alone = [
        recognizer.recognize([im], max_new_tokens=[n], repetition_guard=False)[0]
        for im, n in zip(images, BUDGETS, strict=True)
    ]
    calls = []
    rows = decoder_module.decode_attention_rows

    def counted(*args, **kwargs):
        calls.append(len(args[3]))
        return rows(*args, **kwargs)

    monkeypatch.setattr(decoder_module, "decode_attention_rows", counted)
    monkeypatch.setattr(generation, "ROW_BY_ROW_MIN_PADDING_BYTES", threshold)
    got = recognizer.recognize(images, max_new_tokens=BUDGETS, repetition_guard=False, max_batch=3)
    assert (len(calls) > 0) == (threshold == 0)  # the path under test was the one taken
    for page, (want, have) in enumerate(zip(alone, got, strict=True)):
        assert (have.text, have.token_ends) == (want.text, want.token_ends), page
        assert have.token_logprobs == pytest.approx(want.token_logprobs, abs=1e-4)


def test_a_stream_page_may_carry_its_own_token_budget(recognizer) -> None:
    images = pages(4, seed=9)
    budgets = [5, 30, 1, 500]  # the last asks for more than the stream's 20: it gets 20
    queued = [[(i, im, n) for i, (im, n) in enumerate(zip(images, budgets, strict=True))]]

    def feed(n: int, block: bool):
        if not queued:
            return None
        taken, queued[0] = queued[0][:n], queued[0][n:]
        if not queued[0]:
            queued.clear()
        return taken

    got = dict(
        recognizer.recognize_stream(feed, max_new_tokens=20, repetition_guard=False, max_batch=2)
    )
    for i, (image, budget) in enumerate(zip(images, budgets, strict=True)):
        want = recognizer.recognize([image], max_new_tokens=min(budget, 20), repetition_guard=False)
        assert got[i].text == want[0].text, i
        assert len(got[i].token_ends) == min(budget, 20), i


def test_a_stream_encodes_its_held_pages_a_batch_at_a_time(recognizer, monkeypatch) -> None:
    """Pages wait beyond the free rows, so the vision encoder gets them `max_batch` at a time
    rather than one by one as rows free up; each page is encoded once and decodes as alone."""
    images = pages(12, seed=21)
    budgets = [1 + (7 * i) % 23 for i in range(12)]  # rows free one or two at a time
    encoded: list[int] = []
    embeddings = recognizer.prompt_embeddings

    def counted(batch, prompt):
        encoded.append(len(batch))
        return embeddings(batch, prompt)

    monkeypatch.setattr(recognizer, "prompt_embeddings", counted)
    waiting = [(i, im, n) for i, (im, n) in enumerate(zip(images, budgets, strict=True))]

    def feed(n: int, block: bool):
        if not waiting:
            return None
        taken = waiting[:n]
        del waiting[:n]
        return taken

    got = dict(
        recognizer.recognize_stream(feed, max_new_tokens=30, repetition_guard=False, max_batch=4)
    )
    assert sum(encoded) == len(images)
    assert len(encoded) <= 4 and max(encoded) == 4, encoded  # not 12 calls of one page
    monkeypatch.undo()
    for i, (image, budget) in enumerate(zip(images, budgets, strict=True)):
        want = recognizer.recognize([image], max_new_tokens=budget, repetition_guard=False)
        assert got[i].text == want[0].text, i
