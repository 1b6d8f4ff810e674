"""Inputs the benchmarks share: page images of real page shapes, and models of three sizes.

tiny/seed are the project's test checkpoints; full has the published dimensions with the same
deterministic random initialisation (`pipeline.model.synthetic`), built in memory or on disk.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.model.config import AnandaSkyConfig
    from pipeline.model.recognizer import Recognizer

# ---- page images ---------------------------------------------------------------------------

# (name, width, height) of scans as archives hold them: 300 DPI unless said otherwise.
PAGE_SHAPES: tuple[tuple[str, int, int], ...] = (
    ("a4_portrait", 2480, 3508),
    ("letter_landscape", 3300, 2550),
    ("book_spread", 4960, 3508),
    ("register_column", 1200, 4800),
    ("letter_200dpi", 1700, 2200),
    ("index_card", 1500, 900),
    ("line_strip", 2400, 300),
    ("label_photo", 640, 480),
)

_TEXT = (
    "the of and to in that it was his he for with as by on not be at from this have which "
    "register deed folio county clerk witness received recorded parish year month day sum "
    "pounds shillings acres lot north south boundary heirs assigns executor testament"
)
_WORDS = _TEXT.split(" ")


def page_image(width: int, height: int, seed: int) -> Any:
    """A paper-coloured page with lines of dark text; deterministic for (size, seed)."""
    from PIL import Image, ImageDraw, ImageFont

    rnd = random.Random(seed)
    image = Image.new("RGB", (width, height), (246, 241, 228))
    draw = ImageDraw.Draw(image)
    size = max(10, min(width, height) // 40)
    font = ImageFont.load_default(size=size)
    margin, y = size * 2, size * 2
    while y < height - size * 2:
        words, line = rnd.randint(4, 14), []
        for _ in range(words):
            line.append(rnd.choice(_WORDS))
        draw.text((margin, y), " ".join(line), fill=(35, 30, 25), font=font)
        y += int(size * 1.6)
    return image


def page_mix(count: int, scale: float = 1.0) -> list[Any]:
    """`count` pages cycling through PAGE_SHAPES (sizes times `scale`)."""
    pages = []
    for i in range(count):
        _, w, h = PAGE_SHAPES[i % len(PAGE_SHAPES)]
        pages.append(page_image(max(16, int(w * scale)), max(16, int(h * scale)), seed=i))
    return pages


# ---- models --------------------------------------------------------------------------------

SIZES = ("tiny", "seed", "full")


def bench_config(size: str) -> AnandaSkyConfig:
    """tiny/seed: the test checkpoints' configs; full: the published dimensions.

    The full config keeps every published dimension (vocab 151936 included) but numbers its
    six special tokens 256..261, so the byte-level test tokenizer can serve it: the ids change
    no tensor shape and so no cost.
    """
    from pipeline.model.config import AnandaSkyConfig
    from pipeline.model.synthetic import TEST_SPECIAL_TOKENS, synthetic_config

    if size == "full":
        special = replace(TEST_SPECIAL_TOKENS)
        return replace(AnandaSkyConfig(), name="anandasky-bench-full", special_tokens=special)
    return synthetic_config(size)


def build_recognizer(size: str, device: str, dtype: str | None, workdir: Path) -> Recognizer:
    """A Recognizer with deterministic random weights.

    tiny/seed go through the real path (make_test_model, then load_recognizer); full is built in
    memory with the same initialisation, since writing ~2.5 GB only to read it back adds nothing.
    """
    from pipeline.model import make_test_model
    from pipeline.recognition import load_recognizer

    if size in ("tiny", "seed"):
        return load_recognizer(make_test_model(workdir / size, size), device=device, dtype=dtype)
    if size != "full":
        raise SystemExit(f"unknown --size {size!r}; use one of {SIZES}")
    return full_recognizer(device, dtype)


def full_recognizer(device: str, dtype: str | None, seed: int = 20240603) -> Recognizer:
    import torch

    from pipeline.model.devices import activate, resolve_device, resolve_dtype
    from pipeline.model.modeling import AnandaSkyModel
    from pipeline.model.recognizer import Recognizer
    from pipeline.model.synthetic import random_state_dict
    from pipeline.model.tokenizer import TextTokenizer, build_byte_level_tokenizer

    config = bench_config("full")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    activate(torch_device)
    with torch.device("meta"):
        model = AnandaSkyModel(config)
    tensors = random_state_dict(config, seed)
    model.load_state_dict(tensors, strict=False, assign=True)
    del tensors
    model.tie_weights()
    model.reset_rotary()
    model.to(device=torch_device, dtype=torch_dtype)
    model.reset_rotary()
    tokenizer = TextTokenizer(build_byte_level_tokenizer(), config.special_tokens)
    return Recognizer(model.eval(), tokenizer, Path("<in-memory>"), torch_device, torch_dtype)


def make_full_checkpoint(out_dir: Path, dtype: str = "bfloat16", seed: int = 20240603) -> Path:
    """A weights folder of the published size (~1.25 GB in bf16), random weights, on disk."""
    import torch

    from pipeline.model.checkpoint import save_checkpoint
    from pipeline.model.devices import resolve_dtype
    from pipeline.model.synthetic import random_state_dict
    from pipeline.model.tokenizer import build_byte_level_tokenizer

    config = bench_config("full")
    torch_dtype = resolve_dtype(dtype, torch.device("cpu"))
    tensors = {k: v.to(torch_dtype) for k, v in random_state_dict(config, seed).items()}
    return save_checkpoint(out_dir, config, tensors, build_byte_level_tokenizer().to_str())


def model_bytes(module: Any) -> int:
    """Bytes of parameter and buffer storage, each shared storage counted once."""
    seen: dict[int, int] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def set_threads(threads: int | None) -> int:
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
