"""`anandasky-batch infer`: one image in, its transcription out (the published single-image use)."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import BadArguments
from pipeline.ingest.documents import IngestSettings, load_page
from pipeline.model import DEFAULT_PROMPT, load_recognizer


def transcribe_file(
    model_dir: Path,
    image_path: Path,
    *,
    prompt: str | None = None,
    device: str = "auto",
    dtype: str | None = None,
    impl: str = "native",
    max_new_tokens: int = 2048,
) -> str:
    if not Path(image_path).is_file():
        raise BadArguments(f"image not found: {image_path}")
    recognizer = load_recognizer(model_dir, device=device, dtype=dtype, impl=impl)
    image = load_page(Path(image_path), 0, IngestSettings(), max_pixels=recognizer.max_image_pixels)
    (recognition,) = recognizer.recognize(
        [image], prompt=prompt or DEFAULT_PROMPT, max_new_tokens=max_new_tokens
    )
    return recognition.text
