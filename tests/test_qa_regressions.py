"""Defects found by exploratory QA (decode graphs, model shipping, damaged TIFFs, status, export),
each pinned by the test that showed it.

Each test names what the user saw; it failed before its fix.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import TESTDATA, assert_valid_alto, assert_valid_xml
from test_ingest_damaged_tiff import _outcome, _page_offsets, _pages, _tiff
from test_inputs_changes import PDF_6, drained, registered_pdf
from test_run_end_to_end import cli

from pipeline.cluster import model_shipping
from pipeline.errors import DevicesLost, DocumentError, ExitCode
from pipeline.ingest.documents import IngestSettings, probe_document
from pipeline.jobs.sqlite_store import JobStore
from pipeline.runner.pending import PendingPages

JPG = TESTDATA / "pages/vertical/jp_vert.jpg"
FAST = ["--device", "cpu", "--max-new-tokens", "12", "--dpi", "100", "--detector", "none"]


def test_a_last_document_that_grows_after_the_queue_was_read_to_its_end_gets_every_new_page(
    tmp_path,
):
    """A cut TIFF (or any file) last in the collection, replaced by its complete copy while its
    pages were being loaded: the run used to finish with its new pages past the old count left
    pending ('1 pending' after a run that was never interrupted)."""
    with registered_pdf(tmp_path) as (store, changes, doc, out):
        pending = PendingPages(store, out, ("alto", "txt"))
        popped = drained(pending)  # every page handed to loaders: the queue is read to its end
        shutil.copyfile(PDF_6, doc)  # the complete copy arrives
        changes.handle(popped[-1], pending)  # a loader finds the file changed
        assert pending.remaining == 6
        redo = drained(pending)
    assert [t.page_index for t in redo] == [0, 1, 2, 3, 4, 5]
    assert pending.remaining == 0


def test_decode_graphs_with_a_remote_code_folder_is_refused_before_any_worker_starts(
    tiny_model_dir, tmp_path
):
    """`--decode-graphs` on a remote-code folder under the default --impl auto: the refusal came
    from a worker after it had started loading the model, as 'worker cpu:0 could not load the
    model: BadArguments: ...' (an internal class name). Now the run says so before any worker
    starts, in the one line `--impl remote` already gets."""
    from remote_fixture import build_remote_checkpoint

    remote = build_remote_checkpoint(tiny_model_dir, tmp_path / "remote")
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copyfile(JPG, scans / "a.jpg")
    out = tmp_path / "out"
    result = cli(
        "run", str(scans), "--out", str(out), "--model", str(remote), *FAST, "--decode-graphs"
    )
    assert result.returncode == ExitCode.BAD_ARGUMENTS, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--decode-graphs needs the native model" in lines[0], lines
    assert "BadArguments" not in result.stderr and "worker" not in lines[0]
    assert "loading the model" not in (out / "run.log").read_text()


def test_a_node_whose_model_cache_cannot_be_written_still_loads_a_model_folder_in_place(
    tiny_model_dir, tmp_path, monkeypatch
):
    """FAULT INJECTION: the node's cache folder (in Ray's temp folder) is a file, so it cannot
    be created. Every actor used to fail with 'FileExistsError: [Errno 17] ...' (exit 7) even
    where the model folder was in place; now that folder is checked and loaded, and only a node
    that lacks it fails, with one line saying what to do."""
    blocked = tmp_path / "anandasky-models"
    blocked.write_text("not a folder")
    monkeypatch.setattr(model_shipping, "cache_root", lambda: blocked)
    identity = model_shipping.identity_of(tiny_model_dir)
    source = model_shipping.model_here(str(tiny_model_dir), identity, None)
    assert source == model_shipping.ModelSource("in place", str(tiny_model_dir))
    missing = tmp_path / "nowhere" / "tiny"
    with pytest.raises(DevicesLost) as caught:
        model_shipping.model_here(str(missing), identity, None)
    message = str(caught.value)
    assert f"has no model folder at {missing}" in message and str(blocked) in message
    assert "\n" not in message and "copy the model folder" in message


@pytest.mark.slow
def test_ray_local_run_with_an_unwritable_model_cache_loads_the_model_in_place(
    tiny_model_dir, tmp_path
):
    """The same through the CLI on a real one-node cluster (`--ray local`): FAULT INJECTION, the
    cache path in the cluster's temp folder is a file. The run used to exit 7 with
    'could not load the model: FileExistsError'; now every page is done."""
    out = tmp_path / "out"
    result = ray_local_run(tiny_model_dir, tmp_path, out, unwritable_cache=True)
    assert result.returncode == ExitCode.OK, result.stderr
    assert "model folder: in place" in (out / "run.log").read_text()
    assert_valid_alto(out / "pages/a.jpg/0001.alto.xml")


def ray_local_run(
    model,
    tmp_path: Path,
    out: Path,
    *extra: str,
    unwritable_cache: bool = False,
    fault: str | None = None,
    pages: int = 1,
) -> subprocess.CompletedProcess:
    """`run --ray local` on `pages` copies of a page, the cluster in a temp folder of its own
    (FAULT INJECTION with `unwritable_cache`: the model cache path there is a file; `fault`:
    ANANDASKY_TEST_FAULT of the cluster's node)."""
    pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="q5", dir="/tmp")  # short: Ray's socket paths must fit
    try:
        os.makedirs(os.path.join(temp, "ray"))
        if unwritable_cache:
            Path(temp, "ray", model_shipping.CACHE_FOLDER).write_text("not a folder")
        scans = tmp_path / "scans"
        scans.mkdir()
        for n in range(pages):
            shutil.copyfile(JPG, scans / ("a.jpg" if n == 0 else f"a{n}.jpg"))
        env = {**os.environ, "RAY_TMPDIR": temp}
        if fault:
            env["ANANDASKY_TEST_FAULT"] = fault
        return subprocess.run(
            [sys.executable, "-m", "cli", "run", str(scans), "--out", str(out), "--model",
             str(model), *FAST, "--ray", "local", *extra],
            capture_output=True, text=True, timeout=600, env=env,
            cwd=Path(__file__).resolve().parents[1],
        )  # fmt: skip
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ray_actors_say_in_run_log_how_they_decode(tiny_model_dir, tmp_path):
    """README: with --decode-graphs, run.log says per worker how it decodes. Ray actors' ready
    lines said nothing about it, so on a cluster of GPUs nobody could tell whether graphs were
    captured; now they say it as local workers do."""
    out = tmp_path / "out"
    result = ray_local_run(tiny_model_dir, tmp_path, out, "--decode-graphs")
    assert result.returncode == ExitCode.OK, result.stderr
    ready = [line for line in (out / "run.log").read_text().splitlines() if " ready on " in line]
    assert ready and all("decode: fixed shapes, eager (no device graphs on cpu)" in line
                         for line in ready), ready  # fmt: skip
    assert_valid_alto(out / "pages/a.jpg/0001.alto.xml")


