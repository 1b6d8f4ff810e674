"""Text-line detection: seconds per page per core at the default setting, with line recall.

Runs `pipeline.layout` (the PP-OCR detection model from the rapidocr wheel, onnxruntime, CPU)
over the test pages in tests/data: once with one onnxruntime thread (seconds = core-seconds per
page) and once with onnxruntime's default (one thread per core), interleaved, medians of
`--repeats`. Detection + regions + reading order are timed, as a page loader would run them.
Recall at IoU 0.5 and 0.3 against each page's line ground truth sits beside the times.
`--sweep` also scores other input sizes and unclip ratios (the tuning behind the default).

    python bench/detection.py [--sweep]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Any

import benchlib
from benchlib import Goal, median

NAME = "detection"
PAGES = {  # name: (image, ground truth or None, recall floor at IoU 0.5 from the issue)
    "notarial 0074": (
        "pages/handwriting/170025120000003,0074.jpg",
        "gt/170025120000003,0074.page.xml",
        0.57,
    ),
    "medieval f10": (
        "pages/handwriting/btv1b84473026_f10.jpg",
        "gt/btv1b84473026_f10.alto.xml",
        0.85,
    ),
    "NDL spread": ("pages/vertical/ndl_3508165_9.jpg", "gt/ndl_3508165_9.layout_voc.xml", 0.92),
    "jp_vert": ("pages/vertical/jp_vert.jpg", None, None),
}
MODEL_PIXELS = 4096 * 16 * 16  # AnandaSkyConfig().max_image_pixels
SWEEP_SIDES = (960, 1280, 1536, 2000, 2400)
SWEEP_UNCLIP = (1.2, 1.6)


def arguments(argv: list[str] | None) -> argparse.Namespace:
    p = benchlib.parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sweep", action="store_true", help="also score other max_side/unclip values")
    args = p.parse_args(argv)
    args.pages = dict(PAGES)
    if args.quick:
        args.pages, args.repeats, args.sweep = {"jp_vert": PAGES["jp_vert"]}, 1, False
    return args


def load_pages(pages: dict) -> dict[str, Any]:
    from PIL import Image

    out = {}
    for name, (image, _, _) in pages.items():
        with Image.open(benchlib.TESTDATA / image) as im:
            out[name] = im.convert("RGB")
    return out


def recall(layout: Any, gt: str | None, threshold: float) -> float | None:
    from pipeline.layout.groundtruth import line_recall, read_gt_lines

    if gt is None:
        return None
    return line_recall(
        [ln.bbox for ln in layout.lines], read_gt_lines(benchlib.TESTDATA / gt), threshold
    )


def baseline_error(layout: Any, gt: str | None) -> float | None:
    """Mean |estimated - annotated| baseline height in px, where the GT has baselines."""
    from pipeline.layout.groundtruth import baseline_offsets, read_gt_baselines

    truth = read_gt_baselines(benchlib.TESTDATA / gt) if gt else []
    offsets = baseline_offsets(list(layout.lines), truth)
    return sum(abs(o) for o in offsets) / len(offsets) if offsets else None


def thickness(layout: Any) -> float | None:
    from pipeline.layout.regions import line_thickness

    return line_thickness(list(layout.lines)) if layout.lines else None


def recall_on_model_copy(image_path: str, gt: str | None, detector: Any) -> float | None:
    """Recall@.5 when the page is first shrunk to the full model's pixel budget (1 Mpx) by the
    loader's own `load_page`, as a loader that detects on the copy it sends to the devices."""
    from pipeline.ingest.documents import IngestSettings, load_page
    from pipeline.layout import build_layout
    from pipeline.layout.geometry import PAGE_SIZE_KEY

    if gt is None:
        return None
    image = load_page(benchlib.TESTDATA / image_path, 0, IngestSettings(), MODEL_PIXELS)
    size = image.info[PAGE_SIZE_KEY]
    return recall(build_layout(detector.detect(image, size), size), gt, 0.5)


def timed(detector: Any, image: Any) -> tuple[float, Any, float]:
    """Wall seconds, the layout, and this process's CPU seconds (which waiting for a core taken
    by another process does not inflate: with one thread, the core-seconds a page costs)."""
    from pipeline.layout import build_layout

    started, cpu = time.perf_counter(), time.process_time()
    found = detector.detect(image)
    layout = build_layout(found, image.size)
    return time.perf_counter() - started, layout, time.process_time() - cpu


