"""The commands beside `run` as a user hits them: every failure one line naming what is wrong and
what to do, a documented exit code, never a traceback (found by exploratory testing).

Read-only media and a full disk are real file systems: a small tmpfs mounted for the test, which
needs root (CI runs as root; elsewhere those tests skip and say why).
"""

from __future__ import annotations

import codecs
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import export_fixture
import pytest
from conftest import assert_valid_xml, mounted_tmpfs, needs_root
from test_run_end_to_end import cli

from pipeline.errors import ExitCode
from pipeline.evaluate.readers import read_pages

# The OUT folder's fixtures (export_fixture.py): a real job store and real page outputs.
run, out = export_fixture.run, export_fixture.out


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB file system, unmounted afterwards."""
    with mounted_tmpfs(tmp_path / "disk", "1m") as mount:
        yield mount


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The single `anandasky-batch: error:` line; no traceback anywhere."""
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("anandasky-batch:")]
    assert len(lines) == 1, result.stderr
    assert "internal error" not in lines[0], lines[0]
    return lines[0]


# ---- export: a delivery folder that cannot be written ------------------------------------------


def test_export_to_a_folder_under_a_file_exits_5_naming_it(out, tmp_path):
    (tmp_path / "file").write_text("x")
    to = tmp_path / "file" / "delivery"
    result = cli("export", str(out), "--to", str(to))
    assert result.returncode == ExitCode.OUTPUT_ACCESS == 5, result.stderr
    line = one_error_line(result)
    assert str(to) in line and "--to" in line


@needs_root
def test_export_to_read_only_media_exits_5_naming_the_folder(out, small_disk):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    for to in (small_disk / "delivery", small_disk):  # to be created there; the mount itself
        result = cli("export", str(out), "--to", str(to))
        assert result.returncode == ExitCode.OUTPUT_ACCESS, result.stderr
        line = one_error_line(result)
        assert str(to) in line and "read-only" in line.lower()


@needs_root
def test_export_onto_a_full_disk_exits_5_and_finishes_once_there_is_space(out, small_disk):
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (1024 * 1024 - 16 * 1024))  # leaves less than the delivery needs
    to = small_disk / "delivery"
    result = cli("export", str(out), "--to", str(to), "--format", "txt,alto,mets,page,hocr")
    assert result.returncode == ExitCode.OUTPUT_ACCESS, result.stderr
    assert "full" in one_error_line(result).lower() or "space" in one_error_line(result).lower()
    filler.unlink()
    again = cli("export", str(out), "--to", str(to), "--format", "txt,alto,mets,page,hocr")
    assert again.returncode == ExitCode.SOME_PAGES_FAILED, again.stderr  # the fixture has some
    for mets in to.rglob("mets.xml"):
        assert_valid_xml(mets, "mets.xsd")
    assert list(to.rglob("alto/*.xml"))


# ---- verify: arguments checked before the two model loads --------------------------------------


def verify(model: Path, images: Path, report: Path) -> subprocess.CompletedProcess:
    """`verify` on the CPU with one image (or folder) and a report path."""
    args = ("--model", str(model), "--device", "cpu", "--images", str(images), "--out", str(report))
    return cli("verify", *args)


@pytest.mark.parametrize("given", ["folder", "missing"])
def test_verify_refuses_a_bad_image_before_loading_any_model(tiny_model_dir, tmp_path, given):
    image = tmp_path if given == "folder" else tmp_path / "nope.jpg"
    result = verify(tiny_model_dir, image, tmp_path / "r.json")
    assert result.returncode == ExitCode.BAD_ARGUMENTS, result.stderr
    expected = f"--images {image} is a folder" if given == "folder" else f"image not found: {image}"
    assert expected in one_error_line(result)
    assert "loading" not in result.stderr  # said at once, not after minutes of loading


def test_verify_report_that_cannot_be_written_is_refused_before_the_check(
    tiny_model_dir, tmp_path, testdata
):
    (tmp_path / "file").write_text("x")
    report = tmp_path / "file" / "r.json"
    result = verify(tiny_model_dir, testdata / "pages/handwriting/btv1b84473026_f10.jpg", report)
    assert result.returncode == ExitCode.BAD_ARGUMENTS, result.stderr
    assert f"--out {report}" in one_error_line(result)
    assert "loading" not in result.stderr


