"""`evaluate` that compared no page says so in one line and exits non-zero (2 or 6).

Before, GT that matched a document but none of its pages (page numbers it lacks, an unreadable
GT file, pages failed or pending in the run) printed an empty table and exited 0, which a
script reads as a measurement.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import TESTDATA
from test_run_end_to_end import cli

from pipeline.errors import ExitCode


def evaluate(*args: str) -> subprocess.CompletedProcess:
    return cli("evaluate", *args)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one `anandasky-batch: error:` line on stderr; nothing else there, no traceback."""
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("anandasky-batch: error: nothing evaluated: "), lines[0]
    return lines[0]


@pytest.fixture
def pred(tmp_path: Path) -> Path:
    """Predictions for a 2-page document, laid out as OUT/pages is."""
    folder = tmp_path / "pred"
    (folder / "box/letter.pdf").mkdir(parents=True)
    (folder / "box/letter.pdf/0001.txt").write_text("Lieber Freund\n", encoding="utf-8")
    (folder / "box/letter.pdf/0002.txt").write_text("Dein Karl\n", encoding="utf-8")
    return folder


def test_gt_only_for_pages_the_document_lacks_evaluates_nothing_and_exits_6(
    tmp_path: Path, pred: Path
) -> None:
    gt = tmp_path / "gt"
    (gt / "box").mkdir(parents=True)
    (gt / "box/letter_0005.txt").write_text("page five\n", encoding="utf-8")
    result = evaluate("--pred", str(pred), "--gt", str(gt))
    assert result.returncode == ExitCode.NOTHING_TO_DO == 6
    line = error_line(result)
    assert "ground truth matched 1 document(s)" in line
    assert "none of the 1 page(s) with GT could be compared (1 no_prediction)" in line
    assert "check the page numbers in the GT names" in line
    # The table still comes first and lists the page, with its status.
    assert "box/letter.pdf page 5: no_prediction" in result.stdout


def test_every_gt_page_unreadable_evaluates_nothing_and_the_json_report_still_says_why(
    tmp_path: Path, pred: Path
) -> None:
    gt = tmp_path / "gt"
    (gt / "box/letter.pdf").mkdir(parents=True)
    (gt / "box/letter.pdf/0001.txt").write_bytes("Lieber Jürgen\n".encode("latin-1"))
    (gt / "box/letter.pdf/0002.txt").write_bytes("Dein Karl und Grüße\n".encode("latin-1"))
    report = tmp_path / "report.json"
    result = evaluate("--pred", str(pred), "--gt", str(gt), "--json", "--json-file", str(report))
    assert result.returncode == ExitCode.NOTHING_TO_DO
    line = error_line(result)
    assert "none of the 2 page(s) with GT could be compared (2 unreadable)" in line
    assert "fix or re-export the files the report names" in line
    printed = json.loads(result.stdout)  # stdout stays pure JSON
    assert printed == json.loads(report.read_text(encoding="utf-8"))
    assert printed["collection"]["pages"]["evaluated"] == 0
    assert printed["collection"]["pages"]["unreadable"] == 2


def test_one_page_compared_is_enough_for_exit_0(tmp_path: Path, pred: Path) -> None:
    gt = tmp_path / "gt"
    (gt / "box").mkdir(parents=True)
    (gt / "box/letter_0001.txt").write_text("Lieber Freund\n", encoding="utf-8")
    (gt / "box/letter_0005.txt").write_text("page five\n", encoding="utf-8")
    result = evaluate("--pred", str(pred), "--gt", str(gt))
    assert result.returncode == ExitCode.OK, result.stderr
    assert result.stderr == ""


def test_gt_matching_no_document_names_both_folders_an_example_and_the_rule(
    tmp_path: Path, pred: Path
) -> None:
    gt = tmp_path / "gt"
    gt.mkdir()
    (gt / "brief_0001.txt").write_text("Lieber Freund\n", encoding="utf-8")
    result = evaluate("--pred", str(pred), "--gt", str(gt))
    assert result.returncode == ExitCode.BAD_ARGUMENTS == 2
    line = error_line(result)
    assert f"no ground-truth file in {gt} matches a document of {pred}" in line
    assert "e.g. GT brief_0001.txt vs document box/letter.pdf" in line
    assert "box1/letter_0003.txt for document box1/letter.pdf" in line and "--map FILE" in line
    assert result.stdout == ""


@pytest.mark.slow
def test_evaluate_of_a_run_whose_only_gt_document_failed_exits_6(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """A real run: its one document is a zero-byte file, so the GT has nothing to meet."""
    inputs, out, gt = tmp_path / "in", tmp_path / "out", tmp_path / "gt"
    inputs.mkdir()
    (inputs / "scan.jpg").write_bytes((TESTDATA / "malformed/zero_bytes.jpg").read_bytes())
    run = cli(
        "run", str(inputs), "--out", str(out), "--model", str(tiny_model_dir),
        "--device", "cpu", "--workers", "1", "--quiet",
    )  # fmt: skip
    assert run.returncode == ExitCode.SOME_PAGES_FAILED, run.stderr
    gt.mkdir()
    (gt / "scan.txt").write_text("transcribed by hand\n", encoding="utf-8")
    result = evaluate(str(out), "--gt", str(gt))
    assert result.returncode == ExitCode.NOTHING_TO_DO, result.stderr
    line = error_line(result)
    assert "(1 failed): the run failed on them (anandasky-batch status OUT says why)" in line
    assert "scan.jpg page 1: failed (document failed" in result.stdout
