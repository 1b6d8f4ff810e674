"""Coordinator memory against collection size: pending work streamed in chunks vs held whole.

A job store is filled through the job-backend API with N pending pages (1,000-page documents;
no input files are needed, as no page is loaded). Then, each in a fresh interpreter, the
coordinator's pending-work path drains every page: `stream` is what a run does now
(`PendingPages`, chunks read from the work queue), `whole` is what it did before (every pending
task in one list). Peak RSS above the interpreter's own (after imports) is the figure.

    python bench/coordinator_memory.py                  # 10,000 and 1,000,000 pending pages
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from benchlib import Goal

NAME = "coordinator_memory"
PAGES_PER_DOCUMENT = 1000

DRAIN = r"""
import json, resource, sys, time
from pathlib import Path
from pipeline.jobs import open_for_run
from pipeline.runner.pending import PendingPages

def rss_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

out, mode = Path(sys.argv[1]), sys.argv[2]
store = open_for_run(out)
base = rss_mib()
started = time.perf_counter()
drained = 0
if mode == "stream":
    pending = PendingPages(store, out, ("alto", "txt"))
    while pending:
        pending.pop()
        drained += 1
else:
    tasks = store.pending_pages()
    drained = len(tasks)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"drained": drained, "base_mib": base, "peak_mib": peak, "seconds": seconds}))
"""


def build_store(out: Path, pages: int) -> float:
    from pipeline.jobs import open_for_run

    started = time.perf_counter()
    with open_for_run(out) as store:
        for i in range(pages // PAGES_PER_DOCUMENT):
            relpath = f"box{i // 100:04d}/doc{i:06d}.pdf"
            store.sync_document(
                relpath=relpath,
                path=f"/archive/{relpath}",
                sha256=f"{i:064x}",
                size=1,
                mtime_ns=1,
                kind="pdf",
                format="PDF",
                page_count=PAGES_PER_DOCUMENT,
            )
        assert store.count_pending() == pages
    return time.perf_counter() - started


def drain(out: Path, mode: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", DRAIN, str(out), mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=benchlib.REPO,
    )
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    p = benchlib.parser(__doc__.splitlines()[0])
    p.add_argument("--pages", default="10000,1000000", help="pending pages per store")
    args = p.parse_args(argv)
    if args.quick:
        args.pages = "2000,20000"
    counts = [int(x) for x in args.pages.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-coordinator-") as tmp:
        for pages in counts:
            out = Path(tmp) / f"out-{pages}"
            build_s = build_store(out, pages)
            print(f"store of {pages} pending pages built in {build_s:.1f} s", file=sys.stderr)
            for mode in ("stream", "whole"):
                result = drain(out, mode)
                assert result["drained"] == pages, result
                rows.append(
                    {
                        "pending_pages": pages,
                        "mode": mode,
                        "rss_growth_mib": round(result["peak_mib"] - result["base_mib"], 1),
                        "seconds": round(result["seconds"], 2),
                    }
                )
    benchlib.print_table(
        ["pending pages", "mode", "RSS growth MiB", "drain s"],
        [[r["pending_pages"], r["mode"], r["rss_growth_mib"], r["seconds"]] for r in rows],
        "coordinator's pending work, peak RSS above the interpreter after imports",
    )
    stream = {r["pending_pages"]: r["rss_growth_mib"] for r in rows if r["mode"] == "stream"}
    spread = max(stream.values()) - min(stream.values())
    goals = [
        Goal(
            "coordinator RSS flat in collection size",
            f"within a few MiB from {min(counts):,} to {max(counts):,} pending pages",
            f"{spread:.1f} MiB apart",
            spread <= 5.0,
        )
    ]
    benchlib.print_goals(goals)
    benchlib.write_results(NAME, args.results_dir, {"pages": counts}, rows, goals)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