# ---- infer ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens", ["0", "-3"])
def test_infer_refuses_max_new_tokens_below_one(tiny_model_dir, testdata, tokens):
    image = testdata / "pages/handwriting/btv1b84473026_f10.jpg"
    result = cli(
        "infer",
        "--model",
        str(tiny_model_dir),
        "--device",
        "cpu",
        "--image",
        str(image),
        "--max-new-tokens",
        tokens,
    )
    assert result.returncode == ExitCode.BAD_ARGUMENTS, result.stdout
    assert "--max-new-tokens must be at least 1" in one_error_line(result)


def test_infer_on_a_folder_says_it_is_a_folder(tiny_model_dir, testdata):
    folder = testdata / "pages/handwriting"
    result = cli("infer", "--model", str(tiny_model_dir), "--device", "cpu", "--image", str(folder))
    assert result.returncode == ExitCode.BAD_ARGUMENTS
    assert f"--image {folder} is a folder" in one_error_line(result)


@pytest.mark.parametrize(
    ("name", "reason"), [("truncated_jpeg.jpg", "truncated image"), ("zero_bytes.jpg", "empty")]
)
def test_infer_on_a_broken_image_names_the_file(tiny_model_dir, testdata, name, reason):
    image = testdata / "malformed" / name
    result = cli("infer", "--model", str(tiny_model_dir), "--device", "cpu", "--image", str(image))
    assert result.returncode == ExitCode.BAD_ARGUMENTS
    line = one_error_line(result)
    assert str(image) in line and reason in line


# ---- evaluate: ground truth as Windows tools save it -------------------------------------------

REAL_ALTO = "gt/btv1b84473026_f10.alto.xml"  # real ALTO v4 ground truth, UTF-8 without a mark


def _cer(gt: Path, pred: Path) -> float | None:
    result = cli("evaluate", "--pred", str(pred), "--gt", str(gt), "--json")
    assert result.returncode == ExitCode.OK, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)["cer"]


@pytest.mark.parametrize(
    "encode",
    [
        lambda text: codecs.BOM_UTF8 + text.encode("utf-8"),  # Notepad's "UTF-8 with BOM"
        lambda text: text.encode("utf-16"),  # Notepad's "Unicode": UTF-16LE with a mark
        lambda text: codecs.BOM_UTF16_BE + text.encode("utf-16-be"),
    ],
    ids=["utf8-bom", "utf16le-bom", "utf16be-bom"],
)
def test_evaluate_reads_gt_saved_with_a_byte_order_mark(tmp_path, testdata, encode):
    alto = (testdata / REAL_ALTO).read_text("utf-8")
    pred = tmp_path / "page.pred.alto.xml"
    pred.write_text(alto, "utf-8")
    gt_alto = tmp_path / "page.alto.xml"
    gt_alto.write_bytes(encode(alto))  # the XML declaration says UTF-8: lxml trusts the mark
    assert _cer(gt_alto, pred) == 0.0  # before: the markup itself was read as the GT's text
    lines = "\n".join(line.text for _, page in read_pages(pred) for line in page.lines)
    gt_text = tmp_path / "page.gt.txt"
    gt_text.write_bytes(encode(lines + "\n"))
    assert _cer(gt_text, pred) == 0.0


def test_evaluate_says_how_to_convert_latin1_gt(tmp_path, testdata):
    pred = tmp_path / "page.pred.txt"
    pred.write_text("Grüße aus Köln\n", "utf-8")
    gt = tmp_path / "page.gt.txt"
    gt.write_bytes("Grüße aus Köln\n".encode("latin-1"))
    result = cli("evaluate", "--pred", str(pred), "--gt", str(gt))
    assert "Traceback" not in result.stderr + result.stdout
    assert "not UTF-8 text" in result.stdout and "save it as UTF-8" in result.stdout


def test_evaluate_without_out_or_pred_says_what_is_missing(testdata):
    result = cli("evaluate", "--gt", str(testdata / REAL_ALTO))
    assert result.returncode == ExitCode.BAD_ARGUMENTS
    line = one_error_line(result)
    assert "give a run's output folder OUT, or --pred PRED" in line and "not both" not in line


