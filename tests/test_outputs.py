"""Output paths (collision-free, always under OUT) and atomic page writes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, assert_valid_alto
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.outputs.alto import PageMeta, alto_to_text, normalize_text
from pipeline.outputs.page_files import (
    TEMP_PREFIX,
    escape_component,
    page_output_paths,
    page_outputs_complete,
    remove_document_outputs,
    remove_stale_temp_files,
    write_atomic,
    write_page_outputs,
)
from pipeline.records import Recognition

OUT = Path("/srv/out")


def unescape(component: str) -> bytes:
    """Inverse of escape_component: the file name's original bytes."""
    out = bytearray()
    for literal, hexbyte in re.findall(r"([^%]+)|%([0-9A-F]{2})", component):
        out += literal.encode("utf-8") if literal else bytes([int(hexbyte, 16)])
    return bytes(out)


def meta(page_number: int = 1) -> PageMeta:
    return PageMeta("rel/a.pdf", page_number, 1000, 1400, "m", "sha256:00", "Read.")


def recognition(text: str) -> Recognition:
    return Recognition(text, (-0.5,) * len(text), tuple(range(1, len(text) + 1)), "eos")


# ---- paths ----------------------------------------------------------------------------------


def test_page_paths_mirror_the_input_tree_with_the_file_name_as_folder():
    paths = page_output_paths(OUT, "rel/path/a.pdf", 1, ("alto", "txt"))
    assert paths == {
        "alto": OUT / "pages/rel/path/a.pdf/0001.alto.xml",
        "txt": OUT / "pages/rel/path/a.pdf/0001.txt",
    }
    assert page_output_paths(OUT, "a.pdf", 12345, ("txt",))["txt"] == OUT / "pages/a.pdf/12345.txt"


def test_same_stem_different_extensions_never_collide():
    pdf = page_output_paths(OUT, "box/a.pdf", 1)
    tif = page_output_paths(OUT, "box/a.tif", 1)
    assert not set(pdf.values()) & set(tif.values())


def test_undecodable_names_are_percent_escaped_and_percent_itself_too():
    raw = os.fsdecode(b"caf\xe9 100%.pdf")  # Latin-1 name on a UTF-8 system
    assert escape_component(raw) == "caf%E9 100%25.pdf"
    assert escape_component("caf%E9 100%25.pdf") == "caf%25E9 100%2525.pdf"
    assert escape_component("line\nbreak\x85.pdf") == "line%0Abreak%C2%85.pdf"
    assert escape_component("漢字 é.pdf") == "漢字 é.pdf"


file_name_bytes = st.binary(min_size=1, max_size=80).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
)


@settings(max_examples=400, deadline=None)
@given(file_name_bytes)
def test_escaping_is_printable_and_undoes_to_the_original_bytes(name):
    escaped = escape_component(os.fsdecode(name))
    assert unescape(escaped) == name  # hence injective
    assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029]", escaped)  # no line breaks etc.
    escaped.encode("utf-8")  # no undecodable bytes left


@settings(max_examples=200, deadline=None)
@given(file_name_bytes, file_name_bytes)
def test_distinct_names_give_distinct_folders(a, b):
    if a != b:
        assert escape_component(os.fsdecode(a)) != escape_component(os.fsdecode(b))


def test_overlong_escaped_names_fit_name_max_and_stay_distinct():
    a = os.fsdecode(b"\xff" * 200 + b"a.pdf")
    b = os.fsdecode(b"\xff" * 200 + b"b.pdf")
    ea, eb = escape_component(a), escape_component(b)
    assert len(ea.encode()) <= 255 and len(eb.encode()) <= 255
    assert ea != eb


@pytest.mark.parametrize(
    "relpath",
    ["", "/etc/passwd", "../x.pdf", "a/../../x.pdf", "..", ".", "./a.pdf", "a//b.pdf", "a/"],
)
def test_hostile_relpaths_are_refused(relpath):
    with pytest.raises(ValueError):
        page_output_paths(OUT, relpath, 1)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.sampled_from(["..", ".", "", "a", "b.pdf", "...", "%2E%2E", "x\udcff"]),
        min_size=1,
        max_size=5,
    )
)
def test_every_accepted_relpath_stays_under_out_pages(parts):
    relpath = "/".join(parts)
    try:
        paths = page_output_paths(OUT, relpath, 1)
    except ValueError:
        return
    for path in paths.values():
        normalised = Path(os.path.normpath(path))
        assert normalised.is_relative_to(OUT / "pages") and normalised == path


def test_page_numbers_start_at_one_and_formats_are_known():
    with pytest.raises(ValueError, match="start at 1"):
        page_output_paths(OUT, "a.pdf", 0)
    with pytest.raises(ValueError, match="unknown output format"):
        page_output_paths(OUT, "a.pdf", 1, ("hocr",))


