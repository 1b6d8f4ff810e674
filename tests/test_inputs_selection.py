"""Which files of an input tree are pages (name, then content), --include/--exclude, and folders
that hold a job store: at the level of `discover`, on real files."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import TESTDATA

from pipeline.ingest.documents import discover
from pipeline.ingest.selection import InputFilter

JPG = TESTDATA / "pages/vertical/jp_vert.jpg"
PDF = TESTDATA / "pages/pdf/olmocr_mattsnotes_3p.pdf"


def listing(*inputs: Path, **kwargs) -> dict[str, str | None]:
    return {s.relpath: s.skipped for s in discover(list(inputs), **kwargs)}


def test_names_decide_first_then_content(tmp_path: Path) -> None:
    shutil.copyfile(JPG, tmp_path / "named.JPG")
    shutil.copyfile(PDF, tmp_path / "0001")  # no extension, PDF content: a page file
    shutil.copyfile(JPG, tmp_path / "scan.dat")  # unknown extension, JPEG content
    (tmp_path / "broken.tif").write_bytes(b"not a tiff")  # page name: probed, fails visibly
    (tmp_path / "empty.pdf").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("box 3\n")
    (tmp_path / "empty.md5").write_bytes(b"")
    found = listing(tmp_path)
    pages = {rel for rel, skipped in found.items() if skipped is None}
    assert pages == {"named.JPG", "0001", "scan.dat", "broken.tif", "empty.pdf"}
    assert found["notes.txt"] == "not a page file (.txt, content is not PDF or an image)"
    assert found["empty.md5"].startswith("not a page file (.md5")


def test_folders_holding_a_job_store_and_out_are_never_walked(tmp_path: Path) -> None:
    shutil.copyfile(JPG, tmp_path / "a.jpg")
    old_run = tmp_path / "old-run"
    (old_run / ".anandasky").mkdir(parents=True)
    (old_run / "run.log").write_text("log\n")
    shutil.copyfile(JPG, old_run / "b.jpg")
    out = tmp_path / "out"  # a first run: no store yet, but it is OUT
    out.mkdir()
    (out / "run.log").write_text("log\n")
    assert listing(tmp_path, out_dir=out) == {"a.jpg": None}


def test_include_and_exclude_match_the_path_under_the_input(tmp_path: Path) -> None:
    for rel in ("box1/a.tif", "box1/b.jpg", "box2/a.tif", "c.tif"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(JPG, tmp_path / rel)
    left_out = "left out by --include/--exclude"

    def taken(**globs) -> set[str]:
        found = listing(tmp_path, selection=InputFilter(**globs))
        assert set(found) == {"box1/a.tif", "box1/b.jpg", "box2/a.tif", "c.tif"}
        assert all(skipped in (None, left_out) for skipped in found.values())
        return {rel for rel, skipped in found.items() if skipped is None}

    assert taken(include=("*.tif",)) == {"box1/a.tif", "box2/a.tif", "c.tif"}
    assert taken(include=("box1/*",)) == {"box1/a.tif", "box1/b.jpg"}
    assert taken(exclude=("a.tif",)) == {"box1/b.jpg", "c.tif"}  # a bare name matches anywhere
    assert taken(include=("box1/*", "c.tif"), exclude=("*.jpg",)) == {"box1/a.tif", "c.tif"}
    # Relative to the input argument: given as box1, the same file is "a.tif".
    found = listing(tmp_path / "box1", selection=InputFilter(include=("a.tif",)))
    assert found == {"a.tif": None, "b.jpg": left_out}
