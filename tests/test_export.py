"""`export`: delivery packages built from a real job store and real page outputs.

Every test builds an OUT folder the way a run does (JobStore, write_page_outputs, mark_done,
fatal failures), exports it, and reads the delivery back: each format must give back exactly
the page transcription, every XML must validate against its official schema, and pages without
a transcription must be reported, never delivered as empty text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import export_fixture
from conftest import assert_valid_alto, assert_valid_xml
from export_fixture import (
    ALL,
    ERROR,
    UNDECODABLE,
    XHTML,
    M,
    build_out,
    folder,
    transcription,
)
from lxml import etree

from pipeline.errors import ExitCode
from pipeline.export import export_collection
from pipeline.export.mets import XLINK_NS
from pipeline.export.page_xml import PAGE_NS
from pipeline.jobs.records import printable
from pipeline.outputs.alto import alto_to_text
from pipeline.outputs.page_files import page_output_paths

# The OUT folder's fixtures (export_fixture.py), for pytest to pass in by name.
run, out = export_fixture.run, export_fixture.out

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
    assert "restore the files" in odd["not_exported"][0]["error"]
    assert not (to / odd["folder"]).exists()  # nothing to deliver: no empty text file either
    assert report.totals()["pages_without_alto"] == 1
    assert report.totals()["pages_missing_output"] == 1


def test_file_names_read_the_same_in_every_format_even_when_not_utf8(out, tmp_path):
    """A name's bytes that are not UTF-8 show as %XX (and `%` as %25) wherever a format names
    the source, as ALTO's fileName and the delivery's folders do; never as U+FFFD."""
    to = tmp_path / "delivery"
    export_collection(out, to, formats=ALL)
    for relpath, escaped in (
        (os.fsdecode(b"box2/caf\xe9.jpg"), "box2/caf%E9.jpg"),
        ("box2/odd%name\u00e9.png", "box2/odd%25name\u00e9.png"),
    ):
        doc = folder(to, printable(relpath))
        alto_name = etree.parse(str(doc / "alto/0001.xml")).findtext(".//{*}fileName")
        page = etree.parse(str(doc / "page/0001.xml")).find(".//{*}Page")
        hocr = etree.parse(str(doc / "hocr.html"))
        mets = etree.parse(str(doc / "mets.xml")).getroot()
        assert alto_name == escaped
        assert page.get("imageFilename") == f"/archive/in/{escaped}"
        assert hocr.findtext(f".//{XHTML}title") == escaped
        assert f'image "/archive/in/{escaped}"' in hocr.find(f".//{XHTML}div").get("title")
        assert mets.get("LABEL") == escaped
        for name in ("page/0001.xml", "hocr.html", "mets.xml"):
            assert "\ufffd" not in (doc / name).read_text("utf-8"), name
