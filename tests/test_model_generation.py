"""The batched generation engine against full forward passes and transformers' generate()."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from pipeline.model.decoder import KVCache
from pipeline.model.generation import (
    STOP_EOS,
    STOP_MAX_TOKENS,
    STOP_REPETITION,
    GenerationEngine,
    RepetitionGuard,
    _RepetitionTracker,
)
from pipeline.recognition import load_recognizer

# The decoder is transformers' Qwen3: CI runs these on transformers 4.55.4 as well.
pytestmark = [pytest.mark.compat, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def recognizer(tiny_model_dir: Path):
    return load_recognizer(tiny_model_dir, device="cpu")


def pages(count: int, seed: int = 0) -> list[Image.Image]:
    """Synthetic pages of different sizes (so prompts differ in length) with some text on them."""
    rnd = random.Random(seed)
    out = []
    for i in range(count):
        w, h = rnd.randint(40, 400), rnd.randint(40, 600)
        image = Image.new("RGB", (w, h), (250, 248, 240))
        draw = ImageDraw.Draw(image)
        for j in range(4):
            draw.text(
                (rnd.randint(0, w - 10), rnd.randint(0, h - 10)),
                f"folio {i}.{j}",
                fill=(20, 20, 20),
            )
        out.append(image)
    return out


def prompt_embeddings(recognizer, count: int, seed: int = 0):
    with torch.inference_mode():
        return recognizer.prompt_embeddings(pages(count, seed), "Recognize the text in this image.")


def test_cached_decode_logits_equal_a_full_forward_pass(recognizer) -> None:
    engine, lm = recognizer.engine, recognizer.model.language_model
    embeds, lengths = prompt_embeddings(recognizer, 3, seed=1)
    assert len(set(lengths)) == 3  # rows of different lengths share the batch
    with torch.inference_mode():
        batch, logits = engine.prefill(embeds, lengths, max_new_tokens=8)
        step_logits, chosen = [logits], []
        for _ in range(6):
            tokens = logits.argmax(-1)
            chosen.append(tokens)
            logits = engine.step(batch, tokens)
            step_logits.append(logits)
        starts = [sum(lengths[:i]) for i in range(len(lengths))]
        for row, (start, n) in enumerate(zip(starts, lengths, strict=True)):
            new = torch.stack([t[row] for t in chosen])
            full = torch.cat([embeds[start : start + n], lm.model.embed_tokens(new)])
            reference = lm(inputs_embeds=full[None]).logits[0].float()
            for i, got in enumerate(step_logits):
                assert (got[row] - reference[n - 1 + i]).abs().max().item() <= 1e-4


def test_a_page_decoded_in_a_batch_gives_the_same_tokens_as_alone(recognizer, monkeypatch) -> None:
    monkeypatch.setattr(KVCache, "GROW_BY", 5)  # make the cache grow (and copy) several times
    images = pages(5, seed=2)
    together = recognizer.recognize(images, max_new_tokens=24, repetition_guard=False)
    for image, batched in zip(images, together, strict=True):
        (alone,) = recognizer.recognize([image], max_new_tokens=24, repetition_guard=False)
        assert batched.text == alone.text and batched.token_ends == alone.token_ends
        assert batched.stop_reason == alone.stop_reason
        assert batched.token_logprobs == pytest.approx(alone.token_logprobs, abs=1e-4)


def test_tokens_are_identical_to_transformers_generate(recognizer) -> None:
    images = pages(3, seed=3)
    ours = recognizer.recognize(images, max_new_tokens=40, repetition_guard=False)
    theirs = recognizer.recognize_with_transformers(images, max_new_tokens=40)
    for a, b in zip(ours, theirs, strict=True):
        assert a.text == b.text and a.num_tokens == b.num_tokens == 40
        assert a.stop_reason == b.stop_reason == STOP_MAX_TOKENS
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)


def test_each_row_stops_at_its_own_stop_token_and_others_go_on(recognizer) -> None:
    embeds, lengths = prompt_embeddings(recognizer, 4, seed=4)
    with torch.inference_mode():
        free = recognizer.engine.generate(embeds, lengths, 30)
        stop = free[0].token_ids[5]  # a token row 0 emits at step 5
        engine = GenerationEngine(recognizer.engine.decoder, stop_ids=[stop])
        stopped = engine.generate(embeds, lengths, 30)
    for full, got in zip(free, stopped, strict=True):
        if stop in full.token_ids:
            cut = full.token_ids.index(stop)
            assert got.token_ids == full.token_ids[:cut] and got.stop_reason == STOP_EOS
            assert got.logprobs == pytest.approx(full.logprobs[:cut], abs=1e-5)
        else:  # unaffected by rows leaving the batch around it
            assert got.token_ids == full.token_ids and got.stop_reason == STOP_MAX_TOKENS
    assert stopped[0].stop_reason == STOP_EOS and len(stopped[0].token_ids) <= 5


def test_max_new_tokens_bounds_every_row(recognizer) -> None:
    results = recognizer.recognize(pages(3, seed=5), max_new_tokens=5)
    assert [r.num_tokens for r in results] == [5, 5, 5]
    assert {r.stop_reason for r in results} == {STOP_MAX_TOKENS}
    empty = recognizer.recognize(pages(2, seed=5), max_new_tokens=0)
    assert [(r.text, r.stop_reason) for r in empty] == [("", STOP_MAX_TOKENS)] * 2


def test_repetition_tracker_cuts_a_loop_back_to_one_copy() -> None:
    guard = RepetitionGuard(max_period=4, min_repeats=3, min_span=6)
    stream = [1, 2, 3] + [7, 8, 9] * 5
    tracker = _RepetitionTracker(guard, rows=1, max_steps=len(stream))
    for step, token in enumerate(stream):
        (cut,) = tracker.update(step, torch.tensor([token]))
        if cut:
            break
    # Period 3 needs max(6, 3*3) = 9 periodic tokens: 7 8 9 7 8 9 7 8 9 ends at step 11.
    assert step == 11
    assert stream[: step + 1 - cut] == [1, 2, 3, 7, 8, 9]


def test_repetition_tracker_leaves_varied_text_alone() -> None:
    guard = RepetitionGuard(max_period=8, min_repeats=3, min_span=8)
    rnd = random.Random(0)
    stream = [rnd.randrange(50) for _ in range(400)] + [5, 5, 5, 5, 5, 5, 5]  # 7 < min_span
    tracker = _RepetitionTracker(guard, rows=2, max_steps=len(stream))
    for step, token in enumerate(stream):
        assert tracker.update(step, torch.tensor([token, token])) == [0, 0]


def test_repetition_guard_stops_a_looping_page_and_keeps_its_prefix(recognizer) -> None:
    images = pages(4, seed=6)
    guard = RepetitionGuard(max_period=8, min_repeats=3, min_span=6)
    free = recognizer.recognize(images, max_new_tokens=120, repetition_guard=False)
    guarded = recognizer.recognize(images, max_new_tokens=120, repetition_guard=guard)
    looping = [g for g in guarded if g.stop_reason == STOP_REPETITION]
    assert looping, "the tiny model's output has runs like 'hhhhhh'; one page should loop"
    for f, g in zip(free, guarded, strict=True):
        assert f.text.startswith(g.text)
        if g.stop_reason == STOP_REPETITION:
            assert g.num_tokens < f.num_tokens and g.token_ends[-1] == len(g.text)


def test_packed_cpu_weights_change_speed_not_tokens(recognizer) -> None:
    from pipeline.model.decoder import NativeDecoder

    if not len(recognizer.engine.decoder.step_linear):
        pytest.skip("oneDNN packing unavailable in this torch build")
    plain = GenerationEngine(
        NativeDecoder(recognizer.model.language_model, pack_cpu_weights=False),
        recognizer.config.special_tokens.stop_ids,
    )
    embeds, lengths = prompt_embeddings(recognizer, 3, seed=7)
    with torch.inference_mode():
        packed_out = recognizer.engine.generate(embeds, lengths, 30)
        plain_out = plain.generate(embeds, lengths, 30)
    for a, b in zip(packed_out, plain_out, strict=True):
        assert a.token_ids == b.token_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
