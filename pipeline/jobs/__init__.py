"""Jobs: what a run has to do and has done, behind one narrow interface.

`open_for_run` gives a run its `JobBackend` (work queue, input registry, the run's record) and
holds OUT's run lock; `open_catalogue` gives `status`, `export`, `evaluate` and `resume` a
read-only `Catalogue` that never blocks a live run. Which storage sits behind them (today
SQLite in `OUT/.anandasky/`) is this package's business alone.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.jobs.backend import Catalogue, JobBackend
from pipeline.jobs.connect import STATE_DIR, reported_store_errors
from pipeline.jobs.sqlite_store import JobStore


def open_for_run(out_dir: Path | str, *, recover: bool = False) -> JobBackend:
    """OUT's job store for a run: created if new, locked against a second run (OutputInUse)."""
    return JobStore.open(out_dir, recover=recover)


def open_catalogue(out_dir: Path | str) -> Catalogue:
    """OUT's job store, read-only (also on read-only media)."""
    return JobStore.open(out_dir, exclusive=False)


__all__ = [
    "STATE_DIR",
    "Catalogue",
    "JobBackend",
    "open_catalogue",
    "open_for_run",
    "reported_store_errors",
]
