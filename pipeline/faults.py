"""Fault injection for tests: a worker, loader or decoder misbehaving on request.

Shared by the runner (workers) and ingest (decoding), so it sits below both.
"""

from __future__ import annotations

import os

# Test-only fault injection, read in one place. ANANDASKY_TEST_FAULT=<point>:<fault>[:<marker>]
# makes a child process misbehave at <point>: "load" (a device worker loading the model),
# "batch" (a device worker starting a batch), "page" (a device worker taking a batch's pages)
# or "decode" (a page loader decoding a page), or "node" (every Ray process of a node: "blind",
# its page-loading tasks see no input file; "no-model", its actors treat the model folder as
# absent, so the driver ships it).
# <fault>: "hang" sleeps for an hour, "memory" raises MemoryError, "error" raises
# RuntimeError; any other word is returned for the caller to act on ("short": the worker
# answers for one page fewer than it was given; at "page", "exit-WxH": the worker process
# exits at once whenever a page image of W x H pixels is among them, as a page that crashes
# the device runtime would). With <marker>, the fault fires once: only while the marker file
# does not exist, and the first firing creates it. Only tests set it.
FAULT_VARIABLE = "ANANDASKY_TEST_FAULT"


def injected_fault(point: str) -> str | None:
    """Misbehave at `point` when a test asked for it (see FAULT_VARIABLE); else do nothing."""
    spec = os.environ.get(FAULT_VARIABLE)
    if not spec:
        return None
    where, _, rest = spec.partition(":")
    fault, _, marker = rest.partition(":")
    if where != point:
        return None
    if marker:
        try:
            with open(marker, "x"):
                pass
        except FileExistsError:
            return None
    if fault == "hang":
        import time

        time.sleep(3600)
    elif fault == "memory":
        raise MemoryError("injected by " + FAULT_VARIABLE)
    elif fault == "error":
        raise RuntimeError("injected by " + FAULT_VARIABLE)
    return fault
