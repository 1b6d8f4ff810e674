"""The decoder's forward passes, written out over transformers' Qwen3 modules.

The weights live in a `transformers.Qwen3ForCausalLM` (so a Qwen3-0.6B state dict loads unchanged),
but the hot loop does not go through `Qwen3Model.forward`: its signature, mask builders and cache
classes changed between transformers 4.55 and 5.x, and its per-step overhead is what a CPU batch
pays for most. Here each layer's sub-modules (norms, projections, MLP) are called directly, with
our own preallocated KV cache and `attention.py`. The arithmetic is the same as Qwen3's; tests
compare logits against `Qwen3ForCausalLM.forward`.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from pipeline.model.attention import (
    decode_attention,
    decode_attention_rows,
    rotate_half,
    varlen_attention,
)
from pipeline.model.packed import PackedLinears


def _plain(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return module(x)


class KVCache:
    """Keys and values of every layer in two tensors `(layers, rows, kv_heads, capacity, head_dim)`.

    One tensor per kind makes growing (amortised, in chunks) and dropping finished rows a single
    copy each. Slots are zero-initialised so masked, never-written slots cannot inject NaN.
    """

    GROW_BY = 256

    def __init__(
        self,
        num_layers: int,
        rows: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        shape = (num_layers, rows, num_kv_heads, capacity, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def ensure(self, length: int) -> None:
        """Make room for `length` positions per row."""
        if length <= self.capacity:
            return
        new_cap = max(length, self.capacity + self.GROW_BY, int(self.capacity * 1.5))
        for name in ("k", "v"):
            old = getattr(self, name)
            new = old.new_zeros((*old.shape[:3], new_cap, old.shape[4]))
            new[:, :, :, : old.shape[3]] = old
            setattr(self, name, new)

    def keep(self, rows: torch.Tensor) -> None:
        """Drop finished rows so later steps spend nothing on them."""
        self.k = self.k.index_select(1, rows)
        self.v = self.v.index_select(1, rows)


class NativeDecoder:
    """Packed prefill and cached single-token decode over a `Qwen3ForCausalLM`'s weights.

    On a float32 CPU model the decode step's matmuls use oneDNN-packed copies of the weights
    (`packed.py`; `pack_cpu_weights=False` saves that memory at the cost of speed).
    """

    def __init__(self, language_model: nn.Module, pack_cpu_weights: bool = True) -> None:
        self.lm = language_model
        cfg = language_model.config
        self.num_layers = cfg.num_hidden_layers
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.max_positions = cfg.max_position_embeddings
        self._rope_fp32: tuple[torch.Tensor, torch.Tensor] | None = None
        self._rope_cast: tuple[torch.Tensor, torch.Tensor] | None = None
        linears = [m for m in language_model.model.layers.modules() if isinstance(m, nn.Linear)]
        linears.append(language_model.lm_head)
        self.step_linear = (
            PackedLinears.for_modules(linears) if pack_cpu_weights else PackedLinears()
        )

    # ---- pieces --------------------------------------------------------------------------

    @property
    def layers(self) -> nn.ModuleList:
        return self.lm.model.layers

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.model.embed_tokens(ids)

    def logits(self, hidden: torch.Tensor, linear=_plain) -> torch.Tensor:
        """Final norm, then the (tied) LM head; float32 so log-probs are comparable."""
        return linear(self.lm.lm_head, self.lm.model.norm(hidden)).float()

    def rope(
        self, positions: torch.Tensor, count: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin rows for `positions` (all < `count`), from Qwen3's own rotary module.

        The table is built once in float32 and cast to the activation dtype, as Qwen3 does; the
        caller passes `count` so no device sync is needed to size it.
        """
        if self._rope_fp32 is None or self._rope_fp32[0].shape[0] < count:
            self._build_rope(count, positions.device)
        if self._rope_cast is None or self._rope_cast[0].dtype != dtype:
            cos, sin = self._rope_fp32
            self._rope_cast = (cos.to(dtype), sin.to(dtype))
        cos, sin = self._rope_cast
        return cos[positions], sin[positions]

    def _build_rope(self, count: int, device: torch.device) -> None:
        if count > self.max_positions:
            raise ValueError(
                f"sequence of {count} positions exceeds max_position_embeddings {self.max_positions}"
            )
        current = self._rope_fp32[0].shape[0] if self._rope_fp32 is not None else 1024
        size = min(self.max_positions, max(count, 2 * current))
        ids = torch.arange(size, device=device)[None]
        probe = torch.zeros(1, device=device, dtype=torch.float32)
        cos, sin = self.lm.model.rotary_emb(probe, ids)
        self._rope_fp32 = (cos[0].float(), sin[0].float())
        self._rope_cast = None

    def _qkv(self, layer: nn.Module, h: torch.Tensor, linear):
        attn = layer.self_attn
        shape = h.shape[:-1]
        q = attn.q_norm(linear(attn.q_proj, h).view(*shape, self.num_heads, self.head_dim))
        k = attn.k_norm(linear(attn.k_proj, h).view(*shape, self.num_kv_heads, self.head_dim))
        v = linear(attn.v_proj, h).view(*shape, self.num_kv_heads, self.head_dim)
        return q, k, v

    @staticmethod
    def _mlp_block(layer: nn.Module, x: torch.Tensor, linear) -> torch.Tensor:
        """Qwen3MLP's arithmetic, `down(act(gate(h)) * up(h))`, with a chosen matmul."""
        mlp = layer.mlp
        h = layer.post_attention_layernorm(x)
        return x + linear(
            mlp.down_proj, mlp.act_fn(linear(mlp.gate_proj, h)) * linear(mlp.up_proj, h)
        )

    # ---- passes --------------------------------------------------------------------------

    def prefill(
        self,
        embeds: torch.Tensor,
        lengths: list[int],
        cache: KVCache,
        rows: list[int] | None = None,
    ) -> torch.Tensor:
        """Run packed prompts `(T, hidden)` (prompt i has `lengths[i]` tokens), fill cache rows.

        Prompt i's keys/values go to cache row `rows[i]` (default: row i), so a continuous batch
        can prefill a newcomer into the slot a finished page left. Returns the final hidden state
        of each prompt's last token `(N, hidden)`, pre-norm.
        """
        rows = list(range(len(lengths))) if rows is None else rows
        device = embeds.device
        bounds = [0]
        for n in lengths:
            bounds.append(bounds[-1] + n)
        cu_seqlens = torch.tensor(bounds, dtype=torch.int32, device=device)
        positions = torch.cat([torch.arange(n, device=device) for n in lengths])
        cos, sin = self.rope(positions, max(lengths), embeds.dtype)
        cos, sin = cos[:, None, :], sin[:, None, :]  # (T, 1, D) over heads
        x = embeds
        for li, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, layer.input_layernorm(x), _plain)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            for row, (start, end) in zip(rows, itertools.pairwise(bounds), strict=True):
                cache.k[li, row, :, : end - start] = k[start:end].transpose(0, 1)
                cache.v[li, row, :, : end - start] = v[start:end].transpose(0, 1)
            out = varlen_attention(q, k, v, cu_seqlens, causal=True)
            x = x + layer.self_attn.o_proj(out.reshape(x.shape[0], -1))
            x = self._mlp_block(layer, x, _plain)
        last = torch.tensor(bounds[1:], device=device) - 1
        return x.index_select(0, last)

    def decode(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache,
        key_len: int,
        mask: torch.Tensor | None,
        row_keys: list[int] | None = None,
    ) -> torch.Tensor:
        """One new token per row: embeds `(B, hidden)` at `positions` `(B,)`; returns `(B, hidden)`.

        Keys `[0, key_len)` of the cache take part; `mask` `(B, 1, 1, key_len)` hides the slots a
        shorter row does not have (None when every row has the same length). With `row_keys`
        (each row's key count, new token included) attention runs row by row over exactly those
        keys instead, and `mask` is not used.
        """
        rows = embeds.shape[0]
        cos, sin = self.rope(positions, key_len, embeds.dtype)
        cos, sin = cos[:, None, None, :], sin[:, None, None, :]  # (B, 1, 1, D)
        row_idx = torch.arange(rows, device=embeds.device)
        lin = self.step_linear
        x = embeds[:, None, :]  # (B, 1, hidden)
        for li, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, layer.input_layernorm(x), lin)  # (B, 1, H, D)
            q = q.transpose(1, 2)
            k = k.transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            cache.k[li, row_idx, :, positions] = k[:, :, 0]
            cache.v[li, row_idx, :, positions] = v[:, 0]
            if row_keys is not None:
                out = decode_attention_rows(q, cache.k[li], cache.v[li], row_keys)
            else:  # (B, H, 1, D), kv heads not expanded
                keys = cache.k[li, :, :, :key_len]
                values = cache.v[li, :, :, :key_len]
                out = decode_attention(q, keys, values, mask)
            x = x + lin(layer.self_attn.o_proj, out.transpose(1, 2).reshape(rows, 1, -1))
            x = self._mlp_block(layer, x, lin)
        return x[:, 0]
