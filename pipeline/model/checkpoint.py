"""Weights folders: find the files, hash them, load them into the model with exact key checks.

A weights folder holds `config.json`, `tokenizer.json` and either `model.safetensors` or a
sharded `model.safetensors.index.json` plus its shards (layout: weights/README.md). Everything is
local: nothing here can reach a model hub. Every problem becomes a `CheckpointError` that lists
all missing files, or all missing / unexpected / mis-shaped tensors, in one message.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import CheckpointError
from pipeline.model.config import AnandaSkyConfig

if TYPE_CHECKING:
    import torch

    from pipeline.model.modeling import AnandaSkyModel

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_LIST_LIMIT = 12  # names shown per category; the count is always given


@dataclass(frozen=True)
class CheckpointFiles:
    """The files of one weights folder, weight shards in a stable order."""

    root: Path
    config: Path
    tokenizer: Path
    weights: tuple[Path, ...]
    index: Path | None

    @property
    def hashed(self) -> list[Path]:
        """Files that decide the model's output, in checksum order."""
        extra = [self.index] if self.index else []
        return [self.config, self.tokenizer, *extra, *self.weights]


def locate(model_dir: str | Path) -> CheckpointFiles:
    """Find a folder's files or raise one error naming everything that is missing."""
    root = Path(model_dir).expanduser()
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise CheckpointError(
            f"model folder {root} {what}; give the folder that holds {CONFIG_FILE}, "
            f"{TOKENIZER_FILE} and {WEIGHTS_FILE} (see weights/README.md)"
        )
    missing = [name for name in (CONFIG_FILE, TOKENIZER_FILE) if not (root / name).is_file()]
    index: Path | None = None
    weights: tuple[Path, ...] = ()
    if (root / WEIGHTS_FILE).is_file():
        weights = (root / WEIGHTS_FILE,)
    elif (root / INDEX_FILE).is_file():
        index = root / INDEX_FILE
        shard_names = sorted(set(_read_index(index).values()))
        weights = tuple(root / name for name in shard_names)
        missing += [
            f"{name} (listed in {INDEX_FILE})"
            for name in shard_names
            if not (root / name).is_file()
        ]
    else:
        missing.append(f"{WEIGHTS_FILE} (or {INDEX_FILE} with shards)")
    if missing:
        raise CheckpointError(f"model folder {root} is missing: " + ", ".join(missing))
    return CheckpointFiles(root, root / CONFIG_FILE, root / TOKENIZER_FILE, weights, index)


def check_weight_files(model_dir: str | Path) -> None:
    """Catch a truncated or garbled safetensors file in milliseconds, before workers start.

    Reads only each file's header: the byte ranges it promises must fit the file's size. A
    worker finding this out after loading half a checkpoint would cost the run its start-up.
    """
    for path in locate(model_dir).weights:
        size = path.stat().st_size
        try:
            with path.open("rb") as fh:
                header_len = int.from_bytes(fh.read(8), "little")
                if not 2 <= header_len <= min(size - 8, 100 << 20):
                    raise ValueError("header length out of range")
                header = json.loads(fh.read(header_len))
            ends = [
                int(entry["data_offsets"][1])
                for name, entry in header.items()
                if name != "__metadata__"
            ]
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise CheckpointError(
                f"{path} is not a readable safetensors file ({exc}); copy it again"
            ) from exc
        needed = 8 + header_len + max(ends, default=0)
        if needed > size:
            raise CheckpointError(
                f"{path} is truncated: its header promises {needed} bytes, the file has {size}; "
                "copy it again"
            )


def _read_index(index: Path) -> dict[str, str]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        weight_map = data["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{index}: not a safetensors index with a 'weight_map' ({exc})"
        ) from exc
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and "/" not in v and "\\" not in v
        for k, v in weight_map.items()
    ):
        raise CheckpointError(
            f"{index}: weight_map must map tensor names to file names in the folder"
        )
    return weight_map


def read_config(model_dir: str | Path) -> AnandaSkyConfig:
    return AnandaSkyConfig.load(locate(model_dir).config)


def checkpoint_checksum(model_dir: str | Path, cache_file: str | Path | None = None) -> str:
    """sha256 over config, tokenizer and weight files (name, size, bytes), streamed.

    The tokenizer is included: it changes the text a run writes as surely as the weights do.
    Hashing a real checkpoint reads ~1.2 GB; with `cache_file`, a digest is reused while every
    file keeps its size, mtime and inode (what a rewrite or replacement of a file changes).
    """
    files = locate(model_dir)
    stamp = [
        [str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino]
        for path in files.hashed
        for st in [path.stat()]
    ]
    if cache_file is not None:
        try:
            cached = json.loads(Path(cache_file).read_text(encoding="utf-8"))
            if cached.get("files") == stamp:
                return str(cached["sha256"])
        except (OSError, ValueError, KeyError, AttributeError):
            pass
    digest = hashlib.sha256()
    for path in files.hashed:
        digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    checksum = digest.hexdigest()
    if cache_file is not None:
        cache_file = Path(cache_file)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        temp = cache_file.with_name(f".tmp-{cache_file.name}")
        temp.write_text(json.dumps({"files": stamp, "sha256": checksum}), encoding="utf-8")
        temp.replace(cache_file)
    return checksum


