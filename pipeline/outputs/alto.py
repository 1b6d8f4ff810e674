"""ALTO 4.4 for one recognised page.

The model returns text without geometry: positions come from the detected layout, where there
is one (alto_layout.py says what each `--layout` gives); without it the ALTO carries structure and
confidence only: TextBlocks (paragraphs separated by blank lines), TextLines, Strings (words) and
SPs, with no position attribute (all are optional). The Page keeps the true pixel size of the
image that was recognised. Scripts written without spaces (CJK, kana, Thai...) get one
String per character with no SP between them, so reading the ALTO back invents no spaces.

`normalize_text` defines the exact text a page holds: the TXT file is it, and `alto_to_text`
reads the same text back from the ALTO.
"""

from __future__ import annotations

import bisect
import json
import math
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lxml import etree

from pipeline import SOFTWARE_NAME, __version__
from pipeline.names import escape_relpath
from pipeline.outputs.alto_layout import (
    Segments,
    box_attrs,
    lines_mode,
    points,
    string_boxes,
    words_text,
)
from pipeline.records import Recognition

ALTO_NS = "http://www.loc.gov/standards/alto/ns-v4#"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
SCHEMA_LOCATION = f"{ALTO_NS} http://www.loc.gov/standards/alto/v4/alto-4-4.xsd"
_A = f"{{{ALTO_NS}}}"
_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'

# XML 1.0 allows #x9 #xA #xD [#x20-#xD7FF] [#xE000-#xFFFD] [#x10000-#x10FFFF]; the rest goes.
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# Line breaks after \r\n -> \n; U+2028/2029 and NEL end a line too. \v \f \x1c-\x1e are illegal.
_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")
_WORD = re.compile(r"\S+")  # \S is exactly `not str.isspace()`: tabs, NBSP, U+3000 separate

# Scripts written without spaces between words: each character is its own String.
_NO_SPACE_RANGES = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x2E80, 0x2FFF),  # CJK radicals, Kangxi radicals, ideographic description
    (0x3001, 0x303F),  # CJK symbols and punctuation (U+3000 is a space)
    (0x3040, 0x312F),  # Hiragana, Katakana, Bopomofo (not Hangul jamo: Korean uses spaces)
    (0x3190, 0x31FF),  # Kanbun, Bopomofo extended, CJK strokes, Katakana extension
    (0x3200, 0x33FF),  # enclosed CJK, CJK compatibility
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xA000, 0xA4CF),  # Yi
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFE10, 0xFE1F),  # vertical forms
    (0xFE30, 0xFE4F),  # CJK compatibility forms (vertical brackets)
    (0xFF00, 0xFFEF),  # half- and full-width forms
    (0x16FE0, 0x18AFF),  # ideographic symbols, Tangut
    (0x1B000, 0x1B2FF),  # kana supplements, Nushu
    (0x20000, 0x323AF),  # CJK extensions B-H, compatibility supplement
)
_NO_SPACE_STARTS = [lo for lo, _ in _NO_SPACE_RANGES]


@dataclass(frozen=True)
class PageMeta:
    """Facts about the page that the ALTO records besides the text."""

    source_filename: str
    page_number: int  # 1-based, within the source document
    width: int  # pixels of the page image as recognised
    height: int
    model_name: str
    model_checksum: str
    prompt: str
    software_version: str = __version__
    processing_datetime: datetime | None = None
    layout: Any = None  # pipeline.layout.PageLayout of the page, in its pixels, or None


@dataclass(frozen=True)
class _Segment:
    """One String: its content and its character span in the original model text."""

    content: str
    start: int
    end: int


# ---- text -------------------------------------------------------------------------------


