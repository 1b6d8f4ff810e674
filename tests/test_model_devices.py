"""--device / --dtype resolution and the errors for missing NPU software.

The NPU cases put small stand-in `torch_npu` packages on sys.path: one that fails to import the way
torch-npu does without CANN, one that imports but brings no `torch.npu`. They exercise our error
paths; nothing here claims an NPU works.
"""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

import pytest
import torch

from pipeline.errors import BadArguments, MissingDependency
from pipeline.model.devices import (
    autocast,
    dtype_name,
    npu_device_count,
    probe_npu,
    resolve_device,
    resolve_dtype,
)

HAS_TORCH_NPU = importlib.util.find_spec("torch_npu") is not None
DEFAULT = "cuda:0" if torch.cuda.is_available() else "cpu"


def stand_in_torch_npu(tmp_path: Path, monkeypatch, body: str) -> None:
    package = tmp_path / "torch_npu"
    package.mkdir()
    (package / "__init__.py").write_text(body, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "torch_npu", raising=False)


@pytest.fixture
def npu_without_cann(tmp_path, monkeypatch) -> None:
    stand_in_torch_npu(
        tmp_path,
        monkeypatch,
        'raise ImportError("libhccl.so: cannot open shared object file: No such file or directory")\n',
    )


def test_cpu_and_auto_resolve_without_accelerators() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    if not HAS_TORCH_NPU:
        assert str(resolve_device("auto")) == DEFAULT


@pytest.mark.parametrize("spec", ["tpu", "npu:x", "auto:1", "cuda:-1", "cpu0"])
def test_malformed_device_names_are_bad_arguments(spec: str) -> None:
    with pytest.raises(BadArguments, match="device"):
        resolve_device(spec)


@pytest.mark.skipif(HAS_TORCH_NPU, reason="torch-npu is installed here")
def test_npu_without_torch_npu_names_the_missing_package() -> None:
    with pytest.raises(MissingDependency, match="torch-npu, which is not installed"):
        resolve_device("npu")
    assert npu_device_count() == 0


def test_npu_without_cann_names_cann_and_the_library(npu_without_cann) -> None:
    with pytest.raises(MissingDependency) as err:
        resolve_device("npu:1")
    message = str(err.value)
    assert "CANN" in message and "libhccl.so" in message and "set_env.sh" in message


def test_auto_falls_back_when_torch_npu_is_broken(npu_without_cann) -> None:
    probe = probe_npu()
    assert not probe.available and "CANN" in probe.reason
    assert npu_device_count() == 0
    assert str(resolve_device("auto")) == DEFAULT


def test_npu_runtime_without_devices_is_reported(tmp_path, monkeypatch) -> None:
    stand_in_torch_npu(tmp_path, monkeypatch, "# imports fine, registers nothing\n")
    with pytest.raises(MissingDependency, match="sees no NPU device"):
        resolve_device("npu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_missing_dependency() -> None:
    with pytest.raises(MissingDependency, match="CUDA is not available"):
        resolve_device("cuda:0")


def test_dtype_defaults_follow_the_device() -> None:
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, torch.device("cuda", 0)) == torch.bfloat16
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
    assert dtype_name(torch.bfloat16) == "bfloat16"
    with pytest.raises(BadArguments, match="unknown dtype"):
        resolve_dtype("int8", torch.device("cpu"))


def test_autocast_uses_the_devices_own_type_and_is_off_in_float32() -> None:
    assert isinstance(autocast(torch.device("cpu"), torch.float32), contextlib.nullcontext)
    ctx = autocast(torch.device("cpu"), torch.bfloat16)
    assert isinstance(ctx, torch.autocast) and ctx.device == "cpu"
    with ctx:
        out = torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4))
    assert out.dtype == torch.bfloat16


def test_broken_torch_npu_autoload_is_explained_when_torch_is_imported(tmp_path: Path) -> None:
    """An installed torch-npu without CANN breaks `import torch` through torch's backend
    autoload; reproduced with a stand-in distribution that registers a failing entry point."""
    import os
    import subprocess
    import sys

    dist = tmp_path / "stand_in_npu-0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: stand-in-npu\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text("[torch.backends]\nstand_in_npu = stand_in_npu:load\n")
    (tmp_path / "stand_in_npu.py").write_text(
        "def load():\n    raise ImportError('libhccl.so: cannot open shared object file')\n"
    )
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(repo)])}
    code = (
        "from pipeline.errors import MissingDependency\n"
        "try:\n    import pipeline.model.devices\nexcept MissingDependency as e:\n"
        "    print('MISSING', e)\nelse:\n    print('IMPORTED')\n"
    )
    broken = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert "MISSING" in broken.stdout and "TORCH_DEVICE_BACKEND_AUTOLOAD=0" in broken.stdout
    env["TORCH_DEVICE_BACKEND_AUTOLOAD"] = "0"
    fixed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert fixed.stdout.strip() == "IMPORTED", fixed.stderr