def hash_code_files(digest: Any, model_dir: str | Path) -> Any:
    """Add the folder's own code and settings files that `checkpoint_checksum` leaves out
    (remote-code `.py`, `.json` such as preprocessor_config.json) to `digest`; returns it.

    Editing a remote `modeling_*.py` changes the transcriptions as surely as new weights do.
    """
    hashed = {path.name for path in locate(model_dir).hashed}
    root = Path(model_dir)
    for path in sorted([*root.glob("*.py"), *root.glob("*.json")]):
        if path.name in hashed or not path.is_file():
            continue
        digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        digest.update(path.read_bytes())
    return digest


def _names(items: Iterable[str]) -> str:
    items = sorted(items)
    shown = ", ".join(items[:_LIST_LIMIT])
    more = f", ... ({len(items) - _LIST_LIMIT} more)" if len(items) > _LIST_LIMIT else ""
    return shown + more


def check_tensor_names(
    expected: dict[str, tuple[int, ...]],
    found: dict[str, tuple[int, ...]],
    source: str,
    optional: Iterable[str] = (),
) -> None:
    """Raise listing every missing, unexpected and mis-shaped tensor, or return quietly."""
    optional = set(optional)
    missing = expected.keys() - found.keys() - optional
    unexpected = found.keys() - expected.keys()
    wrong = [
        f"{name} {list(found[name])} (config says {list(expected[name])})"
        for name in sorted(expected.keys() & found.keys())
        if tuple(found[name]) != tuple(expected[name])
    ]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} tensor(s): {_names(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} tensor(s): {_names(unexpected)}")
    if wrong:
        parts.append(
            f"{len(wrong)} tensor(s) with the wrong shape: {'; '.join(wrong[:_LIST_LIMIT])}"
        )
    hint = ""
    if unexpected and any(name.startswith("model.layers.") for name in unexpected):
        hint = " (decoder tensors must carry the 'language_model.' prefix)"
    raise CheckpointError(f"{source}: weights do not match config.json: " + "; ".join(parts) + hint)


def read_tensors(files: CheckpointFiles) -> dict[str, torch.Tensor]:
    """All tensors of the folder on CPU, honouring the shard index when there is one."""
    import safetensors
    from safetensors.torch import load_file

    format_error = getattr(safetensors, "SafetensorError", ValueError)

    wanted = _read_index(files.index) if files.index else None
    tensors: dict[str, torch.Tensor] = {}
    for path in files.weights:
        try:
            part = load_file(str(path), device="cpu")
        except (format_error, OSError) as exc:
            raise CheckpointError(f"cannot read weights {path}: {exc}") from exc
        if wanted is not None:
            listed = {name for name, shard in wanted.items() if shard == path.name}
            absent = listed - part.keys()
            if absent:
                raise CheckpointError(
                    f"{path}: tensors listed in {INDEX_FILE} are not in this shard: {_names(absent)}"
                )
            part = {name: part[name] for name in listed}  # an index decides who owns what
        tensors.update(part)
    return tensors


def load_model(
    model_dir: str | Path,
    device: torch.device,
    dtype: torch.dtype,
    config: AnandaSkyConfig | None = None,
) -> AnandaSkyModel:
    """Build the model on the meta device, check and assign the stored tensors, move it."""
    import torch

    from pipeline.model.modeling import TIED_KEYS, AnandaSkyModel

    files = locate(model_dir)
    config = config or AnandaSkyConfig.load(files.config)
    with torch.device("meta"):
        model = AnandaSkyModel(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    tensors = read_tensors(files)
    tied = TIED_KEYS if config.text.tie_word_embeddings else ()
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    check_tensor_names(expected, found, str(files.root), optional=tied)
    for name in tied:  # a stored copy of a tied head is redundant; the embedding wins
        tensors.pop(name, None)
    model.load_state_dict(tensors, strict=False, assign=True)
    model.tie_weights()
    model.reset_rotary()  # materialise the meta buffer so the module can move...
    model.to(device=device, dtype=dtype)
    model.reset_rotary()  # ...and rebuild it in float32 on the device after the cast
    leftover = [name for name, t in model.state_dict().items() if t.is_meta]
    if leftover:  # a module holds state the checkpoint cannot fill
        raise CheckpointError(f"{files.root}: tensors left unset after loading: {_names(leftover)}")
    return model.eval()


def save_checkpoint(
    out_dir: str | Path,
    config: AnandaSkyConfig,
    tensors: dict[str, torch.Tensor],
    tokenizer_json: str,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write a weights folder; with `max_shard_bytes`, shards plus an index (as HF does)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config.save(out / CONFIG_FILE)
    (out / TOKENIZER_FILE).write_text(tokenizer_json, encoding="utf-8")
    for stale in [out / WEIGHTS_FILE, out / INDEX_FILE, *out.glob("model-*-of-*.safetensors")]:
        stale.unlink(missing_ok=True)
    tensors = {name: t.contiguous() for name, t in sorted(tensors.items())}
    if max_shard_bytes is None:
        save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
        return out
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        weight_map.update({name: fname for name in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / INDEX_FILE).write_text(
        json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return out
