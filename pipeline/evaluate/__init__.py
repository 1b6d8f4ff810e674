"""`anandasky-batch evaluate`: CER and WER of a run (or of prediction files) against ground
truth, per page, document and collection, as a table, JSON and an HTML report.

Stages, one module each: readers (`readers`, `read_alto`, `read_page`, `read_hocr`) ->
`matching` (GT file -> document and page) -> `normalize` + `align` (counting on grapheme
clusters) and `lines` (line detection) -> `metrics` (sums) -> `evaluation` (wiring) ->
`report_table`, `report_json`, `report_html`. Conventions: docs/EVALUATE.md.
"""

from __future__ import annotations

from .evaluation import Evaluation, evaluate
from .normalize import NORMALIZATIONS, Normalization
from .report_html import render_html
from .report_json import to_dict, to_json
from .report_table import render_table

__all__ = [
    "NORMALIZATIONS",
    "Evaluation",
    "Normalization",
    "evaluate",
    "render_html",
    "render_table",
    "to_dict",
    "to_json",
]
