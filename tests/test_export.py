"""`export`: delivery packages built from a real job store and real page outputs.

Every test builds an OUT folder the way a run does (JobStore, write_page_outputs, mark_done,
fatal failures), exports it, and reads the delivery back: each format must give back exactly
the page transcription, every XML must validate against its official schema, and pages without
a transcription must be reported, never delivered as empty text.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import REPO, assert_valid_alto, assert_valid_xml
from lxml import etree

from pipeline.errors import BadArguments, ExitCode
from pipeline.export import export_collection
from pipeline.export.mets import METS_NS, XLINK_NS
from pipeline.export.page_xml import PAGE_NS
from pipeline.jobs.records import printable
from pipeline.jobs.sqlite_store import JobStore
from pipeline.outputs.alto import PageMeta, alto_to_text, normalize_text, page_confidence
from pipeline.outputs.page_files import page_output_paths, write_page_outputs
from pipeline.records import Recognition

ALL = ("txt", "alto", "mets", "page", "hocr")
XHTML = "{http://www.w3.org/1999/xhtml}"
M = f"{{{METS_NS}}}"
WHEN = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)

# relpath -> page texts; None marks a page that fails for good, ... a page still pending.
COLLECTION: dict[str, list] = {
    "box1/letter.pdf": [
        "Dear Sir,\nI write to you\tabout the  harvest.\n\nYours faithfully,\nJ. Smith",
        "第一行漢字と仮名\n第二行：句読点。",
        None,
    ],
    "box1/scroll.tif": ["天地玄黃 宇宙洪荒\n日月盈昃"],
    "box2/odd%name\u00e9.png": ["Zeile eins\nZeile zwei — Ende"],
    "box2/later.pdf": ["Begun, not finished.", ...],
    os.fsdecode(b"box2/caf\xe9.jpg"): ["Latin-1 file name"],  # not valid UTF-8
    "box2/blank.jpg": [""],  # the model saw no text: a real, empty transcription
}
UNDECODABLE = "box2/caf\\xe9.jpg"  # as the report (and `status`) print it
ERROR = "recognition failed: device lost"


def recognition(text: str, seed: int = 0) -> Recognition:
    """Tokens of up to three characters with varied log-probabilities, as the model gives."""
    ends = tuple(range(3, len(text), 3)) + ((len(text),) if text else ())
    logprobs = tuple(-0.05 * ((i + seed) % 7) for i in range(len(ends)))
    return Recognition(text, logprobs, ends, "eos")


def build_out(out: Path, collection: dict[str, list] = COLLECTION) -> JobStore:
    """An OUT folder as a run leaves it; returns the still-open (exclusive) store."""
    store = JobStore.open(out)
    for relpath, pages in collection.items():
        store.sync_document(
            relpath=relpath,
            path=f"/archive/in/{relpath}",
            sha256=f"{len(relpath):064x}",
            size=1000 + len(pages),
            mtime_ns=1,
            kind="pdf" if relpath.endswith(".pdf") else "image",
            format=relpath.rsplit(".", 1)[-1].upper(),
            page_count=len(pages),
        )
    for task in store.pending_pages():
        text = collection[task.relpath][task.page_index]
        if text is ...:
            continue
        store.claim([task.page_id], "cpu")
        if text is None:
            store.fail(task.page_id, ERROR, max_attempts=3, fatal=True)
        else:
            finish_page(out, store, task, text)
    store.fail_document(
        relpath="box3/broken.pdf", path="/archive/in/box3/broken.pdf", reason="encrypted"
    )
    return store


def finish_page(out: Path, store: JobStore, task, text: str) -> Recognition:
    rec = recognition(text, task.page_index)
    number = task.page_index + 1
    meta = PageMeta(
        task.relpath,
        number,
        1200 + number,
        1800,
        "anandasky",
        "sha256:ab",
        "Read.",
        processing_datetime=WHEN,
    )
    write_page_outputs(out, task.relpath, number, rec, meta)
    store.complete(
        task.page_id,
        device="cpu",
        timings={"infer_s": 0.5},
        confidence=page_confidence(rec),
        num_tokens=rec.num_tokens,
        stop_reason="eos",
    )
    return rec


@pytest.fixture
def run(tmp_path):
    """The run's store stays open (and locked) while the tests export: export reads beside it."""
    store = build_out(tmp_path / "out")
    yield store
    store.close()


@pytest.fixture
def out(run) -> Path:
    return run.out_dir


def transcription(relpath: str, number: int) -> str:
    """What the page holds: the model's text as `normalize_text` defines it."""
    return normalize_text(COLLECTION[relpath][number - 1])


def folder(to: Path, relpath: str) -> Path:
    report = json.loads((to / "export-report.json").read_text("utf-8"))
    (entry,) = [d for d in report["documents"] if d["relpath"] == relpath]
    return to / entry["folder"]


