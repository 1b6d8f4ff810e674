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

A node that hands a page back gets no more load tasks: later tasks carry a label selector that
excludes it (Ray's `ray.io/node-id` node label, a hard constraint), so it hands back at most the
tasks it already held; once every live node is blind, the head loads every page without sending
tasks.
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
CPU_REFRESH_S = 5.0  # how often the cluster's nodes and CPUs are read again (they come and go)
NODE_ID_LABEL = "ray.io/node-id"  # the label Ray gives every node: its id (Ray >= 2.49)
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


class BlindNodes:
    """Nodes that handed a page back, and the label selector that keeps load tasks off them."""

    def __init__(self) -> None:
        self.out_when_found: dict[str, int] = {}  # node id -> load tasks out when it was found
        self.sent_when_found: dict[str, int] = {}  # node id -> tasks sent until then
        self.handed_back: Counter[str] = Counter()  # pages per node id
        self.sent_later: Counter[str] = Counter()  # of those, tasks sent after it was found
        self._selector: dict[str, str] | None = None

    def __contains__(self, node: str) -> bool:
        return node in self.out_when_found

    def add(self, node: str, tasks_out: int, tasks_sent: int) -> None:
        self.out_when_found[node] = tasks_out
        self.sent_when_found[node] = tasks_sent
        self._selector = {NODE_ID_LABEL: "!in(" + ",".join(sorted(self.out_when_found)) + ")"}

    def handed(self, node: str, sent_as: int) -> None:
        """Count a page `node` handed back; its task was the `sent_as`-th sent."""
        self.handed_back[node] += 1
        self.sent_later[node] += sent_as > self.sent_when_found.get(node, sent_as)

    def selector(self) -> dict[str, str] | None:
        """`label_selector` for a load task: any node but the blind ones (None: no blind node)."""
        return self._selector

    def log(self) -> None:
        for node, pages in sorted(self.handed_back.items()):
            log.info(
                "node %s handed %d page(s) back to the head (%d load task(s) were out when it "
                "was found blind; %d of its pages were sent later)",
                node[:12], pages, self.out_when_found.get(node, 0), self.sent_later[node],
            )  # fmt: skip


class NodeLoaders:
    """`LoaderPool`'s interface over Ray tasks; pages a node hands back go to the head's pool."""

    def __init__(self, head: LoaderPool, on_done=lambda: None) -> None:
        self.ray = import_ray()
        self.head = head  # its settings are the tasks' too (`load_arguments`)
        self.on_done = on_done
        self._remote = self.ray.remote(load_on_node)
        self.task = self._task_options()
        # summary ref -> (task, pixels ref, its number among the tasks sent)
        self._loading: dict[Any, tuple[PageTask, Any, int]] = {}
        self._sent = 0
        self.loaded_by: Counter[str] = Counter()  # pages per node id, HEAD for the head's own
        self.blind = BlindNodes()
        self._cpus: dict[str, int] = {}  # live node id -> its CPUs
        self._cpus_read = -CPU_REFRESH_S

    def _nodes(self) -> dict[str, int]:
        """The live nodes with CPUs and their counts, read again every few seconds."""
        now = time.monotonic()
        if now - self._cpus_read >= CPU_REFRESH_S:
            self._cpus = {
                node["NodeID"]: int(node.get("Resources", {}).get("CPU", 0))
                for node in self.ray.nodes()
                if node.get("Alive") and node.get("Resources", {}).get("CPU", 0) > 0
            }
            self._cpus_read = now
        return self._cpus

    def _task_options(self, label_selector: dict[str, str] | None = None):
        """The load task, as Ray runs it (off the blind nodes, with their selector)."""
        selector = {"label_selector": label_selector} if label_selector else {}
        return self._remote.options(
            num_cpus=1,
            num_returns=2,
            max_retries=TASK_RETRIES,
            scheduling_strategy="SPREAD",
            **selector,
        )

    def _all_blind(self) -> bool:
        return all(node in self.blind for node in self._nodes())

    @property
    def processes(self) -> int:
        """Pages the cluster loads at once: the CPUs of the nodes that see the inputs (read
        again every few seconds); Ray runs a load task where a CPU is free, the cores actors
        hold excepted."""
        cpus = sum(n for node, n in self._nodes().items() if node not in self.blind)
        return max(cpus, self.head.processes, 1)

    def __len__(self) -> int:
        return len(self._loading) + len(self.head)

    def submit(self, task: PageTask) -> None:
        if self._all_blind():  # no node sees the inputs: no task would load anything
            self.head.submit(task)
            return
        summary, pixels = self.task.remote(*self.head.load_arguments(task))
        summary.future().add_done_callback(lambda _future: self.on_done())
        self._sent += 1
        self._loading[summary] = (task, pixels, self._sent)

    def harvest(self) -> list[tuple[PageTask, LoadResult | LoadedOnNode]]:
        """Pages whose loading finished, on a node or (handed back) on the head."""
        finished: list = []
        for task, result in self.head.harvest():
            self.loaded_by[HEAD] += isinstance(result, LoadedImage)
            finished.append((task, result))
        ready = []
        tasks_out = len(self._loading)
        if self._loading:
            refs = list(self._loading)
            ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            task, pixels, sent_as = self._loading.pop(ref)
            result = self._summary(ref, task)
            if isinstance(result, HeadMustLoad):
                self._hand_back(task, result, tasks_out, sent_as)
            elif isinstance(result, LoadedOnNode):
                self.loaded_by[result.node] += 1
                finished.append((task, replace(result, on_node=pixels)))
            else:
                finished.append((task, result))
        if self._loading and self._all_blind():
            self._reroute_to_head()
        return finished

    def _reroute_to_head(self) -> None:
        """Every live node is blind now: tasks still out could wait forever for a node their
        selector allows, so the head loads their pages (a result already on its way is left)."""
        for ref, (task, _pixels, _sent_as) in list(self._loading.items()):
            self.ray.cancel(ref)
            self.head.submit(task)
        self._loading.clear()

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

    def _hand_back(self, task: PageTask, why: HeadMustLoad, tasks_out: int, sent_as: int):
        if why.node not in self.blind:
            self.blind.add(why.node, tasks_out, self._sent)
            self.task = self._task_options(self.blind.selector())
            log.warning(
                "node %s %s (%s); the head loads the pages that node hands back, and it gets "
                "no more load tasks: give every node the inputs at the same path, or drop "
                "--ray-loading nodes",
                why.node[:12],
                why.why,
                printable(task.relpath),
            )
        self.blind.handed(why.node, sent_as)
        self.head.submit(task)

    def shutdown(self) -> None:
        for ref in self._loading:
            self.ray.cancel(ref)
        self._loading.clear()
        self.head.shutdown()
        self.blind.log()
        if self.loaded_by:
            counts = ", ".join(f"{node[:12]}: {n}" for node, n in sorted(self.loaded_by.items()))
            log.info("pages loaded per node (%s = the driver's own loaders): %s", HEAD, counts)
