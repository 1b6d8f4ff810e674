"""Memory of one worker process: peak RSS at load and in generation, model bytes vs parameters.

Each case runs in a fresh process started the way a worker starts (interpreter, torch, then
`load_recognizer` from a weights folder on disk), which then recognises one page at the model's
token budget. tiny/seed are the test checkpoints (float32 on disk); full is a random-weight
checkpoint of the published size written in bfloat16, as the published weights are (a float32
CPU worker casts them while loading). Model bytes are measured from the tensors'
storage and compared with parameters x dtype size; the KV cache a batch needs is computed.

    python bench/memory.py
    python bench/memory.py --cases full:float32 --new-tokens 8
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import benchdata
import benchlib
from benchlib import Goal

NAME = "memory"
BATCH = 8  # the run's default --batch-size


def arguments(argv: list[str] | None) -> argparse.Namespace:
    p = benchlib.parser(__doc__.splitlines()[0])
    p.add_argument(
        "--cases",
        default="tiny:float32,seed:float32,full:float32,full:bfloat16",
        help="SIZE:DTYPE,...",
    )
    p.add_argument("--new-tokens", type=int, default=4, help="tokens generated for the page")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--child",
        nargs=4,
        metavar=("SIZE", "DTYPE", "MODEL_DIR", "NEW_TOKENS"),
        help=argparse.SUPPRESS,  # the measured process itself
    )
    args = p.parse_args(argv)
    if args.quick:
        args.cases, args.new_tokens, args.threads = "tiny:float32", 2, 1
    args.case_list = [tuple(c.split(":")) for c in args.cases.split(",") if c.strip()]
    return args


def child(size: str, dtype: str, model_dir: str, new_tokens: int) -> dict[str, Any]:
    """Runs inside the measured process; prints one JSON line."""
    report: dict[str, Any] = {"rss_start_mib": benchlib.current_rss_mib()}
    import torch
    from transformers import Qwen3ForCausalLM  # noqa: F401  (load_recognizer would import it)

    from pipeline.recognition import load_recognizer

    report["rss_after_import_mib"] = benchlib.current_rss_mib()
    report["after_import"] = benchlib.rss_split_mib()
    rec = load_recognizer(model_dir, device="cpu", dtype=dtype)
    report["rss_after_load_mib"] = benchlib.current_rss_mib()
    report["after_load"] = benchlib.rss_split_mib()
    report["peak_rss_after_load_mib"] = benchlib.peak_rss_mib()
    config = rec.config
    page = benchdata.page_image(2480, 3508, seed=0)  # A4 at 300 DPI: fills the token budget
    report["page_tokens"] = rec.image_token_count(*page.size)
    rec.recognize([page], max_new_tokens=new_tokens, repetition_guard=False)
    report["rss_after_generation_mib"] = benchlib.current_rss_mib()
    report["after_generation"] = benchlib.rss_split_mib()
    report["peak_rss_mib"] = benchlib.peak_rss_mib()
    item = torch.empty(0, dtype=rec.torch_dtype).element_size()
    report["num_parameters"] = rec.num_parameters
    report["model_bytes"] = benchdata.model_bytes(rec.model)
    report["expected_bytes"] = rec.num_parameters * item
    t = config.text
    prompt = report["page_tokens"] + 50  # chat template and prompt around the image tokens
    per_position = 2 * t.num_hidden_layers * t.num_key_value_heads * t.head_dim * item
    report["kv_mib_per_row_256_new"] = per_position * (prompt + 256) / 2**20
    report["kv_mib_per_row_2048_new"] = per_position * (prompt + 2048) / 2**20
    report["torch_threads"] = torch.get_num_threads()
    return report


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    if args.child:
        benchdata.set_threads(args.threads)
        size, dtype, model_dir, tokens = args.child
        print(json.dumps(child(size, dtype, model_dir, int(tokens))))
        return 0
    from pipeline.model import make_test_model

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp_name:
        tmp = Path(tmp_name)
        folders: dict[str, Path] = {}
        for size, dtype in args.case_list:
            if size not in folders:
                print(f"writing the {size} checkpoint", file=sys.stderr)
                folders[size] = (
                    benchdata.make_full_checkpoint(tmp / size)
                    if size == "full"
                    else make_test_model(tmp / size, size)
                )
            command = [
                sys.executable,
                __file__,
                "--child",
                size,
                dtype,
                str(folders[size]),
                str(args.new_tokens),
            ]
            if args.threads:
                command += ["--threads", str(args.threads)]
            measured = benchlib.run_measured(command, tmp / "logs")
            if measured.exit_code != 0:
                print(measured.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"case {size}:{dtype} failed (exit {measured.exit_code})")
            report = json.loads(measured.stdout.strip().splitlines()[-1])
            disk = sum(f.stat().st_size for f in folders[size].glob("*.safetensors"))
            rows.append(
                {
                    "size": size,
                    "dtype": dtype,
                    "checkpoint_mib": disk / 2**20,
                    "wall_s": measured.wall_s,
                    **report,
                }
            )
            print(
                f"{size}:{dtype}: peak {report['peak_rss_mib']:.0f} MiB in {measured.wall_s:.1f} s",
                file=sys.stderr,
            )
    for r in rows:
        r["model_mib"] = r["model_bytes"] / 2**20
        r["model_vs_expected"] = r["model_bytes"] / r["expected_bytes"]
        r["kv_mib_batch8_2048_new"] = BATCH * r["kv_mib_per_row_2048_new"]
        for kind in ("anon", "file"):
            before = r["after_import"].get(f"{kind}_mib", 0.0)
            r[f"load_{kind}_mib"] = r["after_load"].get(f"{kind}_mib", 0.0) - before
            r[f"gen_{kind}_mib"] = r["after_generation"].get(f"{kind}_mib", 0.0) - before
    columns = {
        "size": "size",
        "dtype": "dtype",
        "num_parameters": "params (M)",
        "model_mib": "model MiB",
        "model_vs_expected": "x expected",
        "rss_after_import_mib": "runtime MiB",
        "load_anon_mib": "load +anon",
        "load_file_mib": "load +file",
        "peak_rss_after_load_mib": "peak load",
        "gen_anon_mib": "gen +anon",
        "gen_file_mib": "gen +file",
        "peak_rss_mib": "peak RSS",
        "page_tokens": "page tok",
        "kv_mib_per_row_2048_new": "KV MiB/row",
        "kv_mib_batch8_2048_new": "KV MiB x8",
    }
    headers, fields = list(columns.values()), list(columns)
    table = [[r[f] / 1e6 if f == "num_parameters" else r[f] for f in fields] for r in rows]
    benchlib.print_table(
        headers, table, f"one worker process per case, one page, {args.new_tokens} new tokens"
    )
    exact = all(abs(r["model_vs_expected"] - 1) < 0.01 for r in rows)
    goals = [
        Goal(
            "model bytes = parameters x dtype size",
            "within 1%",
            ", ".join(f"{r['size']}:{r['dtype']} {r['model_vs_expected']:.4f}x" for r in rows),
            exact,
        )
    ]
    benchlib.print_goals(goals)
    settings = {
        "cases": [f"{s}:{d}" for s, d in args.case_list],
        "new_tokens": args.new_tokens,
        "threads": args.threads,
        "batch_for_kv": BATCH,
    }
    path = benchlib.write_results(NAME, args.results_dir, settings, rows, goals)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
