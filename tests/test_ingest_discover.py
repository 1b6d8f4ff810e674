"""discover(): order, relpaths, hidden and special files, links, and input-name collisions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.errors import BadArguments
from pipeline.ingest.documents import SourceFile, discover


def _touch(root: Path, *relpaths: str) -> None:
    for rel in relpaths:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def _relpaths(*inputs: Path) -> list[str]:
    return [source.relpath for source in discover(list(inputs))]


def test_folder_is_walked_depth_first_in_sorted_name_order(tmp_path: Path) -> None:
    _touch(
        tmp_path, "b.pdf", "a.pdf", "A.pdf", "a/z.tif", "a/c/d.jpg", "a/b.png", "10.jpg", "9.jpg"
    )
    assert _relpaths(tmp_path) == [
        "10.jpg",
        "9.jpg",
        "A.pdf",
        "a/b.png",
        "a/c/d.jpg",
        "a/z.tif",
        "a.pdf",
        "b.pdf",
    ]


def test_paths_are_absolute_and_relpaths_posix(tmp_path: Path, monkeypatch) -> None:
    _touch(tmp_path, "box 1/folder 2/scan.tif")
    monkeypatch.chdir(tmp_path)
    (source,) = discover([Path("box 1")])
    assert source == SourceFile(tmp_path / "box 1/folder 2/scan.tif", "folder 2/scan.tif")
    assert source.path.is_absolute()


def test_a_file_given_directly_is_listed_under_its_own_name(tmp_path: Path) -> None:
    _touch(tmp_path, "deep/er/scan.jpg")
    assert _relpaths(tmp_path / "deep/er/scan.jpg") == ["scan.jpg"]


def test_hidden_files_and_folders_are_skipped(tmp_path: Path) -> None:
    _touch(tmp_path, ".DS_Store", ".git/objects/x.pdf", "a/.thumb.jpg", "a/page.jpg")
    assert _relpaths(tmp_path) == ["a/page.jpg"]


def test_several_inputs_are_prefixed_with_their_own_names(tmp_path: Path) -> None:
    _touch(tmp_path, "box1/a.pdf", "box2/sub/b.pdf", "loose.tif")
    found = _relpaths(tmp_path / "box2", tmp_path / "loose.tif", tmp_path / "box1")
    assert found == ["box2/sub/b.pdf", "loose.tif", "box1/a.pdf"]


def test_inputs_with_equal_names_get_parent_qualified_prefixes_in_any_order(
    tmp_path: Path,
) -> None:
    _touch(tmp_path, "x/scans/a.pdf", "y/scans/a.pdf", "z/Scans/a.pdf", "scans~2/a.pdf")
    inputs = [
        tmp_path / "x/scans",
        tmp_path / "y/scans",
        tmp_path / "z/Scans",
        tmp_path / "scans~2",
    ]
    # Case-insensitive file systems would merge "Scans" with "scans", so it is qualified too.
    expected = ["scans~x/a.pdf", "scans~y/a.pdf", "Scans~z/a.pdf", "scans~2/a.pdf"]
    assert _relpaths(*inputs) == expected
    assert sorted(_relpaths(*reversed(inputs))) == sorted(expected)


def test_same_named_inputs_under_same_named_parents_take_more_parents(tmp_path: Path) -> None:
    _touch(tmp_path, "a/box/scan.jpg", "b/box/scan.jpg")
    first, second = tmp_path / "a/box/scan.jpg", tmp_path / "b/box/scan.jpg"
    assert _relpaths(first, second) == ["scan.jpg~a~box", "scan.jpg~b~box"]
    assert _relpaths(second, first) == ["scan.jpg~b~box", "scan.jpg~a~box"]


def test_the_same_input_given_twice_is_listed_once(tmp_path: Path) -> None:
    _touch(tmp_path, "box/a.pdf")
    assert _relpaths(tmp_path / "box", tmp_path / "box/../box") == ["a.pdf"]


def test_missing_input_is_reported_before_anything_is_listed(tmp_path: Path) -> None:
    _touch(tmp_path, "a.pdf")
    with pytest.raises(BadArguments, match="input not found"):
        discover([tmp_path / "a.pdf", tmp_path / "nope"])


def test_symlink_loops_are_not_followed_forever(tmp_path: Path) -> None:
    _touch(tmp_path, "a/page.jpg", "a/b/page.jpg")
    (tmp_path / "a/b/up").symlink_to(tmp_path / "a", target_is_directory=True)
    (tmp_path / "a/self").symlink_to(".", target_is_directory=True)
    assert _relpaths(tmp_path) == ["a/b/page.jpg", "a/page.jpg"]


def test_symlinked_files_and_folders_are_followed(tmp_path: Path) -> None:
    _touch(tmp_path, "elsewhere/x.tif", "col/real.pdf")
    (tmp_path / "col/linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "col/alias.pdf").symlink_to(tmp_path / "col/real.pdf")
    assert _relpaths(tmp_path / "col") == ["alias.pdf", "linked/x.tif", "real.pdf"]


def test_broken_links_are_listed_so_they_fail_visibly(tmp_path: Path) -> None:
    _touch(tmp_path, "ok.pdf")
    (tmp_path / "gone.pdf").symlink_to(tmp_path / "nowhere.pdf")
    assert _relpaths(tmp_path) == ["gone.pdf", "ok.pdf"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifos_are_skipped_because_reading_one_would_hang(tmp_path: Path) -> None:
    _touch(tmp_path, "a.pdf")
    os.mkfifo(tmp_path / "pipe.pdf")
    # Listed as skipped so it is accounted for, never opened (that would block: no writer).
    assert [(source.relpath, source.skipped) for source in discover([tmp_path])] == [
        ("a.pdf", None),
        ("pipe.pdf", "not a regular file (a FIFO); left out"),
    ]


def test_non_utf8_names_are_kept_as_surrogate_escaped_text(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path) + b"/caf\xe9.pdf"
    with open(raw, "wb") as f:
        f.write(b"%PDF-1.4")
    (source,) = discover([tmp_path])
    assert source.relpath == "caf\udce9.pdf"
    assert os.fsencode(source.path) == raw
