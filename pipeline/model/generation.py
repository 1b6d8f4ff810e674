"""Batched greedy decoding with a KV cache: many pages, one forward pass per generated token.

Shape of the engine (nano-vllm / gpt-fast in spirit, no framework in between):
- prefill: every prompt of the batch is packed into ONE sequence (no padding) and run once;
  causal attention stays inside each prompt (`cu_seqlens`), keys/values land in cache rows;
- decode: each step feeds one token per live row; rows keep their own lengths, and a boolean key
  mask hides the cache slots a shorter row does not have;
- a row that stops (its own `<|im_end|>`/`<|endoftext|>`, a repetition loop, or the token budget)
  leaves the batch at once: its cache row is dropped, so later steps cost only the live rows.
Per step there is one device->host copy (the chosen ids and their log-probs). A row never runs
past the model's positions: the budget is cut to what is left after the longest prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from pipeline.model.decoder import KVCache, NativeDecoder
from pipeline.model.fixed_shapes import KeptStep

STOP_EOS = "eos"
STOP_MAX_TOKENS = "max_new_tokens"
STOP_REPETITION = "repetition"


@dataclass(frozen=True)
class RepetitionGuard:
    """Stop a row whose last tokens are one n-gram (n <= `max_period`) repeated over and over.

    The tail must be periodic for at least `max(min_span, min_repeats * n)` tokens: long enough
    that dot leaders, rules and short repeated words in real pages pass, short enough that a
    model caught in a loop does not burn its whole token budget. The loop is cut back to one copy
    of the repeated unit.
    """

    max_period: int = 64
    min_repeats: int = 4
    min_span: int = 48

    def thresholds(self) -> torch.Tensor:
        """Per period p, how many consecutive `tok[t] == tok[t-p]` matches mean 'stuck'."""
        periods = torch.arange(1, self.max_period + 1)
        span = torch.clamp(periods * self.min_repeats, min=self.min_span)
        return span - periods


def resolve_guard(setting: bool | RepetitionGuard | None) -> RepetitionGuard | None:
    """`recognize(repetition_guard=...)`: True is the default guard, False/None none."""
    if isinstance(setting, RepetitionGuard):
        return setting
    return RepetitionGuard() if setting else None


class _RepetitionTracker:
    """Run lengths of `tok[t] == tok[t-p]` for every live row and period, kept on the CPU."""

    def __init__(self, guard: RepetitionGuard, rows: int, max_steps: int) -> None:
        self.periods = torch.arange(1, guard.max_period + 1)
        self.limits = guard.thresholds()
        self.history = torch.zeros(rows, max(max_steps, 1), dtype=torch.long)
        self.runs = torch.zeros(rows, guard.max_period, dtype=torch.long)

    def update(self, step: int, tokens: torch.Tensor) -> list[int]:
        """Record this step's tokens; return, per row, how many tail tokens to cut (0 = fine)."""
        self.history[:, step] = tokens
        back = step - self.periods
        valid = back >= 0
        prev = self.history[:, back.clamp(min=0)]
        same = (prev == tokens[:, None]) & valid
        self.runs = (self.runs + 1) * same
        stuck = self.runs >= self.limits
        if not bool(stuck.any()):
            return [0] * tokens.shape[0]
        cut = []
        for row in range(tokens.shape[0]):
            hits = stuck[row].nonzero()
            # Keep the text up to the first copy of the unit: drop `runs` trailing tokens.
            cut.append(int(self.runs[row, hits[0, 0]]) if hits.numel() else 0)
        return cut

    def keep(self, rows: torch.Tensor) -> None:
        self.history = self.history.index_select(0, rows)
        self.runs = self.runs.index_select(0, rows)


