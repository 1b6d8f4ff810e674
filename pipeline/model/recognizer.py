"""`Recognizer`: the object a device worker holds. Pages in, `Recognition`s out.

It owns the loaded model on one device and wires processor -> vision encoder -> prompt
embeddings -> generation engine -> text with per-token offsets and log-probs.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image

from pipeline.errors import BadArguments, CheckpointError
from pipeline.model.attention import sdpa_backends
from pipeline.model.checkpoint import checkpoint_checksum, load_model, locate
from pipeline.model.config import DEFAULT_PROMPT, AnandaSkyConfig
from pipeline.model.decoder import NativeDecoder
from pipeline.model.devices import activate, dtype_name, inference, resolve_device, resolve_dtype
from pipeline.model.generation import Generated, GenerationEngine, RepetitionGuard, resolve_guard
from pipeline.model.modeling import AnandaSkyModel
from pipeline.model.processor import Processor
from pipeline.model.reference import generate_with_transformers
from pipeline.model.schedules import PageFeed, continuous_list, continuous_stream, static_batches
from pipeline.model.tokenizer import TextTokenizer
from pipeline.records import Recognition

SCHEDULES = ("continuous", "static")


def to_recognition(tokenizer: TextTokenizer, generated: Generated) -> Recognition:
    """Token ids to the text, per-token character ends and log-probs the writers need."""
    text, ends = tokenizer.decode_with_ends(generated.token_ids)
    return Recognition(
        text=text,
        token_logprobs=tuple(float(x) for x in generated.logprobs),
        token_ends=ends,
        stop_reason=generated.stop_reason,
    )


class Recognizer:
    """One model on one device; `recognize` handles a batch of pages of any sizes."""

    def __init__(
        self,
        model: AnandaSkyModel,
        tokenizer: TextTokenizer,
        model_dir: Path,
        device: torch.device,
        dtype: torch.dtype,
        fixed_shapes: bool = False,
    ) -> None:
        self.model = model
        self.config: AnandaSkyConfig = model.config
        self.tokenizer = tokenizer
        self.processor = Processor(self.config, tokenizer)
        self.model_dir = model_dir
        self.torch_device = device
        self.torch_dtype = dtype
        self.engine = GenerationEngine(
            NativeDecoder(model.language_model),
            self.config.special_tokens.stop_ids,
            fixed_shapes=fixed_shapes,
        )

    # ---- facts other stages read ------------------------------------------------------------

    @property
    def device(self) -> str:
        return str(self.torch_device)

    @property
    def dtype(self) -> str:
        return dtype_name(self.torch_dtype)

    @property
    def model_name(self) -> str:
        return self.config.name

    @functools.cached_property
    def model_checksum(self) -> str:
        """Hash of the weights folder; computed on first use (reading ~1 GB takes a moment)."""
        return checkpoint_checksum(self.model_dir)

    @functools.cached_property
    def num_parameters(self) -> int:
        return self.model.num_parameters()

    @property
    def max_image_pixels(self) -> int:
        """Pages with more pixels are shrunk anyway; shrink them before they cross processes."""
        return self.config.max_image_pixels

    def image_token_count(self, width: int, height: int) -> int:
        return self.processor.image_token_count(width, height)

    # ---- recognition ------------------------------------------------------------------------

    def prompt_embeddings(
        self, images: list[Image.Image], prompt: str
    ) -> tuple[torch.Tensor, list[int]]:
        """Packed prompt embeddings of all pages `(T, hidden)` and each page's prompt length."""
        pixels = self.processor.images(images)
        ids: list[int] = []
        lengths: list[int] = []
        for count in pixels.token_counts:
            row = self.processor.prompt_ids(count, prompt)
            ids += row
            lengths.append(len(row))
        device = self.torch_device
        patches = pixels.patches.to(device=device, dtype=self.torch_dtype)
        image_embeds = self.model.encode_images(patches, pixels.grids)
        input_ids = torch.tensor(ids, dtype=torch.long, device=device)
        return self.model.embed_prompt(input_ids, image_embeds), lengths

    def _to_recognition(self, generated: Generated) -> Recognition:
        # One method both paths go through, so a benchmark can see every page's token ids.
        return to_recognition(self.tokenizer, generated)

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
        """Transcribe pages, at most `max_batch` at a time; results in input order.

        `schedule="continuous"`: a page that stops hands its batch row to the next waiting page
        at the next step (prefilled then; images are encoded `max_batch` at a time ahead), so
        the batch stays full while pages remain; `token_budget` caps the KV cache at that many
        positions in all. Pass many more pages than `max_batch`: the batch drains at the end
        of each call (or use `recognize_stream`, which never drains).
        `schedule="static"`: the previous way, kept for comparison: batches of `max_batch` pages,
        each decoded until its longest page stops. Both give every page the tokens it gets alone.
        `max_new_tokens` may be one number per page.
        """
        if schedule not in SCHEDULES:
            raise BadArguments(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
        if not images:
            return []
        guard = resolve_guard(repetition_guard)
        with inference(self.torch_device, self.torch_dtype), sdpa_backends(self.torch_device):
            if schedule == "continuous":
                generated = continuous_list(
                    self, images, prompt, max_new_tokens, guard, max_batch, token_budget
                )
            else:
                generated = static_batches(self, images, prompt, max_new_tokens, guard, max_batch)
        return [self._to_recognition(g) for g in generated]

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
        """A continuous batch that never drains between requests: yields `(key, Recognition)`
        for each page as soon as it stops; `feed(n, block)` is asked for up to n `(key, image)`
        pages whenever rows free up ([] = none ready now, None = no more; block=True when the
        batch is empty, so the feed should wait for a page)."""
        yield from continuous_stream(
            self,
            feed,
            prompt,
            max_new_tokens,
            resolve_guard(repetition_guard),
            max_batch,
            token_budget,
        )

    def recognize_with_transformers(
        self,
        images: list[Image.Image],
        *,
        prompt: str = DEFAULT_PROMPT,
        max_new_tokens: int = 2048,
    ) -> list[Recognition]:
        """Baseline: transformers `generate()`, one page at a time (benchmarks, equality tests)."""
        st = self.config.special_tokens
        out = []
        with inference(self.torch_device, self.torch_dtype), sdpa_backends(self.torch_device):
            for image in images:
                embeds, _ = self.prompt_embeddings([image], prompt)
                generated = generate_with_transformers(
                    self.model.language_model,
                    embeds,
                    st.stop_ids,
                    st.endoftext_id,
                    max_new_tokens,
                )
                out.append(self._to_recognition(generated))
        return out


def load_native_recognizer(
    model_dir: str | Path,
    device: str = "auto",
    dtype: str | None = None,
    fixed_shapes: bool = False,
) -> Recognizer:
    """Load a local weights folder in the native layout onto one device; never reaches a hub.

    `fixed_shapes`: decode continuous batches at fixed shapes, captured as graphs on a GPU or
    an NPU (`GenerationEngine`).

    Which implementation a folder needs is decided above this package, by
    `pipeline.recognition.load_recognizer`.
    """
    files = locate(model_dir)
    config = AnandaSkyConfig.load(files.config)
    tokenizer = TextTokenizer.from_file(files.tokenizer, config.special_tokens)
    if tokenizer.vocab_size > config.text.vocab_size:
        raise CheckpointError(
            f"{files.tokenizer}: {tokenizer.vocab_size} tokens but the model embeds only "
            f"text.vocab_size={config.text.vocab_size}"
        )
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    activate(torch_device)
    model = load_model(files.root, torch_device, torch_dtype, config=config)
    return Recognizer(
        model, tokenizer, files.root, torch_device, torch_dtype, fixed_shapes=fixed_shapes
    )