def measure(args: argparse.Namespace, images: dict[str, Any]) -> list[dict[str, Any]]:
    from pipeline.layout import DetectorSettings, LineDetector

    settings = DetectorSettings()
    detectors = {1: LineDetector(settings, threads=1), 0: LineDetector(settings, threads=0)}
    times: dict[tuple[str, int], list[float]] = {}
    cpu_times: dict[tuple[str, int], list[float]] = {}
    layouts = {}
    for name, image in images.items():
        for det in detectors.values():
            timed(det, image)  # warm-up: first-run allocation of this input shape
        for r in range(args.repeats):
            for threads in (1, 0) if r % 2 == 0 else (0, 1):
                seconds, layouts[name], cpu = timed(detectors[threads], image)
                times.setdefault((name, threads), []).append(seconds)
                cpu_times.setdefault((name, threads), []).append(cpu)
        print(f"{name}: done", file=sys.stderr)
    rows = []
    for name, image in images.items():
        _, gt, floor = args.pages[name]
        layout = layouts[name]
        rows.append(
            {
                "page": name,
                "size": list(image.size),
                "lines": len(layout.lines),
                "regions": len(layout.regions),
                "reading_order": layout.reading_order,
                "recall_50": recall(layout, gt, 0.5),
                "recall_30": recall(layout, gt, 0.3),
                "recall_50_on_1mpx_copy": recall_on_model_copy(
                    args.pages[name][0], gt, detectors[0]
                ),
                "baseline_mean_abs_px": baseline_error(layout, gt),
                "median_line_thickness_px": thickness(layout),
                "issue_floor_50": floor,
                "s_1_thread": median(times[(name, 1)]),
                "s_default_threads": median(times[(name, 0)]),
                "cpu_s_1_thread": median(cpu_times[(name, 1)]),
                "cpu_s_default_threads": median(cpu_times[(name, 0)]),
                "s_all_rounds": {str(k[1]): v for k, v in times.items() if k[0] == name},
            }
        )
    return rows


def sweep(args: argparse.Namespace, images: dict[str, Any]) -> list[dict[str, Any]]:
    from pipeline.layout import DetectorSettings, LineDetector

    rows = []
    for side in SWEEP_SIDES:
        for unclip in SWEEP_UNCLIP:
            settings = dataclasses.replace(DetectorSettings(), max_side=side, unclip_ratio=unclip)
            det = LineDetector(settings, threads=0)
            row: dict[str, Any] = {"max_side": side, "unclip_ratio": unclip}
            for name, (_, gt, _) in args.pages.items():
                if gt is not None:
                    _, layout, _ = timed(det, images[name])
                    row[name] = [recall(layout, gt, 0.5), recall(layout, gt, 0.3)]
            rows.append(row)
            print(f"sweep {side}/{unclip}: {row}", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    from pipeline.layout import DetectorSettings

    args = arguments(argv)
    images = load_pages(args.pages)
    rows = measure(args, images)
    headers = ["page", "size", "lines", "recall@.5", "recall@.3", "@.5 on 1 Mpx", "baseline err px"]
    headers += ["line px", "CPU s 1 thr", "CPU s default"]
    headers += ["s/page 1 thr", "s/page default"]
    fields = ["page", "size", "lines", "recall_50", "recall_30", "recall_50_on_1mpx_copy"]
    fields += ["baseline_mean_abs_px", "median_line_thickness_px", "cpu_s_1_thread"]
    fields += ["cpu_s_default_threads", "s_1_thread", "s_default_threads"]
    benchlib.print_table(
        headers,
        [[r[f] for f in fields] for r in rows],
        f"detection at the default setting {DetectorSettings()}, medians of {args.repeats}",
    )
    sweep_rows = sweep(args, images) if args.sweep else []
    if sweep_rows:
        names = [n for n, (_, gt, _) in args.pages.items() if gt is not None]
        benchlib.print_table(
            ["max_side", "unclip", *[f"{n} @.5/@.3" for n in names]],
            [
                [r["max_side"], r["unclip_ratio"], *[f"{r[n][0]:.2f}/{r[n][1]:.2f}" for n in names]]
                for r in sweep_rows
            ],
            "recall by input long side and unclip ratio",
        )
    goals = [
        Goal(
            f"{r['page']}: recall at IoU 0.5 >= the issue's figure",
            f">= {r['issue_floor_50']}",
            f"{r['recall_50']:.2f}",
            r["recall_50"] >= r["issue_floor_50"],
        )
        for r in rows
        if r["issue_floor_50"] is not None
    ]
    benchlib.print_goals(goals)
    settings = {"detector": dataclasses.asdict(DetectorSettings()), "repeats": args.repeats}
    path = benchlib.write_results(
        NAME, args.results_dir, settings, rows, goals, extra={"sweep": sweep_rows}
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
