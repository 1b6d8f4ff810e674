"""How many page loaders `--loaders 0` starts: enough to keep the devices fed when every page
also has its lines detected, without taking the cores the device workers and coordinator use."""

from __future__ import annotations

import os

import pytest

from pipeline.runner.device_plan import WorkerSlot
from pipeline.runner.settings import MAX_DETECTING_LOADERS, RunSettings, automatic_loaders
from pipeline.runner.worker_pool import worker_options


def settings(**overrides) -> RunSettings:
    return RunSettings(inputs=("scans",), out_dir="out", model_dir="weights/m", **overrides)


def cuda_slots(count: int) -> list[WorkerSlot]:
    return [WorkerSlot(f"cuda:{i}", "cuda", "CUDA_VISIBLE_DEVICES", str(i)) for i in range(count)]


CPU_SLOT = [WorkerSlot("cpu:0", "cpu", None, None)]


@pytest.mark.parametrize("accelerators", [0, 1, 8])
def test_without_detection_one_loader_per_eight_cores_from_one_to_eight(accelerators):
    chosen = [automatic_loaders(cores, accelerators, False) for cores in (1, 2, 8, 16, 63, 64, 256)]
    assert chosen == [1, 1, 1, 2, 7, 8, 8]


def test_with_detection_loaders_get_the_cores_left_by_accelerator_workers_and_coordinator():
    assert automatic_loaders(16, 4, True) == 11
    assert automatic_loaders(32, 8, True) == 23
    assert automatic_loaders(8, 1, True) == 6
    # the server the default was too small for: 8 accelerators, 64 cores (8 loaders before)
    assert automatic_loaders(64, 8, True) == MAX_DETECTING_LOADERS == 32
    assert automatic_loaders(2, 1, True) == automatic_loaders(1, 4, True) == 1  # at least one


def test_with_detection_a_cpu_only_run_gives_half_the_cores_to_loaders():
    """The CPU worker's torch threads run on the same cores as the loaders."""
    assert [automatic_loaders(cores, 0, True) for cores in (1, 2, 3, 16, 48)] == [1, 1, 1, 8, 24]
    assert automatic_loaders(256, 0, True) == MAX_DETECTING_LOADERS


def test_with_detection_never_fewer_loaders_than_without():
    """Ray actors on other nodes count as accelerator workers too: never below today's rule."""
    assert automatic_loaders(64, 64, True) == automatic_loaders(64, 64, False) == 8


@pytest.mark.parametrize("detector", ["rapidocr", "none"])
@pytest.mark.parametrize("slots", [CPU_SLOT, cuda_slots(8)])
def test_an_explicit_loader_count_wins(detector, slots):
    assert settings(loaders=5, detector=detector).loader_processes(slots) == 5


def test_a_run_counts_its_accelerator_workers_and_whether_it_detects_lines(monkeypatch):
    """The settings pass this machine's cores (pinned here to 24), the accelerator workers among
    the slots, and the detector to the rule; a CPU worker's torch threads take the other half."""
    monkeypatch.setattr(os, "cpu_count", lambda: 24)
    assert settings().loader_processes(cuda_slots(8)) == 15
    assert settings().loader_processes(CPU_SLOT) == 12
    assert settings(detector="none").loader_processes(cuda_slots(8)) == 3
    assert worker_options(settings(), CPU_SLOT, "prompt").torch_threads == 12
    assert worker_options(settings(), cuda_slots(2), "prompt").torch_threads is None
