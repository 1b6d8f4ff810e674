"""Joining a Ray cluster and reading what it offers: which resource each model actor asks for,
and how many of it every live node has.

Ray is an optional extra: everything here imports it lazily, so a run without `--ray` never
needs it, and a run with it fails with the install hint (exit 3) when it is missing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pipeline.errors import BadArguments, DevicesLost, MissingDependency
from pipeline.runner.device_plan import WorkerSlot

INSTALL_HINT = "pip install 'anandasky-batch[ray]'"
DEFAULT_RESOURCE = {"npu": "NPU", "cuda": "GPU", "cpu": "CPU"}
VISIBLE_VARIABLE = {"NPU": "ASCEND_RT_VISIBLE_DEVICES", "GPU": "CUDA_VISIBLE_DEVICES"}


def import_ray():
    """The `ray` module, or MissingDependency naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise MissingDependency(
            f"--ray needs Ray, which is not installed here: {INSTALL_HINT}"
        ) from None
    return ray


@dataclass(frozen=True)
class ClusterNode:
    """A live node and how many model actors it can hold (its count of the resource)."""

    node_id: str
    ip: str
    slots: int
    cpus: int


@dataclass(frozen=True)
class ClusterTarget:
    """What a run asks of the cluster: the device the actors compute on and the resource each
    one requests (1 unit). Fixed for the run; nodes may come and go."""

    address: str
    device_type: str  # "npu" | "cuda" | "cpu"
    resource: str  # "NPU", "GPU", "CPU" or a custom name
    # `--ray-loading nodes`: each accelerator actor holds a CPU of its node where the node has
    # cores to spare, so page-loading tasks (one CPU each) leave it a core for its host work.
    core_per_actor: bool = False

    @property
    def visible_variable(self) -> str | None:
        """The variable Ray sets in an actor holding one unit of the resource, if any."""
        return VISIBLE_VARIABLE.get(self.resource)


def live_nodes(resource: str) -> list[ClusterNode]:
    """Every live node with at least one unit of `resource` (the driver must be connected)."""
    ray = import_ray()
    nodes = []
    for node in ray.nodes():
        resources = node.get("Resources", {})
        count = int(resources.get(resource, 0))
        if node.get("Alive") and count > 0:
            nodes.append(
                ClusterNode(
                    node["NodeID"],
                    node.get("NodeManagerAddress", "?"),
                    count,
                    int(resources.get("CPU", 0)),
                )
            )
    return nodes


def connect(address: str, device: str, resource: str | None) -> ClusterTarget:
    """Join the cluster at `address` (`auto`, `local`, or host:port) and decide the device and
    the resource; refuse a cluster that has none of that resource."""
    device_type = device.split(":", 1)[0].lower()
    if ":" in device:
        raise BadArguments(
            f"--device {device} with --ray: Ray assigns the devices; use --device {device_type}"
        )
    ray = import_ray()
    if not ray.is_initialized():
        extra = {"include_dashboard": False} if address == "local" else {}
        try:
            ray.init(
                address=address,
                log_to_driver=False,
                logging_level=logging.WARNING,
                **extra,
            )
        except ValueError:  # Ray's word for an address it cannot parse
            raise BadArguments(
                f"--ray {address}: not an address; use auto, local or HOST:PORT"
            ) from None
        except Exception as err:  # ConnectionError, timeouts: whatever Ray raises for "no one"
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise DevicesLost(
                f"--ray {address}: no Ray cluster reachable ({first}); start one with "
                "`ray start --head` or use --ray local"
            ) from None
    totals = ray.cluster_resources()
    if device_type == "auto":
        named = {v: k for k, v in DEFAULT_RESOURCE.items()}
        if resource in named:
            device_type = named[resource]
        else:
            device_type = next(
                (dev for dev in ("npu", "cuda") if totals.get(DEFAULT_RESOURCE[dev], 0) > 0),
                "cpu",
            )
    if device_type not in DEFAULT_RESOURCE:
        raise BadArguments(f"unknown device {device!r}: use auto, npu, cuda or cpu")
    target = ClusterTarget(address, device_type, resource or DEFAULT_RESOURCE[device_type])
    if not live_nodes(target.resource):
        raise DevicesLost(
            f"--ray {address}: no node of the cluster has the resource {target.resource!r}; "
            "start nodes that have it (ray start --resources) or choose --ray-resource"
        )
    return target


def disconnect() -> None:
    """Leave the cluster (and stop it, when `--ray local` started it)."""
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()


def cluster_slots(
    address: str, device: str, resource: str | None, devices: str | None = None
) -> list[WorkerSlot]:
    """Join the cluster and describe its device slots as they are now, one per unit of the
    resource: what the run logs and fingerprints (the device type); the pool finds the nodes
    again itself, since they may change."""
    if devices is not None:
        raise BadArguments(
            f"--devices {devices} with --ray: Ray assigns the devices of every node; leave "
            "--devices out (ray start --resources chooses what a node offers)"
        )
    target = connect(address, device, resource)
    return [
        WorkerSlot(
            f"{node.ip}#{node.node_id[:6]}/{target.resource}{unit}",
            target.device_type,
            target.visible_variable,
            None,
        )
        for node in live_nodes(target.resource)
        for unit in range(node.slots)
    ]
