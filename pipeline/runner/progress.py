"""What a run tells the person watching it: the run log, the progress bar, the final summary."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

LOG_NAME = "anandasky"
log = logging.getLogger(LOG_NAME)
_last_run_log: Path | None = None  # where an internal error's traceback goes (pipeline.crash)


def last_run_log() -> Path | None:
    """The run log this process opened last (it may be closed by now), if any."""
    return _last_run_log


class _TqdmHandler(logging.Handler):
    """Console messages that do not tear the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "file_only", False):
            return  # the CLI prints this one itself
        tqdm.write(self.format(record), file=sys.stderr)


def log_to_file_only(level: int, message: str) -> None:
    """Keep `message` in the run log without showing it twice on the console."""
    log.log(level, "%s", message, extra={"file_only": True})


class _RunLogHandler(logging.FileHandler):
    """The run log on OUT: when OUT fills up or turns read-only, logging must not print
    tracebacks over the user's terminal; the run itself reports that failure in one line."""

    def handleError(self, record: logging.LogRecord) -> None:
        return None


def announce(message: str, quiet: bool) -> None:
    """A line for the person watching (unless --quiet), also kept in the run log."""
    log.info(message)
    if not quiet:
        tqdm.write(message, file=sys.stderr)


def setup_run_log(out_dir: Path, quiet: bool) -> logging.Handler:
    """Everything goes to OUT/run.log; warnings (bad files) also to the console."""
    global _last_run_log
    log.setLevel(logging.INFO)
    # File names that are not UTF-8 (surrogate-escaped) are written as \xNN, never raise.
    file_handler = _RunLogHandler(out_dir / "run.log", encoding="utf-8", errors="backslashreplace")
    _last_run_log = out_dir / "run.log"
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(file_handler)
    console = _TqdmHandler()
    console.setLevel(logging.ERROR if quiet else logging.WARNING)
    console.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(console)
    return file_handler


def close_run_log() -> None:
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


@dataclass
class DeviceStats:
    pages: int = 0
    busy_s: float = 0.0
    idle_s: float = 0.0
    load_s: float = 0.0
    restarts: int = 0
    node: str | None = None  # the host of a cluster worker
    visible_devices: str | None = None  # its visible-devices variable as it saw it


@dataclass
class StageTimes:
    """Seconds the coordinator saw each stage take, summed over this run's done pages.

    Loading runs in loader processes ahead of the devices, so its sum overlaps model time; writing
    outputs and store updates happen in the coordinator while the devices keep computing.
    """

    load_s: float = 0.0
    detect_s: float = 0.0  # line detection, in the loader processes after loading
    write_s: float = 0.0
    store_s: float = 0.0


@dataclass
class RunProgress:
    """Counts for this invocation (the store holds the totals across invocations)."""

    total: int
    quiet: bool = False
    loaders: int = 0  # page loader processes of the run (for the summary's feeding hint)
    done: int = 0
    failed: int = 0
    devices: dict[str, DeviceStats] = field(default_factory=dict)
    bar: tqdm | None = None

    def __post_init__(self) -> None:
        self.bar = tqdm(
            total=self.total,
            unit="page",
            desc="pages",
            disable=self.quiet or None,
            dynamic_ncols=True,
            smoothing=0.05,
        )

    def device(self, label: str) -> DeviceStats:
        return self.devices.setdefault(label, DeviceStats())

    def page_done(self) -> None:
        self.done += 1
        self._advance()

    def page_failed(self) -> None:
        self.failed += 1
        self._advance()

    def _advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(failed=self.failed, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def summary_lines(
        self, wall_s: float, totals: dict, stages: StageTimes | None = None
    ) -> list[str]:
        rate = self.done / wall_s if wall_s > 0 else 0.0
        lines = [
            f"this run: {self.done} pages done, {self.failed} failed in {wall_s:.1f} s "
            f"({rate:.2f} pages/s)",
            f"collection: {totals.get('done', 0)} pages done, {totals.get('failed', 0)} failed, "
            f"{totals.get('pending', 0)} pending; {totals.get('failed_documents', 0)} documents failed",
        ]
        if totals.get("skipped_files") or totals.get("sources_removed"):
            lines.append(
                f"inputs: {totals.get('skipped_files', 0)} files skipped (not pages), "
                f"{totals.get('sources_removed', 0)} documents with source removed "
                "(anandasky-batch status OUT lists them)"
            )
        for label, stats in sorted(self.devices.items()):
            busy = stats.busy_s / (stats.busy_s + stats.idle_s) if stats.busy_s else 0.0
            per_s = stats.pages / stats.busy_s if stats.busy_s else 0.0
            lines.append(
                f"  {label}: {stats.pages} pages, {per_s:.2f} pages/s while busy, "
                f"{busy:.0%} busy, model load {stats.load_s:.1f} s"
                + (f", {stats.restarts} restarts" if stats.restarts else "")
            )
        if stages is not None and self.done:
            model_s = sum(stats.busy_s for stats in self.devices.values())
            lines.append(
                f"  stages: model {model_s:.1f} s on the devices; page loading {stages.load_s:.1f} s "
                f"(loader processes, ahead of the devices); line detection {stages.detect_s:.1f} s "
                f"(loader processes); writing outputs {stages.write_s:.1f} s; "
                f"job store {stages.store_s:.1f} s"
            )
            hint = feeding_hint(self.devices, stages, self.loaders)
            if hint:
                lines.append(hint)
        return lines

    def to_dict(self, wall_s: float, stages: StageTimes) -> dict:
        devices = {}
        for label, stats in sorted(self.devices.items()):
            window = stats.busy_s + stats.idle_s
            devices[label] = {
                **asdict(stats),
                "busy_fraction": round(stats.busy_s / window, 4) if window else None,
            }
        return {
            "wall_s": round(wall_s, 3),
            "pages_done": self.done,
            "pages_failed": self.failed,
            "devices": devices,
            "stages": asdict(stages),
        }


# Devices busy less than this share of their time, while the loaders had more work each than
# the devices, means pages came too slowly: the summary says so and what to change.
STARVED_BELOW = 0.75


def feeding_hint(devices: dict[str, DeviceStats], stages: StageTimes, loaders: int) -> str | None:
    """A line when the devices mostly waited for pages and the page loaders were why."""
    busy = sum(stats.busy_s for stats in devices.values())
    idle = sum(stats.idle_s for stats in devices.values())
    loading = stages.load_s + stages.detect_s
    if loaders < 1 or not devices or busy + idle <= 0 or busy / (busy + idle) >= STARVED_BELOW:
        return None
    if loading / loaders < busy / len(devices):  # the loaders kept up: something else
        return None
    detection = f", line detection {stages.detect_s / loading:.0%} of it" if stages.detect_s else ""
    return (
        f"  the devices waited for pages ({idle / (busy + idle):.0%} of their time): loading "
        f"took {loading:.1f} s in {loaders} loader process(es){detection}; more --loaders "
        "(one core each) would feed them faster"
    )


def write_run_summary(
    out_dir: Path, progress: RunProgress, stages: StageTimes, wall_s: float, totals: dict
) -> None:
    """`OUT/run-summary.json`: the last invocation's figures, for scripts and benchmarks."""
    from pipeline.outputs.page_files import write_atomic

    summary = {"this_run": progress.to_dict(wall_s, stages), "collection": totals}
    write_atomic(out_dir / "run-summary.json", (json.dumps(summary, indent=2) + "\n").encode())
