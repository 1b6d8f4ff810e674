"""A run's settings: what the user asked for, what is stored for `resume`, and the fingerprint.

The fingerprint holds only what changes the transcriptions (model, prompt, rendering, generation);
devices, worker counts and batch sizes may change between a run and its resumption.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import CheckpointError
from pipeline.ingest.documents import IngestSettings
from pipeline.ingest.page_loading import LayoutRequest
from pipeline.ingest.selection import InputFilter
from pipeline.layout.detector import DetectorSettings
from pipeline.layout.geometry import READING_ORDERS
from pipeline.model.checkpoint import hash_code_files
from pipeline.model.config import AnandaSkyConfig, canonical_dtype
from pipeline.runner.device_plan import WorkerSlot

OUTPUT_FORMATS = ("alto", "txt")
LAYOUTS = ("page", "lines")  # recognise whole pages, or each detected line's crop
# `--ray-loading`: the driver's own loaders read every page, or Ray tasks on the nodes do
# (pipeline.cluster.node_loading; needs the inputs at the same path on every node).
RAY_LOADING = ("head", "nodes")
DETECTORS = ("rapidocr", "none")  # none: no line detection (page mode only; no coordinates)
# Not stored: a password has no business on disk, and `resume` asks for it again.
# `--prune` acts once: a resumed run must not delete outputs the user did not ask it to.
_NOT_STORED = ("pdf_password", "quiet", "new_config", "recover_store", "prune")
# Detecting loaders at most when chosen automatically (`automatic_loaders`): each one's resident
# memory was ~0.75 GB after detecting lines on the test pages, so 32 hold ~24 GB.
MAX_DETECTING_LOADERS = 32
# The dtypes a worker computes in (pipeline.model.devices.DTYPES, which needs torch), after
# `canonical_dtype` maps aliases such as bf16: checked here, before OUT or a worker exists.
DTYPES = ("bfloat16", "float16", "float32")


@dataclass(frozen=True)
class RunSettings:
    inputs: tuple[str, ...]
    out_dir: str
    model_dir: str
    device: str = "auto"
    devices: str | None = None
    workers: int = 1
    dtype: str | None = None
    impl: str = "auto"
    prompt: str | None = None
    max_new_tokens: int = 2048
    repetition_guard: bool = True
    dpi: int = 300
    rasterizer: str = "pdfium"
    pdf_password: str | None = field(default=None, repr=False)
    max_image_pixels: int = IngestSettings.max_image_pixels
    batch_size: int = 8
    # Rows the engine decodes at once, refilled as pages finish (continuous batching), and the
    # KV-cache positions all rows may hold; None: every page of a batch at once.
    max_batch: int | None = None
    token_budget: int | None = None
    # Decode at fixed shapes captured as CUDA / NPU graphs (native model only). Not in the
    # fingerprint, like max_batch: it changes how rows share a step, not the computation.
    decode_graphs: bool = False
    max_attempts: int = 3
    batch_timeout: float = 0  # 0: derived from the token budget (`batch_timeout_s`)
    formats: tuple[str, ...] = OUTPUT_FORMATS
    loaders: int = 0  # 0: chosen from the cores and devices (`automatic_loaders`)
    include: tuple[str, ...] = ()  # globs against the path relative to its input argument
    exclude: tuple[str, ...] = ()
    prune: bool = False  # forget documents whose source is gone, and their outputs
    # A Ray cluster instead of this machine's devices: `auto`, `local` or host:port; and the
    # resource each model actor requests (None: NPU, GPU or CPU after the device).
    ray: str | None = None
    ray_resource: str | None = None
    ray_loading: str = "head"  # where pages are loaded on a Ray run: RAY_LOADING
    quiet: bool = False
    new_config: bool = False
    recover_store: bool = False  # move a damaged job store aside and rebuild it
    layout: str = "page"
    reading_order: str = "auto"
    detector: str = "rapidocr"
    detector_max_side: int = DetectorSettings.max_side

    def __post_init__(self) -> None:
        from pipeline.errors import BadArguments

        unknown = [fmt for fmt in self.formats if fmt not in OUTPUT_FORMATS]
        if unknown or not self.formats:
            raise BadArguments(
                f"--formats {','.join(self.formats)}: choose from {','.join(OUTPUT_FORMATS)}"
            )
        if self.loaders < 0:
            raise BadArguments("--loaders must be 0 (automatic) or more")
        for name in ("batch_size", "max_attempts", "dpi", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise BadArguments(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("max_batch", "token_budget"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise BadArguments(f"--{name.replace('_', '-')} must be at least 1")
        if self.batch_timeout < 0:
            raise BadArguments("--batch-timeout must be 0 (automatic) or more seconds")
        if self.rasterizer not in ("pdfium", "poppler"):
            raise BadArguments(f"--rasterizer {self.rasterizer}: use pdfium or poppler")
        if self.ray_loading not in RAY_LOADING:
            raise BadArguments(f"--ray-loading {self.ray_loading}: use head or nodes")
        if self.ray_loading == "nodes" and not self.ray:
            raise BadArguments(
                "--ray-loading nodes loads pages on a Ray cluster's nodes: add --ray"
            )
        if self.decode_graphs and self.impl == "remote":
            raise BadArguments("--decode-graphs needs the native model: leave out --impl remote")
        if self.dtype is not None and canonical_dtype(self.dtype) not in DTYPES:
            raise BadArguments(f"--dtype {self.dtype}: use {', '.join(DTYPES)} (or bf16, fp16)")
        _ = self.ingest  # --max-image-pixels (and --dpi, --rasterizer) checked before any work
        self._check_layout()

    def _check_layout(self) -> None:
        from pipeline.errors import BadArguments as error

        if self.layout not in LAYOUTS:
            raise error(f"--layout {self.layout}: use {' or '.join(LAYOUTS)}")
        if self.reading_order not in READING_ORDERS:
            raise error(f"--reading-order {self.reading_order}: use {', '.join(READING_ORDERS)}")
        if self.detector not in DETECTORS:
            raise error(f"--detector {self.detector}: use {' or '.join(DETECTORS)}")
        if self.layout == "lines" and self.detector == "none":
            raise error("--layout lines needs a line detector: leave out --detector none")
        if self.detector_max_side < 64:
            raise error("--detector-max-side must be at least 64 pixels")

    @property
    def layout_request(self) -> LayoutRequest | None:
        """What the page loaders do after loading: detect lines, and cut them for `lines`."""
        if (detector := self.detector_settings) is None:
            return None
        return LayoutRequest(detector, self.reading_order, crops=self.layout == "lines")

    @property
    def detector_settings(self) -> DetectorSettings | None:
        """The line detector's settings, or None when the run detects no lines."""
        if self.detector == "none":
            return None
        return DetectorSettings(max_side=self.detector_max_side)

    @property
    def ingest(self) -> IngestSettings:
        return IngestSettings(
            dpi=self.dpi,
            rasterizer=self.rasterizer,
            pdf_password=self.pdf_password,
            max_image_pixels=self.max_image_pixels,
        )

    def loader_processes(self, slots: Sequence[WorkerSlot]) -> int:
        """`--loaders`, or 0: chosen from this machine's cores and the run's device workers."""
        if self.loaders:
            return self.loaders
        accelerators = sum(slot.device_type != "cpu" for slot in slots)
        return automatic_loaders(os.cpu_count() or 1, accelerators, self.detector != "none")

    @property
    def batch_timeout_s(self) -> float:
        """A worker holding batches that answers none for this long is hung (driver stall,
        deadlock). Its batches share one continuous batch and enter it in order, so answers
        come about as often as batches decoded one at a time would finish.

        The default is generous: a fixed 300 s (first-batch compilation, a slow device) plus
        0.2 s for every token each page of a full batch may generate, about an hour for the
        defaults. A batch that only runs slowly must never be mistaken for a hung one.
        """
        if self.batch_timeout:
            return self.batch_timeout
        return 300 + 0.2 * self.max_new_tokens * self.batch_size

    @property
    def input_filter(self) -> InputFilter:
        return InputFilter(tuple(self.include), tuple(self.exclude))

    @property
    def out_path(self) -> Path:
        return Path(self.out_dir)

    def resolved_dtype(self, device_type: str) -> str:
        """The dtype the workers compute in: `--dtype`, else the device's default."""
        if self.dtype is None:
            return "float32" if device_type == "cpu" else "bfloat16"
        return canonical_dtype(self.dtype)

    def resolved_impl(self) -> str:
        """`--impl`, with `auto` decided without importing torch: a folder whose config.json is
        a native config runs natively, any other (remote code) runs its own code."""
        if self.impl != "auto":
            return self.impl
        try:
            AnandaSkyConfig.load(Path(self.model_dir) / "config.json")
        except CheckpointError:
            return "remote"
        return "native"

    def fingerprint(
        self, model_checksum: str, prompt: str, *, device_type: str, code_checksum: str
    ) -> dict:
        """What decides the text: the model (weights, tokenizer, config and its own code),
        the prompt, rendering, generation, and the numbers it computes in (dtype, impl)."""
        return {
            "model_checksum": model_checksum,
            "code_checksum": code_checksum,
            "dtype": self.resolved_dtype(device_type),
            "impl": self.resolved_impl(),
            "prompt": prompt,
            "dpi": self.dpi,
            "rasterizer": self.rasterizer,
            "max_new_tokens": self.max_new_tokens,
            "repetition_guard": self.repetition_guard,
            # the lines found and how they are read (and, in `lines`, what the model sees)
            "layout": self.layout,
            "reading_order": self.reading_order,
            "detector": settings.fingerprint() if (settings := self.detector_settings) else "none",
        }

    def to_stored(self) -> dict:
        stored = dataclasses.asdict(self)
        for name in _NOT_STORED:
            stored.pop(name)
        return stored

    @classmethod
    def from_stored(cls, stored: dict, **overrides) -> RunSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in stored.items() if key in names}
        for key in ("inputs", "formats", "include", "exclude"):
            if key in values:
                values[key] = tuple(values[key])
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)


