"""Internal errors: the traceback goes to a file, the user gets one line naming it.

A run over 10^5 pages is scripted on exit codes; a traceback on the terminal helps nobody there,
but the developer who gets the bug report needs it whole.
"""

from __future__ import annotations

import os
import tempfile
import time
import traceback
from pathlib import Path

from pipeline.runner.progress import last_run_log


def record_internal_error(exc: BaseException) -> Path:
    """Append `exc`'s traceback to the run log (else a new file in the temp folder); its path."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    entry = f"{stamp} CRITICAL internal error (exit 15); please report it:\n{text}"
    run_log = last_run_log()
    if run_log is not None:
        try:
            with open(run_log, "a", encoding="utf-8", errors="backslashreplace") as handle:
                handle.write(entry)
            return run_log
        except OSError:
            pass  # OUT itself may be the problem (full, read-only): fall back to the temp folder
    fd, name = tempfile.mkstemp(prefix="anandasky-batch-error-", suffix=".log")
    with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as handle:
        handle.write(entry)
    return Path(name)
