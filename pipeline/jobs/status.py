"""`anandasky-batch status OUT`: where a collection stands, readable while a run is going on."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from pipeline.errors import BadArguments, ExitCode
from pipeline.jobs import open_catalogue, reported_store_errors
from pipeline.jobs.connect import LOCK_NAME, STATE_DIR
from pipeline.jobs.records import StoreSummary

_SHOWN_FAILURES = 50


def status_report(summary: StoreSummary) -> dict:
    """The JSON form: counts per state, per-device throughput, failures with reasons."""
    report = summary.to_dict()
    report["devices"] = [
        {
            "device": device,
            "pages": stats.pages_done,
            "infer_seconds": round(stats.infer_seconds, 3),
            "pages_per_second": round(stats.pages_done / stats.infer_seconds, 3)
            if stats.infer_seconds
            else None,
        }
        for device, stats in sorted(summary.devices.items())
    ]
    report["nodes"] = _per_node(report["devices"])
    report["detect_seconds"] = round(sum(s.detect_seconds for s in summary.devices.values()), 3)
    return report


def _per_node(devices: list[dict]) -> list[dict]:
    """A cluster run's workers are labelled `NODE/DEVICE`: their sums per node (empty for a
    local run, whose labels name a device only)."""
    nodes: dict[str, dict] = {}
    for device in devices:
        node, slash, _ = device["device"].rpartition("/")
        if not slash:
            continue
        row = nodes.setdefault(node, {"node": node, "workers": 0, "pages": 0, "infer_seconds": 0})
        row["workers"] += 1
        row["pages"] += device["pages"]
        row["infer_seconds"] = round(row["infer_seconds"] + device["infer_seconds"], 3)
    for row in nodes.values():
        seconds = row["infer_seconds"]
        row["pages_per_second"] = round(row["pages"] / seconds, 3) if seconds else None
    return list(nodes.values())


def run_in_progress(out_dir: Path) -> bool | None:
    """Whether a run holds OUT now (its lock taken); None where that cannot be told. Pages a
    run killed with SIGKILL left 'running' are not running: the next run does them again."""
    try:
        fd = os.open(Path(out_dir) / STATE_DIR / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # releases the shared lock, if taken
    return False


def _page_counts(report: dict) -> str:
    counts = [f"{count} {state}" for state, count in report["pages"].items()]
    if report.get("run_in_progress") is False and report["pages"].get("running"):
        counts = [
            f"{count} running (left by a run that was killed; the next run does them again)"
            if state == "running"
            else text
            for (state, count), text in zip(report["pages"].items(), counts, strict=True)
        ]
    return "pages: " + ", ".join(counts)


def _text_lines(report: dict) -> list[str]:
    pages, documents = report["pages"], report["documents"]
    lines = [
        _page_counts(report),
        "documents: "
        + ", ".join(f"{count} {state.replace('_', ' ')}" for state, count in documents.items()),
    ]
    for device in report["devices"]:
        rate = device["pages_per_second"]
        lines.append(
            f"  {device['device']}: {device['pages']} pages"
            + (f", {rate:.2f} pages/s while computing" if rate else "")
        )
    for node in report["nodes"]:
        rate = node["pages_per_second"]
        lines.append(
            f"  node {node['node']}: {node['pages']} pages on {node['workers']} worker(s)"
            + (f", {rate:.2f} pages/s per worker while computing" if rate else "")
        )
    if report["detect_seconds"]:
        lines.append(f"line detection: {report['detect_seconds']:.1f} s (page loaders, on CPU)")
    failed_docs, failed_pages = report["failed_documents"], report["failed_pages"]
    if failed_docs:
        lines.append(f"failed documents ({documents['failed']}):")
        lines += [f"  {doc['relpath']}: {doc['reason']}" for doc in failed_docs[:_SHOWN_FAILURES]]
    if failed_pages:
        lines.append(f"failed pages ({pages['failed']}):")
        lines += [
            f"  {page['relpath']} page {page['page']}: {page['error']}"
            for page in failed_pages[:_SHOWN_FAILURES]
        ]
    shown = len(failed_docs[:_SHOWN_FAILURES]) + len(failed_pages[:_SHOWN_FAILURES])
    if shown < len(failed_docs) + len(failed_pages):
        lines.append("  ... (all of them: anandasky-batch status OUT --json)")
    skipped = report["skipped_files"]
    if skipped["count"]:
        lines.append(f"skipped files, not pages ({skipped['count']}):")
        lines += [f"  {f['relpath']}: {f['reason']}" for f in skipped["files"][:_SHOWN_FAILURES]]
        if skipped["count"] > _SHOWN_FAILURES:
            lines.append("  ... (all of them: anandasky-batch status OUT --json)")
    removed = report["sources_removed"]
    if removed:
        lines.append(f"source removed ({len(removed)}; outputs kept, --prune removes them):")
        lines += [f"  {relpath}" for relpath in removed[:_SHOWN_FAILURES]]
    return lines


def print_status(out_dir: Path, *, as_json: bool = False) -> ExitCode:
    if not (Path(out_dir) / ".anandasky").is_dir():
        raise BadArguments(f"{out_dir} holds no run: start one with `anandasky-batch run`")
    with reported_store_errors(out_dir), open_catalogue(out_dir) as store:
        report = status_report(store.summary())
    report["run_in_progress"] = run_in_progress(out_dir)
    if as_json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print("\n".join(_text_lines(report)))
    return ExitCode.OK
