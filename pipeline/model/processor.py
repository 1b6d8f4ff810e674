"""Page image -> patches, and the chat prompt that carries them.

Resizing keeps the aspect ratio and snaps both sides to a multiple of the patch size, with the
patch count inside `[min_tokens, max_tokens]` of the config: every patch becomes one image token
in the prompt, so these bounds are also the bounds on the vision part of the decoder prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from pipeline.ingest.images import to_rgb
from pipeline.model.config import AnandaSkyConfig
from pipeline.model.tokenizer import TextTokenizer


def fit_grid(
    width: int, height: int, patch: int, min_tokens: int, max_tokens: int
) -> tuple[int, int]:
    """Patch grid `(rows, cols)` for an image, aspect ratio kept as far as the bounds allow.

    Sizes round to the nearest patch. Outside the bounds, the image is scaled to the violated
    bound: rounding up when growing; rounding down when that would exceed `max_tokens`, then adding
    back whole rows/columns while they fit (each side stays within one patch of its ideal size).
    A side never drops below one patch; for extreme strips the other side is cut to the budget.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image has no pixels ({width}x{height})")
    ideal_h, ideal_w = height / patch, width / patch
    rows, cols = max(1, round(ideal_h)), max(1, round(ideal_w))
    fill = False
    if not min_tokens <= rows * cols <= max_tokens:
        target = max_tokens if rows * cols > max_tokens else min_tokens
        scale = math.sqrt(target / (ideal_h * ideal_w))
        ideal_h, ideal_w = ideal_h * scale, ideal_w * scale
        rows, cols = max(1, math.ceil(ideal_h)), max(1, math.ceil(ideal_w))
        if rows * cols > max_tokens:  # shrinking, or growing into a tight budget: round down
            rows, cols = max(1, math.floor(ideal_h)), max(1, math.floor(ideal_w))
            fill = True
    if rows * cols > max_tokens:  # a side clamped at 1, or rounding up overshot: trim the longer
        if rows >= cols:
            rows = max(1, max_tokens // cols)
        else:
            cols = max(1, max_tokens // rows)
    # Spend budget lost to rounding down, on the side furthest below its ideal size.
    while fill:
        options = []
        if rows + 1 <= math.ceil(ideal_h) and (rows + 1) * cols <= max_tokens:
            options.append((rows / ideal_h, rows + 1, cols))
        if cols + 1 <= math.ceil(ideal_w) and rows * (cols + 1) <= max_tokens:
            options.append((cols / ideal_w, rows, cols + 1))
        if not options:
            break
        _, rows, cols = min(options)
    return rows, cols


@dataclass(frozen=True)
class PixelBatch:
    """Patches of several images packed one after another, with each image's grid."""

    patches: torch.Tensor  # (sum(rows*cols), channels*patch*patch) float32
    grids: tuple[tuple[int, int], ...]

    @property
    def token_counts(self) -> list[int]:
        return [r * c for r, c in self.grids]


class Processor:
    """Images to patch tensors and prompt token ids, exactly as the model expects them."""

    def __init__(self, config: AnandaSkyConfig, tokenizer: TextTokenizer) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.patch = config.vision.patch_size
        im = config.image
        self._mean = np.asarray(im.image_mean, dtype=np.float32)[:, None, None]
        self._std = np.asarray(im.image_std, dtype=np.float32)[:, None, None]
        st = config.special_tokens
        encode = tokenizer.encode
        # The chat template around the image and prompt, pre-tokenised once.
        self._head = [st.im_start_id, *encode("user\n"), st.vision_start_id]
        self._tail = [st.im_end_id, *encode("\n"), st.im_start_id, *encode("assistant\n")]
        self._prompt_cache: dict[str, list[int]] = {}

    def grid(self, width: int, height: int) -> tuple[int, int]:
        im = self.config.image
        return fit_grid(width, height, self.patch, im.min_tokens, im.max_tokens)

    def image_token_count(self, width: int, height: int) -> int:
        rows, cols = self.grid(width, height)
        return rows * cols

    def patchify(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int]]:
        """One image to `(rows*cols, C*P*P)` normalised patches, row-major, each (C, P, P)."""
        image = to_rgb(image)
        rows, cols = self.grid(*image.size)
        p = self.patch
        if image.size != (cols * p, rows * p):
            image = image.resize((cols * p, rows * p), Image.Resampling.BICUBIC)
        pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0  # (C, H, W)
        pixels = (pixels - self._mean) / self._std
        channels = pixels.shape[0]
        patches = pixels.reshape(channels, rows, p, cols, p).transpose(1, 3, 0, 2, 4)
        return patches.reshape(rows * cols, channels * p * p), (rows, cols)

    def images(self, images: list[Image.Image]) -> PixelBatch:
        arrays, grids = [], []
        for image in images:
            arr, grid = self.patchify(image)
            arrays.append(arr)
            grids.append(grid)
        patches = torch.from_numpy(np.concatenate(arrays, axis=0)) if arrays else torch.empty(0)
        return PixelBatch(patches=patches, grids=tuple(grids))

    def prompt_ids(self, image_tokens: int, prompt: str) -> list[int]:
        """`<|im_start|>user\\n<|vision_start|><|image_pad|>*N<|vision_end|>PROMPT<|im_end|>\\n
        <|im_start|>assistant\\n` as ids."""
        text_ids = self._prompt_cache.get(prompt)
        if text_ids is None:
            text_ids = self.tokenizer.encode(prompt)
            self._prompt_cache = {prompt: text_ids}  # one prompt per run; keep it small
        st = self.config.special_tokens
        return [
            *self._head,
            *([st.image_pad_id] * image_tokens),
            st.vision_end_id,
            *text_ids,
            *self._tail,
        ]
