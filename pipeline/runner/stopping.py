"""Ctrl-C: the first stops taking pages and gives batches in flight a few seconds; the second
stops at once. Either way unfinished pages stay pending for the next run."""

from __future__ import annotations

import logging
import math
import signal
import time

log = logging.getLogger("anandasky")
# After the first Ctrl-C, batches in flight get this long to finish; a hung one is killed.
STOP_GRACE_S = 5.0


class StopControl:
    def __init__(self) -> None:
        self.stopping = False
        self.aborting = False
        self.deadline = math.inf
        self._previous = None

    def __enter__(self) -> StopControl:
        self._previous = signal.signal(signal.SIGINT, self._on_interrupt)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def grace_over(self) -> bool:
        return time.monotonic() > self.deadline

    def _on_interrupt(self, signum, frame) -> None:
        if self.stopping:
            self.aborting = True
            log.warning("stopping now; unfinished pages stay pending for the next run")
        else:
            self.stopping = True
            self.deadline = time.monotonic() + STOP_GRACE_S
            log.warning(
                "stopping after the pages in flight, %g s at most (Ctrl-C again to stop at once)",
                STOP_GRACE_S,
            )
