"""Which pages an actor that died on a live node costs an attempt (`CrashCount`).

Pure bookkeeping, no cluster: the Ray pool calls it with the pages the dead actor held.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from pipeline.cluster.pool import CrashCount
from pipeline.runner.batching import ReadyPage


@dataclass(frozen=True)
class Task:
    page_id: int


def pages(*ids: int) -> list[ReadyPage]:
    return [ReadyPage(Task(i), Image.new("RGB", (4, 4)), 0.0) for i in ids]


def ids(event) -> list[int]:
    return [p.task.page_id for p in event.pages]


def test_a_first_crash_costs_nothing_a_second_with_the_same_page_counts_for_that_page():
    count = CrashCount()
    (first,) = count.lost("a", pages(1, 2, 3), "worker a lost")
    assert not first.charged and ids(first) == [1, 2, 3]
    free, again = count.lost("b", pages(3, 4), "worker b lost")
    assert (ids(free), free.charged) == ([4], False)
    assert (ids(again), again.charged) == ([3], True) and again.error.endswith("(again)")
    (third,) = count.lost("c", pages(3), "worker c lost")
    assert third.charged and ids(third) == [3]
