"""The command line's option types and the options several commands share (typer only;
`cli.py` holds the commands)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

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


def split_list(values: str) -> tuple[str, ...]:
    """A comma-separated option value as a tuple, blanks dropped."""
    return tuple(part.strip() for part in values.split(",") if part.strip())
