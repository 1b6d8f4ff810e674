"""Set-up shared by every child process of a run (device workers and page loaders)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading

_PR_SET_PDEATHSIG = 1


def prepare_child_process(parent_pid: int) -> None:
    """Leave Ctrl-C and SIGTERM to the coordinator, and die with it.

    The coordinator decides how to stop on Ctrl-C or SIGTERM; a child that also reacted would
    lose its batch (and a worker death charges its pages an attempt). SIGTERM cannot simply be
    ignored: the coordinator's own process pools end their children with it and then wait for
    them (`_leave_sigterm_to_the_coordinator`). If the coordinator is killed outright (kill -9,
    OOM killer), Linux sends the child SIGKILL too, so no orphaned worker keeps a device busy or
    the next run waiting.

    `parent_pid` is the coordinator's pid as the coordinator saw it: comparing with it (not
    with 1) tells "the parent died before prctl" apart from "the coordinator is pid 1", which
    it is in a container without an init process.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _leave_sigterm_to_the_coordinator(parent_pid)
    if sys.platform.startswith("linux"):
        libc_name = ctypes.util.find_library("c")
        if libc_name:
            libc = ctypes.CDLL(libc_name, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may already be gone between fork and prctl: then we were re-parented.
        if os.getppid() != parent_pid:
            os._exit(1)


def _leave_sigterm_to_the_coordinator(parent_pid: int) -> None:
    """Ignore a SIGTERM sent by anyone but the coordinator; obey the coordinator's own.

    SLURM (scancel, preemption) and systemd send SIGTERM to every process of the job, so the
    children get the coordinator's stop signal too. They ignore it and keep computing through
    the grace period; the coordinator ends them itself (SIGKILL), and if it dies they die with
    it (PR_SET_PDEATHSIG). But a process pool whose child crashed terminates the others with
    SIGTERM and then joins them, and would hang if they ignored that one: so the signal is
    blocked and a thread reads each one with its sender's pid, and dies of it (the default
    action, exit status -SIGTERM as before) only when the sender is the coordinator. Blocked
    signals stay blocked in programs a child starts (pdftoppm): they too outlive a job-wide
    SIGTERM until their loader ends them or the SIGKILL that follows it.
    """
    if not hasattr(signal, "sigwaitinfo"):  # not Linux: SIGTERM keeps its default action
        return
    # Before any other thread exists, so every thread of the child inherits the mask.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def wait_for_sigterm() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent_pid:
            pass
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

    threading.Thread(target=wait_for_sigterm, name="sigterm", daemon=True).start()
