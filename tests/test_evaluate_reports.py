"""Matching GT to documents and pages, the statuses of pages not evaluated, the JSON keys (by
schema), the HTML report, and the command's exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from conftest import REPO, TESTDATA
from lxml import html

from pipeline.errors import BadArguments
from pipeline.evaluate import evaluate, render_html, render_table, to_dict
from pipeline.evaluate.matching import Match, Matcher, could_match, read_mapping

SCHEMA = json.loads((REPO / "schemas" / "evaluate.schema.json").read_text(encoding="utf-8"))


def validate(report: dict) -> None:
    jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker()).validate(
        report
    )


DOCS = ["box1/letter.pdf", "box2/letter.pdf", "scans/a.tif", "x/170025120000003,0074.jpg"]


@pytest.mark.parametrize(
    ("gt", "expected"),
    [
        ("box1/letter.page.xml", Match("box1/letter.pdf", None)),
        ("box1/letter.pdf.txt", Match("box1/letter.pdf", None)),
        ("box1/letter.pdf/0003.txt", Match("box1/letter.pdf", 3)),
        ("box1/letter/0003.alto.xml", Match("box1/letter.pdf", 3)),
        ("box1/letter_0003.xml", Match("box1/letter.pdf", 3)),
        ("box2/letter-p3.gt.txt", Match("box2/letter.pdf", 3)),
        ("a_0002.txt", Match("scans/a.tif", 2)),  # file name alone: one document has it
        ("170025120000003,0074.page.xml", Match("x/170025120000003,0074.jpg", None)),
        ("letter.xml", None),  # two documents are called letter: ambiguous, not guessed
        ("a_0000.txt", None),
        ("nothing.txt", None),
    ],
)
def test_gt_names_match_documents_and_pages(gt, expected):
    assert Matcher(DOCS).match(gt) == expected
    # the pre-filter that lets a huge run keep page states only where GT may match
    keep = could_match([gt], {})
    assert expected is None or keep(expected.document)
    assert not keep("elsewhere/other.pdf")


def test_mapping_file_overrides_names_and_rejects_bad_rows(tmp_path):
    good = tmp_path / "map.csv"
    good.write_text(
        "gt,document,page\n# a comment\nfoo.xml,box2/letter.pdf,4\nbar.txt,scans/a.tif,\n"
    )
    mapping = read_mapping(good)
    matcher = Matcher(DOCS, mapping)
    assert matcher.match("foo.xml") == Match("box2/letter.pdf", 4)
    assert matcher.match("bar.txt") == Match("scans/a.tif", None)
    bad = tmp_path / "bad.csv"
    bad.write_text("gt,document,page\nfoo.xml,box2/letter.pdf,zero\n")
    with pytest.raises(BadArguments, match="row 2"):
        read_mapping(bad)
    with pytest.raises(BadArguments, match="header"):
        read_mapping(_write(tmp_path / "headerless.csv", "foo.xml,box2/letter.pdf,4\n"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def folders(tmp_path) -> tuple[Path, Path]:
    """PRED in the OUT/pages layout (a 2-page document, a whole-file one, an unreadable page);
    GT named by the conventions, one page beyond the document, one file matching nothing."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    (pred / "box/doc.pdf").mkdir(parents=True)
    (pred / "box/doc.pdf/0001.txt").write_text("Das erste Blatt\n")
    (pred / "box/doc.pdf/0002.txt").write_text("Das zweite Blat\n")
    (pred / "box/doc.pdf/0002.alto.xml").write_bytes(b"<alto><broken")  # preferred, unreadable
    (pred / "single.txt").write_text("Eine Seite\n")
    (pred / "nogt.txt").write_text("ohne Grundwahrheit\n")
    (gt / "box").mkdir(parents=True)
    (gt / "box/doc_0001.gt.txt").write_text("Das erste Blatt\n")
    (gt / "box/doc_0002.gt.txt").write_text("Das zweite Blatt\n")
    (gt / "box/doc_0003.gt.txt").write_text("Das dritte Blatt\n")
    (gt / "single.gt.txt").write_text("Eine Seite!\n")
    (gt / "stray.txt").write_text("zu nichts\n")
    return pred, gt


