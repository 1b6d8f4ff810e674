"""Vision encoder: packed batches equal per-image runs; 2D RoPE encodes relative positions."""

from __future__ import annotations

import pytest
import torch

from pipeline.model.synthetic import random_state_dict, synthetic_config
from pipeline.model.vision import (
    VisionEncoder,
    VisionRotary,
    apply_rotary,
    cu_seqlens_for,
    patch_positions,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def encoder() -> VisionEncoder:
    config = synthetic_config("tiny")
    enc = VisionEncoder(config.vision)
    state = random_state_dict(config, seed=3)
    enc.load_state_dict(
        {k[len("vision.") :]: v for k, v in state.items() if k.startswith("vision.")}
    )
    return enc.eval()


def test_packed_batch_equals_each_image_alone(encoder: VisionEncoder) -> None:
    grids = [(3, 5), (1, 1), (8, 2), (4, 4)]
    gen = torch.Generator().manual_seed(0)
    dim = encoder.config.patch_dim
    images = [torch.randn(r * c, dim, generator=gen) for r, c in grids]
    with torch.inference_mode():
        packed = encoder(torch.cat(images), grids)
        alone = torch.cat([encoder(x, [g]) for x, g in zip(images, grids, strict=True)])
    assert packed.dtype == torch.float32
    assert (packed - alone).abs().max().item() <= 1e-5


def test_patch_positions_are_row_major_per_image() -> None:
    pos = patch_positions([(2, 3), (1, 2)], torch.device("cpu"))
    assert pos.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2], [0, 0], [0, 1]]
    assert cu_seqlens_for([(2, 3), (1, 2)], torch.device("cpu")).tolist() == [0, 6, 8]


def test_rotary_scores_depend_only_on_relative_row_and_column_offsets() -> None:
    head_dim = 32
    rotary = VisionRotary(head_dim, theta=10000.0)
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 1, head_dim, generator=gen)
    k = torch.randn(1, 1, head_dim, generator=gen)

    def score(q_pos, k_pos, shift=(0, 0)):
        pos = torch.tensor([q_pos, k_pos]) + torch.tensor(shift)
        cos, sin = rotary(pos)
        qr = apply_rotary(q, cos[:1], sin[:1])
        kr = apply_rotary(k, cos[1:], sin[1:])
        return (qr * kr).sum().item()

    base = score((2, 7), (5, 1))
    assert base == pytest.approx(score((2, 7), (5, 1), shift=(11, 4)), abs=1e-4)
    # Rows and columns are separate axes: swapping them changes the score.
    assert base != pytest.approx(score((7, 2), (1, 5)), abs=1e-3)


def test_rotary_gives_half_the_frequencies_to_rows_and_half_to_columns() -> None:
    rotary = VisionRotary(16, theta=10000.0)
    cos_row, _ = rotary(torch.tensor([[3, 0]]))
    cos_col, _ = rotary(torch.tensor([[0, 3]]))
    # Dims 0-3 (and their rotate_half partners 8-11) rotate with the row, 4-7 / 12-15 with the col.
    assert torch.all(cos_row[0, 4:8] == 1) and torch.all(cos_row[0, 12:16] == 1)
    assert torch.all(cos_col[0, 0:4] == 1) and torch.all(cos_col[0, 8:12] == 1)
    assert torch.all(cos_row[0, :4] < 1) and torch.all(cos_col[0, 4:8] < 1)


def test_patch_count_must_match_the_grids(encoder: VisionEncoder) -> None:
    with pytest.raises(ValueError, match="patches for grids"):
        encoder(torch.zeros(5, encoder.config.patch_dim), [(2, 2)])
