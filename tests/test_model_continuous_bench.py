"""`bench/continuous_batching.py --quick` runs, checks its tokens and writes its JSON envelope.

Not a timed test: the figures live in BENCHMARKS.md. What it pins is what the benchmark claims
besides speed: every path produced the same tokens for every page, every page got its drawn
length, and the continuous paths (one list; the worker's stream over its batches) ran fuller
batches in fewer steps.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_continuous_batching_bench_runs_quick(tmp_path: Path) -> None:
    script = REPO / "bench" / "continuous_batching.py"
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--results-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    data = json.loads((tmp_path / "continuous_batching.json").read_text(encoding="utf-8"))
    assert data["benchmark"] == "continuous_batching" and data["machine"]["nproc"] >= 1
    assert data["tokens_identical"] is True and data["mismatches"] == []
    static, continuous, worker = data["results"]
    assert [r["path"] for r in data["results"]] == ["static", "continuous", "worker"]
    lengths = data["settings"]["lengths"]
    assert static["tokens"] == continuous["tokens"] == worker["tokens"] == sum(lengths)
    for path in (continuous, worker):  # the worker's stream never drains between its batches
        assert path["decode_steps"] < static["decode_steps"]
        assert path["occupancy"] > static["occupancy"]
    assert {g["goal"].split(" (")[0] for g in data["goals"]} >= {"identical tokens"}
