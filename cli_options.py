"""The command line's option types, the options several commands share, and the checks of
option values that no stage below makes (`cli.py` holds the commands)."""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from pipeline.errors import BadArguments, ExitCode, InputError, OutputAccessError

REMOTE_CODE_WARNING = (
    "--impl remote (and auto, for a checkpoint that is not in the native layout) executes the "
    "Python modeling code shipped inside the --model folder; use it only on weights you trust. "
    "Code is never loaded from anywhere but that folder."
)


class Rasterizer(str, Enum):
    pdfium = "pdfium"
    poppler = "poppler"


class Impl(str, Enum):
    auto = "auto"
    native = "native"
    remote = "remote"


class TestSize(str, Enum):
    tiny = "tiny"
    seed = "seed"


ModelOption = Annotated[
    Path,
    typer.Option(
        "--model", "-m", help="Weights folder (config.json, model.safetensors, tokenizer.json)."
    ),
]
DeviceOption = Annotated[
    str,
    typer.Option(
        help="auto | npu | cuda | cpu, or one device such as npu:1. auto: npu, else cuda, else cpu."
    ),
]
DtypeOption = Annotated[
    str | None,
    typer.Option(
        help="bfloat16 | float16 | float32 (default: bfloat16 on npu/cuda, float32 on cpu)."
    ),
]
ImplOption = Annotated[Impl, typer.Option(help="Model implementation. " + REMOTE_CODE_WARNING)]
PdfPasswordOption = Annotated[
    str | None, typer.Option(help="Password for encrypted PDFs (never stored).")
]
RayOption = Annotated[
    str | None,
    typer.Option(
        help="Run on a Ray cluster: auto (the one running here), local (start one), or "
        "HOST:PORT; one model actor per device of every node (docs/CLUSTER.md)."
    ),
]
RayResourceOption = Annotated[
    str | None,
    typer.Option(
        help="Ray resource each model actor requests, one unit (default: NPU for --device "
        "npu, GPU for cuda, CPU for cpu)."
    ),
]
RayLoadingOption = Annotated[
    str,
    typer.Option(
        help="Where a Ray run loads pages: head (this machine's --loaders) or nodes (Ray "
        "tasks on every node's CPUs; the inputs must be at the same path on every node)."
    ),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")]


def split_list(values: str) -> tuple[str, ...]:
    """A comma-separated option value as a tuple, blanks dropped."""
    return tuple(part.strip() for part in values.split(",") if part.strip())


@contextlib.contextmanager
def checked_image(image: Path, max_new_tokens: int) -> Iterator[None]:
    """`infer`'s arguments, and its image named in a read error (which says only what is wrong)."""
    if max_new_tokens < 1:  # 0 would print an empty "transcription" and exit 0
        raise BadArguments(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if image.is_dir():
        raise BadArguments(
            f"--image {image} is a folder; give one image or PDF (`run` reads folders)"
        )
    try:
        yield
    except InputError as exc:
        raise BadArguments(f"cannot read {image}: {exc}") from None


@contextlib.contextmanager
def checked_model_folder(directory: Path) -> Iterator[None]:
    """`make-test-model` never writes its random weights over another model's (or among other
    files), and a folder it cannot write is one line (exit 5), not a traceback."""
    if directory.exists() and not directory.is_dir():
        raise OutputAccessError(f"{directory} is a file; give a folder (it is created if missing)")
    if directory.is_dir() and any(directory.iterdir()) and not _holds_test_model(directory):
        raise BadArguments(
            f"{directory} is not empty and holds no test checkpoint: its config.json, "
            "tokenizer.json and model.safetensors would be replaced; give a new or empty folder"
        )
    try:
        yield
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise OutputAccessError(
            f"{directory} cannot be written: {exc.strerror or exc}{where}; give a writable folder"
        ) from None


def _holds_test_model(directory: Path) -> bool:
    try:
        config = json.loads((directory / "config.json").read_text("utf-8"))
        return str(config.get("name", "")).startswith("anandasky-test-")
    except (OSError, ValueError, AttributeError):
        return False


def show_version(value: bool) -> None:
    """`--version`: print it and stop before any command runs."""
    if value:
        from pipeline import __version__

        print(f"anandasky-batch {__version__}")
        raise typer.Exit(int(ExitCode.OK))


def stop_on_sigterm_as_on_ctrl_c() -> None:
    """SIGTERM (docker stop, systemd, SLURM) ends a command as Ctrl-C does: exit 130, quietly.

    A run's own handler (`pipeline.runner.stopping`) takes over while pages are in flight; this
    one covers the rest of a command (checking the model, summing up, `status`, `export`),
    where the default action killed the process with -15. A SIGTERM that is ignored (nohup,
    a parent's choice) stays ignored.
    """
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
