"""What `anandasky-batch evaluate` does once its arguments are parsed: evaluate, print, write."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.errors import BadArguments, ExitCode

from .evaluation import evaluate
from .normalize import Normalization
from .nothing import check_something_evaluated, no_gt_matched
from .report_html import render_html
from .report_json import to_json
from .report_table import render_table


def _write(path: Path, text: str, option: str) -> None:
    try:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise BadArguments(f"{option} {path}: cannot be written ({exc.strerror or exc})") from None


def run_evaluate(
    out: Path | None,
    *,
    gt: Path,
    pred: Path | None = None,
    mapping: Path | None = None,
    normalize: str | None = None,
    iou: float = 0.5,
    as_json: bool = False,
    json_file: Path | None = None,
    html_file: Path | None = None,
    thumbnails: bool = True,
    workers: int = 1,
) -> int:
    """Print the table (or JSON), write the requested reports; 0 once a page was compared.

    Nothing compared is an error (exit 2 or 6, `nothing`), raised after the reports are out."""
    ev = evaluate(
        gt,
        run=out,
        pred=pred,
        mapping=mapping,
        normalization=Normalization.parse(normalize),
        iou_threshold=iou,
        keep_texts=html_file is not None,
        workers=workers,
    )
    if not ev.documents:
        raise no_gt_matched(ev, gt, out or pred)
    if json_file is not None or as_json:
        text = to_json(ev)
        if json_file is not None:
            _write(json_file, text, "--json-file")
        if as_json:
            print(text, end="")
    if html_file is not None:
        _write(html_file, render_html(ev, thumbnails=thumbnails), "--html")
    if not as_json:
        print(render_table(ev))
    check_something_evaluated(ev)  # after the reports: they say why, page by page
    return ExitCode.OK
