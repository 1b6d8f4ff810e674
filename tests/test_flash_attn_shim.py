"""The flash-attn compatibility layer's sys.modules shim and its autocast patching of remote
code: what a remote model folder sees when it imports flash_attn on a machine without it.
"""

import importlib.machinery
import importlib.util
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

from pipeline.compat import (
    build_flash_attn_modules,
    flash_attn_shim,
    flash_attn_with_kvcache,
    patch_autocast,
    unpatch_autocast,
)

pytestmark = pytest.mark.compat


# --- sys.modules shim --------------------------------------------------------------------------

MODELING = """\
import torch
from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache
from flash_attn.bert_padding import pad_input, unpad_input, index_first_axis


def unpadded_attention(x, mask):
    packed, indices, cu, max_len, *_ = unpad_input(x, mask)
    out = flash_attn_varlen_func(packed, packed, packed, cu, cu, max_len, max_len, causal=True)
    return pad_input(out, indices, x.shape[0], x.shape[1])
"""


def _snapshot() -> dict[str, object]:
    return {
        n: m for n, m in sys.modules.items() if n == "flash_attn" or n.startswith("flash_attn.")
    }


@pytest.fixture
def no_real_flash_attn():
    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("a real flash-attn is installed; the shim's absence checks do not apply")


def test_shim_satisfies_transformers_check_imports_and_leaves_no_trace(
    tmp_path: Path, no_real_flash_attn
):
    from transformers.dynamic_module_utils import check_imports

    modeling = tmp_path / "modeling_anandasky.py"
    modeling.write_text(MODELING)
    before = _snapshot()
    with pytest.raises(ImportError, match="flash_attn"):
        check_imports(modeling)

    with flash_attn_shim() as fa:
        assert importlib.util.find_spec("flash_attn") is not None
        assert importlib.util.find_spec("flash_attn.bert_padding") is not None
        assert fa.__version__ == "2.7.4"
        check_imports(modeling)
        spec = importlib.util.spec_from_file_location("anandasky_remote_fixture", modeling)
        remote = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(remote)
        from flash_attn.flash_attn_interface import flash_attn_with_kvcache as via_interface

        assert via_interface is flash_attn_with_kvcache

    assert _snapshot() == before
    assert importlib.util.find_spec("flash_attn") is None
    # Names bound at import keep working after the shim is gone.
    x = torch.randn(2, 4, 2, 8)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    out = remote.unpadded_attention(x, mask)
    assert out.shape == x.shape and out[0, 3].abs().max() == 0


def test_shim_restores_what_was_there_before_even_on_error_and_can_defer_to_it():
    sentinel = types.ModuleType("flash_attn")
    sentinel.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
    saved = sys.modules.get("flash_attn")
    sys.modules["flash_attn"] = sentinel
    try:
        with pytest.raises(RuntimeError), flash_attn_shim():
            assert sys.modules["flash_attn"] is not sentinel
            raise RuntimeError("remote code failed to import")
        assert sys.modules["flash_attn"] is sentinel
        assert "flash_attn.bert_padding" not in sys.modules
        with flash_attn_shim(prefer_installed=True) as fa:  # an importable flash_attn wins
            assert fa is sentinel and "flash_attn.bert_padding" not in sys.modules
    finally:
        if saved is None:
            sys.modules.pop("flash_attn", None)
        else:
            sys.modules["flash_attn"] = saved


def test_shim_version_picks_the_unpad_input_flavour():
    x, mask = torch.randn(2, 3, 4), torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert (
        len(build_flash_attn_modules("2.7.4")["flash_attn.bert_padding"].unpad_input(x, mask)) == 5
    )
    with flash_attn_shim("2.6.3") as fa:
        from flash_attn.bert_padding import unpad_input as legacy

        assert fa.__version__ == "2.6.3"
        assert len(legacy(x, mask)) == 4
    with pytest.raises(ValueError, match="2.x"):
        build_flash_attn_modules("3.0.0")


# --- autocast patch ---------------------------------------------------------------------------

AUTOCAST_MODULE = """\
import torch
from torch import autocast
from torch.cuda.amp import autocast as cuda_amp_autocast


def with_torch_autocast(a, b):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return a @ b


def with_imported_autocast(a, b):
    with autocast(device_type="cuda", dtype=torch.bfloat16):
        return a @ b


def with_cuda_amp(a, b):
    with cuda_amp_autocast(dtype=torch.bfloat16):
        return a @ b


def with_torch_cuda_amp(a, b):
    with torch.cuda.amp.autocast(dtype=torch.bfloat16):
        return a @ b


def fp32_island(a, b):
    with torch.autocast("cuda", dtype=torch.bfloat16), torch.autocast("cuda", enabled=False):
        return a @ b
"""


@pytest.fixture
def remote_module(tmp_path: Path):
    path = tmp_path / "modeling_autocast.py"
    path.write_text(AUTOCAST_MODULE)
    spec = importlib.util.spec_from_file_location("anandasky_autocast_fixture", path)
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "function",
    ["with_torch_autocast", "with_imported_autocast", "with_cuda_amp", "with_torch_cuda_amp"],
)
def test_patched_module_autocasts_on_the_cpu(remote_module, function):
    a, b = torch.randn(4, 8), torch.randn(8, 4)
    patched = patch_autocast(remote_module, "cpu")
    assert set(patched) == {"torch", "autocast", "cuda_amp_autocast"}
    assert getattr(remote_module, function)(a, b).dtype == torch.bfloat16
    assert remote_module.fp32_island(a, b).dtype == torch.float32
    assert torch.autocast is not remote_module.autocast  # real torch untouched
    unpatch_autocast(remote_module)
    assert remote_module.torch is torch and remote_module.autocast is torch.autocast
    if not torch.cuda.is_available():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "CUDA is not available, disabling autocast"
            assert getattr(remote_module, function)(a, b).dtype == torch.float32


def test_autocast_device_is_read_at_call_time(remote_module):
    device = {"now": "meta"}
    patch_autocast(remote_module, lambda: torch.device(device["now"]))
    device["now"] = "cpu"
    a, b = torch.randn(4, 8), torch.randn(8, 4)
    assert remote_module.with_torch_autocast(a, b).dtype == torch.bfloat16
    decorated = remote_module.torch.autocast("cuda", dtype=torch.bfloat16)(lambda x, y: x @ y)
    assert decorated(a, b).dtype == torch.bfloat16
    assert remote_module.torch.float16 is torch.float16  # everything else forwards to torch
    assert remote_module.torch.cuda.is_available is torch.cuda.is_available
