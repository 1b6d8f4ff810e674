"""oneDNN-packed weights: same products as F.linear, used only where they can be trusted."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.model.packed import PackedLinears, _ops_available

needs_onednn = pytest.mark.skipif(not _ops_available(), reason="torch built without oneDNN")


@needs_onednn
@pytest.mark.parametrize("rows", [1, 3, 8, 40])
def test_packed_products_match_plain_linear(rows: int) -> None:
    torch.manual_seed(0)
    modules = [nn.Linear(96, 160, bias=False), nn.Linear(160, 96, bias=True)]
    packed = PackedLinears.for_modules(modules)
    assert len(packed) == 2
    with torch.inference_mode():
        for module in modules:
            x = torch.randn(rows, 1, module.in_features)
            torch.testing.assert_close(packed(module, x), module(x), atol=1e-4, rtol=1e-4)


def test_half_precision_or_foreign_modules_fall_back_to_plain_calls() -> None:
    half = nn.Linear(8, 8).to(torch.bfloat16)
    assert len(PackedLinears.for_modules([half])) == 0
    packed = PackedLinears()
    module = nn.Linear(4, 2)
    x = torch.randn(3, 4)
    assert torch.equal(packed(module, x), module(x))
