"""`export --format pdf`: seconds per page to write searchable PDFs, against `--format txt`.

An OUT folder is built the way a run leaves it (job store, one ALTO + TXT per page) over the
real scans in tests/data: the two test PDFs (9 pages: JPEG 2000 + JBIG2, and a phone scan) and
the four JPEGs, each registered `--copies` times under its own path. Every page carries the
real ground-truth text of tests/data/gt/btv1b84473026_f10.alto.xml (65 lines, 1,864
characters); the page that GT belongs to carries the GT ALTO itself, with its line boxes.
Each round exports into a fresh folder with `txt` (the cost of reading the pages and writing
a delivery) and with `pdf`, interleaved, then once more into the same folder (nothing
changed: the incremental path). Medians of `--repeats` rounds, wall time, one process.

    python bench/export_pdf.py
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from benchlib import Goal, median

NAME = "export_pdf"
GT_ALTO = benchlib.TESTDATA / "gt" / "btv1b84473026_f10.alto.xml"


def arguments(argv: list[str] | None) -> argparse.Namespace:
    p = benchlib.parser(__doc__.splitlines()[0])
    p.add_argument("--copies", type=int, default=3, help="times each source is registered")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if args.quick:
        args.copies, args.repeats = 1, 1
    return args


def sources(quick: bool) -> list[Path]:
    pages = benchlib.TESTDATA / "pages"
    found = sorted(pages.glob("pdf/*.pdf")) + sorted(pages.glob("*/*.jpg"))
    return found[:2] if quick else found


def build_out(out: Path, files: list[Path], copies: int) -> int:
    """OUT as a run leaves it; returns the number of pages."""
    import pypdfium2 as pdfium
    from PIL import Image

    from pipeline.jobs import open_for_run
    from pipeline.outputs.alto import PageMeta, alto_to_text
    from pipeline.outputs.page_files import page_output_paths, write_page_outputs
    from pipeline.records import Recognition

    text = alto_to_text(GT_ALTO.read_bytes())
    ends = tuple(range(3, len(text), 3)) + (len(text),)
    rec = Recognition(text, tuple(-0.1 for _ in ends), ends, "eos")
    store = open_for_run(out)
    pages = 0
    for copy in range(copies):
        for path in files:
            data = path.read_bytes()
            if path.suffix == ".pdf":
                doc = pdfium.PdfDocument(data)
                sizes = [
                    (round(p.get_width() * 300 / 72), round(p.get_height() * 300 / 72)) for p in doc
                ]
                doc.close()
            else:
                sizes = [Image.open(path).size]
            relpath = f"copy{copy}/{path.name}"
            store.sync_document(
                relpath=relpath,
                path=str(path),
                sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
                mtime_ns=path.stat().st_mtime_ns,
                kind="pdf" if path.suffix == ".pdf" else "image",
                format=path.suffix[1:].upper(),
                page_count=len(sizes),
            )
            for number, (w, h) in enumerate(sizes, start=1):
                meta = PageMeta(relpath, number, w, h, "anandasky", "sha256:ab", "Read.")
                write_page_outputs(out, relpath, number, rec, meta)
                if GT_ALTO.stem.split(".")[0] == path.stem:  # the GT's own page: its geometry
                    alto = page_output_paths(out, relpath, number, ("alto",))["alto"]
                    alto.write_bytes(GT_ALTO.read_bytes())
                pages += 1
    for task in store.pending_pages():
        store.claim([task.page_id], "cpu")
        store.complete(
            task.page_id, device="cpu", timings={}, confidence=None, num_tokens=1, stop_reason="eos"
        )
    store.close()
    return pages


def timed_export(out: Path, to: Path, fmt: str) -> float:
    from pipeline.export import export_collection

    started = time.perf_counter()
    report = export_collection(out, to, formats=(fmt,))
    seconds = time.perf_counter() - started
    assert report.complete, report.summary()
    return seconds


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    files = sources(args.quick)
    times: dict[str, list[float]] = {"txt": [], "pdf": [], "pdf again": []}
    with tempfile.TemporaryDirectory(prefix="bench-export-pdf-") as tmp:
        root = Path(tmp)
        pages = build_out(root / "out", files, args.copies)
        timed_export(root / "out", root / "warm", "pdf")  # imports and page cache
        for r in range(args.repeats):
            for fmt in ("txt", "pdf"):
                to = root / f"{fmt}-{r}"
                times[fmt].append(timed_export(root / "out", to, fmt))
                if fmt == "pdf":
                    times["pdf again"].append(timed_export(root / "out", to, fmt))
                    size = sum(f.stat().st_size for f in to.rglob("*.pdf"))
                shutil.rmtree(to)
                print(f"round {r}: {fmt} {times[fmt][-1]:.2f} s", file=sys.stderr)
    rows = [
        {
            "export": fmt,
            "pages": pages,
            "seconds": median(values),
            "seconds_all_rounds": values,
            "s_per_page": median(values) / pages,
        }
        for fmt, values in times.items()
    ]
    benchlib.print_table(
        ["export", "pages", "s", "s/page"],
        [[r["export"], r["pages"], r["seconds"], r["s_per_page"]] for r in rows],
        f"export over {len(files)} sources x {args.copies} copies",
    )
    pdf_s = rows[1]["s_per_page"]
    goals = [Goal("pdf export seconds per page", "measured only", f"{pdf_s:.3f} s", None)]
    benchlib.print_goals(goals)
    settings = {"sources": [f.name for f in files], "copies": args.copies, "repeats": args.repeats}
    notes = [f"PDF bytes per round: {size}"]
    path = benchlib.write_results(NAME, args.results_dir, settings, rows, goals, notes)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
