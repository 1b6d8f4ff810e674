"""Pages/s of a run on a Ray cluster of 1 vs 2 simulated nodes, and the driver's cost per page.

A local Ray cluster (`ray.cluster_utils.Cluster`, this machine's own address, a temp folder of
its own) with one fake NPU per node, one model actor each, computing on the CPU with one
thread (`--device cpu --ray-resource NPU`); the same generated collection is run by the real
CLI with 1 node, then again (fresh OUT) after a second node joins, and once locally with one
worker process for reference. Throughput is taken over the processing window (first worker
ready to last page done, from run.log and the job store) so model loading does not count;
the driver's own CPU time per page and its PNG packing come from the pool's log line.

    python bench/ray_scaling.py [--quick]
    python bench/ray_scaling.py --ship [--ship-mb 1024]

`--ship` measures shipping the model folder instead (pipeline.cluster.model_shipping): a folder
with a weights file of --ship-mb random bytes, a node that treats it as absent (FAULT INJECTION:
node:no-model), and an actor there calling the shipping code as a model actor does: the
driver's checksums, putting the files into the object store, the node writing and verifying
them, the next check of its cache, and the check in place on the head.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchdata
import benchlib

NAME = "ray_scaling"
_READY = re.compile(r"^(\S+ \S+) INFO worker (\S+) ready on ")
_PER_NODE = re.compile(r"pages loaded per node \(head = the driver's own loaders\): (.*)")
_DRIVER = re.compile(r"driver: ([\d.]+) CPU s for (\d+) page\(s\) sent \(([\d.]+) ms/page; "
                     r"packing as PNG ([\d.]+) ms/page\)")  # fmt: skip


def arguments(argv: list[str] | None) -> argparse.Namespace:
    p = benchlib.parser(__doc__.splitlines()[0])
    p.add_argument("--size", default="seed", choices=("tiny", "seed"))
    p.add_argument("--pages", type=int, default=60)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--dpi", type=int, default=150)
    p.add_argument(
        "--node-loading",
        action="store_true",
        help="also, on the 2 nodes with line detection on: pages loaded by the head's one "
        "loader vs by Ray tasks on the nodes (--ray-loading nodes)",
    )
    p.add_argument("--ship", action="store_true", help="measure model shipping instead")
    p.add_argument("--ship-mb", type=int, default=1024, help="weights size for --ship")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.pages, args.max_new_tokens = "tiny", 4, 4
    return args


def make_inputs(folder: Path, pages: int, scale: float) -> None:
    folder.mkdir(parents=True)
    size = (int(1275 * scale), int(1650 * scale))
    for i in range(pages):
        benchdata.page_image(*size, seed=2000 + i).save(folder / f"scan_{i:03d}.jpg", quality=85)


def _stamp(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def analyse(label: str, out: Path, run: benchlib.Measured) -> dict[str, Any]:
    log = (out / "run.log").read_text(encoding="utf-8")
    ready = [_stamp(m.group(1)) for line in log.splitlines() if (m := _READY.match(line))]
    db = sqlite3.connect(f"file:{out / '.anandasky' / 'jobs.sqlite'}?mode=ro", uri=True)
    try:
        done, last, infer_s, per_device = db.execute(
            "SELECT COUNT(*), MAX(finished_at), SUM(json_extract(timings, '$.infer_s')), "
            "COUNT(DISTINCT device) FROM pages WHERE state = 'done'"
        ).fetchone()
    finally:
        db.close()
    window = last - min(ready) if ready and last else None
    driver = _DRIVER.search(log)
    per_node = _PER_NODE.search(log)
    stages = json.loads((out / "run-summary.json").read_text())["this_run"]["stages"]
    return {
        "setup": label,
        "exit_code": run.exit_code,
        "pages_done": done,
        "workers_that_did_pages": per_device,
        "wall_s": run.wall_s,
        "processing_window_s": window,
        "pages_per_s": done / window if window else None,
        "model_s_sum": infer_s,
        "driver_cpu_ms_per_page": float(driver.group(3)) if driver else None,
        "driver_pack_ms_per_page": float(driver.group(4)) if driver else None,
        "loaded_per_node": per_node.group(1) if per_node else "head (all)",
        # Loading and line detection, per page, wherever they ran (a loader's own clock).
        "load_detect_ms_per_page": 1000 * (stages["load_s"] + stages["detect_s"]) / max(done, 1),
    }


def run_once(label: str, tmp: Path, cli_args: list[str]) -> dict[str, Any]:
    out = tmp / f"out-{label}"
    measured = benchlib.run_measured(
        [*benchlib.cli_command(), *cli_args, "--out", str(out)], tmp / f"logs-{label}"
    )
    if measured.exit_code != 0:
        print(measured.stderr[-2000:], file=sys.stderr)
    return analyse(label, out, measured)


def timed(call, *args) -> tuple[Any, float]:
    started = time.perf_counter()
    value = call(*args)
    return value, time.perf_counter() - started


def ship_folder(folder: Path, megabytes: int) -> Path:
    """A weights folder as the shipping code sees it (config, tokenizer, one weights file);
    the weights are random bytes: nothing loads them, only copies and hashes."""
    from pipeline.model import make_test_model

    model = make_test_model(folder, "tiny")
    with open(model / "model.safetensors", "wb") as out:
        for _ in range(megabytes // 64):
            out.write(os.urandom(64 << 20))
    return model


def ship_bench(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    import ray
    from ray.cluster_utils import Cluster

    from pipeline.cluster.model_shipping import ModelShipment, model_here

    model = ship_folder(tmp / "model", args.ship_mb)
    store = {"object_store_memory": (args.ship_mb + 512) << 20}
    node = {"temp_dir": str(tmp), "num_cpus": 1, **store}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "resources": {"HERE": 1}})
    os.environ["ANANDASKY_TEST_FAULT"] = "node:no-model"  # FAULT INJECTION: no folder there
    cluster.add_node(**node, resources={"SHIP": 1})
    del os.environ["ANANDASKY_TEST_FAULT"]
    cluster.wait_for_nodes()
    rows = []
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        check = ray.remote(lambda *a: timed(model_here, *a))
        there, here = check.options(resources={"SHIP": 1}), check.options(resources={"HERE": 1})
        shipment = ModelShipment(str(model))
        _, seconds = timed(shipment.start)
        rows.append(("driver: checksums of its folder", seconds))
        value, seconds = ray.get(there.remote(str(model), shipment.identity, None))
        rows.append((f"node without it: check -> {type(value).__name__}", seconds))
        files, seconds = timed(shipment.files_for, "node", "-", "has no model folder")
        rows.append(("driver: put the files into the object store", seconds))
        value, seconds = ray.get(there.remote(str(model), shipment.identity, files))
        rows.append((f"node: fetch, write, verify -> {value.how}", seconds))
        value, seconds = ray.get(there.remote(str(model), shipment.identity, None))
        rows.append((f"node, next actor or run: check -> {value.how}", seconds))
        value, seconds = ray.get(here.remote(str(model), shipment.identity, None))
        rows.append((f"head, folder in place: check -> {value.how}", seconds))
    finally:
        ray.shutdown()
        cluster.shutdown()
    return [{"step": step, "seconds": seconds} for step, seconds in rows]


def main(argv: list[str] | None = None) -> int:
    from ray.cluster_utils import Cluster

    from pipeline.model import make_test_model

    args = arguments(argv)
    if args.ship:
        with tempfile.TemporaryDirectory(prefix="rb", dir="/tmp") as tmp_name:
            os.makedirs(Path(tmp_name) / "ray")
            os.environ["RAY_TMPDIR"] = tmp_name
            results = ship_bench(args, Path(tmp_name))
        rows = [[r["step"], r["seconds"]] for r in results]
        benchlib.print_table(["step", "s"], rows, title=f"model folder of {args.ship_mb} MB")
        settings = {k: v for k, v in vars(args).items() if k != "results_dir"}
        benchlib.write_results(NAME + "_ship", args.results_dir, settings, results)
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="rb", dir="/tmp") as tmp_name:
        tmp = Path(tmp_name)
        os.makedirs(tmp / "ray")
        os.environ["RAY_TMPDIR"] = str(tmp)  # Ray's "current cluster" note stays in here
        model = make_test_model(tmp / "model", args.size)
        make_inputs(tmp / "in", args.pages, 0.5 if args.quick else 1.0)
        common = [
            "run", str(tmp / "in"), "--model", str(model), "--device", "cpu",
            "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size),
            "--dpi", str(args.dpi), "--no-repetition-guard", "--quiet",
            # Line detection runs in the driver's loaders and would compete for the same two
            # cores as the actors; what is measured here is the recognition side.
            "--detector", "none",
        ]  # fmt: skip
        results.append(run_once("local, 1 worker", tmp, [*common, "--workers", "1"]))
        node = {"temp_dir": str(tmp), "num_cpus": 1, "resources": {"NPU": 1}}
        cluster = Cluster(initialize_head=True, head_node_args={**node})
        try:
            ray_args = ["--ray", cluster.address, "--ray-resource", "NPU"]
            results.append(run_once("ray, 1 node", tmp, [*common, *ray_args]))
            cluster.add_node(**node)
            cluster.wait_for_nodes()
            results.append(run_once("ray, 2 nodes", tmp, [*common, *ray_args]))
            if args.node_loading:  # line detection on: loading is the heavy part
                detecting = [*common[:-2], *ray_args, "--loaders", "1"]
                results.append(run_once("2 nodes, detect, head loads", tmp, detecting))
                nodes = [*detecting, "--ray-loading", "nodes"]
                results.append(run_once("2 nodes, detect, nodes load", tmp, nodes))
        finally:
            cluster.shutdown()
    one, two = results[1]["pages_per_s"], results[2]["pages_per_s"]
    ratio = two / one if one and two else None
    rows = [
        [r["setup"], r["pages_done"], r["workers_that_did_pages"], r["wall_s"],
         r["processing_window_s"], r["pages_per_s"], r["driver_cpu_ms_per_page"],
         r["driver_pack_ms_per_page"], r["load_detect_ms_per_page"], r["loaded_per_node"]]
        for r in results
    ]  # fmt: skip
    benchlib.print_table(
        ["setup", "pages", "workers used", "wall s", "window s", "pages/s", "driver CPU ms/page",
         "PNG pack ms/page", "load+detect ms/page", "pages loaded per node"],
        rows,
        title=f"{args.pages} pages, {args.size} model, {args.max_new_tokens} new tokens; "
        f"2 nodes / 1 node = {ratio:.2f}x" if ratio else "",
    )  # fmt: skip
    settings = {k: v for k, v in vars(args).items() if k != "results_dir"}
    benchlib.write_results(
        NAME,
        args.results_dir,
        settings,
        results,
        extra={"two_over_one_node": ratio},
        notes=["2-core shared machine: two actors with one thread each, plus the driver and "
               "its page loaders, compete for the same two cores."],
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
