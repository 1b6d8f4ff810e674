"""`export` run again over the same delivery (only what changed is rewritten), its zip, its
selection and options, and the command line, on the OUT folder of export_fixture.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import export_fixture
import pytest
from conftest import REPO, assert_valid_xml
from export_fixture import (
    ALL,
    files_of,
    finish_page,
    folder,
    transcription,
)

from pipeline.errors import BadArguments, ExitCode
from pipeline.export import export_collection

# The OUT folder's fixtures (export_fixture.py), for pytest to pass in by name.
run, out = export_fixture.run, export_fixture.out

# ---- incremental re-export -------------------------------------------------------------------


def test_reexport_without_changes_rewrites_nothing(out, tmp_path):
    to = tmp_path / "delivery"
    export_collection(out, to, formats=ALL, zip_archive=True)
    before = files_of(tmp_path)
    report = export_collection(out, to, formats=ALL, zip_archive=True)
    assert files_of(tmp_path) == before
    assert report.written == 0 and report.removed == 0 and report.unchanged > 10


def test_reexport_after_resume_rewrites_only_the_changed_document(run, out, tmp_path):
    to = tmp_path / "delivery"
    first = export_collection(out, to, formats=ALL)
    assert first.exit_code == ExitCode.SOME_PAGES_FAILED
    before = files_of(to)
    (task,) = run.pending_pages()  # the run goes on and finishes its last page
    finish_page(out, run, task, "Finished on resume.")
    run.retry_failed()  # as a resume does: letter.pdf page 3 is pending again
    report = export_collection(out, to, formats=ALL)
    after = files_of(to)
    changed = {name for name in after if before.get(name) != after[name]}
    later = "documents/box2/later.pdf/"
    assert changed == {
        "export-report.json",
        later + "text.txt",
        later + "hocr.html",
        later + "mets.xml",
        later + "alto/0002.xml",
        later + "page/0002.xml",
    }
    assert (to / later / "text.txt").read_text("utf-8").endswith("\fFinished on resume.\n")
    # letter.pdf page 3 is pending again after retry_failed_pages: reported, still not delivered
    assert report.totals()["pages_failed"] == 0 and report.totals()["pages_pending"] == 1


def test_zip_holds_exactly_the_delivery_in_sorted_order(out, tmp_path):
    to = tmp_path / "delivery"
    report = export_collection(out, to, formats=ALL, zip_archive=True)
    assert report.archive == tmp_path / "delivery.zip"
    with zipfile.ZipFile(report.archive) as zf:
        names = zf.namelist()
        assert names == sorted(names)
        contents = {n.removeprefix("delivery/"): zf.read(n) for n in names}
    on_disk = {name: (to / name).read_bytes() for name in files_of(to)}
    assert contents == on_disk
    first = report.archive.read_bytes()
    report.archive.unlink()
    export_collection(out, to, formats=ALL, zip_archive=True)
    assert report.archive.read_bytes() == first  # deterministic


def test_documents_glob_selects_and_drops_what_it_no_longer_selects(out, tmp_path):
    to = tmp_path / "delivery"
    export_collection(out, to, formats=("txt", "mets"))
    assert (to / "documents/box1/letter.pdf/mets.xml").exists()
    report = export_collection(out, to, formats=("txt", "mets"), documents=["box1/*.tif"])
    assert [d["relpath"] for d in report.documents] == ["box1/scroll.tif"]
    assert report.exit_code == ExitCode.OK and report.not_exported_documents == []
    assert sorted(files_of(to)) == [
        "documents/box1/scroll.tif/alto/0001.xml",
        "documents/box1/scroll.tif/mets.xml",
        "documents/box1/scroll.tif/text.txt",
        "export-report.json",
    ]


def test_page_separator_and_per_page_txt(out, tmp_path):
    to = tmp_path / "delivery"
    sep = "\n--- page {page} ---\n"
    export_collection(out, to, formats=("txt",), page_separator=sep, per_page_txt=True)
    doc = folder(to, "box1/letter.pdf")
    one, two = (transcription("box1/letter.pdf", n) for n in (1, 2))
    assert (doc / "text.txt").read_text("utf-8") == f"{one}\n\n--- page 2 ---\n{two}\n"
    assert (doc / "txt/0002.txt").read_text("utf-8") == two + "\n"
    assert sorted(p.name for p in (doc / "txt").iterdir()) == ["0001.txt", "0002.txt"]


def test_bad_requests_are_refused_with_what_to_do(out, tmp_path):
    with pytest.raises(BadArguments, match="choose from"):
        export_collection(out, tmp_path / "d", formats=("txt", "docx"))
    with pytest.raises(BadArguments, match="folder of its own"):
        export_collection(out, out / "pages" / "x", formats=("txt",))
    with pytest.raises(BadArguments, match="no anandasky-batch job store"):
        export_collection(tmp_path / "nothing", tmp_path / "d")


# ---- the command line ------------------------------------------------------------------------


def test_cli_export_exit_codes_and_summary(out, tmp_path):
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cli", "export", str(out), *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )

    to = tmp_path / "cli-delivery"
    proc = cli("--to", str(to), "--format", "txt,alto,mets,page,hocr", "--zip")
    assert proc.returncode == ExitCode.SOME_PAGES_FAILED, proc.stderr
    assert "letter.pdf page 3: failed" in proc.stdout and (tmp_path / "cli-delivery.zip").is_file()
    assert_valid_xml(to / "documents/box1/letter.pdf/mets.xml", "mets.xsd")
    proc = cli("--to", str(to), "--documents", "box1/scroll.tif", "--page-separator", "\\n")
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    assert "exported 1 document (1 page)" in proc.stdout
    assert not (tmp_path / "cli-delivery.zip").exists()  # stale once DIR changed without --zip
    proc = cli("--to", str(to), "--format", "docx")
    assert proc.returncode == ExitCode.BAD_ARGUMENTS and "choose from" in proc.stderr
