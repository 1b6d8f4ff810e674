"""The runner of a continuous batch: owns its device tensors and runs prefill and decode steps.

nano-vllm's model runner, for one greedy batch: the `Scheduler` says which sequences hold which
cache rows; this class prefills newcomers into their rows, runs one decode step over the live
rows, records each row's token and hands finished sequences back as they finish. Pages come
from a `feed`, asked for more whenever rows are about to be free and nobody is waiting, so a
caller can stream pages in (`ContinuousEngine.stream`) or hand over a list (`generate`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from pipeline.model.fixed_shapes import FixedShapeStep
from pipeline.model.generation import (
    STOP_MAX_TOKENS,
    GenerationEngine,
    RepetitionGuard,
    record_token,
    to_host,
)
from pipeline.model.kv_slots import SlotCache
from pipeline.model.scheduler import Scheduler
from pipeline.model.sequence import Sequence as Seq
from pipeline.model.slot_guard import SlotRepetitionTracker

# embed(indices) -> packed prompt embeddings `(sum of their prompt lengths, hidden)`, in order.
EmbedFn = Callable[[list[int]], torch.Tensor]
# feed(n, block) -> up to n new sequences ([] = none ready now), or None = no more, ever.
# `block` is True when the batch is empty: the feed should then wait for a page or say None.
FeedFn = Callable[[int, bool], "list[Seq] | None"]


class BatchRunner:
    """One continuous batch: scheduler, per-slot cache, pending tokens, guard state."""

    def __init__(
        self,
        engine: GenerationEngine,
        feed: FeedFn,
        embed: EmbedFn,
        guard: RepetitionGuard | None,
        slots: int,
        max_capacity: int,
        max_steps: int,
        lookahead: int = 0,
    ) -> None:
        self.engine = engine
        self.lookahead = lookahead  # pages taken from the feed beyond the free rows
        self.dec = engine.decoder
        self.feed = feed
        self.exhausted = False
        self.sched = Scheduler((), slots)
        self.slots = slots
        self.max_capacity = max_capacity
        self.embed = embed
        self.tracker = SlotRepetitionTracker(guard, slots, max_steps) if guard else None
        self.cache: SlotCache | None = None
        self.fixed_step: FixedShapeStep | None = None  # with `engine.fixed_step`
        self.pending: torch.Tensor | None = None  # (slots,) the next token to feed, per row
        self.lengths: torch.Tensor | None = None  # (n,) cache lengths of the live rows
        self.done: list[Seq] = []

    def run(self) -> Iterator[Seq]:
        """Decode until the feed runs dry; yield each sequence as soon as it has stopped."""
        self._refill([])
        while True:
            yield from self.done
            self.done = []
            if self.sched.running:
                self._refill(self._decode())
            elif self.exhausted and not self.sched.waiting:
                return
            else:
                self._refill([])

    def _pull(self, finished: list[int]) -> None:
        """Ask the feed for as many pages as rows will be free (and `lookahead` more, so that
        `embed` can encode pages together ahead of their turn), less those already waiting."""
        live = len(self.sched.running) - len(finished)
        wanted = self.slots + self.lookahead - live - len(self.sched.waiting)
        if self.exhausted or wanted <= 0:
            return
        # Wait for a page only with nothing to decode and nothing stopped still to be handed
        # back: a caller waiting on those results must get them before the feed blocks.
        got = self.feed(wanted, live == 0 and not self.sched.waiting and not self.done)
        if got is None:
            self.exhausted = True
            return
        for seq in got:
            if seq.reserved > self.max_capacity:
                raise ValueError(
                    f"page needs {seq.reserved} cache positions, rows hold {self.max_capacity}"
                )
            if seq.max_new_tokens <= 0:
                seq.result.stop_reason = STOP_MAX_TOKENS
                self.done.append(seq)
            else:
                self.sched.waiting.append(seq)

    def _decode(self) -> list[int]:
        """One step over the live rows; returns the rows whose sequence stopped."""
        running = self.sched.running
        n = len(running)
        host = [s.cache_len for s in running]
        longest = max(host)
        self.cache.ensure(longest + 1)
        if self.lengths is None:  # the batch changed since the last step
            self.lengths = torch.tensor(host, device=self.pending.device)
        if self.fixed_step is not None:
            logits = self.fixed_step(self.lengths, host, self.pending[:n])
        else:
            step = self.engine.forward_step
            logits = step(self.cache.view(n), self.lengths, host, self.pending[:n])
        self.lengths = self.lengths + 1
        return self._choose(list(range(n)), logits)

    def _choose(self, rows: list[int], logits: torch.Tensor) -> list[int]:
        """Greedy pick for `rows` (one device->host copy); record it; rows that stopped."""
        tokens, logprobs = self.engine.pick(logits)
        host_tokens, lps = to_host(tokens, logprobs)
        seqs = [self.sched.running[r] for r in rows]
        cuts = (
            self.tracker.update(rows, [s.steps for s in seqs], host_tokens)
            if self.tracker
            else None
        )
        stopped = []
        for i, (seq, token, lp) in enumerate(zip(seqs, host_tokens.tolist(), lps, strict=True)):
            seq.steps += 1
            last = seq.steps == seq.max_new_tokens
            cut = cuts[i] if cuts else 0
            if not record_token(seq.result, token, lp, cut, last, self.engine.stop_ids):
                stopped.append(rows[i])
                self.done.append(seq)
        if rows == list(range(len(rows))):
            self.pending[: len(rows)] = tokens
        else:
            self.pending[torch.tensor(rows, device=tokens.device)] = tokens
        return stopped

    def _refill(self, finished: list[int]) -> None:
        """Give the rows of finished pages to waiting ones (prefill on arrival); close gaps."""
        while True:
            self._pull(finished)
            admitted, moves = self.sched.refill(finished)
            if finished or admitted:
                self.lengths = None
            for src, dst in moves:
                self._move(src, dst)
            if not admitted:
                return
            finished = self._prefill(admitted)

    def _move(self, src: int, dst: int) -> None:
        self.cache.move(src, dst, self.sched.running[dst].cache_len)
        self.pending[dst] = self.pending[src]
        if self.tracker:
            self.tracker.move(src, dst)

    def _prefill(self, admitted: list[Seq]) -> list[int]:
        """Encode and prefill newcomers into their rows; choose their first tokens."""
        rows = [s.row for s in admitted]
        lengths = [s.prompt_len for s in admitted]
        embeds = self.embed([s.index for s in admitted])
        if embeds.shape[0] != sum(lengths):
            raise ValueError(f"embed gave {embeds.shape[0]} embeddings for prompts {lengths}")
        if self.cache is None:
            self._allocate(embeds, max(lengths))
        self.cache.ensure(max(lengths))
        if self.tracker:
            self.tracker.reset(rows)
        hidden = self.dec.prefill(embeds, lengths, self.cache, rows=rows)
        return self._choose(rows, self.dec.logits(hidden))

    def _allocate(self, embeds: torch.Tensor, longest_prompt: int) -> None:
        """Rows for every slot; positions for the first prompts and a first stretch of tokens
        (fixed-shape steps take the engine's kept cache, allocated whole: it must not move)."""
        dec = self.dec
        device, dtype = embeds.device, embeds.dtype
        self.pending = torch.zeros(self.slots, dtype=torch.long, device=device)
        if (kept := self.engine.fixed_step) is not None:
            self.fixed_step = kept.for_batch(dec, self.slots, self.max_capacity, device, dtype)
            self.cache = self.fixed_step.cache
            return
        first = min(self.max_capacity, longest_prompt + SlotCache.GROW_BY)
        self.cache = SlotCache(
            dec.num_layers,
            self.slots,
            dec.num_kv_heads,
            dec.head_dim,
            first,
            self.max_capacity,
            device,
            dtype,
        )
