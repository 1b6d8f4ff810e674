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
from pipeline.model.continuous import ContinuousEngine, EncodeAhead, plan_slots
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

    def encode(indices: list[int]) -> tuple[torch.Tensor, list[int]]:
        return rec.prompt_embeddings([images[i] for i in indices], prompt)

    # Pages arrive one or two at a time; their images are encoded a batch at a time ahead.
    embed = EncodeAhead(encode, lengths, chunk=max_batch or len(images))
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
    encoder = HeldPages(rec, prompt, chunk=slots)
    counter = itertools.count()

    def seq_feed(n: int, block: bool) -> list[Seq] | None:
        pages = feed(n, block)
        if pages is None:
            return None
        seqs = []
        for key, image, *budget in pages:
            i = next(counter)
            keys[i] = key
            encoder.hold(i, image)
            length = prompt_length(rec, image, prompt)
            wanted = min(budget[0], max_new_tokens) if budget else max_new_tokens
            (limit,) = token_limits(wanted, [length], max_positions)
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


class HeldPages:
    """The images of a stream's pages between the feed and the batch, encoded `chunk` at a time.

    When a page's prompt embeddings are first needed, it is encoded together with the other
    held pages not encoded yet (oldest first, up to `chunk` in all); at most the held pages'
    embeddings are kept.
    """

    def __init__(self, rec: ScheduledRecognizer, prompt: str, chunk: int) -> None:
        self.rec, self.prompt, self.chunk = rec, prompt, max(chunk, 1)
        self.images: dict[int, Image.Image] = {}  # held, not encoded yet (insertion = arrival)
        self.ready: dict[int, torch.Tensor] = {}

    def hold(self, index: int, image: Image.Image) -> None:
        self.images[index] = image

    def drop(self, index: int) -> None:
        self.images.pop(index, None)
        self.ready.pop(index, None)

    def __call__(self, indices: list[int]) -> torch.Tensor:
        missing = [i for i in indices if i not in self.ready]
        if missing:
            others = [i for i in self.images if i not in missing]
            todo = missing + others[: max(self.chunk - len(missing), 0)]
            embeds, lengths = self.rec.prompt_embeddings(
                [self.images.pop(i) for i in todo], self.prompt
            )
            self.ready.update(zip(todo, torch.split(embeds, lengths), strict=True))
        return torch.cat([self.ready.pop(i) for i in indices])
