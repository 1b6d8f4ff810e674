"""Continuous batching: a finished page's cache row is taken by the next waiting page at once.

Static batching (`GenerationEngine.generate`) decodes a batch until its longest page stops;
with page lengths from a few tokens to thousands, most steps then run a mostly empty batch.
Here the batch stays full while pages remain:
- the `Scheduler` keeps up to `slots` sequences in cache rows `0..n-1`; when some stop, waiting
  pages take their rows and are prefilled on arrival (their images encoded only then, through
  the caller's `embed`), and their first token is chosen from the prefill's logits;
- every step then feeds one token per live row, exactly as the static engine does (same decode
  pass, same key mask), so each page's tokens are those it gets decoded alone;
- the `SlotCache` holds one row per slot, preallocated and reused; no step copies it.
Memory is bounded by `max_batch` (rows) and `token_budget` (rows x positions per row).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from pipeline.errors import BadArguments
from pipeline.model.generation import (
    STOP_MAX_TOKENS,
    Generated,
    GenerationEngine,
    RepetitionGuard,
    record_token,
    to_host,
    token_limits,
)
from pipeline.model.kv_slots import SlotCache
from pipeline.model.scheduler import Scheduler
from pipeline.model.sequence import Sequence as Seq
from pipeline.model.slot_guard import SlotRepetitionTracker

# embed(indices) -> packed prompt embeddings `(sum of their prompt lengths, hidden)`, in order.
EmbedFn = Callable[[list[int]], torch.Tensor]


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


class EncodeAhead:
    """An `EmbedFn` that encodes pages `chunk` at a time, in order, ahead of their admission.

    The vision encoder and the packed prompt run far better on a batch of images than on one;
    pages enter the batch in the caller's order, so the next `chunk` pages are encoded together
    when the first of them is needed (at most `chunk` prompts are held at once).
    """

    def __init__(
        self,
        encode: Callable[[list[int]], tuple[torch.Tensor, list[int]]],
        lengths: Sequence[int],
        chunk: int,
    ) -> None:
        self.encode = encode
        self.lengths = list(lengths)
        self.chunk = max(chunk, 1)
        self.ready: dict[int, torch.Tensor] = {}
        self.used: set[int] = set()

    def __call__(self, indices: list[int]) -> torch.Tensor:
        for index in indices:
            if index not in self.ready:
                self._encode_from(index, max(self.chunk, len(indices)))
        self.used.update(indices)
        return torch.cat([self.ready.pop(i) for i in indices])

    def _encode_from(self, start: int, count: int) -> None:
        later = range(start, len(self.lengths))
        todo = [i for i in later if i not in self.ready and i not in self.used][:count]
        embeds, got = self.encode(todo)
        if got != [self.lengths[i] for i in todo]:  # the processor and the plan disagree
            raise RuntimeError(f"prompt lengths {got} differ from the planned ones")
        for i, part in zip(todo, torch.split(embeds, got), strict=True):
            self.ready[i] = part


class ContinuousEngine:
    """The runner: owns the batch's device tensors; the scheduler decides which pages run."""

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
        for seq in seqs:
            if seq.max_new_tokens <= 0:
                seq.result.stop_reason = STOP_MAX_TOKENS
        todo = [s for s in seqs if not s.finished]
        if todo:
            reserved = max(s.reserved for s in todo)
            slots = plan_slots(reserved, len(todo), max_batch, token_budget)
            _Run(self.engine, todo, slots, reserved, embed, repetition_guard).run()
        return [s.result for s in seqs]


class _Run:
    """One call's batch: scheduler, cache, pending tokens, guard state."""

    def __init__(
        self,
        engine: GenerationEngine,
        seqs: list[Seq],
        slots: int,
        reserved: int,
        embed: EmbedFn,
        guard: RepetitionGuard | None,
    ) -> None:
        self.engine = engine
        self.dec = engine.decoder
        self.sched = Scheduler(seqs, slots)
        self.slots = slots
        self.reserved = reserved
        self.embed = embed
        self.tracker = (
            SlotRepetitionTracker(guard, slots, max(s.max_new_tokens for s in seqs))
            if guard is not None
            else None
        )
        self.cache: SlotCache | None = None
        self.pending: torch.Tensor | None = None  # (slots,) the next token to feed, per row
        self.lengths: torch.Tensor | None = None  # (n,) cache lengths of the live rows

    def run(self) -> None:
        self._refill([])
        while self.sched.running:
            self._refill(self._decode())

    def _decode(self) -> list[int]:
        """One step over the live rows; returns the rows whose sequence stopped."""
        running = self.sched.running
        n = len(running)
        host = [s.cache_len for s in running]
        longest = max(host)
        self.cache.ensure(longest + 1)
        if self.lengths is None:  # the batch changed since the last step
            self.lengths = torch.tensor(host, device=self.pending.device)
        logits = self.engine.forward_step(
            self.cache.view(n), self.lengths, longest, min(host) == longest, self.pending[:n]
        )
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
        if rows == list(range(len(rows))):
            self.pending[: len(rows)] = tokens
        else:
            self.pending[torch.tensor(rows, device=tokens.device)] = tokens
        return stopped

    def _refill(self, finished: list[int]) -> None:
        """Give the rows of finished pages to waiting ones (prefill on arrival); close gaps."""
        while True:
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
        """Rows for every slot; positions for the first prompts and a first stretch of tokens."""
        dec = self.dec
        first = min(self.reserved, longest_prompt + SlotCache.GROW_BY)
        self.cache = SlotCache(
            dec.num_layers,
            self.slots,
            dec.num_kv_heads,
            dec.head_dim,
            first,
            self.reserved,
            embeds.device,
            embeds.dtype,
        )
        self.pending = torch.zeros(self.slots, dtype=torch.long, device=embeds.device)
