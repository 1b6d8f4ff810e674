"""Exit codes and the user-facing exceptions that carry them.

The CLI maps every exception below to its exit code in one place; scripts driving long jobs rely
on these numbers, so they never change meaning.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    SOME_PAGES_FAILED = 1
    BAD_ARGUMENTS = 2
    MISSING_DEPENDENCY = 3
    OUTPUT_IN_USE = 4
    OUTPUT_ACCESS = 5  # OUT or its job store cannot be written: read-only, no permission, full
    NOTHING_TO_DO = 6  # the inputs hold no page files at all; evaluate compared no page
    DEVICES_LOST = 7  # workers died through no fault of the pages; unfinished pages stay pending
    STORE_DAMAGED = 8  # the job store lost data; what was lost is reported
    INTERNAL_ERROR = 15  # a failure nobody anticipated; the traceback is in OUT/run.log
    INTERRUPTED = 130


class AnandaSkyError(Exception):
    """Base class: a failure the user can act on. `str(err)` is the one-line message."""

    exit_code: ExitCode = ExitCode.BAD_ARGUMENTS


class BadArguments(AnandaSkyError):
    exit_code = ExitCode.BAD_ARGUMENTS


class CheckpointError(AnandaSkyError):
    """A weights folder is missing files or its tensors do not match the config."""

    exit_code = ExitCode.BAD_ARGUMENTS


class ConfigMismatch(AnandaSkyError):
    """An output folder holds results made under different settings."""

    exit_code = ExitCode.BAD_ARGUMENTS


class MissingDependency(AnandaSkyError):
    """A library, system tool or device runtime the requested feature needs is absent."""

    exit_code = ExitCode.MISSING_DEPENDENCY


class OutputInUse(AnandaSkyError):
    """Another run holds the output folder."""

    exit_code = ExitCode.OUTPUT_IN_USE


class OutputAccessError(AnandaSkyError):
    """The output folder or the job store cannot be written (or read): path and cause named."""

    exit_code = ExitCode.OUTPUT_ACCESS


class NothingToDo(AnandaSkyError):
    """The inputs exist but hold no file that could be a page; or `evaluate` matched ground
    truth but could compare none of its pages."""

    exit_code = ExitCode.NOTHING_TO_DO


class DevicesLost(AnandaSkyError):
    """Device workers died through no fault of the pages (killed from outside, device gone)."""

    exit_code = ExitCode.DEVICES_LOST


class StoreDamaged(AnandaSkyError):
    """The job store is corrupt or lost data; the message says what was lost."""

    exit_code = ExitCode.STORE_DAMAGED


class InputError(AnandaSkyError):
    """One input document or page cannot be read; the run records it and goes on."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class DocumentError(InputError):
    """The whole document is unusable (corrupt, encrypted, empty, too large...)."""


class PageError(InputError):
    """One page of an otherwise readable document is unusable."""
