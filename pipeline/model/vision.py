"""Vision encoder (ViT with 2D RoPE) and the projector into the decoder's embedding space.

All patches of a batch of differently sized images travel as ONE packed sequence `(T, patch_dim)`
with `cu_seqlens`; attention is block-diagonal per image, so no patch is padded and no image
sees another. Positions are 2D rotary embeddings over (row, col), Qwen2-VL style: the first half of
the rotary frequencies encode the row, the second half the column, applied in float32 with
rotate_half.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.model.attention import rotate_half, varlen_attention
from pipeline.model.config import ProjectorConfig, VisionConfig


def _activation(name: str):
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    return F.gelu


def patch_positions(grids: Sequence[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """`(T, 2)` (row, col) of every patch, images one after another, patches row-major."""
    parts = []
    for rows, cols in grids:
        r = torch.arange(rows, device=device).repeat_interleave(cols)
        c = torch.arange(cols, device=device).repeat(rows)
        parts.append(torch.stack((r, c), dim=1))
    return torch.cat(parts, dim=0)


def cu_seqlens_for(grids: Sequence[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """Cumulative patch counts `(N+1,)` int32, starting at 0 (flash-attn convention)."""
    ends = [0]
    for rows, cols in grids:
        ends.append(ends[-1] + rows * cols)
    return torch.tensor(ends, dtype=torch.int32, device=device)


class VisionRotary(nn.Module):
    """cos/sin tables for 2D RoPE; computed per call (tiny) so no buffer needs materialising."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        axis_dim = self.head_dim // 2  # rotary pairs per axis: head_dim / 4
        steps = torch.arange(0, axis_dim, 2, dtype=torch.float32, device=positions.device)
        inv_freq = 1.0 / (self.theta ** (steps / axis_dim))
        pos = positions.to(torch.float32)
        freqs = torch.cat((pos[:, :1] * inv_freq, pos[:, 1:] * inv_freq), dim=-1)  # rows | cols
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, head_dim)
        return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x `(T, H, D)`, cos/sin `(T, D)`; computed in float32, returned in x's dtype."""
    xf = x.float()
    out = xf * cos[:, None, :] + rotate_half(xf) * sin[:, None, :]
    return out.to(x.dtype)


class VisionAttention(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self,
        x: torch.Tensor,
        cu_seqlens: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        total = x.shape[0]
        qkv = self.qkv(x).view(total, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(dim=1)
        cos, sin = rotary
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        out = varlen_attention(q, k, v, cu_seqlens, causal=False)
        return self.proj(out.reshape(total, -1))


class TwoLayerMLP(nn.Module):
    """Linear, activation, Linear: the ViT blocks' MLP and the vision-to-text projector."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(input_size, hidden_size)
        self.fc2 = nn.Linear(hidden_size, output_size)
        self.act = _activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionBlock(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = VisionAttention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = TwoLayerMLP(
            config.hidden_size, config.intermediate_size, config.hidden_size, config.hidden_act
        )

    def forward(
        self,
        x: torch.Tensor,
        cu_seqlens: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cu_seqlens, rotary)
        return x + self.mlp(self.norm2(x))


class VisionEncoder(nn.Module):
    """Patches of many images in, one feature vector per patch out.

    `patch_embed` is a Linear over a patch flattened as (channel, row, col): the same numbers as
    a stride-`patch_size` Conv2d kernel reshaped to `(hidden, C*P*P)`.
    """

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = nn.Linear(config.patch_dim, config.hidden_size)
        self.rotary = VisionRotary(config.head_dim, config.rope_theta)
        self.blocks = nn.ModuleList(VisionBlock(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, patches: torch.Tensor, grids: Sequence[tuple[int, int]]) -> torch.Tensor:
        """patches `(T, patch_dim)`, grids `[(rows, cols), ...]` with sum(rows*cols) == T."""
        expected = sum(r * c for r, c in grids)
        if patches.shape[0] != expected:
            raise ValueError(f"{patches.shape[0]} patches for grids totalling {expected}")
        cu_seqlens = cu_seqlens_for(grids, patches.device)
        rotary = self.rotary(patch_positions(grids, patches.device))
        x = self.patch_embed(patches)
        for block in self.blocks:
            x = block(x, cu_seqlens, rotary)
        return self.norm(x)


def make_projector(config: ProjectorConfig) -> TwoLayerMLP:
    """Vision features to decoder embeddings, one output token per patch."""
    return TwoLayerMLP(
        config.input_size, config.intermediate_size, config.output_size, config.hidden_act
    )
