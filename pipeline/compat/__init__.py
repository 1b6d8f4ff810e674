"""flash-attn compatibility layer for the upstream AnandaSky remote code (the "patched model").

`flash_attn` holds the attention functions, `bert_padding` the pad/unpad helpers, `install`
the `sys.modules` shim and the per-module autocast patch the remote-code loader wraps around
`trust_remote_code` loading.

Names resolve lazily, so reading a folder's remote-code entries (`remote_folder`) does not
import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "DEFAULT_FLASH_ATTN_VERSION": "pipeline.compat.install",
    "DeviceAutocast": "pipeline.compat.install",
    "SHIM_MODULE_NAMES": "pipeline.compat.install",
    "build_flash_attn_modules": "pipeline.compat.install",
    "flash_attn_func": "pipeline.compat.flash_attn",
    "flash_attn_kvpacked_func": "pipeline.compat.flash_attn",
    "flash_attn_qkvpacked_func": "pipeline.compat.flash_attn",
    "flash_attn_shim": "pipeline.compat.install",
    "flash_attn_varlen_func": "pipeline.compat.flash_attn",
    "flash_attn_varlen_kvpacked_func": "pipeline.compat.flash_attn",
    "flash_attn_varlen_qkvpacked_func": "pipeline.compat.flash_attn",
    "flash_attn_with_kvcache": "pipeline.compat.flash_attn",
    "index_first_axis": "pipeline.compat.bert_padding",
    "index_put_first_axis": "pipeline.compat.bert_padding",
    "pad_input": "pipeline.compat.bert_padding",
    "patch_autocast": "pipeline.compat.install",
    "unpad_input": "pipeline.compat.bert_padding",
    "unpad_input_legacy": "pipeline.compat.bert_padding",
    "unpatch_autocast": "pipeline.compat.install",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline.compat' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
