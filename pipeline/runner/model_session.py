"""The model inside a worker: loaded once for one device, then batches of page images in and
`Recognition`s out. A local worker process and a cluster actor both hold one, so a page is
recognised the same way wherever it runs."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

from PIL import Image

from pipeline.faults import injected_fault
from pipeline.records import Recognition

LINE_ROWS_PER_PAGE = 4  # `--layout lines`: sequences decoded at once, per page of the batch


@dataclass(frozen=True)
class WorkerOptions:
    """What every device worker needs to load the model and run it the same way."""

    model_dir: str
    dtype: str | None
    impl: str
    prompt: str
    max_new_tokens: int
    repetition_guard: bool
    torch_threads: int | None = None
    max_batch: int | None = None  # rows decoded at once (continuous batching)
    token_budget: int | None = None  # KV-cache positions across those rows
    # Rows of a worker's never-draining stream when --max-batch is not given: the run's
    # --batch-size pages (x LINE_ROWS_PER_PAGE with --layout lines), see `worker_options`.
    stream_rows: int | None = None
    # `--decode-graphs`: continuous batches decode at fixed shapes, captured as device graphs.
    decode_graphs: bool = False


class ModelSession:
    def __init__(self, recognizer: Any, options: WorkerOptions, load_s: float) -> None:
        self.recognizer = recognizer
        self.options = options
        self.load_s = load_s

    @classmethod
    def load(cls, options: WorkerOptions, torch_device: str) -> ModelSession:
        """Load the model on `torch_device` (the worker is already pinned to its device)."""
        started = time.perf_counter()
        import torch

        if options.torch_threads:
            torch.set_num_threads(options.torch_threads)
        from pipeline.recognition import load_recognizer

        injected_fault("load")
        recognizer = load_recognizer(
            options.model_dir,
            device=torch_device,
            dtype=options.dtype,
            impl=options.impl,
            decode_graphs=options.decode_graphs,
        )
        return cls(recognizer, options, time.perf_counter() - started)

    @property
    def device(self) -> str:
        return str(self.recognizer.device)

    @property
    def decode_mode(self) -> str:
        """How decode steps run, for run.log: `--decode-graphs` captures them as graphs only
        where the device has them (`fixed_shapes.graph_api`); elsewhere they run eagerly."""
        engine = getattr(self.recognizer, "engine", None)
        if getattr(engine, "fixed_step", None) is None:
            return "eager"
        from pipeline.model.fixed_shapes import graph_api

        if graph_api(self.recognizer.torch_device) is None:
            return f"fixed shapes, eager (no device graphs on {self.device})"
        return "fixed shapes, captured as device graphs"

    def _rows(self, items: list) -> int | None:
        """Rows decoded at once: `--max-batch` when given; for a batch holding line crops,
        `LINE_ROWS_PER_PAGE` per page of the batch (a crop is a fraction of a page's image
        tokens; the rows refill as lines finish); else every page of the batch at once."""
        if self.options.max_batch is not None:
            return self.options.max_batch
        if not any(isinstance(item, list) for item in items):
            return None
        return LINE_ROWS_PER_PAGE * len(items)

    @property
    def stream_rows(self) -> int:
        """Rows of `stream`: `--max-batch` when given, else `stream_rows` (8 when unset)."""
        if self.options.max_batch is not None:
            return self.options.max_batch
        return self.options.stream_rows or 8

    def stream(
        self, feed: Callable[[int, bool], list | None]
    ) -> Iterator[tuple[Hashable, Recognition]]:
        """`recognize_stream` under this session's settings: one continuous batch fed by
        `feed` (a `JobFeed`), never drained between jobs (`job_stream.JobStream` serves it)."""
        return self.recognizer.recognize_stream(
            feed,
            prompt=self.options.prompt,
            max_new_tokens=self.options.max_new_tokens,
            repetition_guard=self.options.repetition_guard,
            max_batch=self.stream_rows,
            token_budget=self.options.token_budget,
        )

    def recognize_batch(self, items: list[Image.Image | list[Image.Image]]) -> list[Recognition]:
        """One batch, one page-level `Recognition` per item, in order.

        An item is a page image, or (`--layout lines`) the list of a page's line crops in
        reading order: every crop of every page of the batch goes to the model as one sequence
        of the same call, so many short lines share the device, and each page's result carries
        its lines' recognitions (`Recognition.lines`).
        """
        fault = injected_fault("batch")
        images: list[Image.Image] = []
        for item in items:
            images.extend(item if isinstance(item, list) else [item])
        flat = (
            self.recognizer.recognize(
                images,
                prompt=self.options.prompt,
                max_new_tokens=self.options.max_new_tokens,
                repetition_guard=self.options.repetition_guard,
                max_batch=self._rows(items),
                token_budget=self.options.token_budget,
            )
            if images
            else []
        )
        recognitions: list[Recognition] = []
        taken = 0
        for item in items:
            if isinstance(item, list):
                recognitions.append(Recognition.of_lines(flat[taken : taken + len(item)]))
                taken += len(item)
            else:
                recognitions.append(flat[taken])
                taken += 1
        if fault == "short":  # FAULT INJECTION (tests): an answer one page short
            recognitions = recognitions[:-1]
        return recognitions
