"""`anandasky-batch infer`: one image in, its transcription out (the published single-image use).

The one single-image path: a file is read exactly as `run` reads a page (`load_page` with the
default ingest settings, orientation applied, shrunk by the same pixel budget), so `infer` and
`run` hand the model the same pixels and give the same text.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from pipeline.errors import BadArguments, InputError
from pipeline.ingest.documents import IngestSettings, load_page
from pipeline.model.config import DEFAULT_PROMPT
from pipeline.recognition import load_recognizer, page_pixel_budget
from pipeline.records import Recognition


def transcribe(
    image: str | Path | Image.Image,
    model_dir: str | Path,
    *,
    device: str = "auto",
    dtype: str | None = None,
    impl: str = "native",
    prompt: str = DEFAULT_PROMPT,
    max_new_tokens: int = 2048,
    repetition_guard: bool = True,
) -> Recognition:
    """One image (a file, or pixels already in memory), start to finish: for quick checks.

    A file that is not a readable image raises `BadArguments`; `infer` goes through
    `transcribe_file`, which keeps `run`'s error for it.
    """
    if isinstance(image, Image.Image):
        recognizer = load_recognizer(model_dir, device=device, dtype=dtype, impl=impl)
        page = image
    else:
        try:
            recognizer, page = _load(model_dir, Path(image), device, dtype, impl)
        except InputError as exc:
            raise BadArguments(f"cannot read image {image}: {exc}") from exc
    return recognizer.recognize(
        [page], prompt=prompt, max_new_tokens=max_new_tokens, repetition_guard=repetition_guard
    )[0]


def transcribe_file(
    model_dir: Path,
    image_path: Path,
    *,
    prompt: str | None = None,
    device: str = "auto",
    dtype: str | None = None,
    impl: str = "native",
    max_new_tokens: int = 2048,
    pdf_password: str | None = None,
) -> str:
    """`infer`: the first page of `image_path`, as `run` would transcribe it."""
    if not Path(image_path).is_file():
        raise BadArguments(f"image not found: {image_path}")
    recognizer, page = _load(model_dir, Path(image_path), device, dtype, impl, pdf_password)
    (recognition,) = recognizer.recognize(
        [page], prompt=prompt or DEFAULT_PROMPT, max_new_tokens=max_new_tokens
    )
    return recognition.text


def _load(
    model_dir: str | Path,
    path: Path,
    device: str,
    dtype: str | None,
    impl: str,
    pdf_password: str | None = None,
):
    """The file's first page as `run`'s page loaders read it, then the recognizer: a file that
    cannot be read is reported at once, not after the model has loaded."""
    max_pixels = page_pixel_budget(model_dir, impl)
    page = load_page(path, 0, IngestSettings(pdf_password=pdf_password), max_pixels=max_pixels)
    return load_recognizer(model_dir, device=device, dtype=dtype, impl=impl), page
