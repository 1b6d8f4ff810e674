"""What resuming a finished collection costs: `run` concluding there is nothing to do, and `status`.

A job store is filled through the job-backend API with 100-page documents whose every page is
done (the input files exist, unchanged, so `run` trusts them by size and mtime), under the same
fingerprint the CLI computes. Then the real CLI runs as a subprocess, interleaved across store
sizes: `run` (same arguments as the first run), `status`, `status --json`, and `--help` as the
floor (interpreter start-up and imports). Peak RSS comes from wait4() of each subprocess.

    python bench/resume_cost.py                      # 10,000 and 100,000 done pages
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchdata
import benchlib
from benchlib import Goal, median

NAME = "resume_cost"
PAGES_PER_FILE = 100


def arguments(argv: list[str] | None) -> argparse.Namespace:
    p = benchlib.parser(__doc__.splitlines()[0])
    p.add_argument(
        "--pages", default="10000,100000", help="done pages per store (multiples of 100)"
    )
    p.add_argument(
        "--size",
        default="full",
        choices=("tiny", "seed", "full"),
        help="checkpoint `run` hashes (full: 1.25 GB, bf16, as published)",
    )
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    if args.quick:
        args.pages, args.size, args.repeats = "200,1000", "tiny", 1
    args.page_counts = [int(x) for x in args.pages.split(",") if x.strip()]
    return args


def master_pdf(path: Path) -> None:
    from PIL import Image

    blank = [Image.new("L", (8, 8), 255) for _ in range(PAGES_PER_FILE)]
    blank[0].save(path, save_all=True, append_images=blank[1:], resolution=72)


def build_store(root: Path, pages: int, model: Path, master: Path) -> tuple[Path, Path, float]:
    """Inputs in boxes of 100 files, each registered and every page marked done."""
    from pipeline.ingest.documents import IngestSettings, discover, probe_document
    from pipeline.jobs import open_for_run
    from pipeline.model import DEFAULT_PROMPT, checkpoint_checksum
    from pipeline.runner.settings import RunSettings, model_code_checksum

    started = time.perf_counter()
    inputs, out = root / "in", root / "out"
    for i in range(pages // PAGES_PER_FILE):
        box = inputs / f"box{i // 100:04d}"
        box.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(master, box / f"doc{i:06d}.pdf")
    info = probe_document(master, IngestSettings())
    settings = RunSettings(
        inputs=(str(inputs),), out_dir=str(out), model_dir=str(model), device="cpu", impl="native"
    )
    with open_for_run(out) as store:
        store.check_fingerprint(
            settings.fingerprint(
                checkpoint_checksum(model),
                DEFAULT_PROMPT,
                device_type="cpu",
                code_checksum=model_code_checksum(model),
            ),
            new_config=False,
        )
        store.save_settings(settings.to_stored())
        for source in discover([inputs]):
            stat = source.path.stat()
            store.sync_document(
                relpath=source.relpath,
                path=str(source.path),
                sha256=info.sha256,
                size=stat.st_size,
                mtime_ns=stat.st_mtime_ns,
                kind=info.kind,
                format=info.format,
                page_count=info.page_count,
            )
        timings = {"load_s": 0.05, "infer_s": 1.5, "write_s": 0.01, "batch_size": 8}
        for task in store.pending_pages():
            store.complete(
                task.page_id,
                device="cpu:0",
                timings=timings,
                confidence=0.9,
                num_tokens=300,
                stop_reason="eos",
            )
        summary = store.summary()
    assert summary.pages["done"] == pages and summary.pages_remaining == 0, summary.pages
    return inputs, out, time.perf_counter() - started


def run_args(inputs: Path, out: Path, model: Path) -> list[str]:
    """The first run's command again, CLI defaults included (`--impl auto` among them)."""
    return ["run", str(inputs), "--out", str(out), "--model", str(model), "--device", "cpu"]


def timed_cli(args: list[str], workdir: Path) -> tuple[float, float, int]:
    """Wall seconds, peak RSS MiB, exit code of one CLI invocation."""
    m = benchlib.run_measured([*benchlib.cli_command(), *args], workdir)
    return m.wall_s, m.peak_rss_mib, m.exit_code


