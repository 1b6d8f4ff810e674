"""Runs on a real Ray cluster of several nodes on this machine (`ray.cluster_utils.Cluster`,
every address this machine's own (Ray rewrites loopback to the interface it reports), its own
temp folder), each node declaring fake `NPU` units, so the
actors get `ASCEND_RT_VISIBLE_DEVICES` from Ray exactly as on Ascend servers; the model
computes on the CPU (`--device cpu --ray-resource NPU`).

One cluster for the module (starting one costs seconds of a shared 2-core machine): a head
with 1 NPU and a node with 2, so 3 model actors; the node-loss test adds and removes its own
nodes with another resource name, so it never disturbs the others.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import tempfile
import time
from pathlib import Path

import pytest
from test_run_end_to_end import (
    GOOD_PAGES,
    assert_complete_outputs,
    attempts,
    cli,
    comparable,
    run_args,
    start_cli,
    wait_for_done,
)

from pipeline.errors import ExitCode

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

PLACED = re.compile(
    r"actor (\S+) placed \(pid \d+, node (\S+), visible devices (\S+), Ray NPU ids (\S+)\)"
)


@contextlib.contextmanager
def local_cluster(prefix: str, fault: str | None = None, **head_args):
    """A real Ray cluster of this machine's nodes, in a temp folder of its own (one CPU per
    node); `fault`: ANANDASKY_TEST_FAULT of the head node (fault injection, as `faulty_node`)."""
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix=prefix, dir="/tmp")  # short: Ray's socket paths must fit
    # Ray notes "the current cluster" in RAY_TMPDIR/ray: ours, never the machine's /tmp/ray.
    os.makedirs(os.path.join(temp, "ray"))
    before = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp
    common = {"temp_dir": temp, "num_cpus": 1}
    if fault:
        os.environ["ANANDASKY_TEST_FAULT"] = fault
    try:
        head = Cluster(
            initialize_head=True,
            head_node_args={**common, "include_dashboard": False, **head_args},
        )
    finally:
        if fault:
            del os.environ["ANANDASKY_TEST_FAULT"]
    head.common_args = common
    try:
        yield head
    finally:
        head.shutdown()
        if before is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = before
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    # A removed node is noticed in ~2 s instead of ~15 s.
    health = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}
    with local_cluster("rt", resources={"NPU": 1}, _system_config=health) as head:
        head.add_node(**head.common_args, resources={"NPU": 2})
        head.wait_for_nodes()
        yield head


@pytest.fixture(scope="module")
def pages(good_input) -> Path:
    return good_input


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, pages, tiny_model_dir) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("local") / "out"
    result = cli(*run_args(pages, out, tiny_model_dir, "--quiet"))
    assert result.returncode == ExitCode.OK, result.stderr
    return comparable(assert_complete_outputs(out, GOOD_PAGES))


def faulty_node(cluster, fault: str, **node_args):
    """FAULT INJECTION: a node added with ANANDASKY_TEST_FAULT=`fault` in its environment (its
    processes inherit it; the test process and the other nodes do not keep it)."""
    os.environ["ANANDASKY_TEST_FAULT"] = fault
    try:
        return cluster.add_node(**cluster.common_args, **node_args)
    finally:
        del os.environ["ANANDASKY_TEST_FAULT"]


def run_with_a_blind_actor_node(out: Path, pages, model, cluster, local_run) -> str:
    """FAULT INJECTION: a `--ray-loading nodes` run whose one actor sits on a node added with
    node:blind (its load tasks find no input, as on a server without the share), one page per
    batch so load tasks are sent all along the run; its outputs are a local run's. The blind
    node's id, for the run log's lines about it."""
    blind = faulty_node(cluster, "node:blind", resources={"EYE": 1})
    try:
        extra = ("--ray-loading", "nodes", "--batch-size", "1")
        result = cli(*ray_args(pages, out, model, cluster, "EYE", *extra))
    finally:
        cluster.remove_node(blind)
    assert result.returncode == ExitCode.OK, result.stderr
    assert comparable(assert_complete_outputs(out, GOOD_PAGES)) == local_run
    return blind.node_id


def ray_args(pages, out, model, cluster, resource="NPU", *extra) -> list[str]:
    ray = ("--ray", cluster.address, "--ray-resource", resource, "--quiet")
    return run_args(pages, out, model, *ray, *extra)


def test_cluster_run_equals_a_local_run_and_each_actor_holds_its_own_npu(
    tmp_path, pages, tiny_model_dir, cluster, local_run
):
    out = tmp_path / "out"
    result = cli(*ray_args(pages, out, tiny_model_dir, cluster))
    assert result.returncode == ExitCode.OK, result.stderr
    assert comparable(assert_complete_outputs(out, GOOD_PAGES)) == local_run

    # Every actor reports where Ray put it before it loads the model (a run this short may
    # end before all three are ready).
    log = (out / "run.log").read_text()
    ready = PLACED.findall(log)
    assert len(ready) == 3  # head: 1 NPU, other node: 2
    for label, _node, visible, ray_ids in ready:
        assert visible == ray_ids  # Ray set the variable to the unit it gave this actor
        assert label.endswith(f"/cpu:{visible}")
    per_node: dict[str, list[str]] = {}
    for label, _node, visible, _ in ready:
        per_node.setdefault(label.split("/")[0], []).append(visible)
    assert sorted(sorted(ids) for ids in per_node.values()) == [["0"], ["0", "1"]]

    summary = json.loads((out / "run-summary.json").read_text())["this_run"]
    placed = {label: visible for label, _, visible, _ in ready}
    assert summary["devices"]
    for label, device in summary["devices"].items():
        assert device["visible_devices"] == placed[label]
    assert {d["node"] for d in summary["devices"].values()} == {cluster.head_node.node_ip_address}
    status = json.loads(cli("status", str(out), "--json").stdout)
    assert sum(d["pages"] for d in status["devices"]) == sum(GOOD_PAGES.values())
    assert {d["device"] for d in status["devices"]} <= {label for label, *_ in ready}
    assert sum(n["pages"] for n in status["nodes"]) == sum(GOOD_PAGES.values())
    assert {n["node"] for n in status["nodes"]} <= set(per_node)
    assert max(attempts(out).values()) == 0
    # Every node holds the model folder: each actor loads it in place, nothing is shipped.
    assert re.search(r"worker \S+ ready on .*, model folder: in place", log)
    assert "shipping it from the driver" not in log and "model shipped" not in log


def test_driver_killed_with_kill_9_then_rerun_resumes_to_the_same_output(
    tmp_path, pages, tiny_model_dir, cluster, local_run
):
    out = tmp_path / "out"
    args = ray_args(pages, out, tiny_model_dir, cluster)
    process = start_cli(*args)
    wait_for_done(out, process, 3)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)
    # The killed driver's actors are ended by Ray; the rerun gets their NPU units back.
    result = cli(*args)
    assert result.returncode == ExitCode.OK, result.stderr
    assert comparable(assert_complete_outputs(out, GOOD_PAGES)) == local_run


def _running_on(out: Path, node_prefix: str) -> int:
    try:
        with contextlib.closing(sqlite3.connect(out / ".anandasky" / "jobs.sqlite")) as db:
            rows = db.execute(
                "SELECT count(*) FROM pages WHERE state = 'running' AND device LIKE ?",
                (f"%#{node_prefix}/%",),
            )
            return rows.fetchone()[0]
    except sqlite3.Error:
        return 0


def test_node_lost_mid_run_gives_its_pages_back_uncharged_and_a_joining_node_finishes(
    tmp_path, pages, tiny_model_dir, cluster, local_run
):
    """FAULT INJECTION: the first node's actor hangs on every batch (ANANDASKY_TEST_FAULT in
    its environment), so it certainly holds pages when it is removed; a node that joins
    mid-run gets an actor and does the rest."""
    out = tmp_path / "out"
    doomed = faulty_node(cluster, "batch:hang", resources={"LOSSY": 1})
    process = start_cli(*ray_args(pages, out, tiny_model_dir, cluster, "LOSSY"))
    try:
        deadline = time.monotonic() + 180
        while _running_on(out, doomed.node_id[:6]) == 0:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the doomed node's actor never took a batch"
            time.sleep(0.1)
        joined = cluster.add_node(**cluster.common_args, resources={"LOSSY": 1})
        cluster.remove_node(doomed)
        _, stderr = process.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == ExitCode.OK, stderr
    assert comparable(assert_complete_outputs(out, GOOD_PAGES)) == local_run
    log = (out / "run.log").read_text()
    lost = re.findall(rf"worker \S+#{doomed.node_id[:6]}/\S+ lost: .*; (\d+) page\(s\)", log)
    assert lost and int(lost[0]) > 0, log
    assert f"#{joined.node_id[:6]}/cpu:0 ready" in log  # it joined mid-run and got an actor
    assert max(attempts(out).values()) == 0  # the lost pages were not charged
    cluster.remove_node(joined)


def test_actor_killed_on_a_live_node_is_replaced_and_its_pages_are_not_charged(
    tmp_path, pages, tiny_model_dir, cluster, local_run
):
    """FAULT INJECTION: the node's first batch hangs (once: a marker file), so the actor
    certainly holds pages when it is killed with SIGKILL; its replacement on the same node
    does every page."""
    out, hung = tmp_path / "out", tmp_path / "hung-once"
    node = faulty_node(cluster, f"batch:hang:{hung}", resources={"SOLO": 1})
    process = start_cli(*ray_args(pages, out, tiny_model_dir, cluster, "SOLO"))
    try:
        deadline = time.monotonic() + 180
        while not hung.exists():  # the actor is inside its first batch, hanging
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the actor never took a batch"
            time.sleep(0.1)
        (pid,) = re.findall(r"actor \S+ placed \(pid (\d+)", (out / "run.log").read_text())
        os.kill(int(pid), signal.SIGKILL)
        _, stderr = process.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        cluster.remove_node(node)
    assert process.returncode == ExitCode.OK, stderr
    assert comparable(assert_complete_outputs(out, GOOD_PAGES)) == local_run
    log = (out / "run.log").read_text()
    assert re.search(r"worker \S+ lost: \w+; [1-9]\d* page\(s\) in flight", log), log
    assert len(re.findall(r"actor \S+ placed", log)) == 2  # the first one and its replacement
    assert max(attempts(out).values()) == 0


def test_a_page_that_keeps_crashing_actors_fails_alone_and_the_run_finishes(
    tmp_path, pages, tiny_model_dir, cluster, local_run
):
    """FAULT INJECTION (page:exit-97x61 in the node's environment): an actor process exits
    whenever a 97x61-pixel page is among the pages it takes, on a node that stays up. The
    first such loss costs its pages nothing; pages lost that way again are charged and go
    alone, so the poisonous page fails after --max-attempts instead of using up the actors'
    restarts (exit 7 on every rerun), and every other page is done as in a local run."""
    from PIL import Image

    inputs, out = tmp_path / "in", tmp_path / "out"
    shutil.copytree(pages, inputs, symlinks=True)
    Image.new("RGB", (97, 61), "white").save(inputs / "poison.png")
    node = faulty_node(cluster, "page:exit-97x61", resources={"CRASHY": 1})
    try:
        args = ray_args(inputs, out, tiny_model_dir, cluster, "CRASHY", "--max-attempts", "2")
        result = cli(*args)
    finally:
        cluster.remove_node(node)
    assert result.returncode == ExitCode.SOME_PAGES_FAILED, result.stderr
    # Every good page's outputs, as a local run writes them, and none for the poisonous one.
    assert comparable(assert_complete_outputs(out, GOOD_PAGES)) == local_run
    log = (out / "run.log").read_text()
    assert "poison.png page 1: failed" in log
    assert len(re.findall(r"worker \S+ lost: \w+", log)) >= 3  # crashed, crashed again, alone
    assert "page(s) were in flight on crashed actors before" in log  # the charged path ran


def test_a_node_that_cannot_load_the_model_is_left_out_and_the_others_finish(
    tmp_path, pages, tiny_model_dir, cluster, local_run
):
    """FAULT INJECTION (load:error in one node's environment): that node's actor cannot load
    the model, as on a server missing its driver; the run goes on with the other node's actor
    and ends as a local run does. With only the broken node, the run stops with the error."""
    broken = faulty_node(cluster, "load:error", resources={"HALF": 1})
    try:
        alone = cli(*ray_args(pages, tmp_path / "alone", tiny_model_dir, cluster, "HALF"))
        healthy = cluster.add_node(**cluster.common_args, resources={"HALF": 1})
        out = tmp_path / "out"
        result = cli(*ray_args(pages, out, tiny_model_dir, cluster, "HALF"))
        cluster.remove_node(healthy)
    finally:
        cluster.remove_node(broken)
    assert alone.returncode == ExitCode.DEVICES_LOST, alone.stderr
    assert "could not load the model: RuntimeError: injected by" in alone.stderr
    assert result.returncode == ExitCode.OK, result.stderr
    assert comparable(assert_complete_outputs(out, GOOD_PAGES)) == local_run
    log = (out / "run.log").read_text()
    assert re.search(r"could not load the model: .*; the run goes on with the other actors", log)


LOADED_PER_NODE = re.compile(r"pages loaded per node \(head = the driver's own loaders\): (.*)")


def loaded_per_node(out: Path) -> dict[str, int]:
    found = LOADED_PER_NODE.search((out / "run.log").read_text())
    assert found, "no per-node loading line in run.log"
    return {node: int(n) for node, n in (part.split(": ") for part in found.group(1).split(", "))}


def test_pages_loaded_on_the_nodes_give_the_outputs_of_a_local_run(
    tmp_path, pages, tiny_model_dir, cluster, local_run
):
    """`--ray-loading nodes`: Ray tasks on the nodes' CPUs read and detect every page, the
    pixels go from there to the actors; the driver holds sizes only. Same outputs."""
    out = tmp_path / "out"
    result = cli(*ray_args(pages, out, tiny_model_dir, cluster, "NPU", "--ray-loading", "nodes"))
    assert result.returncode == ExitCode.OK, result.stderr
    assert comparable(assert_complete_outputs(out, GOOD_PAGES)) == local_run
    counts = loaded_per_node(out)
    assert "head" not in counts  # every node sees the inputs: the driver loaded nothing
    assert sum(counts.values()) == sum(GOOD_PAGES.values())
    assert len(counts) == 2  # spread over the head's node and the other one


HANDED_BACK = re.compile(
    r"node (\w+) handed (\d+) page\(s\) back to the head \((\d+) load task\(s\) were out "
    r"when it was found blind; (\d+) of its pages were sent later\)"
)


def test_a_node_that_does_not_see_the_inputs_hands_back_only_the_pages_it_already_held(
    tmp_path, pages, tiny_model_dir, cluster, local_run
):
    """FAULT INJECTION (node:blind in one node's environment): that node's load tasks find no
    input file, as on a server without the share; the head loads the pages it hands back, and
    from the first one on the node gets no more load tasks. The run's one actor (on the blind
    node) takes one page per batch, so load tasks are sent all along the run, not all at once;
    the outputs are those of a local run."""
    out = tmp_path / "out"
    blind_id = run_with_a_blind_actor_node(out, pages, tiny_model_dir, cluster, local_run)
    log = (out / "run.log").read_text()
    assert re.search(r"node \S+ does not see the file .*; the head loads the pages", log)
    ((node, handed, out_then, sent_later),) = HANDED_BACK.findall(log)
    assert blind_id.startswith(node)
    total = sum(GOOD_PAGES.values())
    # Only tasks it held when found blind came back; tasks were sent after that, none to it.
    assert 1 <= int(handed) <= int(out_then) < total
    assert int(sent_later) == 0
    counts = loaded_per_node(out)
    assert counts["head"] == int(handed)  # the driver loaded exactly the pages handed back
    assert node not in counts
    assert sum(counts.values()) == total


def test_node_loading_is_refused_with_cpu_actors(tmp_path, pages, tiny_model_dir, cluster):
    args = ray_args(
        pages, tmp_path / "out", tiny_model_dir, cluster, "CPU", "--ray-loading", "nodes"
    )
    result = cli(*args)
    assert result.returncode == ExitCode.BAD_ARGUMENTS, result.stderr
    assert "--ray-loading nodes needs the model actors on accelerators" in result.stderr
    assert "Traceback" not in result.stderr
