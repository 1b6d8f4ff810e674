"""Remote-code loader: an upstream `trust_remote_code` weights folder as a Recognizer (the "patched model").

The upstream AnandaSky release ships its modeling code inside the weights folder, written for
CUDA with flash-attn. Loading it here means, in this order:
1. refusing anything but code files inside the given folder (`auto_map` entries that point at
   another repository, `repo--module.Class`, are rejected) and never reaching a model hub
   (`local_files_only=True` everywhere);
2. importing it under `flash_attn_shim()`, so its top-level `flash_attn` imports bind to
   `pipeline.compat`'s PyTorch versions (a real flash-attn is used instead on CUDA when installed);
3. checking the weights loaded completely (transformers only warns about missing tensors and
   leaves them random, which would produce fluent nonsense);
4. patching autocast in every module loaded from the folder: the device type becomes the model's
   real one (upstream hard-codes "cuda") and the dtype the one asked for (float32 disables it).

`choose_impl` decides `--impl auto`: native whenever the folder is exactly in the native layout
(read from the safetensors headers, no tensor is loaded), else remote.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import re
import struct
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.errors import CheckpointError, MissingDependency
from pipeline.model.checkpoint import (
    CheckpointFiles,
    check_tensor_names,
    checkpoint_checksum,
    locate,
)
from pipeline.model.config import AnandaSkyConfig

log = logging.getLogger(__name__)

# auto_map keys that may name the model class, most specific first.
MODEL_KEYS = (
    "AutoModelForImageTextToText",
    "AutoModelForVision2Seq",
    "AutoModelForCausalLM",
    "AutoModel",
)
_CLASS_REFERENCE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")
_MAX_HEADER_BYTES = 100 << 20  # a safetensors header past this is corrupt, not large


# --- which implementation ---------------------------------------------------------------------


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


def _read_config_json(files: CheckpointFiles) -> dict[str, Any]:
    try:
        data = json.loads(files.config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {files.config}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{files.config}: expected a JSON object")
    return data


def choose_impl(model_dir: str | Path) -> str:
    """`"native"` if the folder is exactly in the native layout, else `"remote"`; logs why.

    A folder that is neither (not native, and no `auto_map` remote code) raises
    `CheckpointError` with the native loader's reason, which is the useful one to read.
    """
    files = locate(model_dir)
    problem = native_layout_problem(files.root)
    if problem is None:
        log.info("%s: native layout; using the native implementation", files.root)
        return "native"
    if "auto_map" not in _read_config_json(files):
        raise CheckpointError(
            f"{problem}; and config.json declares no remote code (auto_map), so the remote "
            "implementation cannot load it either"
        )
    log.info(
        "%s: using the remote-code implementation; native is not possible: %s", files.root, problem
    )
    return "remote"


# --- loading remote code ----------------------------------------------------------------------


def remote_code_entries(files: CheckpointFiles) -> dict[str, str]:
    """The folder's `auto_map` config/model/processor classes, checked to live in the folder."""
    root, raw = files.root, _read_config_json(files)
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


def _dtype_kwargs(dtype: Any) -> dict[str, Any]:
    """transformers 5.x renamed `torch_dtype=` to `dtype=`."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}


def _check_loading(info: dict[str, Any], root: Path) -> None:
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ())
    mismatched = [
        str(m[0]) if isinstance(m, tuple) else str(m) for m in info.get("mismatched_keys") or ()
    ]
    errors = [str(e) for e in info.get("error_msgs") or ()]
    parts = []
    for label, names in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("mis-shaped", mismatched),
    ):
        if names:
            shown = ", ".join(names[:12]) + (
                f", ... ({len(names) - 12} more)" if len(names) > 12 else ""
            )
            parts.append(f"{label} {len(names)} tensor(s): {shown}")
    parts += errors[:3]
    if parts:
        raise CheckpointError(
            f"{root}: remote model weights did not load cleanly: " + "; ".join(parts)
        )


def _load_remote_objects(root: Path, entries: dict[str, str], torch_dtype: Any) -> tuple[Any, Any]:
    from transformers.dynamic_module_utils import get_cached_module_file, get_class_in_module

    def cls(ref: str) -> type:
        # Fresh module objects on every load: autocast is patched per module namespace, and a
        # second model of the same folder (verify's reference side) must not re-patch the first.
        module_file, class_name = ref.split(".")
        cached = get_cached_module_file(str(root), module_file + ".py", local_files_only=True)
        return get_class_in_module(class_name, cached, force_reload=True)

    config = cls(entries["config"]).from_pretrained(str(root), local_files_only=True)
    model, info = cls(entries["model"]).from_pretrained(
        str(root),
        config=config,
        local_files_only=True,
        output_loading_info=True,
        **_dtype_kwargs(torch_dtype),
    )
    _check_loading(info, root)
    processor = cls(entries["processor"]).from_pretrained(str(root), local_files_only=True)
    return model, processor


def folder_modules(model: Any) -> list[types.ModuleType]:
    """Every module transformers imported from the model's folder (its dynamic package)."""
    package = type(model).__module__.rpartition(".")[0]
    prefix = package + "."
    return [m for n, m in list(sys.modules.items()) if n.startswith(prefix) and m is not None]


