"""Ray nodes that lack what a run reads, on a real local cluster: the model folder (shipped by
the driver) or the inputs (every node blind: the head loads every page).

FAULT INJECTION, each node's environment: the head is `node:blind` (its load tasks see no
input) and has no actor resource; each test adds the node it needs.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
import test_ray_cluster
from test_ray_cluster import (
    HANDED_BACK,
    faulty_node,
    loaded_per_node,
    ray_args,
    run_with_a_blind_actor_node,
)
from test_run_end_to_end import GOOD_PAGES, assert_complete_outputs, cli, comparable

from pipeline.cluster.model_shipping import CACHE_FOLDER, model_files
from pipeline.errors import ExitCode

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

# The Ray tests' fixtures: the test pages, and their outputs from a local run.
pages = test_ray_cluster.pages
local_run = test_ray_cluster.local_run
local_cluster = test_ray_cluster.local_cluster
SHIPPED = re.compile(r"model shipped to node \S+ \(\w+\): [\d.]+ MB in [\d.]+ s, cached in (\S+)")


@pytest.fixture(scope="module")
def cluster():
    with local_cluster("rs", fault="node:blind") as head:
        head.wait_for_nodes()
        yield head


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shipped_run(tmp_path: Path, name: str, pages, model, cluster, expected) -> str:
    """A run on the SHIP node whose outputs (ALTO validated against the XSD, TXT) equal a
    local run's; its run.log."""
    out = tmp_path / name
    result = cli(*ray_args(pages, out, model, cluster, "SHIP"))
    assert result.returncode == ExitCode.OK, result.stderr
    assert comparable(assert_complete_outputs(out, GOOD_PAGES)) == expected
    return (out / "run.log").read_text()


def test_a_node_without_the_model_gets_it_from_the_driver_verified_and_cached(
    tmp_path, pages, tiny_model_dir, cluster, local_run
):
    """FAULT INJECTION: the node with the only `SHIP` unit treats the model folder as absent
    (`node:no-model`), so its actor does every page with the model it got from the driver."""
    node = faulty_node(cluster, "node:no-model", resources={"SHIP": 1})
    try:
        shipped_and_cached(tmp_path, pages, tiny_model_dir, cluster, local_run)
    finally:
        cluster.remove_node(node)


def shipped_and_cached(tmp_path, pages, tiny_model_dir, cluster, local_run) -> None:
    log = shipped_run(tmp_path, "first", pages, tiny_model_dir, cluster, local_run)
    assert re.search(r"node \S+ \(\w+\) has no model folder at \S+; shipping it from", log)
    (cached,) = SHIPPED.findall(log)  # once for the node
    cached = Path(cached)
    # In the node's Ray temp folder, keyed by the checksums, under the folder's own name.
    assert cached.parent.parent == Path(cluster.common_args["temp_dir"]) / CACHE_FOLDER
    assert cached.name == Path(tiny_model_dir).resolve().name
    originals = {path.name: sha256(path) for path in model_files(tiny_model_dir)}
    assert {path.name: sha256(path) for path in cached.iterdir()} == originals
    assert not list(cached.parent.glob(".partial-*"))  # no half-written folder left
    written = {path.name: path.stat().st_mtime_ns for path in cached.iterdir()}

    # A second run finds the node's cache and copies nothing.
    log = shipped_run(tmp_path, "second", pages, tiny_model_dir, cluster, local_run)
    assert "loads the model from its cache of an earlier shipment" in log
    assert not SHIPPED.search(log)
    assert {path.name: path.stat().st_mtime_ns for path in cached.iterdir()} == written

    # A cached file damaged since fails its check and the folder is shipped again.
    weights = cached / "model.safetensors"
    with weights.open("r+b") as handle:
        handle.seek(weights.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    log = shipped_run(tmp_path, "third", pages, tiny_model_dir, cluster, local_run)
    assert "failed verification (sha256 mismatch); shipping it from the driver" in log
    assert SHIPPED.findall(log) == [str(cached)]
    assert {path.name: sha256(path) for path in cached.iterdir()} == originals


def test_with_every_node_blind_the_head_loads_every_page_and_sends_no_more_tasks(
    tmp_path, pages, tiny_model_dir, cluster, local_run
):
    """`--ray-loading nodes` on a cluster where no node sees the inputs: once each has handed a
    page back, the head loads the rest itself; the outputs are those of a local run."""
    out = tmp_path / "out"
    run_with_a_blind_actor_node(out, pages, tiny_model_dir, cluster, local_run)
    total = sum(GOOD_PAGES.values())
    assert loaded_per_node(out) == {"head": total}
    handed = HANDED_BACK.findall((out / "run.log").read_text())
    assert handed
    # Each node handed back only tasks it held when found blind, none sent to it later (nodes
    # are found one after the other, so the bound is each node's own, not one for all).
    assert all(1 <= int(n) <= int(out_then) and int(later) == 0 for _, n, out_then, later in handed)
