"""Is a weights folder in the native layout? Read from the safetensors headers; no tensor loaded.

The loader (`pipeline.recognition`) asks this to decide `--impl auto`: a folder whose tensor
names and shapes match the native model exactly loads natively; anything else needs its own
remote code.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from pipeline.errors import CheckpointError
from pipeline.model.checkpoint import CheckpointFiles, check_tensor_names, locate
from pipeline.model.config import AnandaSkyConfig

_MAX_HEADER_BYTES = 100 << 20  # a safetensors header past this is corrupt, not large


def read_safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors header (8-byte length, then JSON); no data read."""
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                raise CheckpointError(f"{path}: too short to be a safetensors file")
            (size,) = struct.unpack("<Q", head)
            if size > _MAX_HEADER_BYTES:
                raise CheckpointError(
                    f"{path}: safetensors header of {size} bytes; file is corrupt"
                )
            header = json.loads(fh.read(size))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read the safetensors header of {path}: {exc}") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    return {
        name: tuple(int(d) for d in info["shape"])
        for name, info in header.items()
        if name != "__metadata__"
    }


def stored_tensor_shapes(files: CheckpointFiles) -> dict[str, tuple[int, ...]]:
    """Names and shapes of every stored tensor; with a shard index, each from the shard it names."""
    owner: dict[str, str] | None = None
    if files.index is not None:
        try:
            owner = json.loads(files.index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{files.index}: not a safetensors index ({exc})") from exc
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files.weights:
        for name, shape in read_safetensors_shapes(path).items():
            if owner is None or owner.get(name) == path.name:
                shapes[name] = shape
    return shapes


def native_layout_problem(model_dir: str | Path) -> str | None:
    """Why the native model cannot load this folder as it is, or None when it can.

    Compares names and shapes with the native model built on the meta device (no memory).
    """
    import torch

    from pipeline.model.modeling import TIED_KEYS, AnandaSkyModel

    files = locate(model_dir)
    try:
        config = AnandaSkyConfig.load(files.config)
    except CheckpointError as exc:
        return f"config.json is not a native AnandaSky config ({exc})"
    with torch.device("meta"):
        expected = {n: tuple(t.shape) for n, t in AnandaSkyModel(config).state_dict().items()}
    tied = TIED_KEYS if config.text.tie_word_embeddings else ()
    try:
        check_tensor_names(expected, stored_tensor_shapes(files), str(files.root), optional=tied)
    except CheckpointError as exc:
        return str(exc)
    return None
