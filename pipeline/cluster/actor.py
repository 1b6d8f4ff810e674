"""The model actor: one per device slot of the cluster, holding a `ModelSession` exactly as a
local worker process does, so a page is recognised the same way on any node.

Page images cross the network through Ray's object store as lossless PNG (pixels unchanged,
a fraction of the raw size); the actor decodes them before the model sees them. Anything in a
batch that is not an image travels as Ray pickles it.

The actor is threaded: each `recognize` call puts its batch on a queue and waits for its
answer, while one thread serves the queue through one continuous batch (`JobStream`), so the
batches the driver keeps outstanding share the device's rows instead of running one by one.
"""

from __future__ import annotations

import io
import itertools
import os
import queue
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass, replace

from PIL import Image

from pipeline.cluster.model_shipping import (
    ModelIdentity,
    ModelSource,
    NeedsModel,
    ShippedFile,
    model_here,
)
from pipeline.errors import BadArguments
from pipeline.runner.job_stream import JobDone, JobFailed, JobStream, describe_error, load_failure
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
    """`pack`'s inverse; a Ray object (a page loaded on a node, `node_loading`) is fetched from
    wherever it is, then unpacked."""
    ray = sys.modules.get("ray")  # always there inside an actor; never imported for this
    if ray is not None and isinstance(item, ray.ObjectRef):
        return unpack(ray.get(item))
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
    model: ModelSource | None = None  # where the folder came from (in place, cache, shipped)
    decode: str = "eager"  # ModelSession.decode_mode, for run.log


@dataclass(frozen=True)
class ActorFailed:
    """The model could not be loaded: the run stops with this exit code."""

    message: str
    exit_code: int


class ModelActor:
    """Wrapped with `ray.remote` (threaded, `max_concurrency`) by the pool: `place` and `load`
    first, then `recognize` calls that run concurrently, one per batch out."""

    def __init__(self, options: WorkerOptions, device_type: str, resource: str) -> None:
        self.options = options
        self.device_type = device_type
        self.resource = resource
        self.session: ModelSession | None = None
        self.jobs: queue.Queue = queue.Queue()
        self.waiting: dict[int, Future] = {}  # job id -> its answer, while queued or decoding
        self.lock = threading.Lock()
        self.job_ids = itertools.count()
        self.refusal: str | None = None  # set when the stream cannot serve anything any more

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

    def load(
        self,
        identity: ModelIdentity | None = None,
        shipped: tuple[ShippedFile, ...] | None = None,
    ) -> ActorReady | ActorFailed | NeedsModel:
        """Load the model: from the folder at the driver's path when this node holds it with
        `identity`'s bytes, else from the node's cache of the files the driver `shipped`
        (`NeedsModel` asks for them)."""

        if self.device_type == "cpu" and self.resource != "GPU":
            os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU actor leaves GPUs alone
        torch_device = "cpu" if self.device_type == "cpu" else f"{self.device_type}:0"
        source = None
        try:
            if identity is not None:
                source = model_here(self.options.model_dir, identity, shipped)
                if isinstance(source, NeedsModel):
                    return source
            options = replace(self.options, model_dir=source.folder) if source else self.options
            self.session = ModelSession.load(options, torch_device)
        except Exception as exc:  # reported to the driver, which stops the run
            return ActorFailed(*load_failure(exc))
        threading.Thread(target=self._serve, name="job-stream", daemon=True).start()
        return ActorReady(
            self.session.device, self.session.load_s, source, self.session.decode_mode
        )

    def recognize(self, packed: list) -> tuple:
        """("done", recognitions, infer_s, wait_s) or ("failed", error) for one batch."""
        items = [unpack(item) for item in packed]
        answer: Future = Future()
        with self.lock:
            if self.refusal is not None:
                return ("failed", self.refusal)
            job_id = next(self.job_ids)
            self.waiting[job_id] = answer
        self.jobs.put((job_id, items))
        return answer.result()

    def _serve(self) -> None:
        """The stream thread: until the actor is killed, or nothing can run any more."""
        stream = JobStream(self.session, lambda block: self.jobs.get(block=block), self._answer)
        try:
            stream.serve()
            refusal = "the actor's batch stream ended"
        except BadArguments as exc:  # settings no page can run under: every batch fails
            refusal = describe_error(exc)
        except Exception as exc:  # a fault no batch is to blame for
            refusal = describe_error(exc)
        with self.lock:
            self.refusal = refusal
            left, self.waiting = list(self.waiting.values()), {}
        for answer in left:
            answer.set_result(("failed", refusal))

    def _answer(self, answer: JobDone | JobFailed) -> None:
        with self.lock:
            waiting = self.waiting.pop(answer.job_id, None)
        if waiting is None:
            return
        if isinstance(answer, JobDone):
            waiting.set_result(("done", answer.recognitions, answer.infer_s, answer.wait_s))
        else:
            waiting.set_result(("failed", answer.error))
