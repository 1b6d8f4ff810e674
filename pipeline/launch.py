"""`run` and `resume` with the placement each run asks for: this machine's devices, or a Ray
cluster (`--ray`). The one module that knows both, so the runner never imports the cluster."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import ExitCode
from pipeline.runner.collection import resume_collection, run_collection
from pipeline.runner.placement import LocalPlacement, Placement
from pipeline.runner.settings import RunSettings


def placement_for(settings: RunSettings) -> Placement:
    if not settings.ray:
        return LocalPlacement(settings)
    from pipeline.cluster.placement import RayPlacement

    return RayPlacement(settings)


def run(settings: RunSettings) -> ExitCode:
    """`anandasky-batch run`."""
    return run_collection(settings, placement_for)


def resume(out_dir: Path, **overrides) -> ExitCode:
    """`anandasky-batch resume OUT`, with the options it overrides."""
    return resume_collection(out_dir, placement_for, **overrides)
