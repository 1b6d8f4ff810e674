"""Shared fixtures: the repository's own test data (tests/data) and the XML schema validator."""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Real files made by others, copied into the repository with their origins and licences
# (tests/data/SOURCES.md): a fresh clone runs its tests with nothing beside it.
TESTDATA = REPO / "tests" / "data"
SCHEMAS = TESTDATA / "schemas"
GOOD_PAGES = {  # relpath under the input folder -> page count
    "handwriting/170025120000003,0074.jpg": 1,
    "handwriting/btv1b84473026_f10.jpg": 1,
    "pdf/olmocr_mattsnotes_3p.pdf": 3,
    "pdf/vicksburg_sample_ocr_6p.pdf": 6,
    "vertical/jp_vert.jpg": 1,
    "vertical/ndl_3508165_9.jpg": 1,
}


# Read-only media and full disks are real file systems in the tests: a small tmpfs mounted for
# the test, which needs root (CI runs as root).
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a small or read-only file system needs root"
)


@contextlib.contextmanager
def mounted_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A real file system of `size` (tmpfs notation: "1m") mounted at `where`, unmounted after."""
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@functools.cache
def _schema(name: str):
    from lxml import etree

    return etree.XMLSchema(etree.parse(str(SCHEMAS / name)))


def assert_valid_xml(path_or_bytes, schema_name: str) -> None:
    """Validate against one of tests/data/schemas; fail with the schema's own error log."""
    from lxml import etree

    if isinstance(path_or_bytes, (bytes, bytearray)):
        doc = etree.fromstring(bytes(path_or_bytes)).getroottree()
    else:
        doc = etree.parse(str(path_or_bytes))
    schema = _schema(schema_name)
    if not schema.validate(doc):
        raise AssertionError(
            f"{path_or_bytes!s:.200} is not valid {schema_name}:\n{schema.error_log}"
        )


def assert_valid_alto(path_or_bytes) -> None:
    assert_valid_xml(path_or_bytes, "alto-4-4.xsd")


@pytest.fixture(scope="session")
def testdata() -> Path:
    if not TESTDATA.is_dir():
        pytest.fail(f"test data not found at {TESTDATA}")
    return TESTDATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny random-weight AnandaSky checkpoint (~2M parameters), built once per session."""
    from pipeline.model import make_test_model

    return make_test_model(tmp_path_factory.mktemp("tiny-model"), "tiny")


@pytest.fixture(scope="session")
def seed_model_dir(tmp_path_factory) -> Path:
    """The ~41M-parameter `seed` checkpoint (full 4x768 ViT); a few seconds and ~165 MB to build."""
    from pipeline.model import make_test_model

    return make_test_model(tmp_path_factory.mktemp("seed-model"), "seed")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine two OpenMP
    threads spin against each other (10x slower); restore the setting for other modules."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def good_input(tmp_path_factory, testdata) -> Path:
    """The real test pages, linked into a folder of our own so the run sees only these."""
    root = tmp_path_factory.mktemp("scans")
    for relpath in GOOD_PAGES:
        target = root / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(testdata / "pages" / relpath, target)
    return root
