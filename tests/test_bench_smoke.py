"""Every CPU benchmark still runs (`--quick`, tiny sizes) and writes its JSON envelope.

Not a timed test: it proves the scripts work after a change elsewhere; the figures live in
BENCHMARKS.md and come from full runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = (
    "generation",
    "packing",
    "rasterize",
    "pipeline_efficiency",
    "resume_cost",
    "memory",
    "export_pdf",
    "coordinator_memory",
    "layout_modes",
    "ray_scaling",
)
ENVELOPE = {
    "benchmark",
    "schema",
    "date",
    "command",
    "machine",
    "settings",
    "results",
    "goals",
    "notes",
}


def _generation_checked_tokens(data: dict) -> None:
    assert data["tokens_identical"] is True and data["mismatches"] == []
    assert [row["batch"] for row in data["results"]] == [1, 1, 4]  # baseline, then the engine
    assert all(
        row["tokens"] == row["pages"] * data["settings"]["new_tokens"] for row in data["results"]
    )


def _efficiency_read_the_run(data: dict) -> None:
    (run,) = data["runs"]
    assert run["exit_code"] == 0 and run["pages_done"] == data["settings"]["pages"]
    assert run["devices"] and all(d["forward_s"] > 0 for d in run["devices"])


def _resume_found_nothing_to_do(data: dict) -> None:
    assert {row["command"] for row in data["results"]} >= {"run (nothing to do)", "status"}
    assert all(row["exit_codes"] == [0] for row in data["results"])


def _ray_runs_did_every_page(data: dict) -> None:
    runs = {row["setup"]: row for row in data["results"]}
    assert set(runs) == {"local, 1 worker", "ray, 1 node", "ray, 2 nodes"}
    assert all(
        r["exit_code"] == 0 and r["pages_done"] == data["settings"]["pages"] for r in runs.values()
    )
    assert runs["ray, 1 node"]["driver_cpu_ms_per_page"] > 0


EXTRA_CHECKS = {
    "generation": _generation_checked_tokens,
    "pipeline_efficiency": _efficiency_read_the_run,
    "resume_cost": _resume_found_nothing_to_do,
    "ray_scaling": _ray_runs_did_every_page,
}


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """All scripts at once: each is mostly one thread, and together they fit the time budget."""
    out = tmp_path_factory.mktemp("bench-results")
    started = {
        name: subprocess.Popen(
            [
                sys.executable,
                str(REPO / "bench" / f"{name}.py"),
                "--quick",
                "--results-dir",
                str(out),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for name in SCRIPTS
    }
    done = {}
    for name, proc in started.items():
        try:
            stdout, stderr = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        done[name] = (subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), out)
    return done


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_runs_quick_and_writes_its_json(name: str, quick_runs) -> None:
    done, results_dir = quick_runs[name]
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    data = json.loads((results_dir / f"{name}.json").read_text(encoding="utf-8"))
    assert data.keys() >= ENVELOPE and data["benchmark"] == name
    assert data["machine"]["nproc"] >= 1 and data["command"].startswith(f"python bench/{name}.py")
    assert data["results"] and all(isinstance(row, dict) for row in data["results"])
    for goal in data["goals"]:
        assert {"goal", "target", "measured", "met"} <= goal.keys()
    EXTRA_CHECKS.get(name, lambda _: None)(data)