@dataclass
class Generated:
    """One row's output: ids (stop token excluded), their log-probs, and why it stopped."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    stop_reason: str = ""


@dataclass
class DecodeBatch:
    """Live rows of a generation: their cache, lengths, and which request each one answers."""

    cache: KVCache
    lengths: torch.Tensor  # (B,) on device: tokens in each row's cache so far
    host_lengths: list[int]  # the same on the host, so no step needs a device sync
    requests: list[int]  # row -> index of the prompt it answers

    def keep(self, rows: list[int]) -> None:
        index = torch.tensor(rows, device=self.lengths.device)
        self.cache.keep(index)
        self.lengths = self.lengths.index_select(0, index)
        self.host_lengths = [self.host_lengths[r] for r in rows]
        self.requests = [self.requests[r] for r in rows]


class GenerationEngine:
    """Greedy decoding for a batch of prompt embeddings over a `NativeDecoder`.

    `fixed_shapes`: continuous batches decode at bucketed shapes over a cache allocated whole
    and kept between batches, captured as CUDA graphs on a GPU (`fixed_shapes.py`); off by
    default until measured on a device.
    """

    def __init__(
        self, decoder: NativeDecoder, stop_ids: Sequence[int], fixed_shapes: bool = False
    ) -> None:
        self.decoder = decoder
        self.stop_ids = frozenset(int(i) for i in stop_ids)
        self.fixed_step = KeptStep() if fixed_shapes else None

    def prefill(
        self, embeds: torch.Tensor, lengths: Sequence[int], max_new_tokens: int
    ) -> tuple[DecodeBatch, torch.Tensor]:
        """Run the packed prompts `(sum(lengths), hidden)`; return the batch and first logits."""
        if embeds.shape[0] != sum(lengths) or not lengths or min(lengths) < 1:
            raise ValueError(f"bad prompt lengths {list(lengths)} for {embeds.shape[0]} embeddings")
        dec = self.decoder
        longest = max(lengths)
        if longest >= dec.max_positions:
            raise ValueError(
                f"prompt of {longest} tokens leaves no room in the model's "
                f"{dec.max_positions} positions"
            )
        # Room for a first stretch of tokens; the cache grows in chunks if rows run longer.
        capacity = longest + min(max_new_tokens, KVCache.GROW_BY)
        cache = KVCache(
            dec.num_layers,
            len(lengths),
            dec.num_kv_heads,
            dec.head_dim,
            capacity,
            embeds.device,
            embeds.dtype,
        )
        hidden = dec.prefill(embeds, list(lengths), cache)
        batch = DecodeBatch(
            cache=cache,
            lengths=torch.tensor(list(lengths), device=embeds.device),
            host_lengths=list(lengths),
            requests=list(range(len(lengths))),
        )
        return batch, dec.logits(hidden)

    def step(self, batch: DecodeBatch, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per live row `(B,)`; return the next logits `(B, vocab)` float32."""
        longest = max(batch.host_lengths)
        batch.cache.ensure(longest + 1)
        logits = self.forward_step(batch.cache, batch.lengths, batch.host_lengths, tokens)
        batch.lengths = batch.lengths + 1
        batch.host_lengths = [n + 1 for n in batch.host_lengths]
        return logits

    def forward_step(
        self,
        cache: KVCache,
        positions: torch.Tensor,
        row_lengths: Sequence[int],
        tokens: torch.Tensor,
    ) -> torch.Tensor:
        """One decode step over every row of `cache`: row i holds `row_lengths[i]` tokens
        (`positions` is the same on the device). Rows of one length need no key mask; rows
        that differ much in length attend row by row on the CPU (`attend_row_by_row`)."""
        dec = self.decoder
        longest = max(row_lengths)
        key_len = longest + 1
        mask = row_keys = None
        if attend_row_by_row(row_lengths, cache.k, longest):
            row_keys = [n + 1 for n in row_lengths]
        elif min(row_lengths) < longest:  # rows differ: hide slots past each row's end
            slots = torch.arange(key_len, device=positions.device)
            mask = (slots[None, :] <= positions[:, None])[:, None, None, :]
        hidden = dec.decode(dec.embed(tokens), positions, cache, key_len, mask, row_keys)
        return dec.logits(hidden, dec.step_linear)

    @staticmethod
    def pick(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy choice and its natural-log probability, per row."""
        tokens = torch.argmax(logits, dim=-1)
        chosen = logits.gather(1, tokens[:, None])[:, 0]
        return tokens, chosen - torch.logsumexp(logits, dim=-1)

    def generate(
        self,
        embeds: torch.Tensor,
        lengths: Sequence[int],
        max_new_tokens: int | Sequence[int],
        repetition_guard: RepetitionGuard | None = None,
    ) -> list[Generated]:
        """Static batching: decode every prompt until its own stop; results in prompt order.

        `max_new_tokens` is one budget for all rows or one per row. Rows leave the batch when they
        stop, but nothing takes their place (see `continuous.py` for that).
        """
        limits = token_limits(max_new_tokens, lengths, self.decoder.max_positions)
        results = [Generated() for _ in lengths]
        if min(limits) <= 0:  # rows with no budget never enter the batch
            for row in (i for i, n in enumerate(limits) if n <= 0):
                results[row].stop_reason = STOP_MAX_TOKENS
            live = [i for i, n in enumerate(limits) if n > 0]
            if live:
                sub, sub_lengths = select_prompts(embeds, lengths, live)
                out = self.generate(sub, sub_lengths, [limits[i] for i in live], repetition_guard)
                for i, res in zip(live, out, strict=True):
                    results[i] = res
            return results
        longest = max(limits)
        batch, logits = self.prefill(embeds, lengths, longest)
        tracker = (
            _RepetitionTracker(repetition_guard, len(lengths), longest)
            if repetition_guard is not None
            else None
        )
        for step in range(longest):
            tokens, logprobs = self.pick(logits)
            host_tokens, lps = to_host(tokens, logprobs)
            cuts = tracker.update(step, host_tokens) if tracker else None
            keep = []
            for row, (token, lp) in enumerate(zip(host_tokens.tolist(), lps, strict=True)):
                request = batch.requests[row]
                last = step == limits[request] - 1
                cut = cuts[row] if cuts else 0
                if record_token(results[request], token, lp, cut, last, self.stop_ids):
                    keep.append(row)
            if not keep:
                break
            if len(keep) < len(host_tokens):
                batch.keep(keep)
                index = torch.tensor(keep)
                tokens = tokens.index_select(0, index.to(tokens.device))
                if tracker:
                    tracker.keep(index)
            logits = self.step(batch, tokens)
        return results


# Padding (keys and values read for slots a row does not have) per row, in bytes per layer, above
# which one attention call per row costs less than one masked call for the batch. On this 2-core
# EPYC a CPU SDPA call costs ~8 us and a cached key+value ~70 ns per row at the seed model's
# 4 x 64 kv dims (2 KiB): ~115 keys or ~230 KiB break even (bench/continuous_batching.py,
# BENCHMARKS.md section 9). Accelerators keep one call: a launch there costs far more.
ROW_BY_ROW_MIN_PADDING_BYTES = 192 * 1024


def attend_row_by_row(row_lengths: Sequence[int], cache_k: torch.Tensor, longest: int) -> bool:
    """Whether a CPU decode step should attend row by row: its rows' padding up to `longest`
    outweighs one attention call per row (`ROW_BY_ROW_MIN_PADDING_BYTES`)."""
    if cache_k.device.type != "cpu" or len(row_lengths) < 2:
        return False
    padding = len(row_lengths) * longest - sum(row_lengths)
    per_key = 2 * cache_k.shape[2] * cache_k.shape[4] * cache_k.element_size()
    return padding * per_key > ROW_BY_ROW_MIN_PADDING_BYTES * len(row_lengths)


def per_page(max_new_tokens: int | Sequence[int], count: int) -> list[int]:
    """One token budget per page, from one number for all or one per page."""
    if isinstance(max_new_tokens, int):
        return [max_new_tokens] * count
    wanted = [int(n) for n in max_new_tokens]
    if len(wanted) != count:
        raise ValueError(f"{len(wanted)} token budgets for {count} prompts")
    return wanted


def token_limits(
    max_new_tokens: int | Sequence[int], prompt_lengths: Sequence[int], max_positions: int
) -> list[int]:
    """Each row's token budget: its own or the shared one, cut to the model's positions left."""
    wanted = per_page(max_new_tokens, len(prompt_lengths))
    if prompt_lengths and max(prompt_lengths) >= max_positions:
        raise ValueError(
            f"prompt of {max(prompt_lengths)} tokens leaves no room in the model's "
            f"{max_positions} positions"
        )
    return [min(n, max_positions - p) for n, p in zip(wanted, prompt_lengths, strict=True)]


def select_prompts(
    embeds: torch.Tensor, lengths: Sequence[int], rows: Sequence[int]
) -> tuple[torch.Tensor, list[int]]:
    """The packed embeddings of some of the prompts, in the order of `rows`."""
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    parts = [embeds[starts[r] : starts[r + 1]] for r in rows]
    return torch.cat(parts), [lengths[r] for r in rows]


def to_host(tokens: torch.Tensor, logprobs: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """The step's one device->host copy; ids < 2**24 are exact in float32."""
    host = torch.stack((tokens.to(torch.float32), logprobs)).cpu()
    return host[0].long(), host[1].tolist()


def record_token(
    res: Generated, token: int, logprob: float, cut: int, last: bool, stop_ids: frozenset[int]
) -> bool:
    """Append one chosen token to a row's output; False when the row stops here.

    A stop id ends the row without being kept; `cut` > 0 (the repetition guard fired) drops the
    looping tail; `last` is the row's final token under its budget.
    """
    if token in stop_ids:
        res.stop_reason = STOP_EOS
        return False
    res.token_ids.append(token)
    res.logprobs.append(logprob)
    if cut:
        del res.token_ids[-cut:]
        del res.logprobs[-cut:]
        res.stop_reason = STOP_REPETITION
        return False
    if last:
        res.stop_reason = STOP_MAX_TOKENS
        return False
    return True
