"""Deterministic random-weight checkpoints for tests and benchmarks (no real weights needed).

`make_test_model(dir, "tiny")` is a ~2M-parameter model for fast tests; `"seed"` (~41M) keeps the
full published 4x768 ViT with a small decoder, the size of the published NPU-vs-CPU check. Both
use the byte-level test tokenizer (256 bytes + chat/vision specials, ids 256..261) and write the
same bytes every time: a fixed seed, a fixed tensor order, stable JSON.

Random weights produce random text. Choices that keep it usable by the stages downstream (ALTO/TXT
writers, confidences, benchmarks) without pretending it means anything:
- decoder matrices are drawn with std 3.2/sqrt(fan_in), embeddings with std 1.0 (a trained model
  is ~10x narrower), so the tiny model's greedy output wanders through many tokens instead of
  collapsing onto one (it still has runs like "hhhh"); the seed model settles into a short cycle
  such as ":G:G:G" after a few tokens, which the repetition guard stops (without the guard it
  runs to `max_new_tokens`, which is what a throughput benchmark wants);
- the (tied) embedding rows of everything but printable ASCII and newline are shrunk 10x, and the
  stop tokens' 2x, so greedy output is printable ASCII and does not end at the first step.
  Neither model is likely to emit `<|im_end|>` within a few hundred tokens; generation is always
  bounded by `max_new_tokens`, and tests of stopping pick their stop ids explicitly.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from pipeline.model.checkpoint import save_checkpoint
from pipeline.model.config import (
    SPECIAL_TOKEN_STRINGS,
    AnandaSkyConfig,
    ImageConfig,
    ProjectorConfig,
    SpecialTokens,
    TextConfig,
    VisionConfig,
)
from pipeline.model.modeling import TIED_KEYS, AnandaSkyModel
from pipeline.model.tokenizer import build_byte_level_tokenizer

SIZES = ("tiny", "seed")
_SEEDS = {"tiny": 20240601, "seed": 20240602}
TEST_SPECIAL_TOKENS = SpecialTokens(*range(256, 256 + len(SPECIAL_TOKEN_STRINGS)))
_TEST_VOCAB = 256 + len(SPECIAL_TOKEN_STRINGS)

VISION_STD = 0.02
TEXT_GAIN = 3.2
EMBED_STD = 1.0
QUIET_TOKEN_SCALE = 0.1  # embedding scale of tokens the test models should rarely emit
STOP_TOKEN_SCALE = 0.5  # at 1.0 the seed model stops at once; at 0.5 it writes something first


def synthetic_config(size: str) -> AnandaSkyConfig:
    """The config of a test checkpoint; every field explicit, like a real one."""
    if size == "tiny":
        vision = VisionConfig(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=256)
        text = TextConfig(
            vocab_size=_TEST_VOCAB,
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=64,
            max_position_embeddings=4096,
        )
        image = ImageConfig(min_tokens=4, max_tokens=64)
    elif size == "seed":
        vision = VisionConfig()  # the published 4-layer, 768-wide ViT
        text = TextConfig(
            vocab_size=_TEST_VOCAB,
            hidden_size=512,
            intermediate_size=1280,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=64,
            max_position_embeddings=8192,
        )
        # 64 patches (a 128x128-pixel budget): with the full ViT and a small decoder, a bigger
        # budget makes the per-page vision pass, identical for every decoding strategy, the bulk
        # of a CPU run; the real model's decoder is 20x the ViT and dominates instead.
        image = ImageConfig(min_tokens=16, max_tokens=64)
    else:
        raise ValueError(f"unknown test model size {size!r}; use one of {SIZES}")
    projector = ProjectorConfig(
        input_size=vision.hidden_size,
        intermediate_size=vision.hidden_size,
        output_size=text.hidden_size,
    )
    config = AnandaSkyConfig(
        name=f"anandasky-test-{size}",
        vision=vision,
        projector=projector,
        text=text,
        image=image,
        special_tokens=replace(TEST_SPECIAL_TOKENS),
    )
    config.validate(f"test config {size!r}")
    return config


def _init_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if len(shape) == 1:
        # Norm gains start at one, every bias at zero: the usual untrained state.
        is_gain = name.endswith(".weight") and "norm" in name.rsplit(".", 2)[-2]
        return torch.ones(shape) if is_gain else torch.zeros(shape)
    if name.endswith("embed_tokens.weight"):
        std = EMBED_STD
    elif name.startswith("language_model."):
        std = TEXT_GAIN / shape[1] ** 0.5  # same dynamics whatever the width
    else:
        std = VISION_STD
    return torch.randn(shape, generator=gen) * std


def random_state_dict(config: AnandaSkyConfig, seed: int) -> dict[str, torch.Tensor]:
    """Checkpoint tensors for `config` drawn from a fixed-seed generator in sorted-name order."""
    with torch.device("meta"):
        model = AnandaSkyModel(config)
    skip = set(TIED_KEYS) if config.text.tie_word_embeddings else set()
    shapes = {n: tuple(t.shape) for n, t in model.state_dict().items() if n not in skip}
    gen = torch.Generator().manual_seed(seed)
    tensors = {name: _init_tensor(name, shapes[name], gen) for name in sorted(shapes)}
    tensors["language_model.model.embed_tokens.weight"] *= _token_scale(config)[:, None]
    return tensors


def _token_scale(config: AnandaSkyConfig) -> torch.Tensor:
    """1 for printable ASCII and newline, STOP_TOKEN_SCALE for stop tokens, QUIET for the rest."""
    scale = torch.full((config.text.vocab_size,), QUIET_TOKEN_SCALE)
    scale[0x20:0x7F] = 1.0
    scale[0x0A] = 1.0
    scale[list(config.special_tokens.stop_ids)] = STOP_TOKEN_SCALE
    return scale


def make_test_model(out_dir: str | Path, size: str = "tiny") -> Path:
    """Write a complete weights folder (config, tokenizer, safetensors) and return its path."""
    config = synthetic_config(size)
    tensors = random_state_dict(config, _SEEDS[size])
    return save_checkpoint(out_dir, config, tensors, build_byte_level_tokenizer().to_str())
