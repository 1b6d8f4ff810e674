"""Inputs that used to be misreported: special files, TIFFs damaged after page 1, PNG text."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from pipeline.errors import DocumentError
from pipeline.ingest.documents import IngestSettings, probe_document

SETTINGS = IngestSettings(dpi=36)


def _three_page_tiff() -> bytes:
    pages = [Image.new("L", (200, 100), shade) for shade in (50, 100, 150)]
    buffer = io.BytesIO()
    pages[0].save(buffer, "TIFF", save_all=True, append_images=pages[1:])
    return buffer.getvalue()


def test_tiff_cut_after_its_first_page_says_it_is_truncated_after_it(tmp_path: Path) -> None:
    data = _three_page_tiff()
    path = tmp_path / "cut.tif"
    path.write_bytes(data[: len(data) // 3 + 300])  # page 1 and its header intact, the rest gone
    with pytest.raises(DocumentError) as caught:
        probe_document(path, SETTINGS)
    assert caught.value.reason == "truncated image"
    assert "after its first page" in caught.value.detail
    assert "copy it again" in caught.value.detail