def sha256_mb_per_s(path: Path) -> float:
    started = time.perf_counter()
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return path.stat().st_size / 1e6 / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    from pipeline.model import checkpoint_checksum, make_test_model

    args = arguments(argv)
    stores: dict[int, tuple[Path, Path]] = {}
    setup: dict[int, float] = {}
    samples: dict[tuple[str, int], list[tuple[float, float, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp_name:
        tmp = Path(tmp_name)
        if args.size == "full":
            model = benchdata.make_full_checkpoint(tmp / "model")
        else:
            model = make_test_model(tmp / "model", args.size)
        master = tmp / "master.pdf"
        master_pdf(master)
        for pages in args.page_counts:
            inputs, out, seconds = build_store(tmp / f"store-{pages}", pages, model, master)
            stores[pages], setup[pages] = (inputs, out), seconds
            print(f"store of {pages} done pages built in {seconds:.1f} s", file=sys.stderr)
        started = time.perf_counter()
        checkpoint_checksum(model)
        checksum_s = time.perf_counter() - started
        hash_rate = sha256_mb_per_s(model / "model.safetensors")
        commands = {
            "--help (start-up floor)": lambda i, o: ["--help"],
            "run (nothing to do)": lambda i, o: [*run_args(i, o, model)],
            "run --impl native": lambda i, o: [*run_args(i, o, model), "--impl", "native"],
            "status": lambda i, o: ["status", str(o)],
            "status --json": lambda i, o: ["status", str(o), "--json"],
        }
        if args.quick:  # the two commands the goals are about
            commands = {k: v for k, v in commands.items() if k in ("run (nothing to do)", "status")}
        for r in range(args.repeats):
            for pages in args.page_counts[r % 2 :] + args.page_counts[: r % 2]:
                for name, make in commands.items():
                    result = timed_cli(make(*stores[pages]), tmp / "logs")
                    samples.setdefault((name, pages), []).append(result)
                    print(f"round {r}: {pages} pages {name}: {result[0]:.2f} s", file=sys.stderr)
    rows = []
    for (name, pages), runs in samples.items():
        rows.append(
            {
                "command": name,
                "done_pages": pages,
                "seconds": median([w for w, _, _ in runs]),
                "seconds_all_rounds": [w for w, _, _ in runs],
                "peak_rss_mib": max(m for _, m, _ in runs),
                "exit_codes": sorted({c for _, _, c in runs}),
            }
        )
    rows.sort(key=lambda r: (list(commands).index(r["command"]), r["done_pages"]))
    headers = ["command", "done pages", "median s", "peak RSS MiB", "exit"]
    benchlib.print_table(
        headers,
        [
            [r["command"], r["done_pages"], r["seconds"], r["peak_rss_mib"], r["exit_codes"]]
            for r in rows
        ],
        f"medians of {args.repeats}, checkpoint: {args.size}",
    )
    biggest = max(args.page_counts)
    smallest = min(args.page_counts)

    def row(cmd: str, pages: int) -> dict[str, Any]:
        return next(r for r in rows if r["command"] == cmd and r["done_pages"] == pages)

    run_big, status_big = row("run (nothing to do)", biggest), row("status", biggest)
    growth = run_big["peak_rss_mib"] - row("run (nothing to do)", smallest)["peak_rss_mib"]
    ok_codes = all(r["exit_codes"] == [0] for r in rows)
    goals = [
        Goal(
            f"`run` with nothing to do, {biggest} pages",
            "< 2 s",
            f"{run_big['seconds']:.2f} s",
            run_big["seconds"] < 2,
        ),
        Goal(
            f"`status`, {biggest} pages",
            "< 2 s",
            f"{status_big['seconds']:.2f} s",
            status_big["seconds"] < 2,
        ),
        Goal(
            f"flat memory, `run` {smallest} -> {biggest} pages",
            "< 10% RSS growth",
            f"{growth:+.1f} MiB ({100 * growth / run_big['peak_rss_mib']:.1f}%)",
            growth < 0.1 * run_big["peak_rss_mib"],
        ),
        Goal("every command exits 0", "0", "yes" if ok_codes else "NO", ok_codes),
    ]
    benchlib.print_goals(goals)
    full_gb = 626_371_584 * 2 / 1e9  # the published model in bfloat16
    notes = [
        f"hashing the checkpoint without the cached digest: {checksum_s:.2f} s for the {args.size} checkpoint here; "
        f"sha256 at {hash_rate:.0f} MB/s puts the published model ({full_gb:.2f} GB in bf16) at "
        f"{full_gb * 1e3 / hash_rate:.1f} s on this machine."
    ]
    print(notes[0])
    settings = {
        "pages": args.page_counts,
        "size": args.size,
        "repeats": args.repeats,
        "store_build_s": setup,
    }
    extra = {
        "checksum_s": checksum_s,
        "sha256_mb_per_s": hash_rate,
        "projected_full_bf16_checksum_s": full_gb * 1e3 / hash_rate,
    }
    path = benchlib.write_results(NAME, args.results_dir, settings, rows, goals, notes, extra)
    print(f"wrote {path}")
    return 0 if ok_codes else 1


if __name__ == "__main__":
    sys.exit(main())
