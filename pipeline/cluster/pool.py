"""`RayWorkerPool`: the run's workers as Ray actors, one per unit of the chosen resource on
every live node, found again every few seconds so nodes that join get actors.

The driver keeps the role it has in a local run: it claims pages, sends batches (at most
`JOBS_PER_WORKER` outstanding per actor, so work goes to whoever is free and a slow or far node
does less), and writes every result itself. A lost node or actor hands its in-flight pages
back uncharged (`BatchLost(charged=False)`); a batch that fails or hangs inside a live actor is
charged, as in a local run.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.cluster.actor import ActorFailed, ActorPlace, ActorReady, ModelActor, pack
from pipeline.cluster.connect import ClusterNode, ClusterTarget, disconnect, import_ray, live_nodes
from pipeline.cluster.model_shipping import ModelShipment, NeedsModel
from pipeline.errors import AnandaSkyError, DevicesLost, ExitCode
from pipeline.runner.batching import ReadyPage
from pipeline.runner.job_stream import describe_error
from pipeline.runner.model_session import WorkerOptions
from pipeline.runner.pool_events import (
    BatchLost,
    BatchResult,
    PoolEvent,
    PoolFailed,
    WorkerRestarted,
    WorkerUp,
)
from pipeline.runner.worker_pool import (
    JOBS_PER_WORKER,
    MAX_WORKER_RESTARTS,
    WorkerPool,
    WorkerView,
)

log = logging.getLogger("anandasky")
NODE_POLL_S = 3.0
PLACE_WARNING_S = 60.0
PLACE, LOAD = -1, 0  # batch ids of an actor's placement report and its model load
ALL_GONE = (
    "every model actor of the Ray cluster is gone; see run.log. Unfinished pages stay "
    "pending: fix the cluster and run the same command again"
)


@dataclass
class _Actor:
    key: int
    node: ClusterNode
    slot: int  # its index among the node's actors
    handle: Any
    label: str
    place: ActorPlace | None = None
    ready: bool = False
    outstanding: dict[int, list[ReadyPage]] = field(default_factory=dict)
    busy_since: float | None = None  # since when an answer is due (last answer / sent idle)
    restarts: int = 0
    created: float = field(default_factory=time.monotonic)
    warned: bool = False  # about waiting to be placed


def warn_unplaced(actors, resource: str) -> None:
    """An actor Ray has not started after a minute is waiting for its unit: say so, once."""
    now = time.monotonic()
    for actor in actors:
        if actor.place is None and not actor.warned and now - actor.created > PLACE_WARNING_S:
            actor.warned = True
            log.warning(
                "actor %s not started by Ray after %.0f s: is its %s unit held by another "
                "Ray job? (`ray status` shows what is in use)",
                actor.label, now - actor.created, resource,
            )  # fmt: skip


@dataclass
class DriverCost:
    """What the driver spends on the cluster, logged at the end of a run: its own CPU time
    (scheduling, packing, Ray's client threads, writing outputs) and the PNG packing alone."""

    cpu_at_start: float = 0.0
    pack_s: float = 0.0
    pages: int = 0

    def log(self) -> None:
        if self.pages:
            cpu_s = time.process_time() - self.cpu_at_start
            log.info(
                "driver: %.3f CPU s for %d page(s) sent (%.1f ms/page; packing as PNG %.1f ms/page)",
                cpu_s, self.pages, 1000 * cpu_s / self.pages, 1000 * self.pack_s / self.pages,
            )  # fmt: skip


def place_label(place: ActorPlace, target: ClusterTarget, slot: int) -> str:
    """An actor's name in the log, the store and `status`: its node and its device there (the
    unit Ray gave it, else its index on the node); and a log line of what Ray gave it."""
    device = ",".join(place.accelerator_ids) or str(slot)
    label = f"{place.node_ip}#{place.node_id[:6]}/{target.device_type}:{device}"
    log.info(
        "actor %s placed (pid %d, node %s, visible devices %s, Ray %s ids %s)",
        label, place.pid, place.node_ip,
        place.visible_devices if place.visible_devices is not None else "-",
        target.resource, ",".join(place.accelerator_ids) or "-",
    )  # fmt: skip
    return label


def actor_request(target: ClusterTarget, node: ClusterNode) -> dict[str, Any]:
    """What a model actor on `node` asks Ray for: one unit of the run's resource and nothing
    else (with `num_cpus=0` a node runs as many actors as it has units, whatever CPUs it
    declares); with `target.core_per_actor`, also one CPU where the node has two per unit."""
    resource = target.resource
    if resource == "CPU":
        return {"num_cpus": 1}
    spare = target.core_per_actor and node.cpus >= 2 * node.slots
    request: dict[str, Any] = {"num_cpus": 1 if spare else 0}
    if resource == "GPU":
        request["num_gpus"] = 1
    else:
        request["resources"] = {resource: 1}
    return request


def create_actor(remote, target: ClusterTarget, options: WorkerOptions, node: ClusterNode):
    """A model actor on `node`, pinned there, asking for `actor_request`."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    request = actor_request(target, node)
    if target.device_type == "cpu":  # the node's cores, shared among its actors
        options = replace(options, torch_threads=max(1, node.cpus // node.slots))
    return remote.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
        max_restarts=0,
        # Threaded: every batch out waits in its own `recognize` call, plus place/load.
        max_concurrency=JOBS_PER_WORKER + 2,
        **request,
    ).remote(options, target.device_type, target.resource)


class CrashCount:
    """How often each page was in flight on an actor that died while its node stayed up.

    Once costs the pages nothing: an actor can die of its own accord (a driver fault, the
    kernel's OOM killer), and its pages go back to pending uncharged, as when a node is lost.
    A page lost that way again may be what kills its actors: from its second such loss on,
    each one counts an attempt (the scheduler then retries it alone), so a page that keeps
    crashing actors ends failed after --max-attempts instead of using up every actor's
    restarts and stopping the run (exit 7, and the same again on every rerun).
    """

    FREE_LOSSES = 1

    def __init__(self) -> None:
        self.losses: Counter[int] = Counter()

    def lost(self, label: str, pages: list[ReadyPage], error: str) -> list[PoolEvent]:
        free, again = [], []
        for page in pages:
            self.losses[page.task.page_id] += 1
            repeat = self.losses[page.task.page_id] > self.FREE_LOSSES
            (again if repeat else free).append(page)
        events: list[PoolEvent] = []
        if free:
            events.append(BatchLost(label, free, error, charged=False))
        if again:
            log.warning("%d page(s) were in flight on crashed actors before", len(again))
            events.append(BatchLost(label, again, f"{error} (again)", charged=True))
        return events


def lost_batches(
    label: str, pages: list[ReadyPage], error: str, charged: bool, crashed: CrashCount | None
) -> list[PoolEvent]:
    """The events for the pages a lost actor held; `crashed` when it died on a live node."""
    if not pages:
        return []
    if crashed is not None:
        return crashed.lost(label, pages, error)
    return [BatchLost(label, pages, error, charged)]


def load_failure(label: str, failed: ActorFailed, *, others_left: bool) -> list[PoolEvent]:
    """An actor that could not load the model stops the run only when no other actor is up or
    loading: one node's broken setup (a missing driver, the model folder not there) must not
    stop a cluster's collection, and a setup broken everywhere stops it with its own code."""
    error = AnandaSkyError(f"actor {label} could not load the model: {failed.message}")
    error.exit_code = ExitCode(failed.exit_code)
    if not others_left:
        return [PoolFailed(error)]
    log.error("%s; the run goes on with the other actors", error)
    return []


def ship_model(shipment: ModelShipment, actor: _Actor, why: str) -> Any:
    """The actor's second `load` call, with the model folder's files (its node lacks them);
    ActorFailed when the driver could not put them into the object store."""
    try:
        files = shipment.files_for(actor.node.node_id, actor.node.ip, why)
    except Exception as exc:  # the object store full, a file unreadable since the run began
        message = f"its node {why}; shipping the model folder failed: {describe_error(exc)}"
        return ActorFailed(message, int(ExitCode.DEVICES_LOST))
    return actor.handle.load.remote(shipment.identity, files)


def worker_up(actor: _Actor, value: ActorReady, shipment: ModelShipment) -> WorkerUp:
    """An actor's model is loaded: run.log says where, and where its folder came from."""
    # `events` hands the placement over first, so `place` is known here.
    visible = actor.place.visible_devices if actor.place else None
    actor.ready = True
    shipment.loaded(actor.node.node_id, actor.node.ip, value.model)
    log.info(
        "worker %s ready on %s (node %s, visible devices %s) after %.1f s%s; decode: %s",
        actor.label, value.device, actor.node.ip, visible or "-", value.load_s,
        f", model folder: {value.model.how}" if value.model else "", value.decode,
    )  # fmt: skip
    return WorkerUp(actor.label, value.load_s, actor.node.ip, visible)


class RayWorkerPool(WorkerPool):
    """One model actor per unit of the resource on every live node; see the module doc."""

    def __init__(self, target: ClusterTarget, options: WorkerOptions, batch_timeout_s: float):
        self.ray = import_ray()
        self.target = target
        self.options = options
        self.batch_timeout_s = batch_timeout_s
        self.actors: dict[int, _Actor] = {}
        # ref -> (actor, batch id); batch PLACE and LOAD: the actor's first two answers
        self.refs: dict[Any, tuple[int, int]] = {}
        self.nodes: dict[str, ClusterNode] = {}
        self.stopping = False
        self._woken = threading.Event()
        self._next_key = self._next_batch = 0  # next actor key; last batch id sent
        self._next_poll = 0.0
        self._remote = self.ray.remote(ModelActor)
        self.cost = DriverCost()
        self.crashes = CrashCount()
        self.shipment = ModelShipment(options.model_dir)

    def start(self) -> None:
        self.cost.cpu_at_start = time.process_time()
        self.shipment.start()
        self._sync_nodes()

    def takers(self) -> list[WorkerView]:
        free = [a for a in self.actors.values() if a.ready and len(a.outstanding) < JOBS_PER_WORKER]
        free.sort(key=lambda a: len(a.outstanding))
        return [WorkerView(a.key, a.label, len(a.outstanding)) for a in free]

    def live_count(self) -> int:
        return len(self.actors)

    def send(self, worker: WorkerView, pages: list[ReadyPage]) -> None:
        actor = self.actors[worker.key]
        self._next_batch += 1
        if not actor.outstanding:
            actor.busy_since = time.monotonic()
        actor.outstanding[self._next_batch] = pages
        started = time.perf_counter()
        packed = pack([page.model_input for page in pages])
        self.cost.pack_s += time.perf_counter() - started
        self.cost.pages += len(pages)
        ref = actor.handle.recognize.remote(packed)
        self.refs[ref] = (actor.key, self._next_batch)

    def wake(self) -> None:
        self._woken.set()

    def busy(self) -> bool:
        return any(a.outstanding for a in self.actors.values())

    def begin_stop(self) -> None:
        self.stopping = True

    def events(self, timeout_s: float) -> list[PoolEvent]:
        events: list[PoolEvent] = []
        if time.monotonic() >= self._next_poll:
            events += self._sync_nodes()
        ready = []
        if self.refs:
            refs = list(self.refs)
            ready, _ = self.ray.wait(refs, num_returns=1, timeout=timeout_s)
            if ready:
                ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
                ready.sort(key=lambda ref: self.refs[ref][1] != PLACE)  # placements first
        else:
            self._woken.wait(timeout_s)
        self._woken.clear()
        for ref in ready:
            events += self._answer(ref)
        events += self._check_overdue()
        if not self.actors and not self.stopping:
            events += self._sync_nodes()  # a node may have joined since the last look
            if not self.actors:
                events.append(PoolFailed(DevicesLost(ALL_GONE)))
        return events

    def shutdown(self, *, kill: bool) -> list[ReadyPage]:
        in_flight = [p for a in self.actors.values() for b in a.outstanding.values() for p in b]
        for actor in self.actors.values():
            with contextlib.suppress(Exception):
                self.ray.kill(actor.handle, no_restart=True)
        self.actors.clear()
        self.refs.clear()
        self.cost.log()
        disconnect()
        return in_flight

    # -- inside -----------------------------------------------------------------------------

    def _sync_nodes(self) -> list[PoolEvent]:
        """Actors for nodes that joined; the actors of nodes that left are lost."""
        self._next_poll = time.monotonic() + NODE_POLL_S
        alive = {node.node_id: node for node in live_nodes(self.target.resource)}
        events: list[PoolEvent] = []
        for actor in list(self.actors.values()):
            if actor.node.node_id not in alive:
                events += self._drop(actor, "lost: its node left the cluster", charged=False)
        for node_id, node in alive.items():
            if node_id in self.nodes or self.stopping:
                continue
            self.nodes[node_id] = node
            log.info(
                "node %s (%s): %d %s, starting %d model actor(s)",
                node.ip, node_id[:8], node.slots, self.target.resource, node.slots,
            )  # fmt: skip
            for slot in range(node.slots):
                self._start_actor(node, slot, restarts=0)
        warn_unplaced(self.actors.values(), self.target.resource)
        for node_id in [n for n in self.nodes if n not in alive]:
            log.warning("node %s (%s) left the cluster", self.nodes[node_id].ip, node_id[:8])
            del self.nodes[node_id]
        return events

    def _start_actor(self, node: ClusterNode, slot: int, restarts: int) -> _Actor:
        key, self._next_key = self._next_key, self._next_key + 1
        handle = create_actor(self._remote, self.target, self.options, node)
        label = f"{node.ip}#{node.node_id[:6]}/actor{key}"
        actor = _Actor(key, node, slot, handle, label, restarts=restarts)
        self.actors[key] = actor
        self.refs[handle.place.remote()] = (key, PLACE)
        self.refs[handle.load.remote(self.shipment.identity)] = (key, LOAD)
        return actor

    def _answer(self, ref) -> list[PoolEvent]:
        key, batch_id = self.refs.pop(ref, (-1, LOAD))
        actor = self.actors.get(key)
        if actor is None:
            return []
        ray = self.ray
        try:
            value = ray.get(ref)
        except ray.exceptions.RayTaskError as err:  # the method itself raised (a bug): charged
            value = ("failed", f"{type(err.cause).__name__}: {err.cause}")
        except ray.exceptions.RayError as err:  # the actor or its node is gone: not the pages'
            return self._drop(actor, f"lost: {type(err).__name__}", charged=False)
        if batch_id == PLACE:
            self._placed(actor, value)
            return []
        if batch_id == LOAD:
            return self._loaded(actor, value)
        pages = actor.outstanding.pop(batch_id, [])
        actor.busy_since = time.monotonic() if actor.outstanding else None
        if value[0] == "done":
            _, recognitions, infer_s, wait_s = value
            return [BatchResult(actor.label, pages, recognitions, infer_s, wait_s)]
        log.error("batch on %s failed: %s", actor.label, value[1])
        return [BatchLost(actor.label, pages, value[1])]

    def _placed(self, actor: _Actor, place: ActorPlace) -> None:
        actor.place = place
        actor.label = place_label(place, self.target, actor.slot)

    def _loaded(self, actor: _Actor, value: ActorReady | ActorFailed | NeedsModel):
        if isinstance(value, NeedsModel):  # its node lacks the model folder: send the files
            value = ship_model(self.shipment, actor, value.why)
            if not isinstance(value, ActorFailed):
                self.refs[value] = (actor.key, LOAD)
                return []
        if isinstance(value, ActorFailed):  # not restarted: its node's setup is at fault
            self._forget(actor)
            return load_failure(actor.label, value, others_left=bool(self.actors))
        return [worker_up(actor, value, self.shipment)]

    def _check_overdue(self) -> list[PoolEvent]:
        if self.stopping:
            return []
        now = time.monotonic()
        events: list[PoolEvent] = []
        for actor in list(self.actors.values()):
            if actor.busy_since is not None and now - actor.busy_since > self.batch_timeout_s:
                why = f"took longer than --batch-timeout {self.batch_timeout_s:g} s; killed"
                events += self._drop(actor, why, charged=True)
        return events

    def _drop(self, actor: _Actor, why: str, *, charged: bool) -> list[PoolEvent]:
        """End `actor`; its batches come back lost; a replacement if its node is still up."""
        pages = [page for batch in actor.outstanding.values() for page in batch]
        log.error("worker %s %s; %d page(s) in flight", actor.label, why, len(pages))
        self._forget(actor)
        node_up = actor.node.node_id in {n.node_id for n in live_nodes(self.target.resource)}
        crashed = self.crashes if node_up and not charged else None  # the actor itself died
        events = lost_batches(actor.label, pages, f"worker {actor.label} {why}", charged, crashed)
        if self.stopping or not node_up:
            return events
        if actor.restarts >= MAX_WORKER_RESTARTS:
            log.error("giving up on %s", actor.label)
            return events
        replacement = self._start_actor(actor.node, actor.slot, actor.restarts + 1)
        events.append(WorkerRestarted(actor.label, replacement.restarts))
        return events

    def _forget(self, actor: _Actor) -> None:
        """No more answers from `actor`: out of the pool, its calls dropped, its process ended."""
        self.actors.pop(actor.key, None)
        self.refs = {ref: held for ref, held in self.refs.items() if held[0] != actor.key}
        with contextlib.suppress(Exception):
            self.ray.kill(actor.handle, no_restart=True)
