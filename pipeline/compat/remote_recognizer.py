"""`RemoteRecognizer`: the `Recognizer` interface over a model loaded from upstream remote code.

What it expects of the folder's code (the upstream AnandaSky shape; see
tests/fixtures/remote_anandasky/ for the fixture written to it):
- processor: `processor(images=[PIL...], text=prompt)` -> dict of tensors the model takes
  (`input_ids`, `attention_mask`, pixel tensors), `image_token_count(width, height)` and
  `max_pixels`;
- model: `generate(**inputs, max_new_tokens=, output_scores=True, return_dict_in_generate=True)`
  returning `.sequences` (new tokens, or prompt + new tokens: told apart by comparing with
  `input_ids`, see `strip_prompt`) and, if it can, `.scores` (one
  `(B, vocab)` tensor per step) — a plain tensor of ids is accepted too; and
  `model(**inputs).logits` `(B, S, vocab)` for a whole sequence.
Log-probabilities are the model's own: taken from `.scores` when given, otherwise recomputed
with one forward pass over prompt + generated tokens. Text and per-token character ends come
from the folder's `tokenizer.json` through the same `TextTokenizer` the native model uses.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.compat.remote_folder import remote_checksum
from pipeline.errors import BadArguments, CheckpointError
from pipeline.model.checkpoint import CheckpointFiles
from pipeline.model.config import DEFAULT_PROMPT, SpecialTokens
from pipeline.model.devices import dtype_name
from pipeline.model.generation import (
    STOP_EOS,
    STOP_MAX_TOKENS,
    STOP_REPETITION,
    Generated,
    RepetitionGuard,
    per_page,
    resolve_guard,
)
from pipeline.model.recognizer import SCHEDULES, to_recognition
from pipeline.model.schedules import PageFeed, page_budget
from pipeline.model.tokenizer import TextTokenizer
from pipeline.records import Recognition


def repetition_cut(token_ids: list[int], guard: RepetitionGuard) -> int | None:
    """Where the native engine's repetition guard would have stopped this output, or None.

    Upstream's generate loop cannot be stopped from outside, so the guard runs afterwards over
    the finished ids with the native rule (same thresholds, same cut back to one copy of the
    repeated unit); the text comes out as the native engine would have written it.
    """
    periods = np.arange(1, guard.max_period + 1)
    limits = guard.thresholds().numpy()
    runs = np.zeros(guard.max_period, dtype=np.int64)
    ids = np.asarray(token_ids, dtype=np.int64)
    for step in range(len(ids)):
        back = step - periods
        same = (back >= 0) & (ids[np.clip(back, 0, None)] == ids[step])
        runs = (runs + 1) * same
        stuck = np.nonzero(runs >= limits)[0]
        if stuck.size:
            return step + 1 - int(runs[stuck[0]])
    return None


def strip_prompt(sequences: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """The new tokens of a `generate()` output, whichever convention the remote code follows.

    transformers' own `generate` returns prompt + new tokens; custom loops often return the new
    tokens alone. The output's length says nothing (a page that stops early is shorter than
    `max_new_tokens` either way), so the output is compared with the prompt ids themselves:
    only an output that starts with the whole prompt batch, padding included, is cut.
    """
    width = input_ids.shape[1]
    if sequences.shape[1] >= width and torch.equal(
        sequences[:, :width].to(input_ids.device), input_ids
    ):
        return sequences[:, width:]
    return sequences


def special_tokens_of(tokenizer_path: Path) -> SpecialTokens:
    """The chat/vision token ids as the folder's own tokenizer numbers them."""
    from tokenizers import Tokenizer

    from pipeline.model.config import SPECIAL_TOKEN_STRINGS as names

    tok = Tokenizer.from_file(str(tokenizer_path))
    ids = {name: tok.token_to_id(name) for name in names}
    missing = [name for name, i in ids.items() if i is None]
    if missing:
        raise CheckpointError(f"{tokenizer_path}: tokenizer lacks the tokens {missing}")
    return SpecialTokens(*(ids[name] for name in names))


def _stop_ids(config: Any, special: SpecialTokens) -> tuple[int, ...]:
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        return special.stop_ids
    return tuple(int(i) for i in ([eos] if isinstance(eos, int) else eos))


