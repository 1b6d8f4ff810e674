"""How a `Recognizer` feeds its pages to the engine: static batches, a continuous batch over a
list, or a continuous batch over a stream of pages that never drains between requests.

Kept apart from `recognizer.py` so the recognizer stays the object a worker holds, and each way
of batching reads on its own.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Protocol

import torch
from PIL import Image

from pipeline.model.attention import sdpa_backends
from pipeline.model.config import AnandaSkyConfig
from pipeline.model.continuous import ContinuousEngine, HeldPages, plan_slots
from pipeline.model.devices import inference
from pipeline.model.generation import (
    Generated,
    GenerationEngine,
    RepetitionGuard,
    per_page,
    token_limits,
)
from pipeline.model.processor import Processor
from pipeline.model.sequence import Sequence as Seq
from pipeline.records import Recognition


class ScheduledRecognizer(Protocol):
    """What a schedule uses of `pipeline.model.recognizer.Recognizer`, named here so this module
    does not import the class that imports it."""

    processor: Processor
    engine: GenerationEngine
    config: AnandaSkyConfig
    torch_device: torch.device
    torch_dtype: torch.dtype

    def image_token_count(self, width: int, height: int) -> int: ...

    def prompt_embeddings(
        self, images: list[Image.Image], prompt: str
    ) -> tuple[torch.Tensor, list[int]]: ...

    def _to_recognition(self, generated: Generated) -> Recognition: ...


# feed(n, block) -> up to n (key, image) pages ([] = none ready now) or None (no more, ever);
# block=True: nothing is being decoded, so wait for a page (or return None). A page may come as
# (key, image, max_new_tokens) to give it its own token budget (at most the stream's).
PageFeed = Callable[[int, bool], "list[tuple] | None"]


def page_budget(page: tuple, max_new_tokens: int) -> int:
    """A fed page's token budget: its own third element, at most the stream's, else the stream's."""
    return min(page[2], max_new_tokens) if len(page) > 2 else max_new_tokens


def prompt_length(rec: ScheduledRecognizer, image: Image.Image, prompt: str) -> int:
    return len(rec.processor.prompt_ids(rec.image_token_count(*image.size), prompt))


def static_batches(
    rec: ScheduledRecognizer,
    images: list[Image.Image],
    prompt: str,
    max_new_tokens: int | Sequence[int],
    guard: RepetitionGuard | None,
    max_batch: int | None,
) -> list[Generated]:
    """The previous way: batches of `max_batch` pages, each decoded until its longest stops."""
    size = max_batch or len(images)
    limits = per_page(max_new_tokens, len(images))
    out: list[Generated] = []
    for start in range(0, len(images), size):
        embeds, lengths = rec.prompt_embeddings(images[start : start + size], prompt)
        out += rec.engine.generate(embeds, lengths, limits[start : start + size], guard)
    return out


def continuous_list(
    rec: ScheduledRecognizer,
    images: list[Image.Image],
    prompt: str,
    max_new_tokens: int | Sequence[int],
    guard: RepetitionGuard | None,
    max_batch: int | None,
    token_budget: int | None,
) -> list[Generated]:
    """All of `images` through one continuous batch of at most `max_batch` rows."""
    lengths = [prompt_length(rec, im, prompt) for im in images]
    # Pages arrive one or two at a time; their images are encoded a batch at a time ahead.
    embed = HeldPages(lambda batch: rec.prompt_embeddings(batch, prompt), max_batch or len(images))
    for i, (image, length) in enumerate(zip(images, lengths, strict=True)):
        embed.hold(i, image, length)
    return ContinuousEngine(rec.engine).generate(
        lengths, embed, max_new_tokens, guard, max_batch=max_batch, token_budget=token_budget
    )


def continuous_stream(
    rec: ScheduledRecognizer,
    feed: PageFeed,
    prompt: str,
    max_new_tokens: int,
    guard: RepetitionGuard | None,
    max_batch: int,
    token_budget: int | None,
) -> Iterator[tuple[Hashable, Recognition]]:
    """Pages from `feed` through one continuous batch; each result as soon as its page stops.

    Rows are sized for the largest prompt the model's image budget allows plus
    `max_new_tokens`, so no page can outgrow them; `token_budget` bounds rows x that size.
    """
    max_positions = rec.engine.decoder.max_positions
    longest = len(rec.processor.prompt_ids(rec.config.image.max_tokens, prompt))
    capacity = min(max_positions, longest + max_new_tokens)
    slots = plan_slots(capacity, max_batch, max_batch, token_budget)
    keys: dict[int, Hashable] = {}
    encoder = HeldPages(lambda batch: rec.prompt_embeddings(batch, prompt), chunk=slots)
    counter = itertools.count()

    def seq_feed(n: int, block: bool) -> list[Seq] | None:
        pages = feed(n, block)
        if pages is None:
            return None
        seqs = []
        for page in pages:
            i = next(counter)
            keys[i], image = page[0], page[1]
            length = prompt_length(rec, image, prompt)
            encoder.hold(i, image, length)
            (limit,) = token_limits(page_budget(page, max_new_tokens), [length], max_positions)
            seqs.append(Seq(i, length, limit))
        return seqs

    # Up to `slots` pages wait beyond the free rows, so their images are encoded a batch at a
    # time (the vision encoder runs far better on a batch than page by page as rows free up).
    run = ContinuousEngine(rec.engine).stream(
        seq_feed, encoder, guard, slots=slots, max_capacity=capacity, lookahead=slots
    )
    while True:
        # The contexts hold only while the engine runs, not while the caller has the result.
        with inference(rec.torch_device, rec.torch_dtype), sdpa_backends(rec.torch_device):
            seq = next(run, None)
        if seq is None:
            return
        encoder.drop(seq.index)
        yield keys.pop(seq.index), rec._to_recognition(seq.result)
