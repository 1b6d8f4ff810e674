"""Page loading in CPU processes, apart from and ahead of the device workers.

Rasterising a 300 DPI PDF page or decoding a large TIFF takes longer than a model step on a
fast device, so loading runs in its own process pool and keeps a bounded number of pages ready.
Everything here is picklable; errors come back as values, not exceptions, so one bad page
never breaks the pool.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from pipeline.errors import InputError
from pipeline.ingest.documents import DocumentInfo, IngestSettings, load_page, probe_document
from pipeline.ingest.source_changes import Registered, SourceChanged, source_changed


@dataclass(frozen=True)
class LoadedImage:
    image: Image.Image
    load_s: float


@dataclass(frozen=True)
class LoadFailure:
    """A page or document that cannot be read: `message` is the one-line reason.

    `retry`: the failure is not the file's (out of memory while decoding): the page counts an
    attempt and is tried again, instead of failing for good.
    """

    message: str
    retry: bool = False


def _memory_failure(exc: MemoryError) -> LoadFailure:
    message = str(exc)
    if not message.startswith("not enough memory"):
        message = "not enough memory to decode this page"
    return LoadFailure(f"{message}; other pages or processes need less memory later", retry=True)


def load_page_image(
    path: str,
    page_index: int,
    settings: IngestSettings,
    max_pixels: int | None,
    registered: Registered | None = None,
) -> LoadedImage | LoadFailure | SourceChanged:
    """One page, or why not; SourceChanged when the file no longer holds what was registered
    (checked before loading, and after: a file overwritten while it was read may even fail)."""
    if changed := source_changed(Path(path), registered):
        return changed
    result = _load(path, page_index, settings, max_pixels)
    return source_changed(Path(path), registered) or result


def _load(
    path: str, page_index: int, settings: IngestSettings, max_pixels: int | None
) -> LoadedImage | LoadFailure:
    started = time.perf_counter()
    try:
        image = load_page(Path(path), page_index, settings, max_pixels=max_pixels)
        image.load()
    except InputError as exc:
        return LoadFailure(str(exc))
    except MemoryError as exc:
        return _memory_failure(exc)
    except Exception as exc:  # a decoder bug on hostile input is still just a bad page
        return LoadFailure(f"unreadable page ({type(exc).__name__}: {exc})")
    return LoadedImage(image, time.perf_counter() - started)


def probe(path: str, settings: IngestSettings) -> DocumentInfo | LoadFailure:
    try:
        return probe_document(Path(path), settings)
    except InputError as exc:
        return LoadFailure(str(exc))
    except Exception as exc:
        return LoadFailure(f"unreadable document ({type(exc).__name__}: {exc})")