class RemoteRecognizer:
    """One remote-code model on one device; same public interface as `Recognizer`."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        files: CheckpointFiles,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        for needed in ("image_token_count", "max_pixels"):
            if not hasattr(processor, needed):
                raise CheckpointError(
                    f"{files.root}: the folder's processor has no `{needed}`; "
                    "pipeline.compat.remote_recognizer documents what it needs"
                )
        self.model = model
        self.processor = processor
        self.model_dir = files.root
        self.torch_device = device
        self.torch_dtype = dtype
        special = special_tokens_of(files.tokenizer)
        self.tokenizer = TextTokenizer.from_file(files.tokenizer, special)
        self.stop_ids = _stop_ids(model.config, special)

    # ---- facts other stages read ------------------------------------------------------------

    @property
    def device(self) -> str:
        return str(self.torch_device)

    @property
    def dtype(self) -> str:
        return dtype_name(self.torch_dtype)

    @property
    def model_name(self) -> str:
        return str(getattr(self.model.config, "name", None) or self.model_dir.name)

    @functools.cached_property
    def model_checksum(self) -> str:
        return remote_checksum(self.model_dir)

    @functools.cached_property
    def num_parameters(self) -> int:
        return sum({id(p): p.numel() for p in self.model.parameters()}.values())

    @property
    def max_image_pixels(self) -> int:
        return int(self.processor.max_pixels)

    def image_token_count(self, width: int, height: int) -> int:
        return int(self.processor.image_token_count(width, height))

    # ---- model calls ------------------------------------------------------------------------

    def inputs(self, images: list[Image.Image], prompt: str) -> dict[str, torch.Tensor]:
        batch = dict(self.processor(images=images, text=prompt))
        return {
            k: v.to(self.torch_device) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()
        }

    def forward_logits(self, inputs: dict[str, torch.Tensor], extra: torch.Tensor) -> torch.Tensor:
        """float32 logits `(extra_len + 1, vocab)` of one prompt continued by `extra` ids.

        Row i predicts the token after the prompt and `extra[:i]`: what greedy decoding saw.
        """
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        if ids.shape[0] != 1:
            raise ValueError("forward_logits takes one prompt at a time")
        length = int(mask.sum())
        extra = extra.to(ids.device, ids.dtype)[None]
        feed = dict(inputs)
        feed["input_ids"] = torch.cat((ids[:, :length], extra), dim=1)
        feed["attention_mask"] = torch.ones_like(feed["input_ids"])
        with torch.inference_mode():
            logits = self.model(**feed).logits
        return logits[0, length - 1 :].float()

    def generate_ids(
        self, images: list[Image.Image], prompt: str, max_new_tokens: int
    ) -> list[tuple[list[int], list[float], str]]:
        """Per page: generated ids (stop excluded), their log-probs, and why it stopped."""
        inputs = self.inputs(images, prompt)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                output_scores=True,
                return_dict_in_generate=True,
            )
        sequences = out if isinstance(out, torch.Tensor) else out.sequences
        scores = None if isinstance(out, torch.Tensor) else getattr(out, "scores", None)
        sequences = strip_prompt(sequences, inputs["input_ids"])
        results = []
        for row, seq in enumerate(sequences.tolist()):
            ids = []
            reason = STOP_MAX_TOKENS
            for token in seq:
                if token in self.stop_ids:
                    reason = STOP_EOS
                    break
                ids.append(token)
            if scores:
                steps = torch.stack([s[row].float() for s in scores[: len(ids)]]) if ids else None
            else:
                row_inputs = self.inputs([images[row]], prompt)
                steps = self.forward_logits(row_inputs, torch.tensor(ids))[: len(ids)]
            logprobs = []
            if ids and steps is not None:
                chosen = torch.tensor(ids, device=steps.device)[:, None]
                logprobs = torch.log_softmax(steps, dim=-1).gather(1, chosen)[:, 0].tolist()
            results.append((ids, logprobs, reason))
        return results

    def recognize(
        self,
        images: list[Image.Image],
        *,
        prompt: str = DEFAULT_PROMPT,
        max_new_tokens: int | Sequence[int] = 2048,
        repetition_guard: bool | RepetitionGuard = True,
        max_batch: int | None = None,
        token_budget: int | None = None,
        schedule: str = "continuous",
    ) -> list[Recognition]:
        """Transcribe pages with the folder's own generate loop, `max_batch` pages per call
        (all at once when None); results in input order.

        The same call as `Recognizer.recognize`, so a worker holds either alike; the remote
        code has no continuous batching, so both schedules decode chunk by chunk, and
        `token_budget` is not used (its generate() sizes its own cache). Per-page limits
        decode the chunk to its largest and cut each page at its own: greedy decoding gives
        a page the same tokens either way.
        """
        if schedule not in SCHEDULES:
            raise BadArguments(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
        if not images:
            return []
        guard = resolve_guard(repetition_guard)
        limits = per_page(max_new_tokens, len(images))
        size = max_batch or len(images)
        out = []
        for start in range(0, len(images), size):
            chunk = limits[start : start + size]
            generated = self.generate_ids(images[start : start + size], prompt, max(chunk))
            for (ids, logprobs, reason), limit in zip(generated, chunk, strict=True):
                if len(ids) >= limit:  # as if generate() had been given this page's limit
                    ids, logprobs, reason = ids[:limit], logprobs[:limit], STOP_MAX_TOKENS
                keep = repetition_cut(ids, guard) if guard else None
                if keep is not None:
                    ids, logprobs, reason = ids[:keep], logprobs[:keep], STOP_REPETITION
                out.append(to_recognition(self.tokenizer, Generated(ids, logprobs, reason)))
        return out

    def recognize_stream(
        self,
        feed: PageFeed,
        *,
        prompt: str = DEFAULT_PROMPT,
        max_new_tokens: int = 2048,
        repetition_guard: bool | RepetitionGuard = True,
        max_batch: int = 8,
        token_budget: int | None = None,
    ) -> Iterator[tuple[Hashable, Recognition]]:
        """`Recognizer.recognize_stream`'s interface: `(key, Recognition)` per page of `feed`.

        Takes up to `max_batch` pages from the feed (waiting for the first), decodes them in
        one generate() call, yields their results, and asks again: the batch drains between
        chunks, which the remote code's generate loop cannot avoid.
        """
        while (pages := feed(max_batch, True)) is not None:
            if not pages:
                continue
            recognitions = self.recognize(
                [page[1] for page in pages],
                prompt=prompt,
                max_new_tokens=[page_budget(page, max_new_tokens) for page in pages],
                repetition_guard=repetition_guard,
                max_batch=max_batch,
                token_budget=token_budget,
            )
            yield from zip([page[0] for page in pages], recognitions, strict=True)