# ---- atomic writes ----------------------------------------------------------------------------


def test_write_atomic_creates_folders_replaces_content_and_leaves_no_temp(tmp_path):
    target = tmp_path / "deep" / "er" / "f.txt"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(target.parent) == ["f.txt"]


def test_written_files_follow_the_umask_not_private_temp_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "f.txt", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644


def test_failed_write_keeps_the_old_file_and_removes_its_temp(tmp_path, monkeypatch):
    target = tmp_path / "f.txt"
    write_atomic(target, b"old")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        write_atomic(target, b"new" * 1000)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_crash_before_rename_leaves_only_a_recognisable_temp_file(tmp_path):
    # A real process dies between writing the temp file and renaming it.
    script = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        sys.path.insert(0, {str(REPO)!r})
        from pipeline.outputs import page_files as outputs
        os.replace = lambda *a: os._exit(9)
        outputs.write_atomic(Path({str(tmp_path)!r}) / "pages/a.pdf/0001.txt", b"half")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert proc.returncode == 9
    folder = tmp_path / "pages" / "a.pdf"
    leftovers = os.listdir(folder)
    assert len(leftovers) == 1 and leftovers[0].startswith(TEMP_PREFIX)
    assert not page_outputs_complete(tmp_path, "a.pdf", 1, ("txt",))
    assert remove_stale_temp_files(tmp_path, "other.pdf") == 0
    assert remove_stale_temp_files(tmp_path, "a.pdf") == 1
    assert os.listdir(folder) == []


# ---- page outputs ----------------------------------------------------------------------------


def test_write_page_outputs_writes_valid_alto_and_matching_txt(tmp_path):
    rec = recognition("Hello  world \r\n\n\n第一行\x00")
    written = write_page_outputs(tmp_path, "rel/a.pdf", 2, rec, meta(2))
    alto, txt = written
    assert alto == tmp_path / "pages/rel/a.pdf/0002.alto.xml"
    assert txt.read_text("utf-8") == normalize_text(rec.text) + "\n" == "Hello world\n\n第一行\n"
    assert_valid_alto(alto)
    assert alto_to_text(alto.read_bytes()) + "\n" == txt.read_text("utf-8")
    assert page_outputs_complete(tmp_path, "rel/a.pdf", 2)


def test_empty_recognition_still_writes_both_files(tmp_path):
    write_page_outputs(tmp_path, "a.pdf", 1, recognition(""), meta(1))
    assert page_output_paths(tmp_path, "a.pdf", 1)["txt"].read_bytes() == b"\n"
    assert page_outputs_complete(tmp_path, "a.pdf", 1)


def test_only_requested_formats_are_written_and_checked(tmp_path):
    written = write_page_outputs(tmp_path, "a.pdf", 1, recognition("x"), meta(1), ("txt",))
    assert [p.name for p in written] == ["0001.txt"]
    assert page_outputs_complete(tmp_path, "a.pdf", 1, ("txt",))
    assert not page_outputs_complete(tmp_path, "a.pdf", 1, ("alto", "txt"))


def test_missing_or_empty_file_means_page_incomplete(tmp_path):
    write_page_outputs(tmp_path, "a.pdf", 1, recognition("x"), meta(1))
    paths = page_output_paths(tmp_path, "a.pdf", 1)
    paths["alto"].write_bytes(b"")
    assert not page_outputs_complete(tmp_path, "a.pdf", 1)
    paths["alto"].unlink()
    assert not page_outputs_complete(tmp_path, "a.pdf", 1)


def test_page_meta_must_describe_the_page_being_written(tmp_path):
    with pytest.raises(ValueError, match="page 1, not 2"):
        write_page_outputs(tmp_path, "a.pdf", 2, recognition("x"), meta(1))


def test_undecodable_relpath_writes_under_an_escaped_printable_folder(tmp_path):
    relpath = os.fsdecode(b"d\xe9p\xf4t/lettre.pdf")
    write_page_outputs(tmp_path, relpath, 1, recognition("x"), meta(1))
    assert (tmp_path / "pages" / "d%E9p%F4t" / "lettre.pdf" / "0001.alto.xml").is_file()
    assert_valid_alto(tmp_path / "pages" / "d%E9p%F4t" / "lettre.pdf" / "0001.alto.xml")


def test_remove_document_outputs_removes_only_that_document(tmp_path):
    for rel in ("box/a.pdf", "box/a.pdf.tif", "box/b.pdf"):
        write_page_outputs(tmp_path, rel, 1, recognition("x"), meta(1))
    assert remove_document_outputs(tmp_path, "box/a.pdf")
    assert not remove_document_outputs(tmp_path, "box/a.pdf")
    assert sorted(os.listdir(tmp_path / "pages" / "box")) == ["a.pdf.tif", "b.pdf"]
