"""The stage-package reshape changed no output: a run with the code from before it and a run
with today's code give byte-identical files (processingDateTime aside).

The earlier code is the repository's own history (`git archive` of the last commit before the
reshape), run on this machine beside today's, so the comparison never depends on another
machine's floating point.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_run_end_to_end import RUN_OPTIONS, comparable, output_files

from pipeline.errors import ExitCode

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
BEFORE_RESHAPE = "171674dd7082d7341ca6edcb8f21963af35c5c55"


def _source_at(commit: str, target: Path) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    known = subprocess.run(
        ["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True
    )
    if known.returncode != 0:
        pytest.skip(f"this checkout's history lacks {commit[:12]} (a shallow clone?)")
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def _run(source: Path, inputs: Path, out: Path, model: Path, *extra: str) -> dict[str, bytes]:
    """`python -m cli run` with the `pipeline` package of `source` (first on sys.path)."""
    result = subprocess.run(
        [sys.executable, "-m", "cli", "run", str(inputs), "--out", str(out), "--model",
         str(model), *RUN_OPTIONS, "--workers", "2", "--quiet", *extra],
        capture_output=True, text=True, cwd=source, timeout=600,
    )  # fmt: skip
    assert result.returncode == ExitCode.OK, result.stderr
    return output_files(out)


def test_outputs_before_and_after_the_reshape_are_byte_identical(
    tmp_path, tiny_model_dir, testdata
):
    old_source = _source_at(BEFORE_RESHAPE, tmp_path / "before")
    assert (old_source / "pipeline" / "run.py").is_file()  # the flat layout it replaced
    inputs = tmp_path / "in"
    (inputs / "box").mkdir(parents=True)
    shutil.copy(testdata / "pages/pdf/olmocr_mattsnotes_3p.pdf", inputs / "box" / "notes.pdf")
    shutil.copy(testdata / "pages/vertical/jp_vert.jpg", inputs / "jp_vert.jpg")
    shutil.copy(testdata / "malformed/exif_orientation_6.jpg", inputs / "box" / "turned.jpg")
    shutil.copy(testdata / "malformed/multipage_3frames.tiff", inputs / "frames.tiff")

    before = _run(old_source, inputs, tmp_path / "out-before", tiny_model_dir)
    # without line detection (which came later and adds text-area coordinates)
    after = _run(REPO, inputs, tmp_path / "out-after", tiny_model_dir, "--detector", "none")
    assert len(after) == 2 * (3 + 1 + 1 + 3)
    assert comparable(after) == comparable(before)