def force_autocast_dtype(module: types.ModuleType, names: list[str], dtype: Any) -> None:
    """Make autocast blocks opened by `module` use `dtype`; float32 turns them off.

    Upstream hard-codes `dtype=torch.bfloat16`; a run asked for float32 (the reference side of
    `verify`, or CPU) must compute in float32, and one asked for float16 in float16. Wraps the
    stand-ins `patch_autocast` installed under `names`, never torch itself. Blocks the remote
    code disables on purpose (`enabled=False`, fp32 islands) stay disabled.
    """
    import torch

    wrapped: dict[int, Callable[..., Any]] = {}

    def forced(factory: Callable[..., Any]) -> Callable[..., Any]:
        if id(factory) in wrapped:
            return wrapped[id(factory)]
        signature = inspect.signature(factory)

        @functools.wraps(factory)
        def autocast(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            if dtype == torch.float32:
                bound.arguments["enabled"] = False
            elif bound.arguments["enabled"]:
                bound.arguments["dtype"] = dtype
            return factory(*bound.args, **bound.kwargs)

        wrapped[id(factory)] = autocast
        return autocast

    def visit(namespace: types.ModuleType) -> None:
        own = vars(namespace)  # only the stand-in's overrides, not what it forwards to torch
        if callable(own.get("autocast")):
            namespace.autocast = forced(own["autocast"])
        for key in ("amp", "cuda"):
            if isinstance(own.get(key), types.ModuleType):
                visit(own[key])

    for name in names:
        value = getattr(module, name)
        if isinstance(value, types.ModuleType):
            visit(value)
        elif callable(value):
            setattr(module, name, forced(value))


def exact_float32(device: Any, dtype: Any) -> None:
    """float32 asked for means float32 computed, convolutions included.

    cuDNN runs float32 convolutions in TF32 by default; upstream-style patch embeddings are
    convolutions, and on an H200 that alone put the remote model 4e-4-7e-4 (relative) away
    from CPU float32, past `verify`'s float32 limit (1e-4); with TF32 off it is 2e-6. The
    switch is process-wide, which fits one model per worker process; the native model has no
    convolution and matmuls default to full float32. On Ascend the same switch is
    `torch.npu.conv.allow_hf32` (UNVERIFIED: not run on an NPU here).
    """
    import torch

    if dtype != torch.float32:
        return
    if device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        torch.backends.cudnn.allow_tf32 = False
        log.info("float32 on %s: TF32 convolutions turned off for this process", device)
    conv = getattr(getattr(torch, "npu", None), "conv", None)
    if device.type == "npu" and getattr(conv, "allow_hf32", False):
        conv.allow_hf32 = False
        log.info("float32 on %s: HF32 convolutions turned off for this process", device)


def remote_checksum(root: Path) -> str:
    """Weights/config/tokenizer checksum plus every other top-level .py/.json file of the folder.

    The remote code and processor settings decide the output as much as the weights do.
    """
    digest = hashlib.sha256(checkpoint_checksum(root).encode())
    hashed = {p.name for p in locate(root).hashed}
    for path in sorted([*root.glob("*.py"), *root.glob("*.json")]):
        if path.name in hashed or not path.is_file():
            continue
        digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def load_remote_recognizer(model_dir: str | Path, device: str = "auto", dtype: str | None = None):
    """Load the folder's own remote code on one device, through the flash-attn layer.

    Returns a `RemoteRecognizer`, which has the `Recognizer` interface. Raises
    `CheckpointError` for a folder that is not a complete remote-code checkpoint and
    `MissingDependency` when the remote code imports a package that is not installed.
    """
    from transformers.utils import logging as hf_logging

    from pipeline.compat.install import flash_attn_shim, patch_autocast
    from pipeline.compat.remote_recognizer import RemoteRecognizer
    from pipeline.model.devices import activate, resolve_device, resolve_dtype

    files = locate(model_dir)
    entries = remote_code_entries(files)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    activate(torch_device)
    log.info(
        "%s: loading remote code %s with the flash-attn compatibility layer on %s (%s)",
        files.root,
        entries["model"],
        torch_device,
        torch_dtype,
    )
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with flash_attn_shim(prefer_installed=torch_device.type == "cuda"):
            model, processor = _load_remote_objects(files.root, entries, torch_dtype)
    except ImportError as exc:  # transformers' check_imports: a package the code needs
        raise MissingDependency(f"remote code in {files.root} cannot be imported: {exc}") from exc
    except (CheckpointError, MissingDependency):
        raise
    except Exception as exc:  # remote code is arbitrary: name the folder, keep the cause
        raise CheckpointError(
            f"remote code in {files.root} failed to load: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model = model.to(torch_device).eval()
    exact_float32(torch_device, torch_dtype)
    for module in folder_modules(model):
        names = patch_autocast(module, lambda: model.device)
        force_autocast_dtype(module, names, torch_dtype)
    return RemoteRecognizer(model, processor, files, torch_device, torch_dtype)
