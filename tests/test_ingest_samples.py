"""The committed samples ingest as the pages samples/README.md promises, and regenerate exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.ingest.documents import IngestSettings, discover, load_page, probe_document

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
EXPECTED = {
    "declaration_notice.jpg": ("JPEG", 1),
    "deed_register_2p.tif": ("TIFF", 2),
    "gettysburg_3p.pdf": ("PDF", 3),
    "lunyu_vertical_zh.png": ("PNG", 1),
}


def test_committed_samples_ingest_with_their_page_counts() -> None:
    settings = IngestSettings(dpi=72)
    found = {}
    for source in discover([SAMPLES / "inputs"]):
        info = probe_document(source.path, settings)
        pages = [load_page(source.path, i, settings) for i in range(info.page_count)]
        assert all(page.mode == "RGB" and page.convert("L").getextrema()[0] < 64 for page in pages)
        found[source.relpath] = (info.format, info.page_count)
    assert found == EXPECTED


def test_samples_stay_small() -> None:
    total = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    assert total < 1_500_000


def test_make_samples_is_deterministic(tmp_path: Path) -> None:
    outputs = []
    for run in ("first", "second"):
        out = tmp_path / run
        subprocess.run(
            [sys.executable, str(SAMPLES / "make_samples.py"), "--out", str(out)],
            check=True,
            capture_output=True,
        )
        outputs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outputs[0] == outputs[1]
    assert set(outputs[0]) <= set(EXPECTED)
    if set(outputs[0]) != set(EXPECTED):
        pytest.skip("no CJK font here: the vertical Chinese page was skipped")
