"""One single-image path: `infer` gives the text `run` writes for the same page and settings.

Both go through the real CLI with the tiny checkpoint on a large scanned JPEG, which has to be
shrunk before the model sees it, so a difference in reading, orienting or shrinking the page
shows up as different text.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_valid_alto
from lxml import etree
from PIL import Image

from pipeline.outputs.alto import normalize_text, page_confidence
from pipeline.recognition import load_recognizer
from pipeline.runner.single_image import transcribe

pytestmark = pytest.mark.slow

PAGE = Path(__file__).resolve().parent / "data" / "pages" / "handwriting" / "btv1b84473026_f10.jpg"
SETTINGS = ["--device", "cpu", "--max-new-tokens", "24", "--impl", "native"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        encoding="utf-8",
        timeout=600,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )


@pytest.fixture(scope="module")
def run_output(tiny_model_dir: Path, tmp_path_factory) -> tuple[str, str]:
    """The TXT `run` writes for the page, and its ALTO page confidence (from the log-probs)."""
    work = tmp_path_factory.mktemp("single")
    (work / "in").mkdir()
    shutil.copy(PAGE, work / "in" / PAGE.name)
    done = cli(
        "run",
        str(work / "in"),
        "--out",
        str(work / "out"),
        "--model",
        str(tiny_model_dir),
        *SETTINGS,
    )
    assert done.returncode == 0, done.stderr
    written = work / "out" / "pages" / PAGE.name
    text = (written / "0001.txt").read_text(encoding="utf-8")
    assert text.strip(), "the tiny model wrote nothing: the comparison would prove nothing"
    alto = written / "0001.alto.xml"
    assert_valid_alto(alto)
    page = etree.parse(str(alto)).find(".//{*}Page")
    return text, page.get("PC")


def test_infer_prints_the_text_run_writes_for_the_same_page(tiny_model_dir, run_output) -> None:
    done = cli("infer", "--model", str(tiny_model_dir), "--image", str(PAGE), *SETTINGS)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.removesuffix("\n")
    assert normalize_text(printed) + "\n" == run_output[0]


def test_transcribe_reads_a_file_as_run_does(tiny_model_dir, run_output) -> None:
    """Text and confidence alike: the tiny model's text barely depends on the pixels, its
    log-probabilities do (the page unshrunk, as `transcribe` used to read it, scores apart)."""
    text, confidence = run_output
    rec = transcribe(PAGE, tiny_model_dir, device="cpu", max_new_tokens=24)
    assert normalize_text(rec.text) + "\n" == text
    assert str(page_confidence(rec)) == confidence
    recognizer = load_recognizer(tiny_model_dir, "cpu")
    with Image.open(PAGE) as opened:
        (unshrunk,) = recognizer.recognize([opened.convert("RGB")], max_new_tokens=24)
    assert str(page_confidence(unshrunk)) != confidence