def _clean(text: str) -> tuple[str, list[int]]:
    """Drop XML-illegal characters and unify line breaks to \\n.

    Returns the cleaned text and, for each of its characters, the index in `text` it came from,
    so word confidences can be looked up in the model's token offsets.
    """
    chars: list[str] = []
    origin: list[int] = []
    pos = 0
    for m in _LINE_BREAK.finditer(text):
        _keep(text, pos, m.start(), chars, origin)
        chars.append("\n")
        origin.append(m.start())
        pos = m.end()
    _keep(text, pos, len(text), chars, origin)
    return "".join(chars), origin


def _keep(text: str, start: int, end: int, chars: list[str], origin: list[int]) -> None:
    piece = text[start:end]
    if not _XML_ILLEGAL.search(piece):
        chars.append(piece)
        origin.extend(range(start, end))
        return
    for i in range(start, end):
        if not _XML_ILLEGAL.match(text[i]):
            chars.append(text[i])
            origin.append(i)


def _no_space_script(ch: str) -> bool:
    cp = ord(ch)
    i = bisect.bisect_right(_NO_SPACE_STARTS, cp) - 1
    return i >= 0 and cp <= _NO_SPACE_RANGES[i][1]


def _split_word(word: str) -> Iterator[tuple[int, int]]:
    """Spans of the Strings of one space-free word: runs of spaced scripts stay whole, each
    character (with its combining marks and variation selectors) of an unspaced script alone."""
    run_start = None
    i = 0
    while i < len(word):
        j = i + 1
        while j < len(word) and unicodedata.category(word[j])[0] == "M":
            j += 1
        if _no_space_script(word[i]):
            if run_start is not None:
                yield run_start, i
                run_start = None
            yield i, j
        elif run_start is None:
            run_start = i
        i = j
    if run_start is not None:
        yield run_start, len(word)


def _layout(text: str) -> list[list[list[list[_Segment]]]]:
    """blocks -> lines -> words -> Strings, the structure both TXT and ALTO follow."""
    clean, origin = _clean(text)
    blocks: list[list[list[list[_Segment]]]] = []
    current: list[list[list[_Segment]]] = []
    offset = 0
    for line in clean.split("\n"):
        words = []
        for m in _WORD.finditer(line):
            segments = []
            for a, b in _split_word(m.group()):
                a, b = offset + m.start() + a, offset + m.start() + b
                segments.append(_Segment(clean[a:b], origin[a], origin[b - 1] + 1))
            words.append(segments)
        offset += len(line) + 1
        if words:
            current.append(words)
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return blocks


def normalize_text(text: str) -> str:
    """The text a page holds: XML-illegal characters removed, line breaks unified, whitespace
    runs collapsed to one space, lines stripped, paragraphs separated by exactly one blank line.
    """
    return "\n\n".join(
        "\n".join(" ".join("".join(s.content for s in word) for word in line) for line in block)
        for block in _layout(text)
    )


# ---- confidence -------------------------------------------------------------------------


_LOGPROB_FLOOR = -1000.0  # stands in for -inf/NaN so one bad token cannot poison the sums


def _finite(logprob: float) -> float:
    if math.isnan(logprob) or logprob < _LOGPROB_FLOOR:
        return _LOGPROB_FLOOR
    return min(logprob, 0.0)


def _probability(mean_logprob: float) -> float:
    return round(min(1.0, max(0.0, math.exp(mean_logprob))), 3)


class _TokenIndex:
    """Mean token log-probability over character spans, by bisection and prefix sums."""

    def __init__(self, rec: Recognition) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []  # effective end: an empty token counts for the next char
        self.prefix = [0.0]
        prev = 0
        for logprob, end in zip(rec.token_logprobs, rec.token_ends, strict=False):
            end = min(max(end, prev), len(rec.text))  # tolerate disorder and overshoot
            self.starts.append(prev)
            self.ends.append(max(end, prev + 1))
            self.prefix.append(self.prefix[-1] + _finite(logprob))
            prev = end

    def confidence(self, start: int, end: int) -> float | None:
        first = bisect.bisect_right(self.ends, start)
        last = bisect.bisect_left(self.starts, end)
        if last <= first:
            return None
        return _probability((self.prefix[last] - self.prefix[first]) / (last - first))


