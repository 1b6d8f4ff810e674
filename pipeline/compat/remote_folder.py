"""What an upstream remote-code weights folder holds: its `auto_map` classes and its checksum.

Read by the loader (`pipeline.recognition`, to tell a remote-code folder from a native one),
by the remote-code loader and by `RemoteRecognizer` (its checksum); none of it imports torch.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from pipeline.errors import CheckpointError
from pipeline.model.checkpoint import CheckpointFiles, checkpoint_checksum, hash_code_files

# auto_map keys that may name the model class, most specific first.
MODEL_KEYS = (
    "AutoModelForImageTextToText",
    "AutoModelForVision2Seq",
    "AutoModelForCausalLM",
    "AutoModel",
)
_CLASS_REFERENCE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")


def read_config_json(files: CheckpointFiles) -> dict[str, Any]:
    try:
        data = json.loads(files.config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {files.config}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{files.config}: expected a JSON object")
    return data


def remote_code_entries(files: CheckpointFiles) -> dict[str, str]:
    """The folder's `auto_map` config/model/processor classes, checked to live in the folder."""
    root, raw = files.root, read_config_json(files)
    auto_map = raw.get("auto_map")
    if not isinstance(auto_map, dict) or not auto_map:
        raise CheckpointError(
            f"{files.config} declares no remote code (no auto_map); load it with --impl native"
        )
    model_key = next((k for k in MODEL_KEYS if k in auto_map), None)
    wanted = {"config": "AutoConfig", "model": model_key, "processor": "AutoProcessor"}
    entries: dict[str, str] = {}
    for role, key in wanted.items():
        ref = auto_map.get(key) if key else None
        if not isinstance(ref, str):
            names = key or " or ".join(MODEL_KEYS)
            raise CheckpointError(f"{files.config}: auto_map has no {role} class ({names})")
        if not _CLASS_REFERENCE.match(ref):
            raise CheckpointError(
                f"{files.config}: auto_map {key} = {ref!r} is not `module.Class` in this folder; "
                "code from other repositories is never loaded"
            )
        module_file = root / (ref.split(".")[0] + ".py")
        if not module_file.is_file():
            raise CheckpointError(
                f"{root}: auto_map {key} names {ref!r} but {module_file.name} is not in the "
                "folder; copy the release's Python files next to its weights"
            )
        entries[role] = ref
    return entries


def remote_checksum(root: Path) -> str:
    """Weights/config/tokenizer checksum plus every other top-level .py/.json file of the folder.

    The remote code and processor settings decide the output as much as the weights do.
    """
    return hash_code_files(hashlib.sha256(checkpoint_checksum(root).encode()), root).hexdigest()