def files_of(root: Path) -> dict[str, tuple[int, int]]:
    """{relative name: (inode, mtime_ns)} of every file: a rewrite changes both."""
    return {
        str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".anandasky-export")
    }


# ---- round trips -----------------------------------------------------------------------------


def test_every_format_gives_back_the_page_transcription_and_validates(out, tmp_path):
    to = tmp_path / "delivery"
    report = export_collection(out, to, formats=ALL)
    expected = {
        "box1/letter.pdf": [1, 2],
        "box1/scroll.tif": [1],
        "box2/odd%name\u00e9.png": [1],
        os.fsdecode(b"box2/caf\xe9.jpg"): [1],
        "box2/blank.jpg": [1],
    }
    for relpath, numbers in expected.items():
        doc = folder(to, printable(relpath))
        texts = [transcription(relpath, n) for n in numbers]
        assert (doc / "text.txt").read_text("utf-8") == "\f".join(t + "\n" for t in texts)
        hocr = etree.parse(str(doc / "hocr.html"))
        hocr_pages = hocr.findall(f".//{XHTML}div[@class='ocr_page']")
        assert [p.get("id") for p in hocr_pages] == [f"page_{n}" for n in numbers]
        for n, text, hocr_page in zip(numbers, texts, hocr_pages, strict=True):
            alto = doc / f"alto/{n:04d}.xml"
            assert_valid_alto(alto)
            assert alto.read_bytes() == page_output_paths(out, relpath, n)["alto"].read_bytes()
            assert alto_to_text(alto.read_bytes()) == text
            assert_valid_xml(doc / f"page/{n:04d}.xml", "page-2019-07-15.xsd")
            assert page_xml_text(doc / f"page/{n:04d}.xml") == text
            assert hocr_page_text(hocr_page) == text
            assert f"bbox 0 0 {1200 + n} 1800; ppageno {n - 1}" in hocr_page.get("title")
        assert_valid_xml(doc / "mets.xml", "mets.xsd")
    assert folder(to, "box2/odd%name\u00e9.png").name == "odd%25name\u00e9.png"  # escaped
    assert folder(to, UNDECODABLE).name == "caf%E9.jpg"
    assert (folder(to, "box2/blank.jpg") / "text.txt").read_bytes() == b"\n"
    assert report.totals()["pages_exported"] == 7


def page_xml_text(path: Path) -> str:
    root = etree.parse(str(path))
    ns = {"pc": PAGE_NS}
    regions = root.findall(".//pc:TextRegion", ns)
    return "\n\n".join(
        "\n".join(
            line.findtext("pc:TextEquiv/pc:Unicode", namespaces=ns)
            for line in region.findall("pc:TextLine", ns)
        )
        for region in regions
    )


def hocr_page_text(page) -> str:
    paragraphs = page.findall(f".//{XHTML}p[@class='ocr_par']")
    return "\n\n".join(
        "\n".join(
            "".join(line.itertext()) for line in par.findall(f"{XHTML}span[@class='ocr_line']")
        )
        for par in paragraphs
    )


def test_words_and_confidences_come_from_the_alto(out, tmp_path):
    to = tmp_path / "delivery"
    export_collection(out, to, formats=("page", "hocr"))
    doc = folder(to, "box1/letter.pdf")
    alto = etree.parse(str(page_output_paths(out, "box1/letter.pdf", 2)["alto"]))
    strings = [(s.get("CONTENT"), s.get("WC")) for s in alto.iter("{*}String")]
    assert len(strings) > 10  # one String per CJK character
    page = etree.parse(str(doc / "page/0002.xml"))
    words = [
        (w.findtext("{*}TextEquiv/{*}Unicode"), w.find("{*}TextEquiv").get("conf"))
        for w in page.iter(f"{{{PAGE_NS}}}Word")
    ]
    assert words == strings
    full_page = "0,0 1201,0 1201,1799 0,1799"  # page 2 is 1202 x 1800: no invented boxes
    assert {c.get("points") for c in page.iter(f"{{{PAGE_NS}}}Coords")} == {full_page}
    hocr = etree.parse(str(doc / "hocr.html"))
    hocr_words = [
        (w.text, w.get("title"))
        for w in hocr.iter(f"{XHTML}span")
        if w.get("class") == "ocrx_word" and w.get("id").startswith("word_2_")
    ]
    assert hocr_words == [(c, f"x_wconf {round(float(wc) * 100)}") for c, wc in strings]
    assert all("bbox" not in (w.get("title") or "") for w in hocr.iter(f"{XHTML}span"))
    metas = {m.get("name"): m.get("content") for m in hocr.iter(f"{XHTML}meta")}
    assert metas["ocr-system"].startswith("anandasky-batch ")
    assert "ocrx_word" in metas["ocr-capabilities"] and "ocrp_wconf" in metas["ocr-capabilities"]