def page_confidence(rec: Recognition) -> float | None:
    """exp(mean token log-probability) of the whole page, or None without tokens."""
    if not rec.token_logprobs:
        return None
    return _probability(math.fsum(map(_finite, rec.token_logprobs)) / len(rec.token_logprobs))


# ---- writing ----------------------------------------------------------------------------


def xml_safe_text(value: str) -> str:
    """Metadata may carry undecodable file-name bytes; show them as U+FFFD, drop the rest."""
    value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return _XML_ILLEGAL.sub("", value)


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str):
    el = etree.SubElement(parent, _A + tag, attrs)
    if text is not None:
        el.text = text
    return el


def _description(root: etree._Element, meta: PageMeta) -> None:
    desc = _sub(root, "Description")
    _sub(desc, "MeasurementUnit", "pixel")
    # The escaped name (as in the output folders): bytes that are not UTF-8 stay as %XX.
    _sub(_sub(desc, "sourceImageInformation"), "fileName", escape_relpath(meta.source_filename))
    step = _sub(desc, "Processing", ID="proc1")
    _sub(step, "processingCategory", "contentGeneration")
    if meta.processing_datetime is not None:
        _sub(step, "processingDateTime", meta.processing_datetime.isoformat(timespec="seconds"))
    settings = {"model": meta.model_name, "model_checksum": meta.model_checksum}
    settings["prompt"] = meta.prompt
    if meta.layout is not None:  # where the positions come from
        settings["line_detector"] = meta.layout.detector
        settings["reading_order"] = meta.layout.reading_order
    _sub(step, "processingStepSettings", xml_safe_text(json.dumps(settings, ensure_ascii=False)))
    software = _sub(step, "processingSoftware")
    _sub(software, "softwareName", SOFTWARE_NAME)
    _sub(software, "softwareVersion", xml_safe_text(meta.software_version))


def build_alto(rec: Recognition, meta: PageMeta) -> bytes:
    """Serialise one page as ALTO 4.4 (UTF-8 bytes, with XML declaration)."""
    root = etree.Element(_A + "alto", nsmap={None: ALTO_NS, "xsi": XSI_NS}, SCHEMAVERSION="4.4")
    root.set(f"{{{XSI_NS}}}schemaLocation", SCHEMA_LOCATION)
    _description(root, meta)
    n = meta.page_number
    page_attrs = {"ID": f"p{n}", "PHYSICAL_IMG_NR": str(n), "PROCESSINGREFS": "proc1"}
    page_attrs.update(WIDTH=str(meta.width), HEIGHT=str(meta.height))
    if (pc := page_confidence(rec)) is not None:
        page_attrs["PC"] = str(pc)
    layout = meta.layout
    area = box_attrs(layout.text_area) if layout is not None and layout.text_area else {}
    page_el = _sub(_sub(root, "Layout"), "Page", **page_attrs)
    space = _sub(page_el, "PrintSpace", ID=f"p{n}_ps", **area)
    if lines_mode(rec, layout):
        write_lines_blocks(space, rec, layout, n)
        return _DECLARATION + etree.tostring(root, encoding="UTF-8", pretty_print=True)
    tokens = _TokenIndex(rec)
    n_line = n_string = 0
    blocks = _layout(rec.text)
    for b, block in enumerate(blocks, start=1):
        # the text area is the block's only when the page's text is one block
        block_el = _sub(space, "TextBlock", ID=f"p{n}_b{b}", **(area if len(blocks) == 1 else {}))
        for line in block:
            n_line += 1
            line_el = _sub(block_el, "TextLine", ID=f"p{n}_l{n_line}")
            for w, word in enumerate(line):
                if w:
                    _sub(line_el, "SP")
                for seg in word:
                    n_string += 1
                    attrs = {"ID": f"p{n}_s{n_string}", "CONTENT": seg.content}
                    if (wc := tokens.confidence(seg.start, seg.end)) is not None:
                        attrs["WC"] = str(wc)
                    _sub(line_el, "String", **attrs)
    return _DECLARATION + etree.tostring(root, encoding="UTF-8", pretty_print=True)


