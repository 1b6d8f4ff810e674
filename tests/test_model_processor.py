"""Image -> patches and the chat prompt around them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.ingest.images import to_rgb
from pipeline.model.config import AnandaSkyConfig
from pipeline.model.processor import Processor, fit_grid
from pipeline.model.synthetic import synthetic_config
from pipeline.model.tokenizer import TextTokenizer, build_byte_level_tokenizer


@pytest.fixture(scope="module")
def tiny_processor() -> Processor:
    config = synthetic_config("tiny")
    tok = TextTokenizer(build_byte_level_tokenizer(), config.special_tokens)
    return Processor(config, tok)


@settings(max_examples=400, deadline=None)
@given(
    width=st.integers(1, 20000),
    height=st.integers(1, 20000),
    bounds=st.sampled_from([(4, 64), (16, 256), (16, 4096), (1, 1), (64, 64), (100, 120)]),
)
def test_grid_stays_within_the_token_budget_and_keeps_the_shape(
    width: int, height: int, bounds: tuple[int, int]
) -> None:
    lo, hi = bounds
    rows, cols = fit_grid(width, height, 16, lo, hi)
    assert rows >= 1 and cols >= 1
    assert rows * cols <= hi
    h, w = height / 16, width / 16
    if round(h) >= 1 and round(w) >= 1 and lo <= round(h) * round(w) <= hi:
        assert (rows, cols) == (round(h), round(w))  # already fits: only rounding
    elif rows > 1 and cols > 1:
        # Scaled to the violated bound: each side within one patch of its ideal size there.
        target = hi if round(h) * round(w) > hi else lo
        scale = math.sqrt(target / (h * w))
        assert abs(rows - h * scale) < 1 and abs(cols - w * scale) < 1
        # Less than a row/column of budget unused when rounding down; the minimum reached
        # whenever rounding up fits.
        assert rows * cols > hi - rows - cols or rows * cols >= lo
        if target == lo and math.ceil(h * scale) * math.ceil(w * scale) <= hi:
            assert rows * cols >= lo


@pytest.mark.parametrize("size", [(850, 1100), (1100, 850), (2480, 3508), (300, 2000)])
def test_resize_keeps_the_aspect_ratio(size: tuple[int, int]) -> None:
    width, height = size
    rows, cols = fit_grid(width, height, 16, 16, 4096)
    assert abs((cols / rows) / (width / height) - 1) < 0.12
    assert rows * cols > 4096 * 0.9 or rows * cols == round(height / 16) * round(width / 16)


def test_small_images_grow_and_large_ones_shrink() -> None:
    assert fit_grid(32, 32, 16, 16, 64) == (4, 4)  # 2x2 patches -> at least 16
    assert fit_grid(1600, 1600, 16, 16, 64) == (8, 8)
    assert fit_grid(160, 160, 16, 16, 256) == (10, 10)  # inside the bounds: nearest multiple


def test_patches_are_row_major_channel_first_and_normalised(tiny_processor: Processor) -> None:
    p = tiny_processor.patch
    rows, cols = 3, 5
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(rows * p, cols * p, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    assert tiny_processor.grid(*image.size) == (rows, cols)  # no resize happens
    patches, grid = tiny_processor.patchify(image)
    assert grid == (rows, cols) and patches.shape == (rows * cols, 3 * p * p)
    im = tiny_processor.config.image
    mean, std = np.array(im.image_mean), np.array(im.image_std)
    r, c = 2, 3
    block = pixels[r * p : (r + 1) * p, c * p : (c + 1) * p].astype(np.float32) / 255.0
    expected = ((block - mean) / std).transpose(2, 0, 1).reshape(-1)  # (C, P, P)
    np.testing.assert_allclose(patches[r * cols + c], expected, rtol=1e-5, atol=1e-5)


def test_batch_packs_images_one_after_another(tiny_processor: Processor) -> None:
    images = [Image.new("RGB", (64, 32), "white"), Image.new("L", (200, 900), 128)]
    batch = tiny_processor.images(images)
    assert batch.grids == ((2, 4), tiny_processor.grid(200, 900))
    assert batch.patches.shape[0] == sum(batch.token_counts)
    assert tiny_processor.image_token_count(200, 900) == batch.token_counts[1]


def test_transparent_images_are_flattened_onto_white_paper() -> None:
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(image).getpixel((1, 1)) == (255, 255, 255)
    assert to_rgb(Image.new("L", (2, 2), 7)).getpixel((0, 0)) == (7, 7, 7)


def test_prompt_follows_the_chat_template(tiny_processor: Processor) -> None:
    prompt = "Read <|im_end|> this."
    ids = tiny_processor.prompt_ids(3, prompt)
    st_ = tiny_processor.config.special_tokens
    expected = (
        [st_.im_start_id, *b"user\n", st_.vision_start_id]
        + [st_.image_pad_id] * 3
        + [st_.vision_end_id, *prompt.encode(), st_.im_end_id, *b"\n", st_.im_start_id]
        + [*b"assistant\n"]
    )
    assert ids == expected


def test_default_image_budget_is_4096_patches_of_16_pixels() -> None:
    config = AnandaSkyConfig()
    assert config.vision.patch_size == 16 and config.image.max_tokens == 4096
    assert config.max_image_pixels == 1024 * 1024