def test_mets_points_at_the_source_page_and_the_alto_in_page_order(out, tmp_path):
    to = tmp_path / "delivery"
    export_collection(out, to, formats=("mets", "page"))
    doc = folder(to, "box1/letter.pdf")
    mets = etree.parse(str(doc / "mets.xml"))
    agent = mets.find(f"{M}metsHdr/{M}agent")
    assert (agent.get("ROLE"), agent.get("TYPE"), agent.get("OTHERTYPE")) == (
        "CREATOR",
        "OTHER",
        "SOFTWARE",
    )
    assert agent.findtext(f"{M}name").startswith("anandasky-batch ")
    groups = {g.get("USE"): g for g in mets.iter(f"{M}fileGrp")}
    assert set(groups) == {"IMAGE", "FULLTEXT", "PAGE"}
    (image,) = groups["IMAGE"]
    assert (
        image.find(f"{M}FLocat").get(f"{{{XLINK_NS}}}href") == "file:///archive/in/box1/letter.pdf"
    )
    assert image.get("MIMETYPE") == "application/pdf"
    pages = mets.findall(f"{M}structMap[@TYPE='PHYSICAL']/{M}div[@TYPE='physSequence']/{M}div")
    assert [(p.get("TYPE"), p.get("ORDER")) for p in pages] == [("page", "1"), ("page", "2")]
    files = {f.get("ID"): f for f in mets.iter(f"{M}file")}
    for page in pages:
        area = page.find(f"{M}fptr/{M}area")
        assert (area.get("FILEID"), area.get("ORDER")) == ("IMG", page.get("ORDER"))
        targets = [files[f.get("FILEID")] for f in page.findall(f"{M}fptr[@FILEID]")]
        hrefs = [t.find(f"{M}FLocat").get(f"{{{XLINK_NS}}}href") for t in targets]
        n = int(page.get("ORDER"))
        assert hrefs == [f"alto/{n:04d}.xml", f"page/{n:04d}.xml"]
        for target, href in zip(targets, hrefs, strict=True):
            assert int(target.get("SIZE")) == (doc / href).stat().st_size
    single = etree.parse(str(folder(to, "box1/scroll.tif") / "mets.xml"))
    (page,) = single.findall(f".//{M}div[@TYPE='page']")
    assert page.find(f"{M}fptr").get("FILEID") == "IMG"  # a one-image source needs no area


# ---- failed and pending pages ----------------------------------------------------------------


def test_failed_and_pending_pages_are_reported_and_never_filled(out, tmp_path):
    to = tmp_path / "delivery"
    report = export_collection(out, to, formats=ALL)
    assert report.exit_code == ExitCode.SOME_PAGES_FAILED
    saved = json.loads((to / "export-report.json").read_text("utf-8"))
    docs = {d["relpath"]: d for d in saved["documents"]}
    assert docs["box1/letter.pdf"]["not_exported"] == [
        {"page": 3, "state": "failed", "error": ERROR}
    ]
    assert docs["box2/later.pdf"]["not_exported"] == [{"page": 2, "state": "pending"}]
    assert saved["not_exported_documents"] == [
        {"relpath": "box3/broken.pdf", "reason": "document failed: encrypted"}
    ]
    assert saved["totals"]["pages_failed"] == 1 and saved["totals"]["pages_pending"] == 1
    doc = folder(to, "box1/letter.pdf")
    assert (doc / "text.txt").read_text("utf-8").count("\f") == 1  # two pages, no third
    assert not (doc / "alto/0003.xml").exists() and not (doc / "page/0003.xml").exists()
    mets = etree.parse(str(doc / "mets.xml"))
    assert [d.get("ORDER") for d in mets.iterfind(f".//{M}div[@TYPE='page']")] == ["1", "2"]
    assert "letter.pdf page 3: failed: " + ERROR in report.summary()


