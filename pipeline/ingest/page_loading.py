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
from pipeline.ingest.images import shrink_to
from pipeline.ingest.source_changes import Registered, SourceChanged, source_changed
from pipeline.layout.detector import DetectorSettings
from pipeline.layout.geometry import PAGE_SIZE_KEY, PageLayout


@dataclass(frozen=True)
class LayoutRequest:
    """What a loader does after loading: detect lines (`settings`, `reading_order`) and, for
    `--layout lines`, cut one crop per line for the model."""

    settings: DetectorSettings
    reading_order: str = "auto"
    crops: bool = False


@dataclass(frozen=True)
class LoadedImage:
    """A loaded page. `image` is the copy for the model (its info holds the full page size);
    `layout` its detected lines in full-page pixels (None: no detection asked, or it failed,
    `layout_error` says why); `crops` the lines' images in reading order (`--layout lines`),
    each within the model's pixel budget."""

    image: Image.Image
    load_s: float
    layout: PageLayout | None = None
    crops: tuple[Image.Image, ...] | None = None
    detect_s: float = 0.0
    layout_error: str | None = None


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
    layout: LayoutRequest | None = None,
) -> LoadedImage | LoadFailure | SourceChanged:
    """One page, or why not; SourceChanged when the file no longer holds what was registered
    (checked before loading, and after: a file overwritten while it was read may even fail).
    With `layout`, its lines are detected too (and cut out, for `--layout lines`)."""
    if changed := source_changed(Path(path), registered):
        return changed
    result = _load(path, page_index, settings, max_pixels, layout)
    if isinstance(result, LoadedImage) and layout is not None:
        result = with_layout(result, layout, max_pixels)
    return source_changed(Path(path), registered) or result


def with_layout(loaded: LoadedImage, request: LayoutRequest, max_pixels: int | None) -> LoadedImage:
    """Detect the page's lines; a detector failure is not the page's: it is recognised without
    line positions and the reason travels with it. For crops, `loaded.image` is the full page."""
    from pipeline.layout import crop_lines, detect_layout

    started = time.perf_counter()
    image, crops, error = loaded.image, None, None
    try:
        found = detect_layout(image, request.settings, request.reading_order, threads=1)
    except MemoryError:
        found, error = None, "not enough memory to detect lines"
    except Exception as exc:  # onnxruntime/OpenCV failure on this page
        found, error = None, f"line detection failed ({type(exc).__name__}: {exc})"
    if found is not None and request.crops:
        crops = tuple(shrink_to(crop, max_pixels) for crop in crop_lines(image, found))
    if request.crops:  # the page copy the writer sees: as page mode would have loaded it
        image = shrink_to(image, max_pixels)
        image.info[PAGE_SIZE_KEY] = loaded.image.info.get(PAGE_SIZE_KEY, loaded.image.size)
    detect_s = time.perf_counter() - started
    return LoadedImage(image, loaded.load_s, found, crops, detect_s, error)


def _load(
    path: str,
    page_index: int,
    settings: IngestSettings,
    max_pixels: int | None,
    layout: LayoutRequest | None = None,
) -> LoadedImage | LoadFailure:
    started = time.perf_counter()
    # Line crops are cut from the page in its own pixels (the PDF at --dpi), each crop then
    # shrunk to the model's budget on its own.
    if layout is not None and layout.crops:
        max_pixels = None
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
