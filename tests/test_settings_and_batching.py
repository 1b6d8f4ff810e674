"""Run settings (what is stored, what is fingerprinted) and how batches are cut."""

from __future__ import annotations

import pytest
from PIL import Image

from pipeline.errors import BadArguments
from pipeline.runner.batching import ReadyPage, ReadyPages
from pipeline.runner.settings import RunSettings


def settings(**overrides) -> RunSettings:
    return RunSettings(inputs=("scans",), out_dir="out", model_dir="weights/m", **overrides)


def _fingerprint(s: RunSettings, checksum: str = "abc") -> dict:
    return s.fingerprint(
        checksum, "Recognize the text in this image.", device_type="cpu", code_checksum="c0de"
    )


def test_fingerprint_holds_what_changes_the_text_and_nothing_else():
    base = _fingerprint(settings())
    assert base == _fingerprint(settings(workers=4, batch_size=2, device="cpu", loaders=3))
    assert base != _fingerprint(settings(dpi=200))
    assert base != _fingerprint(settings(rasterizer="poppler"))
    assert base != _fingerprint(settings(max_new_tokens=10))
    assert base != _fingerprint(settings(), "abd")


def test_stored_settings_never_hold_the_pdf_password_and_round_trip():
    original = settings(pdf_password="secret", formats=("txt",), quiet=True)
    stored = original.to_stored()
    assert "pdf_password" not in stored and "secret" not in repr(stored)
    again = RunSettings.from_stored(stored, pdf_password="secret", workers=3)
    assert again.pdf_password == "secret" and again.workers == 3
    assert again.formats == ("txt",) and again.inputs == ("scans",)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"formats": ("pdf",)}, "--formats"),
        ({"batch_size": 0}, "--batch-size"),
        ({"rasterizer": "ghostscript"}, "--rasterizer"),
        ({"loaders": -1}, "--loaders"),
    ],
)
def test_bad_settings_are_refused_naming_the_option(overrides, message):
    with pytest.raises(BadArguments, match=message):
        settings(**overrides)


def page(name: str, width: int, height: int, solo: bool = False) -> ReadyPage:
    return ReadyPage(task=name, image=Image.new("RGB", (width, height)), load_s=0.0, solo=solo)


def test_a_batch_is_the_oldest_page_and_those_closest_to_it_in_size():
    ready = ReadyPages()
    for p in [
        page("a", 100, 100),
        page("huge", 1000, 1000),
        page("b", 110, 100),
        page("c", 90, 100),
    ]:
        ready.add(p)
    assert [p.task for p in ready.take_batch(3)] == ["a", "b", "c"]
    assert [p.task for p in ready.take_batch(3)] == ["huge"]
    assert ready.take_batch(3) == []


def test_pages_from_a_dead_worker_go_first_and_alone():
    ready = ReadyPages()
    ready.add(page("a", 100, 100))
    ready.add(page("suspect", 100, 100, solo=True))
    ready.add(page("b", 100, 100))
    assert [p.task for p in ready.take_batch(8)] == ["suspect"]
    assert [p.task for p in ready.take_batch(8)] == ["a", "b"]


def test_a_worker_with_batches_out_gets_no_page_that_must_go_alone():
    """A crash on a worker that holds a suspect page and other batches could be any page's
    doing: suspects go only to a worker with nothing else out."""
    ready = ReadyPages()
    ready.add(page("a", 100, 100))
    ready.add(page("suspect", 100, 100, solo=True))
    ready.add(page("b", 100, 100))
    assert [p.task for p in ready.take_batch(8, alone=False)] == ["a", "b"]
    assert ready.take_batch(8, alone=False) == []  # only the suspect is left
    assert [p.task for p in ready.take_batch(8)] == ["suspect"]
