"""How busy a real run keeps its device workers: model forward vs everything else.

Writes a collection of 60 generated page scans (a 40-page scanned PDF and 20 JPEGs) and runs
the real `anandasky-batch run` on it with the `seed` checkpoint on 1 and 2 CPU workers. Per
worker it reads the run's own accounting: the summary's busy %, the worker-ready time in
run.log, and the per-page timings the job store keeps (infer_s, load_s, write_s, finished_at).

    window  = from "worker ready" (run.log) to the worker's last page recorded done (store)
    forward = sum of the worker's pages' infer_s (store; the summary's busy time)
    waiting = window - forward (no batch in hand: input not ready, dispatch, queue transfer)

    python bench/pipeline_efficiency.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

import benchdata
import benchlib
from benchlib import Goal

NAME = "pipeline_efficiency"
_SUMMARY = re.compile(
    r"^\s+(\S+): (\d+) pages, ([\d.]+) pages/s while busy, (\d+)% busy, model load ([\d.]+) s"
)
_THIS_RUN = re.compile(r"this run: (\d+) pages done, (\d+) failed in ([\d.]+) s")
_LOGGED = re.compile(r"^(\S+ \S+) \w+ (.*)$")
_READY = re.compile(r"^(\S+ \S+) INFO worker (\S+) ready on .* after ([\d.]+) s")


def arguments(argv: list[str] | None) -> argparse.Namespace:
    p = benchlib.parser(__doc__.splitlines()[0])
    p.add_argument("--size", default="seed", choices=("tiny", "seed"))
    p.add_argument("--workers", default="1,2", help="CPU worker counts, one run each")
    p.add_argument("--pdf-pages", type=int, default=40)
    p.add_argument("--image-pages", type=int, default=20)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dpi", type=int, default=300)
    p.add_argument(
        "--detector", default="rapidocr", help="the run's line detector (none: no detection)"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.workers, args.pdf_pages, args.image_pages, args.max_new_tokens = (
            "tiny",
            "1",
            3,
            2,
            4,
        )
    args.worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    return args


def make_inputs(folder: Path, pdf_pages: int, image_pages: int, scale: float) -> int:
    """A scanned-looking PDF (JPEG page images, 150 DPI letter) and loose JPEG scans."""
    folder.mkdir(parents=True)
    size = (int(1275 * scale), int(1650 * scale))
    if pdf_pages:
        pages = [benchdata.page_image(*size, seed=i) for i in range(pdf_pages)]
        pages[0].save(
            folder / "register.pdf", save_all=True, append_images=pages[1:], resolution=150
        )
    for i in range(image_pages):
        benchdata.page_image(*size, seed=1000 + i).save(folder / f"scan_{i:03d}.jpg", quality=85)
    return pdf_pages + image_pages


def run_cli(args: list[str], log_dir: Path) -> benchlib.Measured:
    """Run the CLI to completion (wall time, peak RSS of its process tree, output)."""
    m = benchlib.run_measured([*benchlib.cli_command(), *args], log_dir)
    if m.exit_code != 0:
        print(m.stderr[-2000:], file=sys.stderr)
    return m


def _timestamp(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def store_timings(out: Path) -> dict[str, dict[str, float]]:
    """Per device: pages, sums of the page timings, first start and last finish."""
    db = sqlite3.connect(f"file:{out / '.anandasky' / 'jobs.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT device, COUNT(*), SUM(json_extract(timings, '$.infer_s')), "
            "SUM(json_extract(timings, '$.load_s')), SUM(json_extract(timings, '$.write_s')), "
            "MIN(started_at), MAX(finished_at) FROM pages WHERE state = 'done' GROUP BY device"
        ).fetchall()
    finally:
        db.close()
    keys = ("pages", "infer_s", "load_s", "write_s", "first_started", "last_finished")
    return {row[0]: dict(zip(keys, row[1:], strict=True)) for row in rows}


def timeline(
    log_lines: list[str], launched: float, exited: float, last_page: float
) -> dict[str, float]:
    """Where the run's wall time went, from run.log's timestamps (ms precision)."""
    stamps = [(_timestamp(m.group(1)), m.group(2)) for x in log_lines if (m := _LOGGED.match(x))]
    started = next(t for t, text in stamps if text.startswith("run started"))
    ready = [t for t, text in stamps if text.startswith("worker ") and " ready on " in text]
    summary = next((t for t, text in stamps if text.startswith("this run:")), stamps[-1][0])
    return {
        "cli_start_s": started - launched,  # interpreter, imports, checksum, store, plan
        "to_first_worker_ready_s": (min(ready) if ready else started) - started,
        "processing_s": last_page - (min(ready) if ready else started),
        "shutdown_s": summary - last_page,  # workers stopped and joined, pool shut down
        "after_summary_s": exited - summary,  # interpreter exit (loader pool, queues)
        "total_s": exited - launched,
    }


def analyse(workers: int, out: Path, run: benchlib.Measured) -> dict[str, Any]:
    stdout = run.stdout
    summary = {m.group(1): m for line in stdout.splitlines() if (m := _SUMMARY.match(line))}
    this_run = _THIS_RUN.search(stdout)
    ready = {}
    log_lines = (out / "run.log").read_text(encoding="utf-8").splitlines()
    for line in log_lines:
        if m := _READY.match(line):
            ready[m.group(2)] = (_timestamp(m.group(1)), float(m.group(3)))
    stored = store_timings(out)
    devices = []
    for label in sorted(stored):
        s = stored[label]
        ready_at, model_load = ready.get(label, (s["first_started"], 0.0))
        window = s["last_finished"] - ready_at
        busy = s["infer_s"]
        devices.append(
            {
                "device": label,
                "pages": s["pages"],
                "model_load_s": model_load,
                "window_s": window,
                "forward_s": busy,
                "waiting_s": window - busy,
                "busy_fraction": busy / window if window > 0 else None,
                "busy_fraction_incl_load": busy / (window + model_load) if window > 0 else None,
                "summary_busy_percent": int(summary[label].group(4)) if label in summary else None,
                "summary_pages_per_s_busy": float(summary[label].group(3))
                if label in summary
                else None,
                "loader_load_s": s["load_s"],
                "coordinator_write_s": s["write_s"],
            }
        )
    return {
        "workers": workers,
        "exit_code": run.exit_code,
        "wall_s": run.wall_s,
        "run_reported_s": float(this_run.group(3)) if this_run else None,
        "pages_done": int(this_run.group(1)) if this_run else 0,
        "pages_per_s": int(this_run.group(1)) / run.wall_s if this_run else 0.0,
        "peak_rss_mib_largest_process": run.peak_rss_mib,
        "timeline": timeline(
            log_lines,
            run.started_at,
            run.ended_at,
            max(s["last_finished"] for s in stored.values()),
        ),
        "devices": devices,
    }


def main(argv: list[str] | None = None) -> int:
    from pipeline.model import make_test_model

    args = arguments(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-efficiency-") as tmp_name:
        tmp = Path(tmp_name)
        model = make_test_model(tmp / "model", args.size)
        total = make_inputs(
            tmp / "in", args.pdf_pages, args.image_pages, 0.25 if args.quick else 1.0
        )
        for workers in args.worker_counts:
            out = tmp / f"out-{workers}"
            cli_args = [
                "run",
                str(tmp / "in"),
                "--out",
                str(out),
                "--model",
                str(model),
                "--device",
                "cpu",
            ]
            cli_args += ["--workers", str(workers), "--max-new-tokens", str(args.max_new_tokens)]
            cli_args += ["--batch-size", str(args.batch_size), "--dpi", str(args.dpi)]
            cli_args += ["--detector", args.detector]
            measured = run_cli(cli_args, tmp / f"logs-{workers}")
            print(measured.stdout, file=sys.stderr)
            results.append(analyse(workers, out, measured))
    rows = [
        {**d, "workers": r["workers"], "run_pages_per_s": r["pages_per_s"], "wall_s": r["wall_s"]}
        for r in results
        for d in r["devices"]
    ]
    headers = [
        "workers",
        "device",
        "pages",
        "load s",
        "window s",
        "forward s",
        "waiting s",
        "busy %",
        "summary %",
        "writes s",
        "run pages/s",
    ]
    fields = [
        "workers",
        "device",
        "pages",
        "model_load_s",
        "window_s",
        "forward_s",
        "waiting_s",
        "busy_fraction",
        "summary_busy_percent",
        "coordinator_write_s",
        "run_pages_per_s",
    ]
    benchlib.print_table(
        headers,
        [[r[f] if f != "busy_fraction" else round(100 * r[f], 1) for f in fields] for r in rows],
        f"{total} pages, {args.size} model, max {args.max_new_tokens} new tokens, batch {args.batch_size}",
    )
    phases = [
        "cli_start_s",
        "to_first_worker_ready_s",
        "processing_s",
        "shutdown_s",
        "after_summary_s",
    ]
    benchlib.print_table(
        [
            "workers",
            "CLI start",
            "to worker ready",
            "processing",
            "shutdown",
            "exit",
            "total",
            "forward %",
        ],
        [
            [r["workers"], *(r["timeline"][p] for p in phases), r["timeline"]["total_s"]]
            + [round(100 * max(d["forward_s"] for d in r["devices"]) / r["wall_s"], 1)]
            for r in results
        ],
        "run timeline, seconds (run.log timestamps); forward %: busiest worker's forward / wall",
    )
    ok = all(r["exit_code"] == 0 and r["pages_done"] == total for r in results)
    worst = min((d["busy_fraction"] for d in rows if d["busy_fraction"] is not None), default=0.0)
    goals = [
        Goal(
            "every page done, exit 0",
            f"{total} pages",
            ", ".join(f"{r['pages_done']} (exit {r['exit_code']})" for r in results),
            ok,
        ),
        Goal(
            "worker busy in model forward (of its window)",
            ">= 90%",
            f"{100 * worst:.1f}% (least busy worker)",
            worst >= 0.9,
        ),
    ]
    benchlib.print_goals(goals)
    settings = {k: v for k, v in vars(args).items() if k not in ("results_dir", "worker_counts")}
    settings["pages"] = total
    path = benchlib.write_results(
        NAME, args.results_dir, settings, rows, goals, extra={"runs": results}
    )
    print(f"wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
