"""`anandasky-batch export`: the results of a run as a delivery package per document.

A delivery folder DIR holds, for input `box1/letter.pdf` (its path escaped like OUT/pages, so
two documents never collide and every name stays printable and inside DIR):

    DIR/export-report.json                       what is delivered, and every page that is not
    DIR/documents/box1/letter.pdf/text.txt       txt: pages in order, form feed between them
    DIR/documents/box1/letter.pdf/txt/0001.txt   txt with --per-page-txt
    DIR/documents/box1/letter.pdf/alto/0001.xml  alto: the run's ALTO 4.4, byte for byte
    DIR/documents/box1/letter.pdf/page/0001.xml  page: PAGE XML 2019-07-15
    DIR/documents/box1/letter.pdf/hocr.html      hocr: one hOCR file for the document
    DIR/documents/box1/letter.pdf/mets.xml       mets: source file, ALTO (and PAGE) files, page order
    DIR/documents/box1/letter.pdf/searchable.pdf pdf: the source's pages with invisible text
    DIR.zip                                      with --zip: all of the above, members under DIR's name

One module per format (pdf: `pdf_document` assembles the file, `pdf_layer` draws the text,
`pdf_lines` places the lines, `pdf_font` makes the glyph-less font); `collection` reads the
store and drives them, `delivery` keeps DIR up to date incrementally, `report` says what is
missing. Failed and pending pages are never exported as empty text: they are left out (and
listed in the report), or with `--include-failed` written as placeholders marked as such in
every format that can hold one; in a PDF they stay as the source's page without text.
"""

from .collection import export_collection
from .options import DEFAULT_FORMATS, FORMATS, ExportOptions, parse_separator
from .report import ExportReport

__all__ = [
    "DEFAULT_FORMATS",
    "FORMATS",
    "ExportOptions",
    "ExportReport",
    "export_collection",
    "parse_separator",
]
