"""Which worker processes a run starts, and how each one is pinned to its single device.

Device ids come from `--devices`, else from the environment the user launched us in
(`ASCEND_RT_VISIBLE_DEVICES` for NPU, `CUDA_VISIBLE_DEVICES` for CUDA), taken as given: ids need
not be 0..N-1. Each worker then sets the visible-devices variable to its one id before the
device runtime initialises, so inside the worker the device is always index 0.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from pipeline.errors import BadArguments, MissingDependency

VISIBLE_DEVICES_VARIABLE = {"npu": "ASCEND_RT_VISIBLE_DEVICES", "cuda": "CUDA_VISIBLE_DEVICES"}


@dataclass(frozen=True)
class WorkerSlot:
    """One device worker: a label for logs/store, and the environment pinning it."""

    label: str  # "npu:3", "cuda:1", "cpu:0" — the user's own device id
    device_type: str  # "npu" | "cuda" | "cpu"
    visible_variable: str | None  # env variable set in the worker before the runtime starts
    visible_value: str | None

    @property
    def torch_device(self) -> str:
        """The device inside the pinned worker: the only visible one is index 0."""
        return "cpu" if self.device_type == "cpu" else f"{self.device_type}:0"


def _split_ids(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def detect_device_type() -> str:
    """`auto`: npu if torch_npu imports and sees a device, else cuda, else cpu."""
    from pipeline.model.devices import npu_device_count

    if npu_device_count() > 0:
        return "npu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def _count_devices(device_type: str) -> int:
    if device_type == "npu":
        from pipeline.model.devices import npu_device_count

        return npu_device_count()
    import torch

    return torch.cuda.device_count()


def check_device_runtime(device: str) -> None:
    """Fail with the real cause (exit 3) when the asked-for device's runtime is unusable here.

    Without this, `--device npu` on a machine without torch-npu would find zero devices and tell
    the user to set ASCEND_RT_VISIBLE_DEVICES, which cannot help. `auto` and `cpu` always work.
    """
    device_type = device.split(":", 1)[0].lower()
    if device_type == "npu":
        from pipeline.model.devices import probe_npu

        probe = probe_npu()
        if not probe.available:
            raise MissingDependency(f"--device {device}: {probe.reason}")
    elif device_type == "cuda":
        import torch

        if torch.version.cuda is None:
            raise MissingDependency(
                f"--device {device}: this torch ({torch.__version__}) is a CPU-only build; "
                "install a CUDA build of torch, or use --device cpu"
            )
        if not torch.cuda.is_available():
            raise MissingDependency(
                f"--device {device}: torch sees no CUDA device (check the NVIDIA driver with "
                "`nvidia-smi` and CUDA_VISIBLE_DEVICES), or use --device cpu"
            )


def plan_workers(
    device: str,
    devices: str | None = None,
    cpu_workers: int = 1,
    environ: Mapping[str, str] | None = None,
) -> list[WorkerSlot]:
    """Turn `--device`, `--devices` and `--workers` into one slot per worker process."""
    environ = os.environ if environ is None else environ
    device_type = device.split(":", 1)[0].lower()
    if device_type == "auto":
        device_type = detect_device_type()
    if device_type not in ("npu", "cuda", "cpu"):
        raise BadArguments(f"unknown device {device!r}: use auto, npu, cuda or cpu")
    if device_type == "cpu":
        if cpu_workers < 1:
            raise BadArguments(f"--workers must be at least 1, got {cpu_workers}")
        return [WorkerSlot(f"cpu:{i}", "cpu", None, None) for i in range(cpu_workers)]

    variable = VISIBLE_DEVICES_VARIABLE[device_type]
    if ":" in device and devices is None:
        ids = [device.split(":", 1)[1]]
    elif devices is not None:
        ids = _split_ids(devices)
    elif environ.get(variable, "").strip():
        ids = _split_ids(environ[variable])
    else:
        ids = [str(i) for i in range(_count_devices(device_type))]
    if not ids:
        raise BadArguments(
            f"no {device_type} device found: set {variable} or pass --devices, or use --device cpu"
        )
    if len(set(ids)) != len(ids):
        raise BadArguments(f"device ids repeat in {','.join(ids)}: give each device once")
    return [WorkerSlot(f"{device_type}:{i}", device_type, variable, i) for i in ids]


def pin_to_slot(slot: WorkerSlot, environ: dict[str, str] | None = None) -> None:
    """Called first thing in a worker process, before torch_npu or CUDA initialise."""
    environ = os.environ if environ is None else environ
    if slot.visible_variable is not None and slot.visible_value is not None:
        environ[slot.visible_variable] = slot.visible_value
    if slot.device_type == "cpu":
        # A CPU worker must not initialise a GPU that a device worker owns.
        environ["CUDA_VISIBLE_DEVICES"] = ""
