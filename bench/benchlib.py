"""Shared pieces of the benchmark scripts: arguments, machine facts, timing, subprocesses, JSON.

Every script in bench/ runs as `python bench/NAME.py [--quick]`, prints a table and writes
`bench/results/NAME.json` in one envelope (see `write_results`). Nothing here is imported by the
pipeline; the scripts import the pipeline, never the other way round.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
TESTDATA = REPO / "tests" / "data"
SCHEMA_VERSION = 1

if str(REPO) not in sys.path:  # `python bench/x.py` from a checkout that is not installed
    sys.path.insert(1, str(REPO))


# ---- arguments and output ------------------------------------------------------------------


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes: proves the script runs")
    p.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help=f"where NAME.json goes (default {RESULTS_DIR.relative_to(REPO)})",
    )
    return p


def command_line() -> str:
    """The command as it was typed, relative to the repo root when possible."""
    script = Path(sys.argv[0]).resolve()
    try:
        shown = str(script.relative_to(REPO))
    except ValueError:
        shown = str(script)
    return shlex.join(["python", shown, *sys.argv[1:]])


def machine_info() -> dict[str, Any]:
    """What BENCHMARKS.md records next to every figure."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        import torch
        import transformers

        info["torch"] = torch.__version__
        info["transformers"] = transformers.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@dataclass
class Goal:
    """A target from the issue and what this run measured against it."""

    name: str
    target: str
    measured: str
    met: bool | None  # None: not measurable in this configuration

    def as_dict(self) -> dict[str, Any]:
        return {
            "goal": self.name,
            "target": self.target,
            "measured": self.measured,
            "met": self.met,
        }


def write_results(
    name: str,
    results_dir: Path,
    settings: dict[str, Any],
    results: list[dict[str, Any]],
    goals: Sequence[Goal] = (),
    notes: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
) -> Path:
    """`results_dir/NAME.json`: the same envelope for every benchmark."""
    payload = {
        "benchmark": name,
        "schema": SCHEMA_VERSION,
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "command": command_line(),
        "machine": machine_info(),
        "settings": settings,
        "results": results,
        "goals": [g.as_dict() for g in goals],
        "notes": list(notes),
        **(extra or {}),
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> None:
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    if title:
        print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def print_goals(goals: Sequence[Goal]) -> None:
    if goals:
        print_table(
            ["goal", "target", "measured", "met"],
            [
                [g.name, g.target, g.measured, {True: "yes", False: "NO", None: "n/a"}[g.met]]
                for g in goals
            ],
        )


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


# ---- timing and memory ---------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def peak_rss_mib() -> float:
    """This process's peak resident set (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# A small interpreter that starts the measured command, so that the command is forked from a
# ~10 MB process: ru_maxrss survives fork and exec, and a child forked straight from a benchmark
# that has imported torch would report the benchmark's own memory as its peak.
_LAUNCHER = """
import json, os, subprocess, sys, time
out, err, cwd = sys.argv[1:4]
with open(out, "wb") as o, open(err, "wb") as e:
    started, started_at = time.perf_counter(), time.time()
    proc = subprocess.Popen(sys.argv[4:], stdout=o, stderr=e, cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall, ended_at = time.perf_counter() - started, time.time()
print(json.dumps({"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "started_at": started_at,
                  "ended_at": ended_at, "exit_code": os.waitstatus_to_exitcode(status)}))
"""


def rss_split_mib() -> dict[str, float]:
    """Resident memory now, split into anonymous (private) and file-backed (page cache, shared)."""
    wanted = {"Anonymous:": "anon_mib", "Rss:": "rss_mib"}
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            key, *rest = line.split()
            if key in wanted:
                out[wanted[key]] = int(rest[0]) / 1024
    except OSError:
        return {}
    if "rss_mib" in out and "anon_mib" in out:
        out["file_mib"] = out["rss_mib"] - out["anon_mib"]
    return out


@dataclass
class Measured:
    wall_s: float
    peak_rss_mib: float  # the largest process of the command's tree that it waited for
    exit_code: int
    stdout: str
    stderr: str
    started_at: float  # epoch seconds, as the launcher started the command
    ended_at: float


def run_measured(command: Sequence[str], workdir: Path, cwd: Path = REPO) -> Measured:
    """Run `command` to completion; wall time and peak RSS as the command itself sees them."""
    workdir.mkdir(parents=True, exist_ok=True)
    out, err = workdir / "stdout", workdir / "stderr"
    launcher = [sys.executable, "-c", _LAUNCHER, str(out), str(err), str(cwd), *command]
    report = subprocess.run(launcher, capture_output=True, text=True, check=True)
    data = json.loads(report.stdout)
    return Measured(
        data["wall_s"],
        data["peak_rss_mib"],
        data["exit_code"],
        out.read_text(encoding="utf-8", errors="replace"),
        err.read_text(encoding="utf-8", errors="replace"),
        data["started_at"],
        data["ended_at"],
    )


def cli_command() -> list[str]:
    """The installed `anandasky-batch`, else the CLI module of this checkout."""
    exe = shutil.which("anandasky-batch")
    return [exe] if exe else [sys.executable, "-m", "cli"]


class PhaseClock:
    """Wall and CPU seconds spent inside wrapped methods, per named phase, synced at the edges.

    Wrapping an instance attribute shadows the class method for that object only, so the code
    under test runs unchanged; `sync` is `torch.cuda.synchronize`-like (no-op on CPU). CPU time
    (`time.process_time`, all threads of this process) is what a single-threaded run on a shared
    machine should be compared by: time spent waiting for a core does not count.
    """

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}

    def reset(self) -> None:
        self.seconds, self.cpu_seconds = {}, {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.sync()
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - wall
            self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + time.process_time() - cpu

    def wrap(self, owner: Any, method: str, phase: str | Callable[..., str]) -> None:
        inner = getattr(owner, method)

        @functools.wraps(inner)  # keeps the signature: transformers inspects `forward`'s
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.phase(phase(*args, **kwargs) if callable(phase) else phase):
                return inner(*args, **kwargs)

        setattr(owner, method, timed)

    def total(self) -> contextlib.AbstractContextManager[None]:
        return self.phase("total")