# ---- make-test-model -------------------------------------------------------------------------


def test_make_test_model_never_writes_over_another_folders_files(tmp_path):
    weights = tmp_path / "real-weights"
    weights.mkdir()
    (weights / "model.safetensors").write_bytes(b"the real weights")
    result = cli("make-test-model", str(weights))
    assert result.returncode == ExitCode.BAD_ARGUMENTS
    assert f"{weights} is not empty and holds no test checkpoint" in one_error_line(result)
    assert (weights / "model.safetensors").read_bytes() == b"the real weights"
    assert sorted(p.name for p in weights.iterdir()) == ["model.safetensors"]


def test_make_test_model_rewrites_its_own_checkpoint(tmp_path):
    folder = tmp_path / "tiny"
    assert cli("make-test-model", str(folder)).returncode == ExitCode.OK
    again = cli("make-test-model", str(folder))
    assert again.returncode == ExitCode.OK, again.stderr
    assert again.stdout.strip() == str(folder)


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_make_test_model_into_a_file_exits_5_naming_it(tmp_path, where):
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" if where == "file" else tmp_path / "file" / "tiny"
    result = cli("make-test-model", str(target))
    assert result.returncode == ExitCode.OUTPUT_ACCESS
    assert str(target) in one_error_line(result)


@needs_root
def test_make_test_model_on_read_only_media_exits_5(small_disk):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    result = cli("make-test-model", str(small_disk / "tiny"))
    assert result.returncode == ExitCode.OUTPUT_ACCESS
    assert "Read-only file system" in one_error_line(result)


# ---- a done page whose files were deleted after the run ----------------------------------------


def test_export_and_evaluate_give_advice_that_works_for_a_done_page_whose_files_are_gone(
    tmp_path, tiny_model_dir, testdata
):
    scans = tmp_path / "in"
    scans.mkdir()
    page = "170025120000003,0074.jpg"
    os.symlink(testdata / "pages/handwriting" / page, scans / page)
    out = tmp_path / "out"
    args = [
        "run",
        str(scans),
        "--out",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--device",
        "cpu",
        "--detector",
        "none",
        "--max-new-tokens",
        "8",
        "--quiet",
    ]
    assert cli(*args).returncode == ExitCode.OK
    files = sorted((out / "pages" / page).iterdir())
    for path in files:
        path.unlink()  # deleted by hand after the run
    assert cli(*args).returncode == ExitCode.OK
    assert not any(path.exists() for path in files)  # what the advice must account for

    export = cli("export", str(out), "--to", str(tmp_path / "delivery"))
    assert export.returncode == ExitCode.SOME_PAGES_FAILED
    assert "a rerun does not redo a page the store records as done" in export.stdout
    assert "run `resume` to redo it" not in export.stdout
    evaluation = cli("evaluate", str(out), "--gt", str(testdata / "gt"))
    assert "Traceback" not in evaluation.stderr
    assert "a rerun does not redo a page the store records as done" in evaluation.stdout


def test_export_documents_glob_matching_nothing_is_refused_and_keeps_the_delivery(out, tmp_path):
    to = tmp_path / "delivery"
    first = cli("export", str(out), "--to", str(to))
    assert first.returncode == ExitCode.SOME_PAGES_FAILED, first.stderr  # the fixture has some
    delivered = sorted(p for p in to.rglob("*") if p.is_file())
    typo = cli("export", str(out), "--to", str(to), "--documents", "bxo1/*")
    assert typo.returncode == ExitCode.BAD_ARGUMENTS
    assert "--documents bxo1/*: no document of" in one_error_line(typo)
    assert sorted(p for p in to.rglob("*") if p.is_file()) == delivered  # before: all deleted
    narrowed = cli("export", str(out), "--to", str(to), "--documents", "box1/*")
    assert narrowed.returncode == ExitCode.SOME_PAGES_FAILED, narrowed.stderr
    assert (to / "documents/box1").is_dir() and not (to / "documents/box2").exists()


