"""The `anandasky-batch` console entry point, which imports the command line itself.

A Ctrl-C (or SIGTERM) in the first ~0.1 s lands while `cli` is still importing typer, before
`cli.main` handles interrupts: it must end quietly with exit 130 too, never with a traceback.
"""

from __future__ import annotations

import os
import signal
import sys

INTERRUPTED = 130  # ExitCode.INTERRUPTED; importing pipeline.errors would widen the window


def _leave_at_once(signum: int, frame: object) -> None:
    os._exit(INTERRUPTED)  # nothing is written or open yet: nothing to clean up


def main() -> None:
    """Import and run the command line; an interrupt before it handles its own exits 130.

    While importing, a KeyboardInterrupt can be raised inside the import machinery's own
    callbacks, where Python prints it as "Exception ignored ... Traceback" and carries on; so
    an interrupt then ends the process directly, and raises as usual once the imports are done.
    """
    sigterm = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, _leave_at_once)
    if sigterm is signal.SIG_DFL:  # SIGTERM is treated as Ctrl-C (`cli.main`), here too
        signal.signal(signal.SIGTERM, _leave_at_once)
    try:
        import cli
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, sigterm)
    try:
        cli.main()
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)
