"""`run --layout lines` vs `--layout page`: pages/s of the real CLI on the same real pages.

Both modes detect lines in the page loaders (page mode uses the text area); `lines` then sends
every line's crop to the model as its own sequence (a batch's pages together), `page` the whole
page. Each mode runs on the same pages from tests/data in a fresh OUT, alternately, `--repeats`
times; figures come from each run's own `run-summary.json` (wall, model busy seconds, detection
seconds) and job store (tokens generated). With random weights the model stops at
`--max-new-tokens` per sequence, so `lines` generates that many tokens per line where `page`
generates them once per page: read the tokens column beside the times.

    python bench/layout_modes.py [--quick] [--size seed] [--max-new-tokens 16]
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

import benchlib
from benchlib import Goal, median

NAME = "layout_modes"
PAGES = (
    "pages/handwriting/btv1b84473026_f10.jpg",
    "pages/handwriting/170025120000003,0074.jpg",
    "pages/vertical/jp_vert.jpg",
    "pages/vertical/ndl_3508165_9.jpg",
)


def arguments(argv: list[str] | None):
    p = benchlib.parser(__doc__.splitlines()[0])
    p.add_argument("--size", default="seed", choices=("tiny", "seed"))
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.max_new_tokens, args.repeats = "tiny", 4, 1
        args.pages = PAGES[2:3]
    else:
        args.pages = PAGES
    return args


def one_run(layout: str, inputs: Path, model: Path, work: Path, args) -> dict[str, Any]:
    out = work / "out"
    cli_args = ["run", str(inputs), "--out", str(out), "--model", str(model), "--device", "cpu"]
    cli_args += ["--layout", layout, "--max-new-tokens", str(args.max_new_tokens)]
    cli_args += ["--batch-size", str(args.batch_size), "--quiet"]
    measured = benchlib.run_measured([*benchlib.cli_command(), *cli_args], work / "logs")
    if measured.exit_code != 0:
        raise SystemExit(f"{layout} run failed ({measured.exit_code}): {measured.stderr[-2000:]}")
    summary = json.loads((out / "run-summary.json").read_text())["this_run"]
    with sqlite3.connect(out / ".anandasky" / "jobs.sqlite") as db:
        tokens = db.execute("SELECT SUM(num_tokens) FROM pages").fetchone()[0] or 0
    lines = sum(
        path.read_text(encoding="utf-8").count("<TextLine")
        for path in (out / "pages").rglob("*.alto.xml")
    )
    pages = summary["pages_done"]
    busy = sum(d["busy_s"] for d in summary["devices"].values())
    return {
        "layout": layout,
        "pages": pages,
        "wall_s": summary["wall_s"],
        "pages_per_s": pages / summary["wall_s"],
        "model_busy_s": busy,
        "pages_per_busy_s": pages / busy if busy else None,
        "detect_s_per_page": summary["stages"].get("detect_s", 0.0) / max(pages, 1),
        "tokens": tokens,
        "alto_lines": lines,
        "peak_rss_mib": measured.peak_rss_mib,
    }


def main(argv: list[str] | None = None) -> int:
    from pipeline.model import make_test_model

    args = arguments(argv)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-layout-") as tmp_name:
        tmp = Path(tmp_name)
        model = make_test_model(tmp / "model", args.size)
        inputs = tmp / "in"
        inputs.mkdir()
        for rel in args.pages:
            shutil.copy(benchlib.TESTDATA / rel, inputs / Path(rel).name)
        for r in range(args.repeats):
            for layout in ("page", "lines"):
                runs.append(one_run(layout, inputs, model, tmp / f"{layout}-{r}", args))
    results = []
    for layout in ("page", "lines"):
        mine = [run for run in runs if run["layout"] == layout]
        keys = [k for k in mine[0] if k not in ("layout", "pages", "tokens", "alto_lines")]
        merged = {k: median([run[k] for run in mine if run[k] is not None] or [0]) for k in keys}
        results.append({"layout": layout, **{k: mine[0][k] for k in ("pages", "tokens")},
                        "alto_lines": mine[0]["alto_lines"], **merged})  # fmt: skip
    headers = ["layout", "pages", "wall s", "pages/s", "model busy s", "pages/busy s"]
    headers += ["detect s/page", "tokens", "ALTO lines", "peak RSS MiB"]
    fields = ["layout", "pages", "wall_s", "pages_per_s", "model_busy_s", "pages_per_busy_s"]
    fields += ["detect_s_per_page", "tokens", "alto_lines", "peak_rss_mib"]
    benchlib.print_table(headers, [[r[f] for f in fields] for r in results], NAME)
    page, lines = results
    goals = [
        Goal(
            "lines vs page, pages/s (whole run)",
            "measured, no target",
            f"{lines['pages_per_s']:.3f} vs {page['pages_per_s']:.3f}",
            None,
        )
    ]
    benchlib.print_goals(goals)
    settings = {k: getattr(args, k) for k in ("size", "max_new_tokens", "batch_size", "repeats")}
    settings["pages"] = list(args.pages)
    benchlib.write_results(NAME, args.results_dir, settings, results, goals, extra={"runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
