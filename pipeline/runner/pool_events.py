"""What a worker pool tells the scheduler: plain events, the same from every pool kind."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import AnandaSkyError
from pipeline.records import Recognition
from pipeline.runner.batching import ReadyPage


@dataclass(frozen=True)
class WorkerUp:
    """A worker loaded the model and takes batches now."""

    label: str
    load_s: float
    node: str | None = None  # the host it runs on, for a cluster worker
    visible_devices: str | None = None  # the visible-devices variable as the worker saw it


@dataclass(frozen=True)
class WorkerRestarted:
    label: str
    restarts: int


@dataclass(frozen=True)
class BatchResult:
    label: str
    pages: list[ReadyPage]
    recognitions: list[Recognition]
    infer_s: float
    wait_s: float  # time the worker sat idle before this batch arrived


@dataclass(frozen=True)
class BatchLost:
    """A batch that came back without results: it failed, or its worker died or hung.

    `charged=False`: its worker was lost through no fault of the pages (a cluster node or actor
    gone), so the pages go back to pending without an attempt counted."""

    label: str
    pages: list[ReadyPage]
    error: str
    charged: bool = True


@dataclass(frozen=True)
class PoolFailed:
    """The pool cannot go on (the model does not load, every device is gone)."""

    error: AnandaSkyError


PoolEvent = WorkerUp | WorkerRestarted | BatchResult | BatchLost | PoolFailed
