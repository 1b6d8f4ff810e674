"""`--ray`: a run's device workers are model actors on a Ray cluster's nodes, and with
`--ray-loading nodes` its pages load in Ray tasks there (the runner's `Placement`)."""

from __future__ import annotations

from dataclasses import replace

from pipeline.errors import BadArguments
from pipeline.runner.device_plan import WorkerSlot
from pipeline.runner.loader_pool import LoaderPool
from pipeline.runner.model_session import WorkerOptions
from pipeline.runner.settings import RunSettings
from pipeline.runner.worker_pool import WorkerPool


class RayPlacement:
    def __init__(self, settings: RunSettings) -> None:
        self.settings = settings

    def plan(self) -> None:
        """Nothing to check before OUT exists: the cluster is asked once OUT does."""

    def slots(self) -> list[WorkerSlot]:
        from pipeline.cluster.connect import cluster_slots

        s = self.settings
        return cluster_slots(s.ray, s.device, s.ray_resource, s.devices)

    def worker_pool(self, slots: list[WorkerSlot], options: WorkerOptions) -> WorkerPool:
        """One actor per device slot of the cluster (the cluster is joined already)."""
        from pipeline.cluster.connect import connect
        from pipeline.cluster.pool import RayWorkerPool

        s = self.settings
        target = connect(s.ray, s.device, s.ray_resource)
        target = replace(target, core_per_actor=s.ray_loading == "nodes")
        return RayWorkerPool(target, options, s.batch_timeout_s)

    def page_loaders(self, workers, head: LoaderPool):
        """The head's loader processes, or (`--ray-loading nodes`) Ray tasks on the cluster's
        nodes that hand back to them the pages a node cannot see."""
        if self.settings.ray_loading != "nodes":
            return head
        from pipeline.cluster.node_loading import NodeLoaders

        if workers.target.resource == "CPU":
            raise BadArguments(
                "--ray-loading nodes needs the model actors on accelerators: with CPU actors "
                "every core is an actor's and no page could load; drop --ray-loading nodes"
            )
        return NodeLoaders(head, on_done=workers.wake)
