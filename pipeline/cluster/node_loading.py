"""Page loading on the Ray cluster's nodes (`run --ray ... --ray-loading nodes`).

By default the driver's own loader processes read every page (rasterize, decode, detect lines)
and send each one to an actor, so the head's cores bound the pages per second of the whole
cluster: with line detection (~0.5 CPU-s a page) about two pages a second per head core. With
`nodes`, each page is loaded by a Ray task on a node with a free CPU (spread over the nodes); its
pixels stay in that node's object store and go from there to the actor that recognises the page,
and the driver gets a summary only (sizes, lines, timings), so it never holds a page image.

It needs every node to see the inputs at the same path (a shared file system). A node that does
not see a file, or sees other bytes than were registered, hands the page back and the head loads
it itself (a warning names the node, once): a node without the share slows a run, never changes
its output. Load tasks take one CPU each where Ray has one free; accelerator actors then hold a
CPU each too on nodes with at least two per unit (`ClusterTarget.core_per_actor`), so their own
host work keeps a core. With CPU actors every core is an actor's: node loading is refused.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.cluster.actor import pack
from pipeline.cluster.connect import import_ray
from pipeline.faults import injected_fault
from pipeline.ingest.documents import IngestSettings
from pipeline.ingest.page_loading import LayoutRequest, LoadedImage, LoadFailure, load_page_image
from pipeline.ingest.source_changes import Registered, SourceChanged
from pipeline.jobs.records import PageTask, printable
from pipeline.layout.geometry import PAGE_SIZE_KEY
from pipeline.runner.loader_pool import LoaderPool, LoadResult

log = logging.getLogger("anandasky")
HEAD = "head"  # where a page was loaded when the driver's own loaders did it
CPU_REFRESH_S = 5.0  # how often the cluster's CPU count is read again (nodes join and leave)
TASK_RETRIES = 2  # a load task lost with its worker or node runs again (also to rebuild pixels)


@dataclass(frozen=True)
class PageStub:
    """What the driver needs of a page image it never holds: its size, and in `info` the size
    of the full page it came from (as a loaded image carries it)."""

    width: int
    height: int
    info: dict = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)

    @classmethod
    def of(cls, image: Any) -> PageStub:
        info = {PAGE_SIZE_KEY: image.info[PAGE_SIZE_KEY]} if PAGE_SIZE_KEY in image.info else {}
        return cls(image.width, image.height, info)


@dataclass(frozen=True)
class LoadedOnNode:
    """A page a node loaded, as the driver sees it: `LoadedImage`'s fields with stubs for the
    images, and `on_node`, the Ray object of what the model reads (packed as for the trip)."""

    image: PageStub
    load_s: float
    layout: Any = None
    crops: tuple[PageStub, ...] | None = None
    detect_s: float = 0.0
    layout_error: str | None = None
    node: str = ""
    on_node: Any = None  # ray.ObjectRef, set by the driver


@dataclass(frozen=True)
class HeadMustLoad:
    """The node does not see the file as it was registered: the head loads this page."""

    node: str
    why: str


def load_on_node(
    path: str,
    page_index: int,
    ingest: IngestSettings,
    max_pixels: int | None,
    registered: Registered | None,
    layout: LayoutRequest | None,
) -> tuple[LoadedOnNode | HeadMustLoad | LoadFailure, Any]:
    """The Ray task: load one page here; (summary for the driver, packed model input or None)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    if injected_fault("node") == "blind" or not os.path.exists(path):
        return HeadMustLoad(node, "does not see the file"), None
    result = load_page_image(path, page_index, ingest, max_pixels, registered, layout)
    if isinstance(result, SourceChanged):
        return HeadMustLoad(node, "sees other bytes than were registered"), None
    if not isinstance(result, LoadedImage):
        return result, None
    crops = None if result.crops is None else tuple(PageStub.of(c) for c in result.crops)
    summary = LoadedOnNode(
        PageStub.of(result.image),
        result.load_s,
        result.layout,
        crops,
        result.detect_s,
        result.layout_error,
        node,
    )
    return summary, pack(result.image if result.crops is None else list(result.crops))


class NodeLoaders:
    """`LoaderPool`'s interface over Ray tasks; pages a node hands back go to the head's pool."""

    def __init__(self, head: LoaderPool, on_done=lambda: None) -> None:
        self.ray = import_ray()
        self.head = head  # its settings are the tasks' too (`load_arguments`)
        self.on_done = on_done
        self.task = self.ray.remote(load_on_node).options(
            num_cpus=1, num_returns=2, max_retries=TASK_RETRIES, scheduling_strategy="SPREAD"
        )
        self._loading: dict[Any, tuple[PageTask, Any]] = {}  # summary ref -> (task, pixels ref)
        self.loaded_by: Counter[str] = Counter()  # pages per node id, HEAD for the head's own
        self._blind: set[str] = set()
        self._cpus, self._cpus_read = 0, -CPU_REFRESH_S

    @property
    def processes(self) -> int:
        """Pages the cluster loads at once: the CPUs Ray has (read again every few seconds);
        Ray runs a load task where a CPU is free, the cores actors hold excepted."""
        now = time.monotonic()
        if now - self._cpus_read >= CPU_REFRESH_S:
            self._cpus = int(self.ray.cluster_resources().get("CPU", 0))
            self._cpus_read = now
        return max(self._cpus, self.head.processes, 1)

    def __len__(self) -> int:
        return len(self._loading) + len(self.head)

    def submit(self, task: PageTask) -> None:
        summary, pixels = self.task.remote(*self.head.load_arguments(task))
        summary.future().add_done_callback(lambda _future: self.on_done())
        self._loading[summary] = (task, pixels)

    def harvest(self) -> list[tuple[PageTask, LoadResult | LoadedOnNode]]:
        """Pages whose loading finished, on a node or (handed back) on the head."""
        finished: list = []
        for task, result in self.head.harvest():
            self.loaded_by[HEAD] += isinstance(result, LoadedImage)
            finished.append((task, result))
        ready = []
        if self._loading:
            refs = list(self._loading)
            ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            task, pixels = self._loading.pop(ref)
            result = self._summary(ref, task)
            if isinstance(result, HeadMustLoad):
                self._hand_back(task, result)
            elif isinstance(result, LoadedOnNode):
                self.loaded_by[result.node] += 1
                finished.append((task, replace(result, on_node=pixels)))
            else:
                finished.append((task, result))
        return finished

    def _summary(self, ref: Any, task: PageTask) -> LoadedOnNode | HeadMustLoad | LoadFailure:
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:  # the task's worker or node kept failing
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning(
                "%s page %d: loading on a node failed: %s",
                printable(task.relpath),
                task.page_index + 1,
                reason,
            )
            return LoadFailure("the Ray task loading this page failed (see run.log)", True)

    def _hand_back(self, task: PageTask, why: HeadMustLoad) -> None:
        if why.node not in self._blind:
            self._blind.add(why.node)
            log.warning(
                "node %s %s (%s); the head loads the pages that node hands back: give every "
                "node the inputs at the same path, or drop --ray-loading nodes",
                why.node[:12],
                why.why,
                printable(task.relpath),
            )
        self.head.submit(task)

    def shutdown(self) -> None:
        for ref in self._loading:
            self.ray.cancel(ref)
        self._loading.clear()
        self.head.shutdown()
        if self.loaded_by:
            counts = ", ".join(f"{node[:12]}: {n}" for node, n in sorted(self.loaded_by.items()))
            log.info("pages loaded per node (%s = the driver's own loaders): %s", HEAD, counts)
