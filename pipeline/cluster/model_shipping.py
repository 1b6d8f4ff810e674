"""Shipping the model folder to Ray nodes that lack it, through Ray's object store.

A node needs the `--model` folder to load the model; on a cluster without a shared file system
copying it to every server by hand is the step most often missed. So the driver describes the
folder by the two checksums the run fingerprint already holds (`checkpoint_checksum` over
config, tokenizer and weights; `model_code_checksum` over the other top-level .py/.json files)
and an actor checks the folder at that path on its node against them. Where it is there with
those bytes, the actor loads it in place, as before. Where it is absent or holds other bytes,
the actor asks the driver, which puts the files into Ray's object store once (at the first such
request, in chunks) and hands every such actor the references; the actor writes them into a
per-node cache (`<Ray temp dir>/anandasky-models/<checksums>/<folder name>`), verifies the
checksums, and loads from there. The cache outlives the run: a later run on that node reuses it
after checking it again (a file rewritten since is hashed again, and a copy that no longer
matches is shipped again).

Two actors on a node share the copy: a lock file lets one write while the other waits, and the
files are written under a temporary name and renamed when complete, so a crash mid-copy never
leaves a folder that looks finished (and a folder is always verified before it is used).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import CheckpointError, DevicesLost
from pipeline.faults import injected_fault
from pipeline.model.checkpoint import checkpoint_checksum, locate
from pipeline.runner.settings import model_code_checksum

log = logging.getLogger("anandasky")
# Each file goes into the object store in parts of this size: an actor holds one part in memory
# at a time while writing, and Ray moves parts between nodes independently (no single object
# of a multi-GB checkpoint).
CHUNK_BYTES = 64 << 20
CACHE_FOLDER = "anandasky-models"


@dataclass(frozen=True)
class ModelIdentity:
    """What makes two model folders the same for a run: the run fingerprint's two checksums,
    and the files they cover (name, size)."""

    weights_sha256: str
    code_sha256: str
    files: tuple[tuple[str, int], ...]
    name: str  # the folder's own name, kept in the cache so nothing downstream sees another

    @property
    def key(self) -> str:
        return f"{self.weights_sha256[:16]}-{self.code_sha256[:16]}"

    @property
    def size(self) -> int:
        return sum(size for _, size in self.files)


def model_files(model_dir: str | Path) -> list[Path]:
    """The files the two checksums cover, which are the files the native and remote-code
    loaders read: config, tokenizer, weights (index and shards) and the other .py/.json (the
    choice `hash_code_files` makes; a file left out here would fail the shipped folder's
    check, never pass unnoticed)."""
    hashed = locate(model_dir).hashed
    names = {path.name for path in hashed}
    root = Path(model_dir)
    code = sorted(p for p in [*root.glob("*.py"), *root.glob("*.json")] if p.is_file())
    return [*hashed, *(path for path in code if path.name not in names)]


def identity_of(model_dir: str | Path, stamp_file: Path | None = None) -> ModelIdentity:
    """The driver's description of its folder (the weights checksum reused from `stamp_file`
    while no file changed)."""
    files = tuple((path.name, path.stat().st_size) for path in model_files(model_dir))
    return ModelIdentity(
        checkpoint_checksum(model_dir, cache_file=stamp_file),
        model_code_checksum(model_dir),
        files,
        Path(model_dir).resolve().name,
    )


def matches(folder: str | Path, identity: ModelIdentity, stamp_file: Path | None) -> bool:
    """Whether `folder` holds the identity's bytes (any unreadable or missing file: no)."""
    try:
        return (
            checkpoint_checksum(folder, cache_file=stamp_file) == identity.weights_sha256
            and model_code_checksum(folder) == identity.code_sha256
        )
    except (CheckpointError, OSError):
        return False


def stamp_for(cache_root: Path, folder: str | Path) -> Path:
    """Where the weights checksum of `folder` is remembered on this node (by its path)."""
    tag = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:16]
    return cache_root / f"checksum-{tag}.json"


@dataclass(frozen=True)
class ShippedFile:
    """One file of the folder in the object store: its parts, in order."""

    name: str
    size: int
    parts: tuple[Any, ...]  # ray.ObjectRef of bytes, CHUNK_BYTES each (the last one shorter)


@dataclass(frozen=True)
class NeedsModel:
    """An actor's answer to `load` when its node lacks the folder: send me the files."""

    why: str


@dataclass(frozen=True)
class ModelSource:
    """Where an actor's model came from: "in place", "cache" (an earlier shipment on this
    node) or "shipped" (now, `bytes` in `seconds`)."""

    how: str
    folder: str
    bytes: int = 0
    seconds: float = 0.0


def cache_root() -> Path:
    """This node's cache of shipped folders, in Ray's temp folder of the node."""
    import ray

    return Path(ray.get_runtime_context().get_temp_dir()) / CACHE_FOLDER


