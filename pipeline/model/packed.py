"""oneDNN-packed weights for the small-batch matmuls of CPU decoding.

A decode step multiplies a handful of rows (one per page) by every weight matrix, so on CPU it
is bound by streaming the weights. MKL's sgemm handles such skinny products poorly (at 8 rows it
reads ~44 MB of seed-model weights at ~7 GB/s); the same weights reordered once into oneDNN's
blocked layout run about twice as fast for 1-16 rows. This is the kernel PyTorch's own compiler
uses for frozen CPU linears (`torch.ops.mkldnn._linear_pointwise`), called directly.

Costs and limits: one extra copy of the packed weights in host memory; float32 on CPU only;
results differ from `F.linear` by rounding (~1e-6 relative). Anything unavailable or not matching
`F.linear` on a self-check falls back to the plain module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BATCH_HINT = 8  # the layout oneDNN picks is tuned for about this many rows


def _ops_available() -> bool:
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


class PackedLinears:
    """`linear(module, x)`: packed oneDNN matmul for packed modules, `module(x)` otherwise."""

    def __init__(self) -> None:
        self._packed: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._packed)

    @classmethod
    def for_modules(cls, modules: list[nn.Linear]) -> PackedLinears:
        """Pack every float32 CPU module; an empty instance where packing cannot be trusted."""
        packed = cls()
        if not modules or not _ops_available():
            return packed
        if any(m.weight.device.type != "cpu" or m.weight.dtype != torch.float32 for m in modules):
            return packed
        try:
            with torch.no_grad():
                for module in modules:
                    packed._packed[id(module)] = torch.ops.mkldnn._reorder_linear_weight(
                        module.weight.detach(), BATCH_HINT
                    )
                probe = modules[0]
                x = torch.randn(3, probe.in_features, generator=torch.Generator().manual_seed(0))
                ok = torch.allclose(
                    packed(probe, x), F.linear(x, probe.weight, probe.bias), atol=1e-4, rtol=1e-4
                )
        except RuntimeError:
            ok = False
        return packed if ok else cls()

    def __call__(self, module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        weight = self._packed.get(id(module))
        if weight is None:
            return module(x)
        return torch.ops.mkldnn._linear_pointwise(x, weight, module.bias, "none", [], "")
