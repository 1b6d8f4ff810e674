"""Make upstream remote code that expects flash-attn and CUDA autocast run on Ascend and CPU.

Two tools for the remote-code loader:

- `flash_attn_shim()` puts module objects named `flash_attn`, `flash_attn.flash_attn_interface`
  and `flash_attn.bert_padding` into `sys.modules` for as long as the `with` block lasts, so
  transformers' `check_imports` and the modeling file's own `from flash_attn import ...` find
  this package's functions. Names bound at import keep working after the block; a modeling
  file that imports flash_attn inside a function needs the block held while it runs.
  The shim has no distribution metadata, so transformers' `is_flash_attn_2_available()` still
  says False and transformers never routes its own attention to it.
- `patch_autocast(module, device)` swaps the module's global `torch` (and any `autocast` names
  it imported) for thin stand-ins whose `autocast("cuda", ...)` uses the model's real device
  type. Only that module's namespace changes; torch itself and every other module are
  untouched. Autocast objects built at import time (e.g. `@torch.autocast("cuda")` decorators)
  already exist before a patch can run and are not converted.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import sys
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from pipeline.compat import bert_padding
from pipeline.compat import flash_attn as interface

DEFAULT_FLASH_ATTN_VERSION = "2.7.4"
SHIM_MODULE_NAMES = ("flash_attn", "flash_attn.flash_attn_interface", "flash_attn.bert_padding")

_MISSING = object()
_SHIM_LOCK = threading.RLock()  # sys.modules is process-wide: one shim change at a time


def _parse_version(version: str) -> tuple[int, int]:
    parts = version.split(".")
    try:
        major, minor = int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        raise ValueError(f"flash-attn version must look like '2.7.4', got {version!r}") from None
    if major != 2:
        raise ValueError(f"only the flash-attn 2.x API is emulated, got version {version!r}")
    return major, minor


def _module(
    name: str, doc: str, attrs: dict[str, Any], *, package: bool = False
) -> types.ModuleType:
    mod = types.ModuleType(name, doc)
    # A real spec: importlib.util.find_spec raises ValueError on a module whose __spec__ is None.
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=package)
    if package:
        mod.__path__ = []
    mod.__package__ = name if package else name.rpartition(".")[0]
    mod.__dict__.update(attrs)
    mod.__all__ = [a for a in attrs if not a.startswith("_")]
    return mod


def build_flash_attn_modules(
    version: str = DEFAULT_FLASH_ATTN_VERSION,
) -> dict[str, types.ModuleType]:
    """The three shim modules, keyed by their `sys.modules` names, for one flash-attn version.

    `version` picks the `bert_padding.unpad_input` flavour: 5 return values from 2.7 on,
    4 before, matching the release the upstream file was written against.
    """
    five_values = _parse_version(version) >= (2, 7)
    functions = {name: getattr(interface, name) for name in interface.__all__}
    padding = {
        "index_first_axis": bert_padding.index_first_axis,
        "index_put_first_axis": bert_padding.index_put_first_axis,
        "pad_input": bert_padding.pad_input,
        "unpad_input": bert_padding.unpad_input if five_values else bert_padding.unpad_input_legacy,
    }
    iface_mod = _module(
        "flash_attn.flash_attn_interface", "anandasky-batch PyTorch stand-in", functions
    )
    padding_mod = _module("flash_attn.bert_padding", "anandasky-batch PyTorch stand-in", padding)
    top = _module(
        "flash_attn",
        "anandasky-batch stand-in for flash-attn (pipeline.compat); PyTorch SDPA underneath.",
        {
            **functions,
            "__version__": version,
            "flash_attn_interface": iface_mod,
            "bert_padding": padding_mod,
        },
        package=True,
    )
    top.__all__ = list(interface.__all__)
    return {top.__name__: top, iface_mod.__name__: iface_mod, padding_mod.__name__: padding_mod}


def _installed_flash_attn() -> bool:
    try:
        return importlib.util.find_spec("flash_attn") is not None
    except (ImportError, ValueError):
        return False


@contextmanager
def flash_attn_shim(
    version: str = DEFAULT_FLASH_ATTN_VERSION, *, prefer_installed: bool = False
) -> Iterator[types.ModuleType]:
    """Serve `flash_attn` from this package inside the block; restore `sys.modules` after.

    Yields the `flash_attn` module in effect. With `prefer_installed=True` a real flash-attn
    that is importable wins and nothing is installed (for CUDA machines that have one).
    Whatever `sys.modules` held under the shim's names before is put back on exit, also when
    the block raises; entries someone else replaced meanwhile are left alone. Holds a
    process-wide lock for the block, so concurrent loaders in threads take turns.
    """
    with _SHIM_LOCK:
        if prefer_installed and _installed_flash_attn():
            existing = sys.modules.get("flash_attn")
            yield existing if existing is not None else importlib.import_module("flash_attn")
            return
        modules = build_flash_attn_modules(version)
        previous = {name: sys.modules.get(name, _MISSING) for name in modules}
        sys.modules.update(modules)
        try:
            yield modules["flash_attn"]
        finally:
            for name, mod in modules.items():
                if sys.modules.get(name) is not mod:
                    continue
                before = previous[name]
                if before is _MISSING:
                    del sys.modules[name]
                else:
                    sys.modules[name] = before


# --- autocast ----------------------------------------------------------------------------------

DeviceSource = str | torch.device | Callable[[], str | torch.device]
_ORIGINALS_ATTR = "__anandasky_autocast_originals__"


def _resolver(device: DeviceSource) -> Callable[[], str]:
    if callable(device):
        return lambda: torch.device(device()).type
    device_type = torch.device(device).type
    return lambda: device_type


class DeviceAutocast:
    """What `torch.autocast(...)` returns in a patched module.

    The device type is settled when the block is entered (or the decorated function called),
    so a model moved after loading still gets its own device. Only "cuda" is redirected: an
    explicit "cpu" in the remote code is meant literally.
    """

    def __init__(
        self,
        resolve: Callable[[], str],
        device_type: str = "cuda",
        dtype: torch.dtype | None = None,
        enabled: bool = True,
        cache_enabled: bool | None = None,
    ) -> None:
        self._resolve = resolve
        self.device_type = device_type
        self.dtype, self.enabled, self.cache_enabled = dtype, enabled, cache_enabled
        self._active: list[torch.autocast] = []

    def real(self) -> torch.autocast:
        """A torch.autocast for the device this call runs on."""
        device_type = self._resolve() if self.device_type == "cuda" else self.device_type
        return torch.autocast(
            device_type, dtype=self.dtype, enabled=self.enabled, cache_enabled=self.cache_enabled
        )

    def __enter__(self) -> None:
        ctx = self.real()
        ctx.__enter__()
        self._active.append(ctx)

    def __exit__(self, *exc: object) -> None:
        self._active.pop().__exit__(*exc)

    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.real():
                return func(*args, **kwargs)

        return wrapper


class _NamespaceProxy(types.ModuleType):
    """A module stand-in: the given overrides, and everything else read from `target`."""

    def __init__(self, target: types.ModuleType, overrides: dict[str, Any]) -> None:
        super().__init__(target.__name__, target.__doc__)
        self.__dict__.update(overrides)
        self.__dict__["_proxy_target"] = target

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_proxy_target"], name)


def _replacements(resolve: Callable[[], str]) -> dict[int, Any]:
    """Real torch objects (by id) -> their device-aware stand-ins."""

    def autocast(
        device_type: str,
        dtype: torch.dtype | None = None,
        enabled: bool = True,
        cache_enabled: bool | None = None,
    ) -> DeviceAutocast:
        return DeviceAutocast(resolve, device_type, dtype, enabled, cache_enabled)

    def cuda_amp_autocast(
        enabled: bool = True, dtype: torch.dtype = torch.float16, cache_enabled: bool = True
    ) -> DeviceAutocast:
        return DeviceAutocast(resolve, "cuda", dtype, enabled, cache_enabled)

    cuda_amp = _NamespaceProxy(torch.cuda.amp, {"autocast": cuda_amp_autocast})
    cuda = _NamespaceProxy(torch.cuda, {"amp": cuda_amp})
    amp = _NamespaceProxy(torch.amp, {"autocast": autocast})
    torch_proxy = _NamespaceProxy(torch, {"autocast": autocast, "amp": amp, "cuda": cuda})
    return {
        id(torch): torch_proxy,
        id(torch.amp): amp,
        id(torch.cuda): cuda,
        id(torch.cuda.amp): cuda_amp,
        id(torch.autocast): autocast,
        id(torch.cuda.amp.autocast): cuda_amp_autocast,
    }


def patch_autocast(module: types.ModuleType, device: DeviceSource) -> list[str]:
    """Make `torch.autocast("cuda", ...)` in `module` use the real device type.

    `device` is a device (string or torch.device) or a callable returning one, e.g.
    `lambda: model.device`, read each time an autocast block is entered. Replaces the module
    globals that are `torch`, `torch.amp`, `torch.cuda`, `torch.cuda.amp`, `torch.autocast` or
    `torch.cuda.amp.autocast` (under any name); a proxy rather than a rewrite of the source
    keeps line numbers and tracebacks of the remote file intact. Patching again replaces the
    earlier patch. Returns the replaced names; `unpatch_autocast` undoes it.
    """
    unpatch_autocast(module)
    replacements = _replacements(_resolver(device))
    originals: dict[str, Any] = {}
    for name, value in list(vars(module).items()):
        stand_in = replacements.get(id(value))
        if stand_in is not None:
            originals[name] = value
            setattr(module, name, stand_in)
    setattr(module, _ORIGINALS_ATTR, originals)
    return sorted(originals)


def unpatch_autocast(module: types.ModuleType) -> None:
    """Put back the module globals `patch_autocast` replaced (no-op if not patched)."""
    originals = vars(module).pop(_ORIGINALS_ATTR, None)
    for name, value in (originals or {}).items():
        setattr(module, name, value)


__all__ = [
    "DEFAULT_FLASH_ATTN_VERSION",
    "SHIM_MODULE_NAMES",
    "DeviceAutocast",
    "build_flash_attn_modules",
    "flash_attn_shim",
    "patch_autocast",
    "unpatch_autocast",
]