@contextlib.contextmanager
def node_lock(path: Path) -> Iterator[None]:
    """One actor of the node at a time in the cache (released by the kernel if it dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def model_here(
    model_dir: str, identity: ModelIdentity, shipped: tuple[ShippedFile, ...] | None
) -> ModelSource | NeedsModel:
    """Inside an actor: the folder to load from on this node, or a request for the files."""
    root = cache_root()
    # FAULT INJECTION (tests): node:no-model makes this node treat the model folder as absent.
    absent = injected_fault("node") == "no-model" or not Path(model_dir).is_dir()
    lock = root / f"{identity.key}.lock"
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.touch()
    except OSError as err:
        return _without_cache(model_dir, identity, absent, root, err)
    # Under the lock: the node's actors check one after another, so one hashes the folder and
    # the others find its checksum remembered.
    with node_lock(lock):
        if not absent and matches(model_dir, identity, stamp_for(root, model_dir)):
            return ModelSource("in place", model_dir)
        why = (
            f"has no model folder at {model_dir}" if absent else f"holds other bytes at {model_dir}"
        )
        target = root / identity.key / identity.name
        if target.is_dir():
            if matches(target, identity, stamp_for(root, target)):
                return ModelSource("cache", str(target))
            why += f", and its copy in {target} failed verification (sha256 mismatch)"
            shutil.rmtree(target)
        if shipped is None:
            return NeedsModel(why)
        started = time.perf_counter()
        write_folder(target, shipped)
        if not matches(target, identity, stamp_for(root, target)):
            shutil.rmtree(target, ignore_errors=True)
            raise CheckpointError(
                f"the model folder shipped to this node ({target}) does not match the driver's "
                "checksums; check the node's disk and memory, then run again"
            )
        return ModelSource("shipped", str(target), identity.size, time.perf_counter() - started)


def _without_cache(
    model_dir: str, identity: ModelIdentity, absent: bool, root: Path, err: OSError
) -> ModelSource:
    """The node's cache folder cannot be written (read-only, full, not a folder): a model folder
    in place is still checked, its checksum not remembered, and loaded; a missing one cannot
    be shipped here, which the one line says, with what to do."""
    if not absent and matches(model_dir, identity, None):
        return ModelSource("in place", model_dir)
    what = f"has no model folder at {model_dir}" if absent else f"holds other bytes at {model_dir}"
    raise DevicesLost(
        f"this node {what}, and the model cannot be shipped to it: its cache folder {root} "
        f"cannot be written ({err.strerror or err}); copy the model folder to {model_dir} on "
        "the node, or make that folder writable, and run again"
    )


def write_folder(target: Path, shipped: tuple[ShippedFile, ...]) -> None:
    """Write the files under a temporary name beside `target`, then rename it (the caller
    holds the node's lock, so temporary folders left by a crash can go)."""
    import ray

    for stale in target.parent.glob(".partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    temp = target.parent / f".partial-{os.getpid()}"
    temp.mkdir(parents=True)
    for file in shipped:
        with open(temp / file.name, "wb") as out:
            for part in file.parts:
                out.write(ray.get(part))
            out.flush()
            os.fsync(out.fileno())
    os.rename(temp, target)


class ModelShipment:
    """The driver's side: the folder's identity, and its files put into Ray's object store the
    first time an actor needs them; run.log says once per node what happened."""

    def __init__(self, model_dir: str) -> None:
        self.model_dir = model_dir
        self.identity: ModelIdentity | None = None
        self._shipped: tuple[ShippedFile, ...] | None = None
        self._noted: set[tuple[str, str]] = set()  # (node id, what) already in run.log
        self._shipped_to: set[str] = set()  # nodes sent the files in this run

    def start(self) -> None:
        """Describe the folder (its weights checksum remembered in the head node's cache, where
        the head's actors find it; hashed again when that folder cannot be written)."""
        try:
            stamp = stamp_for(cache_root(), self.model_dir)
            self.identity = identity_of(self.model_dir, stamp)
        except OSError:
            self.identity = identity_of(self.model_dir)

    def files_for(self, node_id: str, node_ip: str, why: str) -> tuple[ShippedFile, ...]:
        """The files' object references, put once; the node's reason logged once."""
        self._shipped_to.add(node_id)
        if (node_id, why) not in self._noted:
            self._noted.add((node_id, why))
            log.warning("node %s (%s) %s; shipping it from the driver", node_ip, node_id[:8], why)
        if self._shipped is None:
            self._shipped = self._put()
        return self._shipped

    def _put(self) -> tuple[ShippedFile, ...]:
        import ray

        started = time.perf_counter()
        shipped = []
        for path in model_files(self.model_dir):
            parts = []
            with path.open("rb") as handle:
                while chunk := handle.read(CHUNK_BYTES):
                    parts.append(ray.put(chunk))
            shipped.append(ShippedFile(path.name, path.stat().st_size, tuple(parts)))
        size = sum(file.size for file in shipped)
        log.info(
            "model folder put into Ray's object store for nodes that lack it: %d file(s), "
            "%.1f MB in %.1f s",
            len(shipped), size / 1e6, time.perf_counter() - started,
        )  # fmt: skip
        return tuple(shipped)

    def loaded(self, node_id: str, node_ip: str, source: ModelSource | None) -> None:
        """Log, once per node, a model shipped there or found in its cache."""
        if source is None or source.how == "in place" or (node_id, source.how) in self._noted:
            return
        self._noted.add((node_id, source.how))
        if source.how == "shipped":
            log.info(
                "model shipped to node %s (%s): %.1f MB in %.1f s, cached in %s",
                node_ip, node_id[:8], source.bytes / 1e6, source.seconds, source.folder,
            )  # fmt: skip
        elif node_id in self._shipped_to:  # another actor of the node wrote it in this run
            log.info(
                "node %s (%s) loads the model shipped to it in this run (%s)",
                node_ip, node_id[:8], source.folder,
            )  # fmt: skip
        else:
            log.info(
                "node %s (%s) loads the model from its cache of an earlier shipment (%s)",
                node_ip, node_id[:8], source.folder,
            )  # fmt: skip
