"""AnandaSky, natively: config, devices, attention, vision encoder, decoder, generation, weights.

Public API (other stages are written against exactly these names):

    load_native_recognizer(model_dir, device="auto", dtype=None) -> Recognizer
    (`pipeline.recognition.load_recognizer(..., impl=)` picks native or remote-code and loads it)
    Recognizer.recognize(images, *, prompt=DEFAULT_PROMPT, max_new_tokens=2048,
                         repetition_guard=True, max_batch=None, token_budget=None,
                         schedule="continuous") -> list[Recognition]
    Recognizer.recognize_stream(feed, *, prompt, max_new_tokens, repetition_guard, max_batch,
                                token_budget) -> Iterator[(key, Recognition)]
    pipeline.model.feeds.JobFeed(get_job)  # a worker's task queue as recognize_stream's feed
    Recognizer.max_image_pixels, Recognizer.image_token_count(width, height)
    Recognizer.device / dtype / model_name / model_checksum / num_parameters
    Recognizer.recognize_with_transformers(images, ...)  # baseline: generate(), one page at a time
    checkpoint_checksum(model_dir) -> str
    make_test_model(out_dir, size="tiny"|"seed") -> Path
    DEFAULT_PROMPT

Names resolve lazily: `from pipeline.model import DEFAULT_PROMPT, checkpoint_checksum` does not
import torch or transformers, so the coordinator can fingerprint a run cheaply.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pipeline.model.config import DEFAULT_PROMPT

if TYPE_CHECKING:
    from pipeline.model.checkpoint import checkpoint_checksum
    from pipeline.model.recognizer import Recognizer, load_native_recognizer
    from pipeline.model.synthetic import make_test_model

_LAZY = {
    "checkpoint_checksum": "pipeline.model.checkpoint",
    "load_native_recognizer": "pipeline.model.recognizer",
    "Recognizer": "pipeline.model.recognizer",
    "make_test_model": "pipeline.model.synthetic",
}

__all__ = [
    "DEFAULT_PROMPT",
    "Recognizer",
    "checkpoint_checksum",
    "load_native_recognizer",
    "make_test_model",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline.model' has no attribute {name!r}")
    if module != "pipeline.model.checkpoint":
        # First torch import through devices.py: a torch-npu autoload failure (no CANN) then
        # surfaces as MissingDependency with the TORCH_DEVICE_BACKEND_AUTOLOAD=0 hint.
        importlib.import_module("pipeline.model.devices")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
