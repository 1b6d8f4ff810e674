"""The buffer of loaded pages and how batches are cut from it.

Pages of similar size go together so that no batch is dominated by one huge page; pages that
were in a batch when a worker died go alone, to a worker with nothing else out, so an innocent
page never pays for a poisoned one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass
class ReadyPage:
    task: Any  # pipeline.jobs.sqlite_store.PageTask
    image: Image.Image
    load_s: float
    solo: bool = False
    layout: Any = None  # pipeline.layout.PageLayout: the page's detected lines, or None
    crops: tuple[Image.Image, ...] | None = None  # `--layout lines`: what the model reads
    detect_s: float = 0.0
    layout_error: str | None = None
    # `--ray-loading nodes`: the Ray object of what the model reads, on the node that loaded it
    # (`image` and `crops` are then stubs with their sizes only; pipeline.cluster.node_loading).
    on_node: Any = None

    @classmethod
    def of(cls, task: Any, loaded: Any) -> ReadyPage:
        """From a loader's LoadedImage (pipeline.ingest.page_loading)."""
        return cls(
            task,
            loaded.image,
            loaded.load_s,
            layout=loaded.layout,
            crops=loaded.crops,
            detect_s=loaded.detect_s,
            layout_error=loaded.layout_error,
            on_node=getattr(loaded, "on_node", None),
        )

    @property
    def model_input(self) -> Image.Image | list[Image.Image]:
        """A batch item for ModelSession.recognize_batch: the page, or its lines' crops (or,
        loaded on a node, the Ray object holding them)."""
        if self.on_node is not None:
            return self.on_node
        return self.image if self.crops is None else list(self.crops)

    @property
    def pixels(self) -> int:
        if self.crops is not None:
            return sum(crop.width * crop.height for crop in self.crops)
        return self.image.width * self.image.height


@dataclass
class ReadyPages:
    pages: deque[ReadyPage] = field(default_factory=deque)

    def __len__(self) -> int:
        return len(self.pages)

    def add(self, page: ReadyPage) -> None:
        if page.solo:
            self.pages.appendleft(page)
        else:
            self.pages.append(page)

    def take_batch(self, max_size: int, *, alone: bool = True) -> list[ReadyPage]:
        """A page that must go alone (`solo`, first in line), by itself, if `alone` (the
        worker has nothing else out, so a crash there can only be that page's doing); else
        the oldest other page plus the other pages closest to it in size."""
        if alone and self.pages and self.pages[0].solo:
            return [self.pages.popleft()]
        regular = [page for page in self.pages if not page.solo]
        if not regular:
            return []
        first, rest = regular[0], regular[1:]
        rest.sort(key=lambda page: abs(page.pixels - first.pixels))
        chosen = [first, *rest[: max(max_size, 1) - 1]]
        chosen_ids = {id(page) for page in chosen}
        self.pages = deque(page for page in self.pages if id(page) not in chosen_ids)
        return chosen