def test_documents_with_no_page_done_are_listed_per_page_and_selected_by_glob(tmp_path):
    collection = {
        "a/started.pdf": ["Begun.", ...],
        "a/todo.pdf": [..., ..., ...],
        "b/failing.pdf": [None, ...],
        "b/todo.pdf": [..., ...],
    }
    out, to = tmp_path / "out", tmp_path / "delivery"
    with build_out(out, collection) as run:
        running = [t.page_id for t in run.pending_pages() if t.relpath == "a/todo.pdf"][1]
        run.claim([running], "cpu")  # being recognised: still pending for the export
        report = export_collection(out, to, formats=ALL)
        saved = json.loads((to / "export-report.json").read_text("utf-8"))
        pending = [{"page": n, "state": "pending"} for n in (1, 2, 3)]
        assert saved["not_exported_documents"] == [
            {
                "relpath": "a/todo.pdf",
                "reason": "no page done yet",
                "pages": 3,
                "not_exported": pending,
            },
            {
                "relpath": "b/failing.pdf",
                "reason": "no page done yet",
                "pages": 2,
                "not_exported": [{"page": 1, "state": "failed", "error": ERROR}, pending[1]],
            },
            {
                "relpath": "b/todo.pdf",
                "reason": "no page done yet",
                "pages": 2,
                "not_exported": pending[:2],
            },
            {"relpath": "box3/broken.pdf", "reason": "document failed: encrypted"},
        ]
        assert saved["pending_in_documents_not_started"] == 6
        assert saved["totals"]["pages_pending"] == 7 and saved["totals"]["pages_failed"] == 0
        printed = report.summary()
        assert "  a/todo.pdf: no page done yet (3 pending)\n" in printed
        assert "  b/failing.pdf: no page done yet (1 failed, 1 pending)\n" in printed
        assert "7 pages still to do" in printed
        assert sorted(p.name for p in (to / "documents").glob("*/*")) == ["started.pdf"]
        report = export_collection(out, to, formats=ALL, documents=["a/*"], include_failed=True)
    saved = json.loads((to / "export-report.json").read_text("utf-8"))
    assert [d["relpath"] for d in saved["documents"]] == ["a/started.pdf"]
    assert [d["relpath"] for d in saved["not_exported_documents"]] == ["a/todo.pdf"]
    assert saved["pending_in_documents_not_started"] == 3  # b/todo.pdf's pages are not counted
    assert saved["totals"]["pages_pending"] == 4 and report.totals()["documents_not_exported"] == 1
    assert "4 pages still to do" in report.summary() and "b/todo.pdf" not in report.summary()
    assert not (to / "documents/a/todo.pdf").exists()  # no placeholders for a document not begun


def test_include_failed_writes_placeholders_marked_in_every_format(out, tmp_path):
    to = tmp_path / "delivery"
    export_collection(out, to, formats=ALL, include_failed=True)
    doc = folder(to, "box1/letter.pdf")
    pages = (doc / "text.txt").read_text("utf-8").split("\f")
    assert pages[2] == "[anandasky-batch: page 3 not transcribed (failed)]\n"
    placeholder = doc / "alto/0003.xml"
    assert_valid_alto(placeholder)
    alto = etree.parse(str(placeholder))
    page = alto.find(".//{*}Page")
    assert "failed" in page.get("QUALITY_DETAIL") and ERROR in page.get("QUALITY_DETAIL")
    assert page.find("{*}PrintSpace") is None and alto_to_text(placeholder.read_bytes()) == ""
    assert not (doc / "page/0003.xml").exists()  # PAGE cannot say "size unknown"
    hocr = etree.parse(str(doc / "hocr.html"))
    third = hocr.find(f".//{XHTML}div[@id='page_3']")
    assert "x_status failed" in third.get("title") and "bbox" not in third.get("title")
    assert not third.findall(f".//{XHTML}span")
    mets = etree.parse(str(doc / "mets.xml"))
    assert_valid_xml(doc / "mets.xml", "mets.xsd")
    div = mets.find(f".//{M}div[@ORDER='3']")
    assert div.get("LABEL") == "not transcribed: failed"
    assert [f.find(f"{M}area").get("FILEID") for f in div.findall(f"{M}fptr")] == ["IMG"]
    later = (folder(to, "box2/later.pdf") / "text.txt").read_text("utf-8")
    assert later.endswith("\f[anandasky-batch: page 2 not transcribed (pending)]\n")


def test_pages_whose_outputs_are_gone_or_txt_only_are_reported(out, tmp_path):
    page_output_paths(out, "box1/scroll.tif", 1)["alto"].unlink()  # a run with --formats txt
    for path in page_output_paths(out, "box2/odd%name\u00e9.png", 1).values():
        path.unlink()  # deleted by hand after the run
    to = tmp_path / "delivery"
    report = export_collection(out, to, formats=ALL)
    docs = {d["relpath"]: d for d in report.documents}
    scroll = docs["box1/scroll.tif"]
    assert scroll["without_alto"] == [1] and scroll["not_exported"] == []
    assert (to / scroll["folder"] / "text.txt").read_text("utf-8") == (
        transcription("box1/scroll.tif", 1) + "\n"
    )
    assert not (to / scroll["folder"] / "alto").exists()
    assert not (to / scroll["folder"] / "page").exists()
    odd = docs["box2/odd%name\u00e9.png"]
    assert [p["state"] for p in odd["not_exported"]] == ["missing"]
    assert "resume" in odd["not_exported"][0]["error"]
    assert not (to / odd["folder"]).exists()  # nothing to deliver: no empty text file either
    assert report.totals()["pages_without_alto"] == 1
    assert report.totals()["pages_missing_output"] == 1


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
