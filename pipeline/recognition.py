"""The loader: which implementation reads a weights folder (`--impl auto|native|remote`), then load it.

Choosing sits here, above both implementations, so neither knows of the other: `pipeline.model`
is the native model, `pipeline.compat` the folder's own remote code under the flash-attn layer.
Both return an object with the same interface (`Recognizer`, `RemoteRecognizer`), which is all
a device worker, `verify` or `infer` holds.

Importing this module imports neither torch nor transformers: the coordinator asks
`page_pixel_budget` before any worker exists, and a resumed run with nothing to do stays quick.
The implementations are imported when one is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pipeline.compat.remote_folder import read_config_json
from pipeline.errors import BadArguments, CheckpointError
from pipeline.model.checkpoint import locate
from pipeline.model.config import AnandaSkyConfig
from pipeline.model.native_layout import native_layout_problem

if TYPE_CHECKING:
    from PIL import Image

    from pipeline.records import Recognition

log = logging.getLogger(__name__)

IMPLEMENTATIONS = ("auto", "native", "remote")


class PageRecognizer(Protocol):
    """What `load_recognizer` returns, native `Recognizer` or `RemoteRecognizer` alike: the
    calls a device worker, `verify` and `infer` make (tests/test_remote_interface.py checks
    both classes take them with the same signatures)."""

    device: str
    dtype: str
    model_name: str
    model_checksum: str
    num_parameters: int
    max_image_pixels: int

    def image_token_count(self, width: int, height: int) -> int: ...

    def recognize(
        self,
        images: list[Image.Image],
        *,
        prompt: str = ...,
        max_new_tokens: int | Sequence[int] = ...,
        repetition_guard: Any = ...,
        max_batch: int | None = ...,
        token_budget: int | None = ...,
        schedule: str = ...,
    ) -> list[Recognition]: ...

    def recognize_stream(
        self,
        feed: Any,
        *,
        prompt: str = ...,
        max_new_tokens: int = ...,
        repetition_guard: Any = ...,
        max_batch: int = ...,
        token_budget: int | None = ...,
    ) -> Iterator[tuple[Hashable, Recognition]]: ...


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
    if "auto_map" not in read_config_json(files):
        raise CheckpointError(
            f"{problem}; and config.json declares no remote code (auto_map), so the remote "
            "implementation cannot load it either"
        )
    log.info(
        "%s: using the remote-code implementation; native is not possible: %s", files.root, problem
    )
    return "remote"


def load_recognizer(
    model_dir: str | Path,
    device: str = "auto",
    dtype: str | None = None,
    impl: str = "native",
    decode_graphs: bool = False,
) -> PageRecognizer:
    """Load a local weights folder onto one device. Never reaches for a model hub.

    `impl`: native (this package's model), remote (the folder's own trust_remote_code model,
    under the flash-attn compatibility layer), or auto (native when the tensors match the
    native layout exactly, else remote). `decode_graphs` (`--decode-graphs`, native only):
    decode at fixed shapes, captured as CUDA / NPU graphs.
    """
    if impl not in IMPLEMENTATIONS:
        raise BadArguments(f"unknown --impl {impl!r}; use one of {', '.join(IMPLEMENTATIONS)}")
    if impl == "auto":
        impl = choose_impl(model_dir)
    # torch is first imported through devices.py: a torch-npu autoload failure (no CANN) then
    # surfaces as MissingDependency with the TORCH_DEVICE_BACKEND_AUTOLOAD=0 hint.
    import pipeline.model.devices  # noqa: F401

    if impl == "remote":
        if decode_graphs:
            raise BadArguments(
                f"--decode-graphs needs the native model; {model_dir} runs its own (remote) "
                "code: leave out --decode-graphs"
            )
        from pipeline.compat.remote import load_remote_recognizer

        return load_remote_recognizer(model_dir, device, dtype)
    from pipeline.model.recognizer import load_native_recognizer

    return load_native_recognizer(model_dir, device, dtype, fixed_shapes=decode_graphs)


def page_pixel_budget(model_dir: str | Path, impl: str) -> int | None:
    """The most pixels a page needs to keep before it reaches the model (None: as rendered).

    Only a native config states that size (read without importing torch); a remote-code
    model's own processor resizes, so its pages go as rendered. `run` and `infer` both shrink
    pages by this rule, so they hand the model the same pixels.
    """
    if impl == "remote":
        return None
    try:
        return AnandaSkyConfig.load(Path(model_dir) / "config.json").max_image_pixels
    except CheckpointError:
        if impl == "native":
            raise
        return None
