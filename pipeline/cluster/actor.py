"""The model actor: one per device slot of the cluster, holding a `ModelSession` exactly as a
local worker process does, so a page is recognised the same way on any node.

Page images cross the network through Ray's object store as lossless PNG (pixels unchanged,
a fraction of the raw size); the actor decodes them before the model sees them. Anything in a
batch that is not an image travels as Ray pickles it.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass

from PIL import Image

from pipeline.runner.device_worker import describe_error
from pipeline.runner.model_session import ModelSession, WorkerOptions


@dataclass(frozen=True)
class PngImage:
    """A page image packed for the trip to an actor."""

    data: bytes


def pack(item):
    """Images (also inside lists and tuples) as PNG bytes; the rest unchanged."""
    if isinstance(item, Image.Image):
        buffer = io.BytesIO()
        item.save(buffer, format="PNG", compress_level=1)
        return PngImage(buffer.getvalue())
    if isinstance(item, (list, tuple)):
        return type(item)(pack(part) for part in item)
    return item


def unpack(item):
    if isinstance(item, PngImage):
        image = Image.open(io.BytesIO(item.data))
        image.load()
        return image
    if isinstance(item, (list, tuple)):
        return type(item)(unpack(part) for part in item)
    return item


@dataclass(frozen=True)
class ActorPlace:
    """Where Ray put an actor, reported before the model loads (seconds) so the run log shows
    every actor's device even when a short run ends before all of them are ready."""

    node_id: str
    node_ip: str
    visible_devices: str | None  # the visible-devices variable as Ray set it for this actor
    accelerator_ids: tuple[str, ...]  # Ray's own record of the unit(s) this actor holds
    pid: int


@dataclass(frozen=True)
class ActorReady:
    device: str
    load_s: float


@dataclass(frozen=True)
class ActorFailed:
    """The model could not be loaded: the run stops with this exit code."""

    message: str
    exit_code: int


class ModelActor:
    """Wrapped with `ray.remote` by the pool; methods run one at a time, in call order."""

    def __init__(self, options: WorkerOptions, device_type: str, resource: str) -> None:
        self.options = options
        self.device_type = device_type
        self.resource = resource
        self.session: ModelSession | None = None
        self.idle_since = time.perf_counter()

    def place(self) -> ActorPlace:
        import ray

        from pipeline.cluster.connect import VISIBLE_VARIABLE

        variable = VISIBLE_VARIABLE.get(self.resource)
        context = ray.get_runtime_context()
        ids = context.get_accelerator_ids().get(self.resource, [])
        return ActorPlace(
            context.get_node_id(),
            ray.util.get_node_ip_address(),
            os.environ.get(variable) if variable else None,
            tuple(str(i) for i in ids),
            os.getpid(),
        )

    def load(self) -> ActorReady | ActorFailed:
        from pipeline.errors import AnandaSkyError, ExitCode

        if self.device_type == "cpu" and self.resource != "GPU":
            os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU actor leaves GPUs alone
        torch_device = "cpu" if self.device_type == "cpu" else f"{self.device_type}:0"
        try:
            self.session = ModelSession.load(self.options, torch_device)
        except Exception as exc:  # reported to the driver, which stops the run
            code = exc.exit_code if isinstance(exc, AnandaSkyError) else ExitCode.DEVICES_LOST
            return ActorFailed(describe_error(exc), int(code))
        self.idle_since = time.perf_counter()
        return ActorReady(self.session.device, self.session.load_s)

    def recognize(self, packed: list) -> tuple:
        """("done", recognitions, infer_s, wait_s) or ("failed", error) for one batch."""
        started = time.perf_counter()
        wait_s = started - self.idle_since
        try:
            recognitions = self.session.recognize_batch([unpack(item) for item in packed])
        except Exception as exc:  # one bad batch must not take the device down
            return ("failed", describe_error(exc))
        finally:
            self.idle_since = time.perf_counter()
        return ("done", recognitions, time.perf_counter() - started, wait_s)
