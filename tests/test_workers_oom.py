"""Out of memory while decoding a page: said so, retried, never called a corrupt file.

The first test is a real MemoryError: a valid 20000 x 20000 PNG decoded in a process whose
address space is capped (RLIMIT_AS). The run-level tests inject MemoryError in the real page
loader processes with the test-only ANANDASKY_TEST_FAULT hook (pipeline/child_process.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from pipeline.errors import ExitCode
from pipeline.faults import FAULT_VARIABLE

REPO = Path(__file__).resolve().parents[1]
SIDE = 20_000


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_huge_grey_png(path: Path) -> None:
    """A valid, all-black SIDE x SIDE 8-bit grey PNG: 400 MB of pixels in ~400 KB of file."""
    deflate = zlib.compressobj(9)
    row = bytes(SIDE + 1)  # filter byte 0, then the pixels
    idat = b"".join(deflate.compress(row) for _ in range(SIDE)) + deflate.flush()
    header = struct.pack(">IIBBBBB", SIDE, SIDE, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat)
    path.write_bytes(png + _chunk(b"IEND", b""))


_DECODE_WITH_LITTLE_MEMORY = """
import json, resource, sys
from pipeline.ingest.documents import IngestSettings
from pipeline.ingest.page_loading import load_page_image
settings = IngestSettings(max_image_pixels=10**9)
warm = load_page_image(sys.argv[2], 0, settings, None)  # every decoder module imported now
assert not hasattr(warm, "message"), warm
with open("/proc/self/status") as status:
    size_kb = next(int(l.split()[1]) for l in status if l.startswith("VmSize:"))
limit = (size_kb + 150 * 1024) * 1024  # 150 MB more than now: less than the page's 400 MB
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
result = load_page_image(sys.argv[1], 0, settings, None)
print(json.dumps({"message": getattr(result, "message", None),
                  "retry": getattr(result, "retry", None)}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and RLIMIT_AS")
def test_a_page_too_large_for_memory_is_a_retryable_memory_failure(tmp_path, testdata):
    huge = tmp_path / "huge.png"
    write_huge_grey_png(huge)
    small = testdata / "malformed" / "palette_trns.png"
    result = subprocess.run(
        [sys.executable, "-c", _DECODE_WITH_LITTLE_MEMORY, str(huge), str(small)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    failure = json.loads(result.stdout)
    assert failure["message"].startswith(f"not enough memory to decode {SIDE}x{SIDE} px")
    assert "corrupt" not in failure["message"]
    assert failure["retry"] is True


def _run(tmp_path: Path, testdata: Path, model: Path, fault: str, *extra: str):
    scans = tmp_path / "scans"
    scans.mkdir()
    os.symlink(testdata / "pages" / "vertical" / "jp_vert.jpg", scans / "jp_vert.jpg")
    out = tmp_path / "out"
    args = [sys.executable, "-m", "cli", "run", str(scans), "--out", str(out)]
    args += ["--model", str(model), "--device", "cpu", "--max-new-tokens", "4", "--quiet"]
    result = subprocess.run(
        [*args, *extra],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, FAULT_VARIABLE: fault},
    )
    with contextlib.closing(sqlite3.connect(out / ".anandasky" / "jobs.sqlite")) as db:
        page = db.execute("SELECT state, attempts, error FROM pages").fetchone()
    return result, page, (out / "run.log").read_text()


@pytest.mark.slow
def test_a_page_that_ran_out_of_memory_once_is_retried_and_done(tmp_path, testdata, tiny_model_dir):
    marker = tmp_path / "oom-once"
    result, page, log = _run(tmp_path, testdata, tiny_model_dir, f"decode:memory:{marker}")
    assert marker.exists()
    assert result.returncode == ExitCode.OK, result.stderr
    assert page[:2] == ("done", 1)  # one attempt counted for the failed decode
    assert "jp_vert.jpg page 1: not enough memory to decode" in log


@pytest.mark.slow
def test_a_page_always_out_of_memory_fails_after_its_attempts_not_as_corrupt(
    tmp_path, testdata, tiny_model_dir
):
    result, page, _ = _run(
        tmp_path, testdata, tiny_model_dir, "decode:memory", "--max-attempts", "2"
    )
    assert result.returncode == ExitCode.SOME_PAGES_FAILED, result.stderr
    state, attempts, error = page
    assert (state, attempts) == ("failed", 2)
    assert error.startswith("not enough memory to decode")
    assert "corrupt" not in error