def test_pages_not_evaluated_are_listed_with_their_status(folders):
    pred, gt = folders
    ev = evaluate(gt, pred=pred, keep_texts=True)
    statuses = {(p.document, p.page): p.status for d in ev.documents for p in d.pages}
    assert statuses == {
        ("box/doc.pdf", 1): "evaluated",
        ("box/doc.pdf", 2): "unreadable",
        ("box/doc.pdf", 3): "no_prediction",
        ("single", 1): "evaluated",
    }
    assert ev.without_gt == [("nogt", None)]
    assert [f for f, _ in ev.unmatched_gt] == ["stray.txt"]
    assert (ev.totals.chars, ev.totals.char_edits.total) == (15 + 11, 1)
    table = render_table(ev)
    assert "1 no_prediction, 1 unreadable" in table and "stray.txt" in table


def test_json_report_has_the_documented_keys_and_fractions(folders):
    pred, gt = folders
    report = json.loads(json.dumps(to_dict(evaluate(gt, pred=pred))))
    validate(report)
    assert list(report)[:3] == ["schema_version", "cer", "wer"]
    assert report["cer"] == pytest.approx(1 / 26)
    assert report["collection"]["pages"]["unreadable"] == 1
    assert report["confusions"] == [{"gt": "!", "pred": "", "count": 1}]
    page = report["documents"][0]["page_results"][1]
    assert page["status"] == "unreadable" and "0002.alto.xml" in page["reason"]
    # a key the schema does not know fails validation: the schema pins the keys
    report["collection"]["extra"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate(report)


def test_html_report_shows_each_page_side_by_side_with_marked_edits(folders):
    pred, gt = folders
    doc = html.document_fromstring(render_html(evaluate(gt, pred=pred, keep_texts=True)))
    assert doc.findtext(".//title") == "anandasky-batch evaluation"
    pages = doc.find_class("page")
    assert len(pages) == 4  # every page with GT, evaluated or not
    single = next(p for p in pages if p.get("id") == "single-1")
    gt_side, pred_side = single.find_class("text")
    assert [e.text for e in gt_side.find_class("del")] == ["!"]
    assert pred_side.find_class("ins") == [] and "Eine Seite" in pred_side.text_content()
    (confusions,) = doc.find_class("confusions")
    assert [td.text_content() for td in confusions.iter("td")] == ["!", "∅", "1"]
    assert "not evaluated: 1 no_prediction, 1 unreadable" in doc.text_content()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", "evaluate", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_cli_exit_codes_and_json_on_stdout(folders, tmp_path):
    pred, gt = folders
    ok = cli("--pred", str(pred), "--gt", str(gt), "--json", "--html", str(tmp_path / "r.html"))
    assert ok.returncode == 0, ok.stderr
    validate(json.loads(ok.stdout))
    assert (tmp_path / "r.html").stat().st_size > 0
    for args, message in [
        (["--pred", str(pred), "--gt", str(tmp_path / "missing")], "does not exist"),
        (["--pred", str(pred)], "Missing option '--gt'"),
        (["--gt", str(gt)], "give a run's output folder OUT, or --pred PRED"),
        ([str(tmp_path), "--gt", str(gt)], "not the output folder of a run"),
        (["--pred", str(TESTDATA / "alto"), "--gt", str(gt)], "matches a document"),
        (["--pred", str(pred), "--gt", str(gt), "--iou", "1.5"], "--iou"),
    ]:
        bad = cli(*args)
        assert bad.returncode == 2, (args, bad.stderr)
        assert message in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_benchmark_script_runs_quick(tmp_path):
    """bench/evaluate.py still runs (`--quick`: 200 pages); not timed, the figures are in
    BENCHMARKS.md."""
    done = subprocess.run(
        [sys.executable, "bench/evaluate.py", "--quick", "--results-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "evaluate.json").read_text())
    assert {r["what"] for r in results["results"]} >= {
        "evaluate() text, 1 process",
        "counting only",
    }
    assert all(r["pages"] == 200 for r in results["results"])


def test_worker_processes_give_the_same_report(folders):
    """Counting spread over 2 spawned processes (forced; by default only from 2,000 GT pages)
    gives exactly the serial figures, pages in the same order."""
    pred, gt = folders
    serial, parallel = (to_dict(evaluate(gt, pred=pred, workers=n)) for n in (1, 2))
    for report in (serial, parallel):
        del report["created"], report["seconds"]
    assert parallel == serial
