"""Worker planning and per-process device pinning (real spawned processes, no accelerator)."""

from __future__ import annotations

import multiprocessing as mp
import os

import pytest

from pipeline.errors import BadArguments
from pipeline.runner.device_plan import WorkerSlot, pin_to_slot, plan_workers


def test_npu_ids_come_from_ascend_rt_visible_devices_as_given():
    slots = plan_workers("npu", environ={"ASCEND_RT_VISIBLE_DEVICES": "1, 3,6"})
    assert [slot.label for slot in slots] == ["npu:1", "npu:3", "npu:6"]
    assert {slot.visible_variable for slot in slots} == {"ASCEND_RT_VISIBLE_DEVICES"}
    assert [slot.visible_value for slot in slots] == ["1", "3", "6"]
    assert {slot.torch_device for slot in slots} == {"npu:0"}


def test_cuda_devices_option_beats_environment():
    slots = plan_workers("cuda", devices="2,0", environ={"CUDA_VISIBLE_DEVICES": "5"})
    assert [(slot.visible_variable, slot.visible_value) for slot in slots] == [
        ("CUDA_VISIBLE_DEVICES", "2"),
        ("CUDA_VISIBLE_DEVICES", "0"),
    ]


def test_single_device_spec_pins_that_device():
    (slot,) = plan_workers("npu:4", environ={})
    assert slot.label == "npu:4" and slot.visible_value == "4"


def test_cpu_workers_are_numbered_and_unpinned():
    slots = plan_workers("cpu", cpu_workers=3, environ={"CUDA_VISIBLE_DEVICES": "0,1"})
    assert [slot.label for slot in slots] == ["cpu:0", "cpu:1", "cpu:2"]
    assert all(slot.visible_variable is None for slot in slots)


@pytest.mark.parametrize(
    ("device", "devices", "message"),
    [("tpu", None, "unknown device"), ("cuda", "1,1", "repeat"), ("cpu", None, "at least 1")],
)
def test_bad_device_requests_are_refused_with_a_reason(device, devices, message):
    with pytest.raises(BadArguments, match=message):
        plan_workers(device, devices=devices, cpu_workers=0, environ={})


def _report_pinning(slot: WorkerSlot, out: mp.Queue) -> None:
    pin_to_slot(slot)
    out.put((os.environ.get("ASCEND_RT_VISIBLE_DEVICES"), os.environ.get("CUDA_VISIBLE_DEVICES")))


def test_each_spawned_worker_sees_exactly_its_own_device_id(monkeypatch):
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "1,3")
    slots = plan_workers("npu")
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    seen = []
    for slot in slots:
        process = ctx.Process(target=_report_pinning, args=(slot, out))
        process.start()
        seen.append(out.get(timeout=60))
        process.join(30)
        assert process.exitcode == 0
    assert [ascend for ascend, _ in seen] == ["1", "3"]
    # The parent's own environment is untouched by the workers' pinning.
    assert os.environ["ASCEND_RT_VISIBLE_DEVICES"] == "1,3"


def test_cpu_worker_hides_gpus_from_itself():
    environ = {"CUDA_VISIBLE_DEVICES": "0,1"}
    pin_to_slot(WorkerSlot("cpu:0", "cpu", None, None), environ)
    assert environ["CUDA_VISIBLE_DEVICES"] == ""
