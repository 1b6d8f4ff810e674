"""One single-image path: `infer` gives the text `run` writes for the same page and settings.

`run` and `infer` go through the real CLI with the tiny checkpoint (native, and the same numbers
as upstream-shaped remote code) on a large scanned JPEG, which the native model needs shrunk;
a difference in reading, orienting or shrinking the page shows up in the text or, since the
tiny model's text barely depends on the pixels, in the confidence `transcribe` computes.
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
from remote_fixture import build_remote_checkpoint

from pipeline.ingest.documents import IngestSettings, load_page
from pipeline.outputs.alto import normalize_text, page_confidence
from pipeline.recognition import load_recognizer
from pipeline.runner.single_image import transcribe

pytestmark = pytest.mark.slow

PAGE = Path(__file__).resolve().parent / "data" / "pages" / "handwriting" / "btv1b84473026_f10.jpg"
SETTINGS = ["--device", "cpu", "--max-new-tokens", "24"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        encoding="utf-8",
        timeout=600,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )


def run_page(model_dir: Path, impl: str, work: Path) -> tuple[str, str]:
    """The TXT `run` writes for the page, and its ALTO page confidence (from the log-probs)."""
    (work / "in").mkdir(parents=True)
    shutil.copy(PAGE, work / "in" / PAGE.name)
    out = work / "out"
    done = cli(
        "run",
        str(work / "in"),
        "--out",
        str(out),
        "--model",
        str(model_dir),
        *SETTINGS,
        "--impl",
        impl,
    )
    assert done.returncode == 0, done.stderr
    written = out / "pages" / PAGE.name
    text = (written / "0001.txt").read_text(encoding="utf-8")
    assert text.strip(), "the tiny model wrote nothing: the comparison would prove nothing"
    alto = written / "0001.alto.xml"
    assert_valid_alto(alto)
    page = etree.parse(str(alto)).find(".//{*}Page")
    return text, page.get("PC")


@pytest.fixture(scope="module", params=["native", "remote"])
def case(request, tiny_model_dir: Path, tmp_path_factory) -> tuple[str, Path, str, str]:
    """(impl, weights folder, the TXT `run` wrote, its ALTO page confidence)."""
    impl = request.param
    work = tmp_path_factory.mktemp(f"single_{impl}")
    model = tiny_model_dir
    if impl == "remote":  # the remote-code model resizes pages itself: they go as rendered
        model = build_remote_checkpoint(tiny_model_dir, work / "remote_single")
    return (impl, model, *run_page(model, impl, work / "run"))


def test_infer_prints_the_text_run_writes_for_the_same_page(case) -> None:
    impl, model, text, _ = case
    done = cli("infer", "--model", str(model), "--image", str(PAGE), *SETTINGS, "--impl", impl)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.removesuffix("\n")
    assert normalize_text(printed) + "\n" == text


def test_transcribe_reads_a_file_as_run_does(case) -> None:
    """Text and confidence alike: the tiny model's text barely depends on the pixels, its
    log-probabilities do. The page read as the single-image path used to read it (native:
    unshrunk; remote: shrunk to the processor's budget) scores apart, so this can fail."""
    impl, model, text, confidence = case
    rec = transcribe(PAGE, model, device="cpu", impl=impl, max_new_tokens=24)
    assert normalize_text(rec.text) + "\n" == text
    assert str(page_confidence(rec)) == confidence
    recognizer = load_recognizer(model, "cpu", impl=impl)
    old_budget = None if impl == "native" else recognizer.max_image_pixels
    page = load_page(PAGE, 0, IngestSettings(), max_pixels=old_budget)
    (read_otherwise,) = recognizer.recognize([page], max_new_tokens=24)
    assert str(page_confidence(read_otherwise)) != confidence