def test_a_tiff_page_with_garbled_pixel_data_fails_without_libtiff_noise_on_stderr(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """FAULT INJECTION on the file's bytes: page 2's compressed pixels zeroed, its headers
    intact. The page fails as corrupt (as before), but libtiff also printed 'LZWDecode:
    LZWDecode: Strip 0 not terminated with EOI code.' on the terminal beside the run's own
    line, because only files with a broken header chain were quietened."""
    pages = _pages(3, size=(400, 300))
    data = bytearray(_tiff(pages, "tiff_lzw"))
    first, second = _page_offsets(bytes(data))[:2]
    start = first + 200  # page 2's strips lie between page 1's header and its own
    data[start : start + (second - start) // 2] = bytes((second - start) // 2)
    path = tmp_path / "garbled.tif"
    path.write_bytes(bytes(data))
    assert _outcome(path, pages) == ["ok", "corrupt image", "ok"]
    assert capfd.readouterr().err == ""
    print("stderr works again", file=sys.stderr)
    assert capfd.readouterr().err == "stderr works again\n"


def test_a_tiff_whose_page_chain_loops_back_reports_the_pages_it_cannot_reach(
    tmp_path: Path,
) -> None:
    """FAULT INJECTION: page 3's link to the next page header points back at page 1 (a
    damaged file: a TIFF's page chain never loops). Pages 4 and 5 were silently dropped: the
    document read as 3 pages, all done, exit 0. Now the first unreachable page fails as
    damaged, standing for any after it, as for a cut file."""
    pages = _pages(5)
    data = bytearray(_tiff(pages))
    offsets = _page_offsets(bytes(data))
    third = offsets[2]
    entries = struct.unpack("<H", data[third : third + 2])[0]
    link = third + 2 + 12 * entries
    data[link : link + 4] = struct.pack("<I", offsets[0])
    path = tmp_path / "loop.tif"
    path.write_bytes(bytes(data))
    assert _outcome(path, pages) == ["ok", "ok", "ok", "truncated image"]


def test_a_compressed_tiff_cut_in_its_first_pages_pixels_is_not_said_to_be_cut_in_a_header(
    tmp_path: Path,
) -> None:
    """libtiff writes each page's pixels before its header, so a copy cut at 10 % of a
    compressed scan ends in page 1's pixels. Users read 'the TIFF ends or is damaged within its
    first page's header', which sent them looking at a header that was never written."""
    data = _tiff(_pages(4), "tiff_lzw")
    path = tmp_path / "cut.tif"
    path.write_bytes(data[: len(data) // 10])
    with pytest.raises(DocumentError) as caught:
        probe_document(path, IngestSettings(dpi=36))
    assert caught.value.reason == "truncated image"
    assert "header" not in caught.value.detail
    assert "before its first page is complete" in caught.value.detail


def _running_pages(out: Path) -> int:
    try:
        with JobStore.open(out, exclusive=False) as store:
            return store.summary().pages["running"]
    except Exception:
        return 0


@pytest.mark.slow
def test_status_after_a_run_was_killed_does_not_show_its_pages_as_still_running(
    tiny_model_dir, tmp_path
):
    """kill -9 of the coordinator mid-run: `status` went on printing 'N running' as if a run
    were still at work on them. It now says they were left by a run that was killed and that
    the next run does them again; --json says whether a run holds OUT (run_in_progress)."""
    scans = tmp_path / "scans"
    scans.mkdir()
    for n in range(6):
        shutil.copyfile(JPG, scans / f"p{n}.jpg")
    out = tmp_path / "out"
    slow = ["--max-new-tokens", "200", "--no-repetition-guard", "--batch-size", "6"]
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "run", str(scans), "--out", str(out), "--model",
         str(tiny_model_dir), *FAST, "--workers", "1", "--quiet", *slow],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while _running_pages(out) == 0:
            assert process.poll() is None, "the run ended before any page was claimed"
            assert time.monotonic() < deadline, "no page claimed in 300 s"
            time.sleep(0.05)
        live = json.loads(cli("status", str(out), "--json").stdout)
        assert live["run_in_progress"] is True
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    time.sleep(1)  # the workers die with the coordinator (parent-death signal)
    result = cli("status", str(out))
    assert result.returncode == ExitCode.OK, result.stderr
    first = result.stdout.splitlines()[0]
    assert "running (left by a run that was killed; the next run does them again)" in first
    report = json.loads(cli("status", str(out), "--json").stdout)
    assert report["run_in_progress"] is False and report["pages"]["running"] > 0


@pytest.mark.slow
def test_new_config_does_not_report_the_old_pages_files_as_left_by_a_crash(
    tiny_model_dir, tmp_path
):
    """`run --new-config` after changing a setting: users saw the warning '2 page(s) already
    have output files ... but the job store does not record them as done (a run stopped
    between writing and recording them, or the store lost its latest writes)', which sends
    them looking for a crash or a damaged store. run.log now says --new-config redoes the pages
    done under the old settings, and no warning is printed."""
    scans = tmp_path / "scans"
    scans.mkdir()
    for n in range(2):
        shutil.copyfile(JPG, scans / f"p{n}.jpg")
    out = tmp_path / "out"
    base = ["run", str(scans), "--out", str(out), "--model", str(tiny_model_dir), *FAST]
    assert cli(*base).returncode == ExitCode.OK
    result = cli(*base, "--max-new-tokens", "8", "--new-config")  # later options win
    assert result.returncode == ExitCode.OK, result.stderr
    assert "already have output files" not in result.stderr
    log = (out / "run.log").read_text()
    assert "already have output files" not in log
    assert "--new-config: the settings changed; the 2 page(s) done under the old ones" in log
    for n in range(2):
        assert_valid_alto(out / f"pages/p{n}.jpg/0001.alto.xml")


@pytest.mark.slow
def test_a_model_shipped_in_this_run_is_not_called_an_earlier_shipment(tiny_model_dir, tmp_path):
    """FAULT INJECTION `node:no-model`: the one node lacks the model folder, its cache is new.
    One of its two actors gets the files; the other finds them written and loads them. Its
    line said 'loads the model from its cache of an earlier shipment' on the very first run,
    as if a cache had been there before; it now says the model was shipped in this run."""
    out = tmp_path / "out"
    slow = ("--max-new-tokens", "200", "--no-repetition-guard", "--batch-size", "1")
    result = ray_local_run(tiny_model_dir, tmp_path, out, *slow, fault="node:no-model", pages=12)
    assert result.returncode == ExitCode.OK, result.stderr
    log = (out / "run.log").read_text()
    ready = [line for line in log.splitlines() if " ready on " in line]
    assert len(ready) == 2, ready  # both actors loaded: one from the files, one from the cache
    assert "model folder: shipped" in log and "model folder: cache" in log
    assert "earlier shipment" not in log
    assert "loads the model shipped to it in this run" in log


def _tiff_with_thumbnails(pages: list) -> bytes:
    """Each page followed by its thumbnail (NewSubfileType 1), as many scanners write."""
    from PIL import TiffImagePlugin

    buffer = io.BytesIO()
    with TiffImagePlugin.AppendingTiffWriter(buffer, new=True) as tiff:
        for page in pages:
            for image, subfile in ((page, 0), (page.resize((12, 6)), 1)):
                image.save(tiff, "TIFF", tiffinfo={254: subfile})
                tiff.newFrame()
    return buffer.getvalue()


@pytest.mark.slow
def test_export_pdf_of_tiffs_with_thumbnails_or_cut_short_makes_the_right_pages_or_says_why(
    tiny_model_dir, tmp_path
):
    """`export --format pdf` after a run over a TIFF with thumbnails (3 pages) and a TIFF cut
    after its second page (now done in part, since the run keeps a cut TIFF's first pages).
    The thumbnails became pages of the PDF, so it was refused as 'its source now has 6 pages
    where the run counted 3; run the same `run` command again', and the cut TIFF crashed the
    export: 'internal error (TypeError: Missing dimensions)', exit 15. Now the first PDF has
    the 3 pages, and the cut TIFF gets no PDF with one line saying why (exit 1, as for any
    page not delivered)."""
    import pikepdf

    scans = tmp_path / "scans"
    scans.mkdir()
    pages = _pages(3, size=(400, 300))
    (scans / "thumbs.tif").write_bytes(_tiff_with_thumbnails(pages))
    whole = _tiff(pages, "tiff_lzw")  # libtiff: each page's header after its pixels
    (scans / "cut.tif").write_bytes(whole[: _page_offsets(whole)[2] - 10])  # in page 3
    out, delivered = tmp_path / "out", tmp_path / "delivered"
    run = cli("run", str(scans), "--out", str(out), "--model", str(tiny_model_dir), *FAST)
    assert run.returncode == ExitCode.SOME_PAGES_FAILED, run.stderr  # cut.tif page 3
    result = cli("export", str(out), "--to", str(delivered), "--format", "pdf,mets")
    assert result.returncode == ExitCode.SOME_PAGES_FAILED, result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert "UserWarning" not in result.stderr and "TIFFAdvanceDirectory" not in result.stderr
    with pikepdf.open(delivered / "documents/thumbs.tif/searchable.pdf") as pdf:
        assert len(pdf.pages) == 3
        sizes = {tuple(float(v) for v in page.mediabox[2:]) for page in pdf.pages}
        assert len(sizes) == 1 and min(next(iter(sizes))) > 20  # pages, not 12 x 6 thumbnails
    assert not (delivered / "documents/cut.tif/searchable.pdf").exists()
    report = (delivered / "export-report.json").read_text()
    assert "cut or damaged" in report and "copy the file again" in report
    for mets in delivered.glob("documents/*/mets.xml"):
        assert_valid_xml(mets, "mets.xsd")
