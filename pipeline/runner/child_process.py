"""Set-up shared by every child process of a run (device workers and page loaders)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def prepare_child_process(parent_pid: int) -> None:
    """Leave Ctrl-C to the coordinator, and die with it.

    The coordinator decides how to stop on Ctrl-C; a child that also reacted would lose its
    batch. If the coordinator is killed outright (kill -9, OOM killer), Linux sends the child
    SIGKILL too, so no orphaned worker keeps a device busy or the next run waiting.

    `parent_pid` is the coordinator's pid as the coordinator saw it: comparing with it (not
    with 1) tells "the parent died before prctl" apart from "the coordinator is pid 1", which
    it is in a container without an init process.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        libc_name = ctypes.util.find_library("c")
        if libc_name:
            libc = ctypes.CDLL(libc_name, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may already be gone between fork and prctl: then we were re-parented.
        if os.getppid() != parent_pid:
            os._exit(1)
