"""The buffer of loaded pages and how batches are cut from it.

Pages of similar size go together so that no batch is dominated by one huge page; pages that
were in a batch when a worker died go alone, so an innocent page never pays for a poisoned one.
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

    @property
    def pixels(self) -> int:
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

    def take_batch(self, max_size: int) -> list[ReadyPage]:
        """The oldest page plus the pages closest to it in size."""
        if not self.pages:
            return []
        first = self.pages.popleft()
        if first.solo or max_size <= 1:
            return [first]
        candidates = [page for page in self.pages if not page.solo]
        candidates.sort(key=lambda page: abs(page.pixels - first.pixels))
        chosen = candidates[: max_size - 1]
        chosen_ids = {id(page) for page in chosen}
        self.pages = deque(page for page in self.pages if id(page) not in chosen_ids)
        return [first, *chosen]
