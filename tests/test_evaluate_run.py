"""`evaluate` on a real run: the CLI runs the tiny model over real pages (one unreadable), the
job store gives every page's state, and the reports list failed and pending pages."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import unicodedata

import jsonschema
import pytest
from conftest import REPO, TESTDATA
from lxml import html

from pipeline.evaluate import evaluate, render_html
from pipeline.evaluate.normalize import graphemes
from pipeline.jobs.sqlite_store import JobStore
from pipeline.outputs.alto import alto_to_text

pytestmark = pytest.mark.slow


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=600, cwd=REPO
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir):
    """OUT of a real 3-document run, plus a document registered but never run (pending)."""
    root = tmp_path_factory.mktemp("evaluate-run")
    inputs, out, gt = root / "in", root / "out", root / "gt"
    (inputs / "hw").mkdir(parents=True)
    (inputs / "bad").mkdir()
    shutil.copy(TESTDATA / "pages/handwriting/170025120000003,0074.jpg", inputs / "hw")
    shutil.copy(TESTDATA / "pages/handwriting/btv1b84473026_f10.jpg", inputs / "hw")
    shutil.copy(TESTDATA / "malformed/zero_bytes.jpg", inputs / "bad")
    done = cli(
        *("run", str(inputs), "--out", str(out), "--model", str(tiny_model_dir)),
        *("--device", "cpu", "--workers", "1", "--max-new-tokens", "8"),
    )
    assert done.returncode == 1, done.stderr  # the zero-byte "image" fails, the rest is done
    # Fault injection: a run stopped before it reached a 2-page document leaves it registered
    # with both pages pending; the store's own registration call puts it in that state.
    with JobStore.open(out) as store:
        store.sync_document(
            relpath="later/scan.tif",
            path=str(inputs / "later/scan.tif"),
            sha256="0" * 64,
            size=1,
            mtime_ns=0,
            kind="image",
            format="TIFF",
            page_count=2,
        )
    (gt / "hw").mkdir(parents=True)
    shutil.copy(TESTDATA / "gt/170025120000003,0074.page.xml", gt / "hw")
    shutil.copy(TESTDATA / "gt/btv1b84473026_f10.alto.xml", gt)  # by file name alone
    (gt / "bad").mkdir()
    (gt / "bad/zero_bytes.txt").write_text("transcribed by hand\n")
    (gt / "later").mkdir()
    (gt / "later/scan_0002.txt").write_text("page two\n")
    return inputs, out, gt


def test_evaluate_a_run_lists_failed_and_pending_pages(run, tmp_path):
    _, out, gt = run
    json_file, html_file = tmp_path / "eval.json", tmp_path / "eval.html"
    result = cli(
        *("evaluate", str(out), "--gt", str(gt)),
        *("--json-file", str(json_file), "--html", str(html_file)),
    )
    assert result.returncode == 0, result.stderr
    assert "collection (micro-averaged)" in result.stdout
    report = json.loads(json_file.read_text(encoding="utf-8"))
    schema = json.loads((REPO / "schemas/evaluate.schema.json").read_text(encoding="utf-8"))
    jsonschema.validate(report, schema)
    pages = {(d["document"], p["page"]): p for d in report["documents"] for p in d["page_results"]}
    assert {k: p["status"] for k, p in pages.items()} == {
        ("bad/zero_bytes.jpg", 1): "failed",
        ("hw/170025120000003,0074.jpg", 1): "evaluated",
        ("hw/btv1b84473026_f10.jpg", 1): "evaluated",
        ("later/scan.tif", 1): "no_ground_truth",
        ("later/scan.tif", 2): "pending",
    }
    assert pages[("bad/zero_bytes.jpg", 1)]["reason"].startswith("document failed")
    assert report["collection"]["pages"] == {
        "evaluated": 2,
        "no_ground_truth": 1,
        "no_prediction": 0,
        "failed": 1,
        "pending": 1,
        "unreadable": 0,
    }
    # GT sizes as dinglehopper counts them (minus stripped trailing spaces, see its test)
    for key, chars in [
        (("hw/170025120000003,0074.jpg", 1), 2453),
        (("hw/btv1b84473026_f10.jpg", 1), 1818),
    ]:
        page = pages[key]
        edits = page["character_edits"]
        alto = out / "pages" / key[0] / "0001.alto.xml"
        assert page["pred_file"] == str(alto)
        predicted = graphemes(
            " ".join(unicodedata.normalize("NFC", alto_to_text(alto.read_bytes())).split())
        )
        assert page["characters"] == chars
        assert page["predicted_characters"] == len(predicted)
        assert chars - edits["deletions"] == len(predicted) - edits["insertions"]
    total = report["collection"]["character_edits"]["total"]
    assert report["cer"] == pytest.approx(total / (2453 + 1818))
    doc = html.parse(str(html_file)).getroot()
    thumbnails = [img.get("src") for img in doc.iter("img")]
    assert len(thumbnails) == 2 and all(s.startswith("data:image/jpeg;base64,") for s in thumbnails)
    assert "document failed" in doc.text_content()


def test_html_report_without_the_sources_has_no_thumbnails(run):
    inputs, out, gt = run
    moved = inputs.with_name("moved")
    inputs.rename(moved)
    try:
        page = html.document_fromstring(render_html(evaluate(gt, run=out, keep_texts=True)))
    finally:
        moved.rename(inputs)
    assert list(page.iter("img")) == [] and len(page.find_class("page")) == 4
