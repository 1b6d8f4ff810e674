"""flash-attn compatibility layer for the upstream AnandaSky remote code (the "patched model").

`flash_attn` holds the attention functions, `bert_padding` the pad/unpad helpers, `install`
the `sys.modules` shim and the per-module autocast patch the remote-code loader wraps around
`trust_remote_code` loading.
"""

from pipeline.compat.bert_padding import (
    index_first_axis,
    index_put_first_axis,
    pad_input,
    unpad_input,
    unpad_input_legacy,
)
from pipeline.compat.flash_attn import (
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    flash_attn_with_kvcache,
)
from pipeline.compat.install import (
    DEFAULT_FLASH_ATTN_VERSION,
    SHIM_MODULE_NAMES,
    DeviceAutocast,
    build_flash_attn_modules,
    flash_attn_shim,
    patch_autocast,
    unpatch_autocast,
)

__all__ = [
    "DEFAULT_FLASH_ATTN_VERSION",
    "SHIM_MODULE_NAMES",
    "DeviceAutocast",
    "build_flash_attn_modules",
    "flash_attn_func",
    "flash_attn_kvpacked_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_shim",
    "flash_attn_varlen_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_with_kvcache",
    "index_first_axis",
    "index_put_first_axis",
    "pad_input",
    "patch_autocast",
    "unpad_input",
    "unpad_input_legacy",
    "unpatch_autocast",
]
