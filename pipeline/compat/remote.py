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

Which folder loads through here (`--impl auto`) is the loader's choice, `pipeline.recognition`;
what the folder holds is read by `remote_folder`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers.dynamic_module_utils import get_cached_module_file, get_class_in_module
from transformers.utils import logging as hf_logging

from pipeline.compat.install import flash_attn_shim, patch_autocast
from pipeline.compat.remote_folder import remote_code_entries
from pipeline.compat.remote_recognizer import RemoteRecognizer
from pipeline.errors import CheckpointError, MissingDependency
from pipeline.model.checkpoint import locate
from pipeline.model.devices import activate, resolve_device, resolve_dtype

log = logging.getLogger(__name__)


# --- loading remote code ----------------------------------------------------------------------


def _dtype_kwargs(dtype: Any) -> dict[str, Any]:
    """transformers 5.x renamed `torch_dtype=` to `dtype=`."""
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
    if dtype != torch.float32:
        return
    if device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        torch.backends.cudnn.allow_tf32 = False
        log.info("float32 on %s: TF32 convolutions turned off for this process", device)
    conv = getattr(getattr(torch, "npu", None), "conv", None)
    if device.type == "npu" and getattr(conv, "allow_hf32", False):
        conv.allow_hf32 = False
        log.info("float32 on %s: HF32 convolutions turned off for this process", device)


def load_remote_recognizer(
    model_dir: str | Path, device: str = "auto", dtype: str | None = None
) -> RemoteRecognizer:
    """Load the folder's own remote code on one device, through the flash-attn layer.

    Returns a `RemoteRecognizer`, which has the `Recognizer` interface. Raises
    `CheckpointError` for a folder that is not a complete remote-code checkpoint and
    `MissingDependency` when the remote code imports a package that is not installed.
    """
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
