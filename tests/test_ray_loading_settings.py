"""`--ray-loading`: checked with the other run settings, before anything starts."""

from __future__ import annotations

import pytest

from pipeline.errors import BadArguments
from pipeline.runner.settings import RunSettings


def settings(**values) -> RunSettings:
    return RunSettings(inputs=("in",), out_dir="out", model_dir="model", **values)


def test_node_loading_needs_a_ray_cluster() -> None:
    with pytest.raises(BadArguments, match="--ray-loading nodes .* add --ray"):
        settings(ray_loading="nodes")
    assert settings(ray="auto", ray_loading="nodes").ray_loading == "nodes"


def test_unknown_ray_loading_is_refused_and_head_is_the_default() -> None:
    with pytest.raises(BadArguments, match="--ray-loading anywhere: use head or nodes"):
        settings(ray="auto", ray_loading="anywhere")
    assert settings().ray_loading == "head"
    stored = settings(ray="auto", ray_loading="nodes").to_stored()
    assert RunSettings.from_stored(stored).ray_loading == "nodes"  # resume keeps it
    del stored["ray_loading"]  # a store written before the option existed
    assert RunSettings.from_stored(stored).ray_loading == "head"


def test_actors_hold_a_core_for_their_host_work_only_with_node_loading_and_cores_to_spare():
    from pipeline.cluster.connect import ClusterNode, ClusterTarget
    from pipeline.cluster.pool import actor_request

    npu = ClusterTarget("auto", "npu", "NPU")
    roomy, tight = ClusterNode("a", "10.0.0.1", 8, 192), ClusterNode("b", "10.0.0.2", 8, 12)
    assert actor_request(npu, roomy) == {"num_cpus": 0, "resources": {"NPU": 1}}
    loading = ClusterTarget("auto", "npu", "NPU", core_per_actor=True)
    assert actor_request(loading, roomy) == {"num_cpus": 1, "resources": {"NPU": 1}}
    # Fewer than two CPUs per NPU: a core each could leave actors unplaced or no CPU to load on.
    assert actor_request(loading, tight) == {"num_cpus": 0, "resources": {"NPU": 1}}
    gpu = ClusterTarget("auto", "cuda", "GPU", core_per_actor=True)
    assert actor_request(gpu, roomy) == {"num_cpus": 1, "num_gpus": 1}
    cpu = ClusterTarget("auto", "cpu", "CPU", core_per_actor=True)
    assert actor_request(cpu, roomy) == {"num_cpus": 1}