def test_evaluate_reports_non_utf8_file_names_printably(tmp_path):
    """Archives hold Latin-1 names; a name must never crash a report, whatever the locale."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    name = os.fsdecode(b"caf\xe9.txt")  # not valid UTF-8
    (pred / name).write_text("Grüße aus Köln\n", "utf-8")
    (gt / name).write_text("Grüße aus Koln\n", "utf-8")
    (gt / os.fsdecode(b"th\xe9.txt")).write_text("matches nothing\n", "utf-8")
    strict = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}  # a desktop's UTF-8 terminal
    report = tmp_path / "report.json"
    args = ["evaluate", "--pred", str(pred), "--gt", str(gt), "--json-file", str(report)]
    result = cli(*args, "--html", str(tmp_path / "report.html"), env=strict)
    assert result.returncode == ExitCode.OK, result.stderr
    assert "Traceback" not in result.stderr
    assert "GT not used: th\\xe9.txt" in result.stdout
    saved = json.loads(report.read_text("utf-8"))
    assert [d["document"] for d in saved["documents"]] == ["caf\\xe9"]
    assert saved["collection"]["character_edits"]["substitutions"] == 1  # ö -> o
    printed = cli(*args[:5], "--json", env=strict)
    assert json.loads(printed.stdout)["unmatched_ground_truth"][0]["file"] == "th\\xe9.txt"


def test_export_zip_whose_archive_name_is_a_folder_names_that_folder(out, tmp_path):
    to = tmp_path / "delivery"
    (tmp_path / "delivery.zip").mkdir()
    result = cli("export", str(out), "--to", str(to), "--zip")
    assert result.returncode == ExitCode.OUTPUT_ACCESS
    line = one_error_line(result)
    assert f"({tmp_path / 'delivery.zip'})" in line and ".tmp-" not in line


def test_export_to_a_folder_named_in_latin1_with_zip(out, tmp_path):
    to = tmp_path / os.fsdecode(b"livraison-\xe9t\xe9")  # not valid UTF-8
    strict = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}  # a desktop's UTF-8 terminal
    result = cli("export", str(out), "--to", str(to), "--zip", env=strict)
    assert result.returncode == ExitCode.SOME_PAGES_FAILED, result.stderr  # the fixture has some
    assert "Traceback" not in result.stderr
    assert "livraison-\\xe9t\\xe9 [txt,alto,mets]" in result.stdout
    with zipfile.ZipFile(to.with_name(to.name + ".zip")) as archive:
        names = archive.namelist()
        assert "livraison-%E9t%E9/export-report.json" in names
        for name in names:
            if name.endswith("mets.xml"):
                assert_valid_xml(archive.read(name), "mets.xsd")


def test_a_name_that_is_not_utf8_never_crashes_the_output_on_a_utf8_terminal(tmp_path):
    folder = tmp_path / os.fsdecode(b"mod\xe8le")  # made, then printed by make-test-model
    strict = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    result = cli("make-test-model", str(folder), env=strict)
    assert result.returncode == ExitCode.OK, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert result.stdout.strip() == f"{tmp_path}/mod\\udce8le"
    assert (folder / "model.safetensors").is_file()


# ---- resume --------------------------------------------------------------------------------------


def test_resume_from_another_folder_finds_the_inputs_and_model_given_relative(
    tmp_path, tiny_model_dir, testdata
):
    work = tmp_path / "work"
    (work / "scans").mkdir(parents=True)
    os.symlink(testdata / "pages/handwriting/btv1b84473026_f10.jpg", work / "scans/a.jpg")
    os.symlink(tiny_model_dir, work / "model")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def here(cwd: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cli", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    first = here(
        work,
        "run",
        "scans",
        "--out",
        "out",
        "--model",
        "model",
        "--device",
        "cpu",
        "--detector",
        "none",
        "--max-new-tokens",
        "8",
        "--quiet",
    )
    assert first.returncode == ExitCode.OK, first.stderr
    again = here(tmp_path, "resume", str(work / "out"), "--quiet")
    assert again.returncode == ExitCode.OK, again.stderr  # before: "input not found: scans"
    assert not (tmp_path / "out").exists()  # nothing made beside the folder resume ran in
    assert (work / "out/pages/a.jpg/0001.alto.xml").is_file()
