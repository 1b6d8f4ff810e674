"""Continuous batching: a finished page's cache row is taken by the next waiting page at once.

Static batching (`GenerationEngine.generate`) decodes a batch until its longest page stops;
with page lengths from a few tokens to thousands, most steps then run a mostly empty batch.
Here the batch stays full while pages remain:
- the `Scheduler` keeps up to `slots` sequences in cache rows `0..n-1`; when some stop, waiting
  pages take their rows and are prefilled on arrival (their prompt embeddings come from the
  caller's `embed`: computed then, or a batch at a time ahead with `HeldPages`), and their
  first token is chosen from the prefill's logits;
- every step then feeds one token per live row, exactly as the static engine does (same decode
  pass, same key mask), so each page's tokens are those it gets decoded alone;
- the `SlotCache` holds one row per slot, preallocated and reused; no step copies it.
Memory is bounded by `max_batch` (rows) and `token_budget` (rows x positions per row). Pages come
as a list (`generate`, results in input order) or as a stream (`stream`, results as they stop);
the `BatchRunner` (runner.py) does the work in both.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence

import torch
from PIL import Image

from pipeline.errors import BadArguments
from pipeline.model.generation import Generated, GenerationEngine, RepetitionGuard, token_limits
from pipeline.model.runner import BatchRunner, EmbedFn, FeedFn
from pipeline.model.sequence import Sequence as Seq


def plan_slots(reserved: int, count: int, max_batch: int | None, token_budget: int | None) -> int:
    """Rows of the batch: at most `max_batch`, and no more than `token_budget` positions in all
    when each row is sized for the largest page (`reserved` = prompt + token budget)."""
    slots = min(count, max_batch or count)
    if max_batch is not None and max_batch < 1:
        raise BadArguments(f"--max-batch must be at least 1, not {max_batch}")
    if token_budget is not None:
        if token_budget < reserved:
            raise BadArguments(
                f"--token-budget {token_budget} cannot hold one page of {reserved} tokens "
                f"(prompt + max new tokens); raise it to at least {reserved} or lower "
                "--max-new-tokens"
            )
        slots = min(slots, token_budget // reserved)
    return max(slots, 1)


class HeldPages:
    """An `EmbedFn` over the pages handed to a continuous batch, encoded `chunk` at a time.

    The vision encoder and the packed prompt run far better on a batch of images than on one,
    but pages enter the batch one or two at a time as rows free up. So when a page's prompt
    embeddings are first needed, it is encoded together with the other held pages not encoded
    yet (oldest first, up to `chunk` in all). Each page's prompt length must be the one planned
    when it was held; at most the held pages' embeddings are kept.
    """

    def __init__(
        self,
        encode: Callable[[list[Image.Image]], tuple[torch.Tensor, list[int]]],
        chunk: int,
    ) -> None:
        self.encode = encode
        self.chunk = max(chunk, 1)
        self.images: dict[int, Image.Image] = {}  # held, not encoded yet (insertion = arrival)
        self.planned: dict[int, int] = {}  # their prompt lengths
        self.ready: dict[int, torch.Tensor] = {}

    def hold(self, index: int, image: Image.Image, prompt_len: int) -> None:
        self.images[index], self.planned[index] = image, prompt_len

    def drop(self, index: int) -> None:
        for held in (self.images, self.planned, self.ready):
            held.pop(index, None)

    def __call__(self, indices: list[int]) -> torch.Tensor:
        missing = [i for i in indices if i not in self.ready]
        if missing:
            later = (i for i in self.images if i not in missing)
            todo = missing + list(itertools.islice(later, max(self.chunk - len(missing), 0)))
            embeds, got = self.encode([self.images.pop(i) for i in todo])
            planned = [self.planned.pop(i) for i in todo]
            if got != planned:  # the processor and the plan disagree
                raise RuntimeError(f"prompt lengths {got} differ from the planned ones {planned}")
            self.ready.update(zip(todo, torch.split(embeds, got), strict=True))
        return torch.cat([self.ready.pop(i) for i in indices])


class ContinuousEngine:
    """Continuous batching over a `GenerationEngine`'s decoder, its stop ids and pick rule."""

    def __init__(self, engine: GenerationEngine) -> None:
        self.engine = engine
        self.decoder = engine.decoder

    def generate(
        self,
        prompt_lengths: Sequence[int],
        embed: EmbedFn,
        max_new_tokens: int | Sequence[int],
        repetition_guard: RepetitionGuard | None = None,
        *,
        max_batch: int | None = None,
        token_budget: int | None = None,
    ) -> list[Generated]:
        """Decode every page greedily, at most `max_batch` at a time; results in input order."""
        limits = token_limits(max_new_tokens, prompt_lengths, self.decoder.max_positions)
        seqs = [Seq(i, n, m) for i, (n, m) in enumerate(zip(prompt_lengths, limits, strict=True))]
        if not seqs:
            return []
        reserved = max(s.reserved for s in seqs)
        slots = plan_slots(reserved, len(seqs), max_batch, token_budget)
        pages = iter(seqs)

        def feed(n: int, block: bool) -> list[Seq] | None:
            return list(itertools.islice(pages, n)) or None

        for _ in self.stream(feed, embed, repetition_guard, slots=slots, max_capacity=reserved):
            pass
        return [s.result for s in seqs]

    def stream(
        self,
        feed: FeedFn,
        embed: EmbedFn,
        repetition_guard: RepetitionGuard | None = None,
        *,
        slots: int,
        max_capacity: int,
        lookahead: int = 0,
    ) -> Iterator[Seq]:
        """Decode pages as `feed` hands them over, `slots` at a time; yield each when it stops.

        `max_capacity`: cache positions per row, at least every page's prompt + token budget.
        `lookahead`: pages to hold beyond the free rows, for an `embed` that encodes ahead.
        """
        runner = BatchRunner(
            self.engine, feed, embed, repetition_guard, slots, max_capacity, max_capacity, lookahead
        )
        return runner.run()
