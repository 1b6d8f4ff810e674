"""PDF rasterizers: pypdfium2 vs pdf2image/poppler vs the `pdftoppm` command line, page by page.

The first two go through `pipeline.ingest.rasterize.render_pdf_page`, the function a page loader calls
(open the document, paint one page, close it); the third runs `pdftoppm -r DPI -f N -l N
-cropbox FILE` and reads the PPM it writes to stdout. Each is timed over every page of the
scanned PDFs in tests/data/pages/pdf, interleaved, at 300 DPI and, second, at the
resolution a run with the full model really paints (the page shrunk to the model's 4096-patch
budget before it is painted). Output equivalence: pixel sizes, and the mean absolute pixel
difference of each renderer against PDFium.

    python bench/rasterize.py
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import benchlib
from benchlib import Goal, median

NAME = "rasterize"
MODES = ("pypdfium2", "pdf2image/poppler", "pdftoppm CLI")
FULL_MODEL_PIXELS = 4096 * 16 * 16  # AnandaSkyConfig().max_image_pixels


def arguments(argv: list[str] | None) -> argparse.Namespace:
    p = benchlib.parser(__doc__.splitlines()[0])
    p.add_argument(
        "--pdf",
        type=Path,
        nargs="*",
        default=None,
        help="PDFs (default: the test scans in tests/data)",
    )
    p.add_argument("--dpi", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if args.pdf is None:
        folder = benchlib.TESTDATA / "pages" / "pdf"
        args.pdf = sorted(folder.glob("*.pdf")) or [
            benchlib.REPO / "samples/inputs/gettysburg_3p.pdf"
        ]
    if args.quick:
        args.pdf, args.dpi, args.repeats = (
            [benchlib.REPO / "samples/inputs/gettysburg_3p.pdf"],
            50,
            1,
        )
    return args


def pages_of(pdfs: list[Path]) -> list[tuple[Path, int, float, float]]:
    import pypdfium2 as pdfium

    pages = []
    for path in pdfs:
        doc = pdfium.PdfDocument(str(path))
        try:
            for i in range(len(doc)):
                pages.append((path, i, *doc.get_page_size(i)))
        finally:
            doc.close()
    return pages


def render(mode: str, path: Path, index: int, dpi: float, limit: int) -> Any:
    from PIL import Image

    from pipeline.ingest.rasterize import render_pdf_page

    if mode == "pypdfium2":
        return render_pdf_page(
            path, index, dpi=dpi, rasterizer="pdfium", password=None, pixel_limit=limit
        )
    if mode == "pdf2image/poppler":
        return render_pdf_page(
            path, index, dpi=dpi, rasterizer="poppler", password=None, pixel_limit=limit
        )
    command = [
        "pdftoppm",
        "-r",
        f"{dpi:.6f}",
        "-f",
        str(index + 1),
        "-l",
        str(index + 1),
        "-cropbox",
        str(path),
    ]
    ppm = subprocess.run(command, capture_output=True, check=True, timeout=600).stdout
    return Image.open(io.BytesIO(ppm)).convert("RGB")


def mean_abs_diff(a: Any, b: Any) -> float | None:
    import numpy as np

    if a.size != b.size:
        return None
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


def run_setting(
    label: str, pages: list, dpi: int, limit: int, repeats: int
) -> list[dict[str, Any]]:
    from pipeline.ingest.rasterize import fit_dpi

    times: dict[str, list[float]] = {m: [] for m in MODES}
    last: dict[str, list[Any]] = {}
    for r in range(repeats):
        for mode in MODES[r % 3 :] + MODES[: r % 3]:  # interleaved, rotated
            images = []
            started = time.perf_counter()
            for path, index, w_pt, h_pt in pages:
                # The CLI gets the resolution the pipeline would pick; the others pick it themselves.
                page_dpi = fit_dpi(w_pt, h_pt, dpi, limit) if mode == "pdftoppm CLI" else dpi
                images.append(render(mode, path, index, page_dpi, limit))
            times[mode].append(time.perf_counter() - started)
            last[mode] = images
            print(f"{label} round {r}: {mode} {times[mode][-1]:.2f} s", file=sys.stderr)
    reference = last["pypdfium2"]
    base = median(times["pypdfium2"])
    rows = []
    for mode in MODES:
        diffs = [mean_abs_diff(a, b) for a, b in zip(last[mode], reference, strict=True)]
        same = [d is not None for d in diffs]
        rows.append(
            {
                "setting": label,
                "renderer": mode,
                "pages": len(pages),
                "seconds": median(times[mode]),
                "seconds_all_rounds": times[mode],
                "pages_per_s": len(pages) / median(times[mode]),
                "speed_vs_pypdfium2": base / median(times[mode]),
                "same_size_pages": sum(same),
                "sizes": [list(im.size) for im in last[mode]],
                "mean_abs_diff_vs_pypdfium2": median([d for d in diffs if d is not None])
                if any(same)
                else None,
                "mean_abs_diff_per_page": diffs,
                "megapixels_per_page": median([im.width * im.height / 1e6 for im in last[mode]]),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    from pipeline.ingest.documents import IngestSettings
    from pipeline.ingest.rasterize import require_poppler

    args = arguments(argv)
    require_poppler()
    pages = pages_of(args.pdf)
    settings_list = [
        (f"{args.dpi} DPI", IngestSettings.max_image_pixels),
        ("full-model budget (1 MP)", FULL_MODEL_PIXELS),
    ]
    rows = []
    for label, limit in settings_list:
        rows += run_setting(label, pages, args.dpi, limit, args.repeats)
    headers = [
        "setting",
        "renderer",
        "pages",
        "s",
        "pages/s",
        "x pypdfium2",
        "MP/page",
        "same size",
        "mean |diff|",
    ]
    fields = [
        "setting",
        "renderer",
        "pages",
        "seconds",
        "pages_per_s",
        "speed_vs_pypdfium2",
        "megapixels_per_page",
        "same_size_pages",
        "mean_abs_diff_vs_pypdfium2",
    ]
    title = (
        f"{len(pages)} pages of {', '.join(p.name for p in args.pdf)}, medians of {args.repeats}"
    )
    benchlib.print_table(headers, [[r[f] for f in fields] for r in rows], title)
    sizes_equal = all(r["same_size_pages"] == r["pages"] for r in rows)
    fastest = {
        s: max((r for r in rows if r["setting"] == s), key=lambda r: r["pages_per_s"])["renderer"]
        for s, _ in settings_list
    }
    goals = [
        Goal(
            "renderers paint the same pixel size",
            "every page",
            "yes" if sizes_equal else "NO",
            sizes_equal,
        ),
        Goal(
            "default rasterizer is the fastest",
            "pypdfium2",
            ", ".join(f"{s}: {m}" for s, m in fastest.items()),
            all(m == "pypdfium2" for m in fastest.values()),
        ),
    ]
    benchlib.print_goals(goals)
    settings = {
        "pdfs": [str(p) for p in args.pdf],
        "dpi": args.dpi,
        "repeats": args.repeats,
        "pixel_limits": dict(settings_list),
    }
    path = benchlib.write_results(NAME, args.results_dir, settings, rows, goals)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
