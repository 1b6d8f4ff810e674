"""The model folder shipped to a Ray node that lacks it, on a real local cluster.

A head without the actors' resource and one node whose environment makes it treat the model
folder as absent (FAULT INJECTION: `node:no-model`), holding the only `SHIP` unit, so its actor
does every page with the model it received through Ray's object store.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import test_ray_cluster
from test_ray_cluster import faulty_node, ray_args
from test_run_end_to_end import GOOD_PAGES, assert_complete_outputs, cli, comparable

from pipeline.cluster.model_shipping import CACHE_FOLDER, model_files
from pipeline.errors import ExitCode

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

# The Ray tests' fixtures: the test pages, and their outputs from a local run.
pages = test_ray_cluster.pages
local_run = test_ray_cluster.local_run
SHIPPED = re.compile(r"model shipped to node \S+ \(\w+\): [\d.]+ MB in [\d.]+ s, cached in (\S+)")


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths must fit
    os.makedirs(os.path.join(temp, "ray"))
    before = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp
    common = {"temp_dir": temp, "num_cpus": 1}
    head = Cluster(initialize_head=True, head_node_args={**common, "include_dashboard": False})
    head.common_args = common
    faulty_node(head, "node:no-model", resources={"SHIP": 1})
    head.wait_for_nodes()
    yield head
    head.shutdown()
    if before is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = before
    shutil.rmtree(temp, ignore_errors=True)


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
