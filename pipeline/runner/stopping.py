"""Ctrl-C or SIGTERM: the first stops taking pages and gives batches in flight a few seconds;
the second (either signal) stops at once. Either way unfinished pages stay pending for the next
run, and the run exits 130.

SIGTERM is what `docker stop`, Kubernetes, systemd and SLURM (scancel, preemption) send before
SIGKILL; SLURM and systemd send it to every process of the job, which is why child processes
leave it to the coordinator (`child_process.prepare_child_process`)."""

from __future__ import annotations

import logging
import math
import signal
import time

log = logging.getLogger("anandasky")
# After the first Ctrl-C or SIGTERM, batches in flight get this long to finish; a hung one is killed.
STOP_GRACE_S = 5.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopControl:
    def __init__(self) -> None:
        self.stopping = False
        self.aborting = False
        self.deadline = math.inf
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopControl:
        for signum in _STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_interrupt)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def grace_over(self) -> bool:
        return time.monotonic() > self.deadline

    def _on_interrupt(self, signum, frame) -> None:
        what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        if self.stopping:
            self.aborting = True
            log.warning("%s: stopping now; unfinished pages stay pending for the next run", what)
        else:
            self.stopping = True
            self.deadline = time.monotonic() + STOP_GRACE_S
            log.warning(
                "%s: stopping after the pages in flight, %g s at most (%s again to stop at once)",
                what,
                STOP_GRACE_S,
                what,
            )