# ---- line by line (`--layout lines`) -------------------------------------------------


def line_words(text: str) -> list[Segments]:
    """The words of one line's text, each a list of Strings (spans into `text`); a line crop
    read as several lines is flattened into one line."""
    return [
        [(seg.content, seg.start, seg.end) for seg in word]
        for block in _layout(text)
        for line in block
        for word in line
    ]


def lines_text(rec: Recognition, layout: Any) -> str:
    """The page text of a line-by-line recognition: its regions in reading order, one blank line
    between regions, one line per detected line that got text (the TXT file's content)."""
    blocks = []
    for region in layout.regions:
        texts = [words_text(line_words(rec.lines[i].text)) for i in region.lines]
        if texts := [text for text in texts if text]:
            blocks.append("\n".join(texts))
    return "\n\n".join(blocks)


def write_lines_blocks(space: etree._Element, rec: Recognition, layout: Any, n: int) -> None:
    """TextBlocks per region, TextLines per detected line with text, positioned (alto_layout)."""
    n_line = n_string = 0
    for b, region in enumerate(layout.regions, start=1):
        block_el = None
        for i in region.lines:
            line, line_rec = layout.lines[i], rec.lines[i]
            words = line_words(line_rec.text)
            n_line += 1
            if not words:
                continue  # nothing read: no TextLine (and no line in the TXT)
            if block_el is None:
                block_el = _sub(space, "TextBlock", ID=f"p{n}_b{b}", **box_attrs(region.bbox))
            attrs = {"ID": f"p{n}_l{n_line}", **box_attrs(line.bbox)}
            if line.baseline:
                attrs["BASELINE"] = points(line.baseline)
            if line.vertical:
                attrs["BASEDIRECTION"] = "ttb"
            line_el = _sub(block_el, "TextLine", **attrs)
            _sub(_sub(line_el, "Shape"), "Polygon", POINTS=points(line.polygon))
            tokens = _TokenIndex(line_rec)
            boxes = string_boxes(line.bbox, words, line.vertical)
            for w, (word, word_boxes) in enumerate(zip(words, boxes, strict=True)):
                if w:
                    _sub(line_el, "SP")
                for (content, start, end), position in zip(word, word_boxes, strict=True):
                    n_string += 1
                    s_attrs = {"ID": f"p{n}_s{n_string}", "CONTENT": content, **position}
                    if (wc := tokens.confidence(start, end)) is not None:
                        s_attrs["WC"] = str(wc)
                    _sub(line_el, "String", **s_attrs)


# ---- reading ----------------------------------------------------------------------------


def read_alto(data: bytes) -> tuple[etree._Element, str]:
    """An ALTO file's root element (parsed without entities or network) and its namespace."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)
    root = etree.fromstring(data, parser)
    return root, root.nsmap.get(None, ALTO_NS)


def textline_text(line: etree._Element) -> str:
    """A TextLine's text: its Strings and HYPs, SP as one space."""
    parts = []
    for el in line:
        tag = etree.QName(el).localname
        if tag in ("String", "HYP"):
            parts.append(el.get("CONTENT", ""))
        elif tag == "SP":
            parts.append(" ")
    return "".join(parts)


def alto_to_text(alto_bytes: bytes) -> str:
    """Plain text of an ALTO file: SP -> space, line -> newline, block -> blank line."""
    root, ns = read_alto(alto_bytes)
    blocks = []
    for block in root.iter(f"{{{ns}}}TextBlock"):
        lines = [textline_text(line) for line in block.iter(f"{{{ns}}}TextLine")]
        if lines:
            blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
