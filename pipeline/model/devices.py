"""Device and dtype selection: `auto|npu|cuda|cpu` (with `:N` indices) and the autocast to match.

torch_npu is imported only when an NPU is asked for or probed, and every way that import can fail
(not installed, CANN missing, a torch/torch-npu version pin) becomes a `MissingDependency` that
names the missing piece. Nothing here assumes "cuda": the autocast device type is the device's.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.errors import BadArguments, MissingDependency
from pipeline.model.config import canonical_dtype

_AUTOLOAD_HINT = (
    "Install and source the Ascend CANN toolkit, or, if this machine has no Ascend NPU, set "
    "TORCH_DEVICE_BACKEND_AUTOLOAD=0 (or uninstall torch-npu) so `import torch` works again."
)
_CANN_HINT = (
    "torch-npu is installed but the Ascend CANN runtime could not be loaded ({detail}). Install "
    "CANN and source its environment (e.g. `source /usr/local/Ascend/ascend-toolkit/set_env.sh`) "
    "before starting the run."
)


def _torch_import_error(exc: BaseException) -> MissingDependency:
    cause = f" ({exc.__cause__})" if exc.__cause__ else ""
    detail = str(exc).split(" You can disable")[0].rstrip(".")
    return MissingDependency(f"`import torch` failed: {detail}{cause}. {_AUTOLOAD_HINT}")


try:  # torch-npu's autoload entry point makes a plain `import torch` fail without CANN.
    import torch
except (ImportError, RuntimeError, OSError) as _exc:  # pragma: no cover - needs a broken install
    raise _torch_import_error(_exc) from _exc

DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|npu)(?::(\d+))?$")


@dataclass(frozen=True)
class NpuProbe:
    """What importing torch_npu told us: usable or not, and why not in words."""

    available: bool
    device_count: int
    reason: str


def import_torch_npu():
    """Import torch_npu or raise `MissingDependency` that says which piece is missing."""
    try:
        return importlib.import_module("torch_npu")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "torch_npu":
            raise MissingDependency(
                "device 'npu' needs torch-npu, which is not installed: install the torch-npu "
                f"wheel that matches torch {torch.__version__} "
                "(`pip install 'anandasky-batch[npu]'`) and the Ascend CANN toolkit."
            ) from exc
        raise MissingDependency(_CANN_HINT.format(detail=exc)) from exc
    except (ImportError, OSError) as exc:
        # Typically `libhccl.so: cannot open shared object file` when CANN is absent.
        raise MissingDependency(_CANN_HINT.format(detail=exc)) from exc
    except RuntimeError as exc:
        raise MissingDependency(
            f"torch-npu failed to initialise ({exc}); check that its version matches torch "
            f"{torch.__version__} and that CANN is installed and sourced."
        ) from exc


def probe_npu() -> NpuProbe:
    """Try torch_npu without raising: `auto` uses this to decide, error paths to explain."""
    try:
        import_torch_npu()
    except MissingDependency as exc:
        return NpuProbe(False, 0, str(exc))
    npu = getattr(torch, "npu", None)
    try:
        if npu is None or not npu.is_available():
            return NpuProbe(False, 0, "torch-npu imported but sees no NPU device")
        count = int(npu.device_count())
    except RuntimeError as exc:  # driver present but unusable
        return NpuProbe(False, 0, f"torch-npu cannot query devices: {exc}")
    return NpuProbe(count > 0, count, "" if count else "torch-npu sees no NPU device")


def npu_device_count() -> int:
    """NPUs usable by this process; 0 without torch_npu or CANN (never raises, for `auto`)."""
    if not _npu_may_exist():
        return 0
    probe = probe_npu()
    return probe.device_count if probe.available else 0


def _npu_may_exist() -> bool:
    """Cheap pre-check for `auto`: skip the torch_npu import when it cannot be installed."""
    return importlib.util.find_spec("torch_npu") is not None


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn a `--device` value into a torch.device, failing with a reason the user can act on."""
    text = (spec or "auto").strip().lower()
    match = _DEVICE_RE.match(text)
    if not match:
        raise BadArguments(
            f"unknown device {spec!r}: use auto, cpu, cuda, npu, or an indexed one like npu:1"
        )
    kind, index = match.group(1), match.group(2)
    if kind == "auto":
        if index is not None:
            raise BadArguments(f"device {spec!r}: 'auto' takes no index")
        if npu_device_count() > 0:
            return torch.device("npu", 0)
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        return torch.device("cpu")
    if kind == "cpu":
        return torch.device("cpu")
    idx = int(index) if index is not None else 0
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise MissingDependency(
                f"device {spec!r} requested but CUDA is not available to torch "
                f"{torch.__version__} (no NVIDIA driver/GPU, or a CPU-only torch build)."
            )
        count = torch.cuda.device_count()
    else:
        import_torch_npu()  # raises with the precise reason
        probe = probe_npu()
        if not probe.available:
            raise MissingDependency(f"device {spec!r} requested but {probe.reason}.")
        count = probe.device_count
    if idx >= count:
        env = "ASCEND_RT_VISIBLE_DEVICES" if kind == "npu" else "CUDA_VISIBLE_DEVICES"
        shown = os.environ.get(env)
        raise BadArguments(
            f"device {spec!r} does not exist: {count} {kind} device(s) visible"
            + (f" ({env}={shown})" if shown is not None else "")
        )
    return torch.device(kind, idx)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Default: bfloat16 on accelerators, float32 on CPU (bf16 matmuls are slow on most CPUs)."""
    if dtype is None:
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise BadArguments(f"unsupported dtype {dtype}; use one of {sorted(DTYPES)}")
        return dtype
    name = canonical_dtype(dtype)
    if name not in DTYPES:
        raise BadArguments(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, value in DTYPES.items() if value == dtype)


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast on the model's own device type; a no-op in float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def inference(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """The context every forward pass runs in: no autograd, autocast for the device."""
    with torch.inference_mode(), autocast(device, dtype):
        yield


def activate(device: torch.device) -> None:
    """Make `device` the current one of its kind, so library calls without an index land there."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif device.type == "npu":
        torch.npu.set_device(device)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (timings only); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "npu":
        torch.npu.synchronize(device)