def automatic_loaders(cores: int, accelerator_workers: int, detect: bool) -> int:
    """Page loaders for `--loaders 0`.

    Loading alone takes ~70 ms a page (300 DPI): one loader per 8 cores, 1 to 8, keeps devices
    fed. Line detection adds ~0.3-0.6 CPU-s a page, so with it the loaders get the cores nothing
    else needs: all but one per accelerator worker and one for the coordinator; on CPU-only runs
    the workers' torch threads share the cores, so half. Never fewer than without detection
    (a `--ray` run counts actors that may sit on other nodes), and at most
    MAX_DETECTING_LOADERS: each holds an onnxruntime session and its buffers (~0.75 GB).
    """
    light = max(1, min(8, cores // 8))
    if not detect:
        return light
    spare = cores - accelerator_workers - 1 if accelerator_workers else cores // 2
    return max(light, min(MAX_DETECTING_LOADERS, spare))


# Fingerprint keys added after stores existed, with the value every run before them had: an
# older output folder holds whole-page transcriptions, so it is not continued in lines mode.
IMPLIED_BY_OLDER_STORES = {"layout": "page"}


def model_code_checksum(model_dir: str | Path) -> str:
    """sha256 over the model folder's own code and settings files that the weights checksum
    leaves out (remote-code `.py`, `.json` such as preprocessor_config.json)."""
    return hash_code_files(hashlib.sha256(), model_dir).hexdigest()
